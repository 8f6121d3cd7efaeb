//! The PostgreSQL sink: a list becomes a table in the sink's schema, swapped in by
//! rename so a service querying it sees the old list or the new one.
//!
//! Publishing `<table>` for run `r`, on one connection holding an advisory lock
//! for the table (so two runs never publish it at once):
//! 1. if the table's comment names run `r` and the SHA-256 of this very list,
//!    an earlier attempt already published it: nothing is done (`unchanged`);
//! 2. drop leftover `<table>__staging_*` tables of crashed runs;
//! 3. in one transaction, create `<table>__staging_<r>`, binary `COPY` the rows,
//!    index it (first column, rank), analyze it and record the run, the row count
//!    and the list's SHA-256 in its comment;
//! 4. in one transaction, drop `<table>__prev`, rename `<table>` to `<table>__prev`
//!    and the staging table to `<table>`.
//!
//! Readers blocked on the rename's lock resolve the name again once it commits,
//! so they read the new table, never a missing one. A failure before step 4
//! commits leaves `<table>` as it was. `rollback` swaps `<table>__prev` back.
//!
//! Several tables published together (`publish_group`, a write step with
//! `tables`) take every table's lock (in name order, so two groups cannot
//! deadlock), stage every changed table, then rename them all in *one*
//! transaction: a query, even one joining the tables, sees every table of the
//! old run or every table of the new one. `rollback_group` swaps them back in one
//! transaction too.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int32Type, Int64Type, Schema, TimeUnit,
    TimestampMicrosecondType,
};
use bytes::{BufMut, BytesMut};
use futures::SinkExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio_postgres::{Client, GenericClient};

use super::{ListFile, Published, Sink, SinkError, SinkResult, Staged};
use crate::config::settings::{PostgresConfig, is_pg_identifier};
use crate::failpoint;
use crate::pgconn::{PgError, Target, qualified};

const PREV: &str = "__prev";
const STAGING: &str = "__staging_";
/// Memory for sorting the index of a staged table (5M rows need about 250 MB).
const INDEX_SORT_MEMORY: &str = "512MB";
/// Bytes of COPY data sent per message.
const CHUNK: usize = 1 << 20;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, Clone)]
pub struct PostgresSink {
    name: String,
    config: PostgresConfig,
}

impl PostgresSink {
    pub fn new(name: &str, config: PostgresConfig) -> Self {
        Self {
            name: name.to_string(),
            config,
        }
    }

    /// A connection holding the publish lock of every table in `tables`.
    async fn connect(&self, tables: &[&str]) -> Result<(Target, Client), PgError> {
        for table in tables {
            if !is_pg_identifier(table) || table.len() + STAGING.len() + 4 > 63 {
                return Err(PgError::new(format!(
                    "table `{table}`: PostgreSQL tables must be lowercase names of at most {} bytes",
                    63 - STAGING.len() - 4
                )));
            }
        }
        let target = Target::new(&self.config)?;
        let client = target.connect().await?;
        // One publisher per table: session locks, released if this process dies,
        // taken in one order so that two groups sharing tables cannot deadlock.
        let mut keys: Vec<i64> = tables
            .iter()
            .map(|t| lock_key(&self.config.schema, t))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            client
                .execute("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .map_err(|e| PgError::from_db("cannot take the table's publish lock", &e))?;
        }
        Ok((target, client))
    }

    /// Stages every list whose table does not already hold it, then switches the
    /// staged tables in one transaction. `sha256` is each list's content hash.
    async fn publish_group_async(
        &self,
        lists: &[(ListFile, String)],
        version: &str,
    ) -> Result<Vec<Published>, PgError> {
        let schema = &self.config.schema;
        let tables: Vec<&str> = lists.iter().map(|(l, _)| l.table.as_str()).collect();
        let (target, mut client) = self.connect(&tables).await?;
        let mut published = Vec::new();
        let mut switch = Vec::new();
        for (list, sha256) in lists {
            let table = list.table.as_str();
            // Published by an earlier attempt of this run whose result was lost.
            if let Some(rows) = holds(&client, schema, table, version, sha256).await? {
                published.push(self.published(table, version, rows, sha256, Vec::new(), true));
                continue;
            }
            let pruned = drop_leftovers(&client, schema, table).await?;
            let staging = staging_name(table, version);
            let rows = stage(
                &mut client,
                &target,
                schema,
                &staging,
                version,
                sha256,
                &list.input,
            )
            .await?;
            switch.push((staging, table));
            published.push(self.published(table, version, rows, sha256, pruned, false));
        }
        if switch.is_empty() {
            return Ok(published);
        }
        if failpoint::armed("postgres.before_swap") {
            return Err(PgError::new("failure point `postgres.before_swap` armed"));
        }
        swap(&mut client, schema, &switch).await?;
        Ok(published)
    }

    /// Swaps each table with its `__prev` in one transaction.
    async fn rollback_async(&self, tables: &[&str]) -> Result<Vec<Published>, PgError> {
        let schema = &self.config.schema;
        let (_, mut client) = self.connect(tables).await?;
        let mut sql = String::new();
        for table in tables {
            let prev = format!("{table}{PREV}");
            if recorded(&client, schema, table).await?.is_none() {
                return Err(PgError::new(format!(
                    "table `{schema}.{table}` has never been published by recpipe: nothing to roll back; publish a list first"
                )));
            }
            if recorded(&client, schema, &prev).await?.is_none() {
                return Err(PgError::new(format!(
                    "table `{schema}.{table}` has no previous version (`{schema}.{prev}`) to roll back to; a rollback needs two publishes"
                )));
            }
            let aside = format!("{table}__rollback");
            sql.push_str(&format!(
                "ALTER TABLE {} RENAME TO \"{aside}\";
                 ALTER TABLE {} RENAME TO \"{table}\";
                 ALTER TABLE {} RENAME TO \"{prev}\";",
                qualified(schema, table),
                qualified(schema, &prev),
                qualified(schema, &aside),
            ));
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| PgError::from_db("rollback", &e))?;
        tx.batch_execute(&sql)
            .await
            .map_err(|e| PgError::from_db("rollback", &e))?;
        tx.commit()
            .await
            .map_err(|e| PgError::from_db("rollback", &e))?;
        let mut published = Vec::new();
        for table in tables {
            let now = recorded(&client, schema, table).await?.unwrap_or_default();
            published.push(self.published(
                table,
                &now.run_id,
                now.rows,
                &now.sha256,
                Vec::new(),
                false,
            ));
        }
        Ok(published)
    }

    fn published(
        &self,
        table: &str,
        version: &str,
        rows: u64,
        sha256: &str,
        pruned: Vec<String>,
        unchanged: bool,
    ) -> Published {
        Published {
            table: table.to_string(),
            version: version.to_string(),
            rows,
            location: format!("{}.{table}", self.config.schema),
            pruned,
            sha256: sha256.to_string(),
            unchanged,
        }
    }
}

impl Sink for PostgresSink {
    fn healthcheck(&self) -> Result<(), SinkError> {
        super::block_on(&self.name, async {
            let target = Target::new(&self.config)?;
            let client = target.connect().await?;
            let row = client
                .query_one(
                    "SELECT has_schema_privilege(current_user, $1, 'CREATE')",
                    &[&self.config.schema],
                )
                .await
                .map_err(|e| PgError::from_db(&format!("schema `{}`", self.config.schema), &e))?;
            match row.get::<_, bool>(0) {
                true => Ok(()),
                false => Err(PgError::new(format!(
                    "{}: the user may not create tables in schema `{}`",
                    target.display, self.config.schema
                ))),
            }
        })
    }

    fn write_staging(&self, table: &str, version: &str, input: &Path) -> Result<Staged, SinkError> {
        let sha256 = super::sha256_of(&self.name, input)?;
        super::block_on(&self.name, async {
            let schema = &self.config.schema;
            let (target, mut client) = self.connect(&[table]).await?;
            let staged = Staged::of(table, version, &sha256);
            if let Some(rows) = holds(&client, schema, table, version, &sha256).await? {
                return Ok::<_, PgError>(staged(rows, true, Vec::new()));
            }
            let pruned = drop_leftovers(&client, schema, table).await?;
            let staging = staging_name(table, version);
            let rows = stage(
                &mut client,
                &target,
                schema,
                &staging,
                version,
                &sha256,
                input,
            )
            .await?;
            Ok(staged(rows, false, pruned))
        })
    }

    fn swap(&self, staged: &Staged) -> Result<Published, SinkError> {
        let (table, version) = (staged.table.as_str(), staged.version.as_str());
        let published = |pruned| {
            self.published(
                table,
                version,
                staged.rows,
                &staged.sha256,
                pruned,
                staged.unchanged,
            )
        };
        if staged.unchanged {
            return Ok(published(Vec::new()));
        }
        super::block_on(&self.name, async {
            let (_, mut client) = self.connect(&[table]).await?;
            let staging = staging_name(table, version);
            swap(&mut client, &self.config.schema, &[(staging, table)]).await?;
            Ok::<_, PgError>(published(staged.pruned.clone()))
        })
    }

    fn publish(&self, table: &str, version: &str, input: &Path) -> Result<Published, SinkError> {
        let list = ListFile {
            table: table.to_string(),
            input: input.to_path_buf(),
        };
        let mut published = self.publish_group(&[list], version)?;
        published.pop().ok_or_else(|| SinkError::Io {
            sink: self.name.clone(),
            message: "nothing was published".into(),
        })
    }

    fn publish_group(&self, lists: &[ListFile], version: &str) -> SinkResult<Vec<Published>> {
        let lists = lists
            .iter()
            .map(|l| Ok((l.clone(), super::sha256_of(&self.name, &l.input)?)))
            .collect::<Result<Vec<_>, SinkError>>()?;
        super::block_on(&self.name, self.publish_group_async(&lists, version))
    }

    fn rollback(&self, table: &str) -> Result<Published, SinkError> {
        let mut back = super::block_on(&self.name, self.rollback_async(&[table]))?;
        back.pop().ok_or_else(|| SinkError::Io {
            sink: self.name.clone(),
            message: "nothing was rolled back".into(),
        })
    }

    fn rollback_group(&self, tables: &[String]) -> Result<Vec<Published>, SinkError> {
        let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
        super::block_on(&self.name, self.rollback_async(&tables))
    }
}

/// The advisory lock key of `schema.table`: FNV-1a, stable across processes.
fn lock_key(schema: &str, table: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("recpipe:{schema}.{table}").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// `<table>__staging_<run>`, the run id cut to fit PostgreSQL's 63-byte names (the
/// name only needs to be unique among staging tables, and those of other runs are
/// dropped before one is created).
fn staging_name(table: &str, version: &str) -> String {
    let room = 63 - table.len() - STAGING.len();
    let run: String = version
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' => c,
            _ => '_',
        })
        .take(room)
        .collect();
    format!("{table}{STAGING}{run}")
}

/// What the comment of a table recpipe published records.
#[derive(Debug, Default, PartialEq, Eq)]
struct Recorded {
    run_id: String,
    rows: u64,
    /// Empty for tables published before the hash was recorded: never "the same".
    sha256: String,
}

/// The row count of `table` when it already holds list `sha256` of `version`.
async fn holds(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
    version: &str,
    sha256: &str,
) -> Result<Option<u64>, PgError> {
    Ok(recorded(client, schema, table)
        .await?
        .filter(|current| current.run_id == version && current.sha256 == sha256)
        .map(|current| current.rows))
}

/// What the comment of `schema.table` records, if it exists and recpipe
/// published it.
async fn recorded(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<Option<Recorded>, PgError> {
    let row = client
        .query_opt(
            "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r'",
            &[&schema, &table],
        )
        .await
        .map_err(|e| PgError::from_db(&format!("cannot read `{schema}.{table}`"), &e))?;
    let comment: Option<String> = row.and_then(|r| r.get(0));
    Ok(comment.and_then(|c| {
        let value: serde_json::Value = serde_json::from_str(&c).ok()?;
        Some(Recorded {
            run_id: value.get("recpipe_run_id")?.as_str()?.to_string(),
            rows: value.get("rows")?.as_u64()?,
            sha256: value
                .get("sha256")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string(),
        })
    }))
}

/// Drops the staging tables crashed runs left behind; returns their names.
async fn drop_leftovers(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, PgError> {
    let prefix = format!("{table}{STAGING}");
    let rows = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND starts_with(tablename, $2)
             ORDER BY tablename",
            &[&schema, &prefix],
        )
        .await
        .map_err(|e| PgError::from_db("cannot list staging tables", &e))?;
    let mut dropped = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {}",
                qualified(schema, &name)
            ))
            .await
            .map_err(|e| PgError::from_db(&format!("cannot drop leftover `{name}`"), &e))?;
        tracing::info!(table = %name, "dropped a staging table left by an earlier run");
        dropped.push(name);
    }
    Ok(dropped)
}

/// Creates, fills, indexes and analyzes `staging` from the Parquet list at
/// `input` in one transaction, so a failure leaves nothing behind; returns the
/// rows copied.
async fn stage(
    client: &mut Client,
    target: &Target,
    schema: &str,
    staging: &str,
    version: &str,
    sha256: &str,
    input: &Path,
) -> Result<u64, PgError> {
    let read_err = |e: &dyn std::fmt::Display| {
        PgError::new(format!("cannot read list {}: {e}", input.display()))
    };
    let file = File::open(input).map_err(|e| read_err(&e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| read_err(&e))?
        .with_batch_size(8192);
    let columns = Column::all(reader.schema())?;
    let reader = reader.build().map_err(|e| read_err(&e))?;
    let table = qualified(schema, staging);
    let db = |what: &str| {
        let what = format!("{what} `{schema}.{staging}`");
        move |e: tokio_postgres::Error| PgError::from_db(&what, &e)
    };
    let drop_in_copy = failpoint::armed("postgres.drop_connection_in_copy");
    let pid: i32 = match drop_in_copy {
        true => client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(db("cannot stage"))?
            .get(0),
        false => 0,
    };
    let started = std::time::Instant::now();
    let tx = client.transaction().await.map_err(db("cannot stage"))?;
    let definition: Vec<String> = columns.iter().map(Column::definition).collect();
    tx.batch_execute(&format!("CREATE TABLE {table} ({})", definition.join(", ")))
        .await
        .map_err(db("cannot create"))?;
    let copy = tx
        // FREEZE (allowed: the table is new in this transaction) writes the rows
        // as already visible to all, so the first readers do not rewrite every
        // page to set hint bits.
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN (FORMAT binary, FREEZE)"))
        .await
        .map_err(db("cannot copy into"))?;
    futures::pin_mut!(copy);
    let mut buf = BytesMut::with_capacity(2 * CHUNK);
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension length
    let mut sent = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| read_err(&e))?;
        encode(&columns, &batch, &mut buf)?;
        if buf.len() >= CHUNK {
            copy.send(buf.split().freeze())
                .await
                .map_err(db("cannot copy into"))?;
            sent += 1;
            if drop_in_copy && sent == 1 {
                // As if the network dropped: the server ends the session mid-COPY.
                let other = target.connect().await?;
                other
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|e| PgError::from_db("failure point", &e))?;
            }
        }
    }
    buf.put_i16(-1); // trailer
    copy.send(buf.freeze())
        .await
        .map_err(db("cannot copy into"))?;
    let rows = copy.finish().await.map_err(db("cannot copy into"))?;
    let copied = started.elapsed();
    if let Some(first) = columns.first() {
        let rank = columns.iter().any(|c| c.name == "rank");
        let key = match rank {
            true => format!("\"{}\", rank", first.name),
            false => format!("\"{}\"", first.name),
        };
        // A sort in memory rather than on disk, for this transaction only.
        tx.batch_execute(&format!(
            "SET LOCAL maintenance_work_mem = '{INDEX_SORT_MEMORY}';
             CREATE INDEX ON {table} ({key}); ANALYZE {table}"
        ))
        .await
        .map_err(db("cannot index"))?;
    }
    // COMMENT takes no parameters: the server quotes the text with format().
    let comment = serde_json::json!({ "recpipe_run_id": version, "rows": rows, "sha256": sha256 })
        .to_string();
    let sql: String = tx
        .query_one(
            "SELECT format('COMMENT ON TABLE %I.%I IS %L', $1::text, $2::text, $3::text)",
            &[&schema, &staging, &comment],
        )
        .await
        .map_err(db("cannot comment on"))?
        .get(0);
    tx.batch_execute(&sql)
        .await
        .map_err(db("cannot comment on"))?;
    tx.commit().await.map_err(db("cannot commit"))?;
    tracing::info!(
        table = %format!("{schema}.{staging}"),
        rows,
        copy_s = copied.as_secs_f64(),
        index_s = (started.elapsed() - copied).as_secs_f64(),
        "staged"
    );
    Ok(rows)
}

/// In one transaction, for every `(staging, table)`: `<table>__prev` dropped,
/// `<table>` becomes `<table>__prev`, `staging` becomes `<table>`. One commit
/// switches every table, so no query sees some switched and others not.
async fn swap(client: &mut Client, schema: &str, switch: &[(String, &str)]) -> Result<(), PgError> {
    let names: Vec<String> = switch
        .iter()
        .map(|(_, t)| format!("{schema}.{t}"))
        .collect();
    let what = format!("cannot swap `{}`", names.join("`, `"));
    let db = |e: tokio_postgres::Error| PgError::from_db(&what, &e);
    let mut sql = String::new();
    for (staging, table) in switch {
        let prev = format!("{table}{PREV}");
        sql.push_str(&format!(
            "DROP TABLE IF EXISTS {prev_q};
             ALTER TABLE IF EXISTS {table_q} RENAME TO \"{prev}\";
             ALTER TABLE {staging_q} RENAME TO \"{table}\";",
            prev_q = qualified(schema, &prev),
            table_q = qualified(schema, table),
            staging_q = qualified(schema, staging),
        ));
    }
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(&sql).await.map_err(db)?;
    tx.commit().await.map_err(db)
}

/// A list column and how it is sent to PostgreSQL.
struct Column {
    name: String,
    kind: Kind,
    nullable: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    Timestamp,
    Timestamptz,
}

impl Column {
    fn all(schema: &Schema) -> Result<Vec<Column>, PgError> {
        schema
            .fields()
            .iter()
            .map(|f| {
                let kind = match f.data_type() {
                    DataType::Utf8 => Kind::Text,
                    DataType::Int32 => Kind::Int4,
                    DataType::Int64 => Kind::Int8,
                    DataType::Float32 => Kind::Float4,
                    DataType::Float64 => Kind::Float8,
                    DataType::Boolean => Kind::Bool,
                    DataType::Timestamp(TimeUnit::Microsecond, None) => Kind::Timestamp,
                    DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => Kind::Timestamptz,
                    other => {
                        return Err(PgError::new(format!(
                            "column `{}`: {other} has no PostgreSQL mapping here",
                            f.name()
                        )));
                    }
                };
                if !is_pg_identifier(f.name()) {
                    return Err(PgError::new(format!(
                        "column `{}` is not a lowercase PostgreSQL name",
                        f.name()
                    )));
                }
                Ok(Column {
                    name: f.name().clone(),
                    kind,
                    nullable: f.is_nullable(),
                })
            })
            .collect()
    }

    fn definition(&self) -> String {
        let ty = match self.kind {
            Kind::Text => "text",
            Kind::Int4 => "integer",
            Kind::Int8 => "bigint",
            Kind::Float4 => "real",
            Kind::Float8 => "double precision",
            Kind::Bool => "boolean",
            Kind::Timestamp => "timestamp",
            Kind::Timestamptz => "timestamptz",
        };
        let null = if self.nullable { "" } else { " NOT NULL" };
        format!("\"{}\" {ty}{null}", self.name)
    }
}

/// Appends `batch` in PostgreSQL's binary COPY format: per row the field count,
/// then per field its byte length (−1 for NULL) and big-endian value.
fn encode(columns: &[Column], batch: &RecordBatch, buf: &mut BytesMut) -> Result<(), PgError> {
    let arrays = batch.columns();
    if arrays.len() != columns.len() {
        return Err(PgError::new(
            "a batch of the list does not match its schema",
        ));
    }
    for row in 0..batch.num_rows() {
        buf.put_i16(columns.len() as i16);
        for (column, array) in columns.iter().zip(arrays) {
            if array.is_null(row) {
                buf.put_i32(-1);
                continue;
            }
            // Each field is its length, then its bytes in network order.
            let field: &[u8] = match column.kind {
                Kind::Text => array.as_string::<i32>().value(row).as_bytes(),
                Kind::Int4 => &array.as_primitive::<Int32Type>().value(row).to_be_bytes(),
                Kind::Int8 => &array.as_primitive::<Int64Type>().value(row).to_be_bytes(),
                Kind::Float4 => &array.as_primitive::<Float32Type>().value(row).to_be_bytes(),
                Kind::Float8 => &array.as_primitive::<Float64Type>().value(row).to_be_bytes(),
                Kind::Bool => &[array.as_boolean().value(row) as u8],
                Kind::Timestamp | Kind::Timestamptz => {
                    let micros = array.as_primitive::<TimestampMicrosecondType>().value(row);
                    &(micros - PG_EPOCH_MICROS).to_be_bytes()
                }
            };
            buf.put_i32(field.len() as i32);
            buf.put_slice(field);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_fit_postgres_limits() {
        assert_eq!(
            staging_name("user_recs", "scheduled-20261128T040000Z"),
            "user_recs__staging_scheduled_20261128t040000z"
        );
        let long = "t".repeat(48);
        let name = staging_name(&long, "scheduled-20261128T040000Z");
        assert_eq!(name.len(), 63);
        assert!(name.starts_with(&format!("{long}{STAGING}sch")));
    }

    #[test]
    fn lock_keys_differ_per_table() {
        assert_ne!(lock_key("public", "a"), lock_key("public", "b"));
        assert_ne!(lock_key("public", "a"), lock_key("other", "a"));
        assert_eq!(lock_key("public", "a"), lock_key("public", "a"));
    }
}
