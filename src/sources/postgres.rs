//! PostgreSQL as an extract source (filter lists often live in a service's own
//! database).
//!
//! Named parameters (`$days`) are rewritten to PostgreSQL's positional ones
//! (`$1`) outside strings, quoted names, comments and dollar quotes, and bound
//! with the types the server infers; rows stream from the socket into Arrow
//! batches of 8192, so a large result is never held whole.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, Int64Array,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::StreamExt;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::{Params, QueryResult, Source, SourceError};
use crate::config::settings::PostgresConfig;
use crate::pgconn::{PgError, Target};
use crate::sources::ParamValue;

const BATCH_ROWS: usize = 8192;

#[derive(Debug, Clone)]
pub struct PostgresSource {
    config: PostgresConfig,
}

impl PostgresSource {
    pub fn new(config: PostgresConfig) -> Self {
        Self { config }
    }

    /// Connects and runs `SELECT 1`.
    pub async fn healthcheck(&self) -> Result<(), SourceError> {
        let target = Target::new(&self.config).map_err(source_error)?;
        let client = target.connect().await.map_err(source_error)?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| source_error(PgError::from_db(&target.display, &e)))
    }
}

fn source_error(e: PgError) -> SourceError {
    match e.retryable {
        true => SourceError::Io(e.message),
        false => SourceError::Query(e.message),
    }
}

impl Source for PostgresSource {
    async fn query(&self, sql: &str, params: &Params) -> Result<QueryResult, SourceError> {
        let (sql, names) = positional(sql).map_err(SourceError::Query)?;
        let target = Target::new(&self.config).map_err(source_error)?;
        let client = target.connect().await.map_err(source_error)?;
        let db = |what: &'static str| {
            move |e: tokio_postgres::Error| source_error(PgError::from_db(what, &e))
        };
        client
            .execute(
                "SELECT set_config('search_path', $1, false)",
                &[&self.config.schema],
            )
            .await
            .map_err(db("cannot set the search path"))?;
        let statement = client.prepare(&sql).await.map_err(db("query"))?;
        let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(names.len());
        for (name, ty) in names.iter().zip(statement.params()) {
            let value = params.get(name).ok_or_else(|| {
                SourceError::Query(format!(
                    "parameter `${name}` is not set (the step's `params`, or run_id / logical_date)"
                ))
            })?;
            values.push(bind(name, value, ty).map_err(SourceError::Query)?);
        }
        let kinds: Vec<Kind> = statement
            .columns()
            .iter()
            .map(|c| Kind::of(c.name(), c.type_()))
            .collect::<Result<_, _>>()
            .map_err(SourceError::Query)?;
        let schema = Arc::new(Schema::new(
            statement
                .columns()
                .iter()
                .zip(&kinds)
                .map(|(c, k)| Field::new(c.name(), k.arrow(), true))
                .collect::<Vec<_>>(),
        ));
        let rows = client
            .query_raw(
                &statement,
                values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)),
            )
            .await
            .map_err(db("query"))?;
        let batch_schema = schema.clone();
        let batches = rows
            .chunks(BATCH_ROWS)
            .map(move |chunk| {
                // The stream owns the client: the connection lives while rows arrive.
                let _client = &client;
                let rows: Vec<Row> = chunk
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .map_err(db("reading rows"))?;
                to_batch(&batch_schema, &kinds, &rows)
            })
            .boxed();
        Ok(QueryResult { schema, batches })
    }
}

/// How a PostgreSQL column becomes an Arrow one.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Date,
    Timestamp,
    Timestamptz,
}

impl Kind {
    fn of(column: &str, ty: &Type) -> Result<Self, String> {
        Ok(match *ty {
            Type::BOOL => Kind::Bool,
            Type::INT2 => Kind::Int2,
            Type::INT4 => Kind::Int4,
            Type::INT8 => Kind::Int8,
            Type::FLOAT4 => Kind::Float4,
            Type::FLOAT8 => Kind::Float8,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Kind::Text,
            Type::DATE => Kind::Date,
            Type::TIMESTAMP => Kind::Timestamp,
            Type::TIMESTAMPTZ => Kind::Timestamptz,
            _ => {
                return Err(format!(
                    "column `{column}` has type {ty}, which extract does not read; cast it in the SQL (e.g. `{column}::float8`, `::bigint` or `::text`)"
                ));
            }
        })
    }

    fn arrow(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int2 | Kind::Int4 => DataType::Int32,
            Kind::Int8 => DataType::Int64,
            Kind::Float4 => DataType::Float32,
            Kind::Float8 => DataType::Float64,
            Kind::Text => DataType::Utf8,
            Kind::Date => DataType::Date32,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

fn to_batch(
    schema: &Arc<Schema>,
    kinds: &[Kind],
    rows: &[Row],
) -> Result<RecordBatch, SourceError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        let bad = |e: tokio_postgres::Error| {
            SourceError::Query(format!("column `{}`: {e}", schema.field(i).name()))
        };
        fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
            rows: &'a [Row],
            i: usize,
        ) -> Result<Vec<Option<T>>, tokio_postgres::Error> {
            rows.iter().map(|r| r.try_get::<_, Option<T>>(i)).collect()
        }
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
        let array: ArrayRef = match kind {
            Kind::Bool => Arc::new(BooleanArray::from(get::<bool>(rows, i).map_err(bad)?)),
            Kind::Int2 => Arc::new(Int32Array::from_iter(
                get::<i16>(rows, i)
                    .map_err(bad)?
                    .into_iter()
                    .map(|v| v.map(i32::from)),
            )),
            Kind::Int4 => Arc::new(Int32Array::from(get::<i32>(rows, i).map_err(bad)?)),
            Kind::Int8 => Arc::new(Int64Array::from(get::<i64>(rows, i).map_err(bad)?)),
            Kind::Float4 => Arc::new(Float32Array::from(get::<f32>(rows, i).map_err(bad)?)),
            Kind::Float8 => Arc::new(Float64Array::from(get::<f64>(rows, i).map_err(bad)?)),
            Kind::Text => Arc::new(StringArray::from(get::<&str>(rows, i).map_err(bad)?)),
            Kind::Date => Arc::new(Date32Array::from_iter(
                get::<NaiveDate>(rows, i)
                    .map_err(bad)?
                    .into_iter()
                    .map(|d| d.map(|d| (d - epoch).num_days() as i32)),
            )),
            Kind::Timestamp => Arc::new(TimestampMicrosecondArray::from_iter(
                get::<NaiveDateTime>(rows, i)
                    .map_err(bad)?
                    .into_iter()
                    .map(|t| t.map(|t| t.and_utc().timestamp_micros())),
            )),
            Kind::Timestamptz => Arc::new(
                TimestampMicrosecondArray::from_iter(
                    get::<DateTime<Utc>>(rows, i)
                        .map_err(bad)?
                        .into_iter()
                        .map(|t| t.map(|t| t.timestamp_micros())),
                )
                .with_timezone("UTC"),
            ),
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| SourceError::Query(format!("cannot build a batch: {e}")))
}

/// `value` as the type the server inferred for parameter `name`.
fn bind(name: &str, value: &ParamValue, ty: &Type) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    let mismatch = || {
        format!(
            "parameter `${name}`: PostgreSQL expects {ty} here, and {value:?} does not fit; cast it in the SQL (e.g. `${name}::bigint`)"
        )
    };
    Ok(match (value, ty) {
        (ParamValue::Bool(b), &Type::BOOL) => Box::new(*b),
        (ParamValue::Int(i), &Type::INT8) => Box::new(*i),
        (ParamValue::Int(i), &Type::INT4) => Box::new(i32::try_from(*i).map_err(|_| mismatch())?),
        (ParamValue::Int(i), &Type::INT2) => Box::new(i16::try_from(*i).map_err(|_| mismatch())?),
        (ParamValue::Int(i), &Type::FLOAT8) => Box::new(*i as f64),
        (ParamValue::Int(i), &Type::FLOAT4) => Box::new(*i as f32),
        (ParamValue::Float(f), &Type::FLOAT8) => Box::new(*f),
        (ParamValue::Float(f), &Type::FLOAT4) => Box::new(*f as f32),
        (ParamValue::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
            Box::new(s.clone())
        }
        (ParamValue::Text(s), &Type::TIMESTAMPTZ) => Box::new(
            DateTime::parse_from_rfc3339(s)
                .map_err(|_| mismatch())?
                .with_timezone(&Utc),
        ),
        (ParamValue::Text(s), &Type::TIMESTAMP) => Box::new(
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.naive_utc())
                .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
                .map_err(|_| mismatch())?,
        ),
        (ParamValue::Text(s), &Type::DATE) => Box::new(
            NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d")
                .map_err(|_| mismatch())?,
        ),
        _ => return Err(mismatch()),
    })
}

/// `sql` with each `$name` replaced by `$1`, `$2` … in order of first use, and
/// the names in that order. Text inside quotes, comments and dollar quotes is
/// left alone; PostgreSQL's own `$1` is refused so the two styles do not mix.
fn positional(sql: &str) -> Result<(String, Vec<String>), String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut names: Vec<String> = Vec::new();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let quote = b[i];
                // E'…' strings escape with backslashes.
                let backslash = quote == b'\'' && i > 0 && b[i - 1].eq_ignore_ascii_case(&b'e');
                i += 1;
                while i < b.len() {
                    if backslash && b[i] == b'\\' {
                        i += 2;
                    } else if b[i] == quote {
                        i += 1;
                        // A doubled quote is one quote character.
                        if b.get(i) != Some(&quote) {
                            break;
                        }
                        i += 1;
                    } else {
                        i += 1;
                    }
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                let start = i;
                let mut j = i + 1;
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                let word = &sql[start + 1..j];
                if b.get(j) == Some(&b'$') && !word.starts_with(|c: char| c.is_ascii_digit()) {
                    // A dollar quote: skip to the same tag.
                    let tag = &sql[start..=j];
                    i = match sql[j + 1..].find(tag) {
                        Some(end) => j + 1 + end + tag.len(),
                        None => b.len(),
                    };
                } else if word.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(format!(
                        "`${word}`: write named parameters (`$days`), not positional ones"
                    ));
                } else if word.is_empty() {
                    i = j;
                } else {
                    let index = match names.iter().position(|n| n == word) {
                        Some(p) => p + 1,
                        None => {
                            names.push(word.to_string());
                            names.len()
                        }
                    };
                    out.push_str(&sql[copied..start]);
                    out.push_str(&format!("${index}"));
                    copied = j;
                    i = j;
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok((out, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_become_positional_outside_quotes_and_comments() {
        let sql = "SELECT '$no', \"$no\", E'\\'$no', $$ $no $$, $t$ $no $t$ -- $no\n\
                   /* $no /* $no */ */ FROM x WHERE a = $days AND b = $run_id::text AND c > $days";
        let (out, names) = positional(sql).expect("valid");
        assert_eq!(names, vec!["days", "run_id"]);
        assert!(
            out.ends_with("WHERE a = $1 AND b = $2::text AND c > $1"),
            "{out}"
        );
        assert_eq!(out.matches("$no").count(), 8, "{out}");
    }

    #[test]
    fn positional_parameters_are_refused() {
        let err = positional("SELECT * FROM x WHERE a = $1").expect_err("refused");
        assert!(err.contains("named parameters"), "{err}");
    }

    #[test]
    fn values_bind_to_the_inferred_type_or_say_what_to_cast() {
        assert!(bind("days", &ParamValue::Int(90), &Type::INT4).is_ok());
        assert!(
            bind(
                "day",
                &ParamValue::Text("2026-11-28T04:00:00+00:00".into()),
                &Type::DATE
            )
            .is_ok()
        );
        let err = bind("days", &ParamValue::Int(1 << 40), &Type::INT4).expect_err("too large");
        assert!(err.contains("`$days::bigint`"), "{err}");
        assert!(bind("x", &ParamValue::Text("a".into()), &Type::INT8).is_err());
    }
}
