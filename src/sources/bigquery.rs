//! BigQuery as an extract source (the warehouse in production), through
//! gcp-bigquery-client: a query job with named parameters (`@days`, bound with
//! their types, never pasted), its result paged with `jobs.getQueryResults` into
//! Arrow batches, one page in memory at a time.
//!
//! gcp-bigquery-client has no Storage Read API (it ships only the generated gRPC
//! stubs, on a fixed Google endpoint), so results come over the REST pages; that
//! is slower for very large results (tens of millions of rows), which the
//! warehouse should aggregate before extract anyway.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset_reference::DatasetReference;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::query_parameter::QueryParameter;
use gcp_bigquery_client::model::query_parameter_type::QueryParameterType;
use gcp_bigquery_client::model::query_parameter_value::QueryParameterValue;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table_row::TableRow;
use gcp_bigquery_client::model::table_schema::TableSchema;

use super::{Params, QueryResult, Source, SourceError};
use crate::bqconn::Access;
use crate::config::settings::BigQueryConfig;
use crate::sources::ParamValue;

#[derive(Debug, Clone)]
pub struct BigQuerySource {
    config: BigQueryConfig,
}

/// What one query returned first: its schema, rows, and where the rest is.
struct FirstPage {
    schema: Option<TableSchema>,
    rows: Vec<TableRow>,
    job_id: Option<String>,
    page_token: Option<String>,
    bytes_processed: u64,
}

impl BigQuerySource {
    pub fn new(config: BigQueryConfig) -> Self {
        Self { config }
    }

    /// A client with the configured credentials, or for the emulator.
    async fn client(&self) -> Result<Client, SourceError> {
        let access = Access::new(
            self.config.endpoint.as_deref(),
            self.config.key_file.as_deref(),
        )
        .await
        .map_err(SourceError::Io)?;
        access.client().await.map_err(SourceError::Io)
    }

    async fn first_page(
        &self,
        client: &Client,
        sql: &str,
        params: &BTreeMap<String, ParamValue>,
        dry_run: bool,
    ) -> Result<FirstPage, SourceError> {
        let names = parameter_names(sql);
        let mut query_parameters = Vec::with_capacity(names.len());
        for name in names {
            let value = params.get(&name).ok_or_else(|| {
                SourceError::Query(format!(
                    "parameter `@{name}` is not set (the step's `params`, or run_id / logical_date)"
                ))
            })?;
            query_parameters.push(parameter(&name, value));
        }
        let request = QueryRequest {
            query: sql.to_string(),
            use_legacy_sql: false,
            parameter_mode: Some("NAMED".into()),
            query_parameters: Some(query_parameters),
            default_dataset: self.config.dataset.as_ref().map(|d| DatasetReference {
                dataset_id: d.clone(),
                project_id: self.config.project.clone(),
            }),
            location: self.config.location.clone(),
            max_results: Some(self.config.page_size as i32),
            maximum_bytes_billed: self.config.maximum_bytes_billed.map(|b| b.to_string()),
            dry_run: Some(dry_run),
            ..Default::default()
        };
        let response = client
            .job()
            .query(&self.config.project, request)
            .await
            .map_err(bq_error)?;
        // Some servers answer a failed query with 200 and the errors in the body.
        failed(response.errors.as_deref())?;
        let job_id = response.job_reference.and_then(|j| j.job_id);
        let mut page = FirstPage {
            schema: response.schema,
            rows: response.rows.unwrap_or_default(),
            job_id,
            page_token: response.page_token,
            bytes_processed: response
                .total_bytes_processed
                .and_then(|b| b.parse().ok())
                .unwrap_or(0),
        };
        if response.job_complete == Some(false) && !dry_run {
            // A long query: wait for it through getQueryResults.
            let job_id = page
                .job_id
                .clone()
                .ok_or_else(|| SourceError::Query("the query job has no id".into()))?;
            loop {
                let next = client
                    .job()
                    .get_query_results(&self.config.project, &job_id, self.page_parameters(None))
                    .await
                    .map_err(bq_error)?;
                failed(next.errors.as_deref())?;
                if next.job_complete != Some(false) {
                    page.schema = next.schema;
                    page.rows = next.rows.unwrap_or_default();
                    page.page_token = next.page_token;
                    break;
                }
            }
        }
        Ok(page)
    }

    fn page_parameters(&self, page_token: Option<String>) -> GetQueryResultsParameters {
        GetQueryResultsParameters {
            location: self.config.location.clone(),
            max_results: Some(self.config.page_size as i32),
            page_token,
            timeout_ms: Some(10_000),
            ..Default::default()
        }
    }

    /// Reaches the service and dry-runs `sql`; returns the bytes it would scan.
    pub async fn dry_run(
        &self,
        sql: &str,
        params: &BTreeMap<String, ParamValue>,
    ) -> Result<u64, SourceError> {
        let client = self.client().await?;
        Ok(self
            .first_page(&client, sql, params, true)
            .await?
            .bytes_processed)
    }
}

impl Source for BigQuerySource {
    async fn query(&self, sql: &str, params: &Params) -> Result<QueryResult, SourceError> {
        let client = self.client().await?;
        let first = self.first_page(&client, sql, params, false).await?;
        let columns = Column::all(first.schema.as_ref())?;
        let schema: SchemaRef = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name, c.kind.arrow(), true))
                .collect::<Vec<_>>(),
        ));
        let source = self.clone();
        let batch_schema = schema.clone();
        // State: rows not yet sent, and the token of the page after them.
        let state = Some((first.rows, first.page_token));
        let job_id = first.job_id;
        let batches = futures::stream::unfold(state, move |state| {
            let (client, source, schema, columns, job_id) = (
                client.clone(),
                source.clone(),
                batch_schema.clone(),
                columns.clone(),
                job_id.clone(),
            );
            async move {
                let (mut rows, mut token) = state?;
                // Pages can be empty while more follow.
                while rows.is_empty() {
                    let (Some(t), Some(job)) = (token.take(), job_id.as_ref()) else {
                        return None;
                    };
                    let page = client
                        .job()
                        .get_query_results(
                            &source.config.project,
                            job,
                            source.page_parameters(Some(t)),
                        )
                        .await
                        .map_err(bq_error)
                        .and_then(|p| failed(p.errors.as_deref()).map(|_| p));
                    match page {
                        Ok(p) => {
                            rows = p.rows.unwrap_or_default();
                            token = p.page_token;
                        }
                        Err(e) => return Some((Err(e), None)),
                    }
                }
                let batch = to_batch(&schema, &columns, &rows);
                Some((batch, Some((Vec::new(), token))))
            }
        });
        Ok(QueryResult {
            schema,
            batches: Box::pin(batches),
        })
    }
}

fn bq_error(e: BQError) -> SourceError {
    match e {
        BQError::ResponseError { error } => SourceError::Query(format!(
            "BigQuery: {} (HTTP {})",
            error.error.message, error.error.code
        )),
        other => SourceError::Io(format!("BigQuery: {other}")),
    }
}

fn failed(errors: Option<&[ErrorProto]>) -> Result<(), SourceError> {
    match errors.and_then(|e| e.first()) {
        Some(e) => Err(SourceError::Query(format!(
            "BigQuery: {} ({})",
            e.message.as_deref().unwrap_or("query failed"),
            e.reason.as_deref().unwrap_or("error")
        ))),
        None => Ok(()),
    }
}

/// A named parameter with its BigQuery type.
fn parameter(name: &str, value: &ParamValue) -> QueryParameter {
    let (ty, text) = match value {
        ParamValue::Bool(b) => ("BOOL", b.to_string()),
        ParamValue::Int(i) => ("INT64", i.to_string()),
        ParamValue::Float(f) => ("FLOAT64", f.to_string()),
        ParamValue::Text(s) => ("STRING", s.clone()),
    };
    QueryParameter {
        name: Some(name.to_string()),
        parameter_type: Some(QueryParameterType {
            r#type: ty.into(),
            ..Default::default()
        }),
        parameter_value: Some(QueryParameterValue {
            value: Some(text),
            ..Default::default()
        }),
    }
}

/// The `@name` parameters of `sql` in order of first use, outside strings,
/// quoted names and comments (GoogleSQL's lexical rules).
fn parameter_names(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                // Triple-quoted strings run to the same three quotes.
                let triple = q != b'`' && b[i..].starts_with(&[q, q, q]);
                i += if triple { 3 } else { 1 };
                while i < b.len() {
                    if b[i] == b'\\' {
                        i += 2;
                    } else if triple && b[i..].starts_with(&[q, q, q]) {
                        i += 3;
                        break;
                    } else if !triple && b[i] == q {
                        i += 1;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            }
            // `@@` starts a system variable.
            b'@' if b.get(i + 1) == Some(&b'@') => i += 2,
            b'@' => {
                let mut j = i + 1;
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                let name = &sql[i + 1..j];
                if !name.is_empty() && !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
                i = j.max(i + 1);
            }
            _ => i += 1,
        }
    }
    names
}

/// How a BigQuery column becomes an Arrow one.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Float,
    Text,
    Bool,
    Timestamp,
    Date,
}

impl Kind {
    fn arrow(self) -> DataType {
        match self {
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Text => DataType::Utf8,
            Kind::Bool => DataType::Boolean,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Date => DataType::Date32,
        }
    }
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: Kind,
}

impl Column {
    fn all(schema: Option<&TableSchema>) -> Result<Vec<Column>, SourceError> {
        let fields = schema.and_then(|s| s.fields.as_ref()).ok_or_else(|| {
            SourceError::Query("BigQuery returned no schema for the query".into())
        })?;
        fields
            .iter()
            .map(|f| {
                let cast = |to: &str| {
                    SourceError::Query(format!(
                        "column `{}` has type {:?}, which extract does not read; cast it in the SQL (e.g. `CAST({} AS {to})`)",
                        f.name, f.r#type, f.name
                    ))
                };
                if f.mode.as_deref() == Some("REPEATED") {
                    return Err(SourceError::Query(format!(
                        "column `{}` is an array; UNNEST it in the SQL",
                        f.name
                    )));
                }
                let kind = match f.r#type {
                    FieldType::Integer | FieldType::Int64 => Kind::Int,
                    FieldType::Float | FieldType::Float64 => Kind::Float,
                    FieldType::String => Kind::Text,
                    FieldType::Boolean | FieldType::Bool => Kind::Bool,
                    FieldType::Timestamp => Kind::Timestamp,
                    FieldType::Date => Kind::Date,
                    FieldType::Numeric | FieldType::Bignumeric => return Err(cast("FLOAT64")),
                    _ => return Err(cast("STRING")),
                };
                Ok(Column {
                    name: f.name.clone(),
                    kind,
                })
            })
            .collect()
    }
}

/// One page of REST rows as a batch. Values arrive as JSON strings (`"42"`,
/// `"1.5"`, `"true"`); timestamps as seconds (`"1.7e9"`) or, from some
/// servers, microseconds.
fn to_batch(
    schema: &SchemaRef,
    columns: &[Column],
    rows: &[TableRow],
) -> Result<RecordBatch, SourceError> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (i, column) in columns.iter().enumerate() {
        let texts = rows.iter().map(|r| {
            r.columns
                .as_ref()
                .and_then(|c| c.get(i))
                .and_then(|cell| cell.value.as_ref())
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                })
        });
        let bad = |text: &str| {
            SourceError::Query(format!(
                "column `{}`: BigQuery sent `{text}`, not a {:?} value",
                column.name, column.kind
            ))
        };
        let array: ArrayRef = match column.kind {
            Kind::Text => {
                let mut b = StringBuilder::new();
                texts.for_each(|t| b.append_option(t));
                Arc::new(b.finish())
            }
            Kind::Int => {
                let mut b = Int64Builder::new();
                for t in texts {
                    b.append_option(t.map(|t| t.parse().map_err(|_| bad(&t))).transpose()?);
                }
                Arc::new(b.finish())
            }
            Kind::Float => {
                let mut b = Float64Builder::new();
                for t in texts {
                    b.append_option(t.map(|t| t.parse().map_err(|_| bad(&t))).transpose()?);
                }
                Arc::new(b.finish())
            }
            Kind::Bool => {
                let mut b = BooleanBuilder::new();
                for t in texts {
                    b.append_option(
                        t.map(|t| t.to_ascii_lowercase().parse().map_err(|_| bad(&t)))
                            .transpose()?,
                    );
                }
                Arc::new(b.finish())
            }
            Kind::Timestamp => {
                let mut b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
                for t in texts {
                    b.append_option(
                        t.map(|t| timestamp_micros(&t).ok_or_else(|| bad(&t)))
                            .transpose()?,
                    );
                }
                Arc::new(b.finish())
            }
            Kind::Date => {
                let mut b = Date32Builder::new();
                for t in texts {
                    b.append_option(
                        t.map(|t| {
                            NaiveDate::parse_from_str(&t, "%Y-%m-%d")
                                .map(|d| (d - epoch).num_days() as i32)
                                .map_err(|_| bad(&t))
                        })
                        .transpose()?,
                    );
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| SourceError::Query(format!("cannot build a batch: {e}")))
}

/// BigQuery's REST form of a timestamp: seconds since the epoch as a decimal
/// (`"1793491200.5"`, `"1.7934912E9"`), or an integer count of microseconds.
fn timestamp_micros(text: &str) -> Option<i64> {
    if !text.contains(['.', 'e', 'E'])
        && let Ok(n) = text.parse::<i64>()
        // Integers this large are microseconds: seconds would be past year 5000.
        && n.abs() > 100_000_000_000
    {
        return Some(n);
    }
    let seconds: f64 = text.parse().ok()?;
    Some((seconds * 1e6).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_found_outside_strings_and_comments() {
        let sql = "SELECT '@no', \"@no\", `@no`, '''@no''', r'\\'@no' -- @no\n# @no\n/* @no */ \
                   FROM t WHERE a = @days AND @@time_zone = 'x' AND b = @run_id AND c > @days";
        assert_eq!(parameter_names(sql), vec!["days", "run_id"]);
    }

    #[test]
    fn rest_timestamps_in_seconds_or_microseconds() {
        assert_eq!(
            timestamp_micros("1793491200.5"),
            Some(1_793_491_200_500_000)
        );
        assert_eq!(timestamp_micros("1.7934912E9"), Some(1_793_491_200_000_000));
        assert_eq!(timestamp_micros("1793491200"), Some(1_793_491_200_000_000));
        assert_eq!(
            timestamp_micros("1793491200000000"),
            Some(1_793_491_200_000_000)
        );
        assert_eq!(timestamp_micros("soon"), None);
    }
}
