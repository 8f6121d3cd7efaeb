//! Sinks: the stores services read their lists from.
//!
//! Invariant: publishing is two phases. `write_staging` puts the complete new list
//! next to the current one, where no reader looks; `swap` makes it current in one
//! atomic step. A failure before or during either leaves the previous list current.
//!
//! A publish makes exactly its input current, or does nothing and says so
//! ([`Published::unchanged`]). Every sink records the SHA-256 of the file it
//! published next to the version (a file, a table comment, a label): doing nothing
//! is allowed only when the current version has the same run id *and* the same
//! content, i.e. an earlier attempt of the same publish whose result was lost. A
//! rerun whose list changed (an edited `top_n`, say) publishes the new list.
//! [`Published::rows`] is what a reader of the table now sees.
//!
//! A write step can publish several lists together ([`Sink::publish_group`]):
//! every list is staged before any is switched. PostgreSQL switches them all in
//! one transaction; the Parquet and BigQuery sinks switch one table after another,
//! each atomically (see their modules for what a reader can see in between).

pub mod bigquery;
pub mod object;
pub mod parquet;
pub mod postgres;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::settings::SinkConfig;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink `{sink}`: {message}")]
    Io { sink: String, message: String },
    /// The store refused the write (permissions, bad data): retrying cannot help.
    #[error("sink `{sink}`: {message}")]
    Rejected { sink: String, message: String },
    #[error("sink `{sink}`: failure point `{point}` armed")]
    FailPoint { sink: String, point: &'static str },
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Io { .. })
    }
}

/// Runs a database sink's async work to completion from the blocking thread the
/// write step runs on (`spawn_blocking`); the connection's I/O runs on the SQL
/// runtime. Retryable failures become `Io`, the rest `Rejected`.
fn block_on<T, E: ClientError>(
    sink: &str,
    work: impl Future<Output = Result<T, E>> + Send,
) -> Result<T, SinkError> {
    crate::sources::engine().block_on(work).map_err(|e| {
        let (sink, (message, retryable)) = (sink.to_string(), e.split());
        match retryable {
            true => SinkError::Io { sink, message },
            false => SinkError::Rejected { sink, message },
        }
    })
}

/// An error of a store's client.
trait ClientError {
    /// Its message, and whether a retry could help.
    fn split(self) -> (String, bool);
}

impl ClientError for crate::pgconn::PgError {
    fn split(self) -> (String, bool) {
        (self.message, self.retryable)
    }
}

/// A staged version, ready to swap in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub table: String,
    pub version: String,
    pub rows: u64,
    /// SHA-256 (hex) of the staged list file.
    pub sha256: String,
    /// The table already holds this version with this content: `swap` does nothing.
    pub unchanged: bool,
    /// Leftovers of crashed publishes removed while staging.
    pub pruned: Vec<String>,
    /// The version that was current when this was staged: a sink that can
    /// compare-and-swap its pointer switches only if it still is.
    #[serde(default)]
    pub replaces: Option<String>,
}

impl Staged {
    /// `table` staged as `version` with content `sha256`, once its rows, whether
    /// it was already there and what was pruned are known.
    fn of<'a>(
        table: &'a str,
        version: &'a str,
        sha256: &'a str,
    ) -> impl Fn(u64, bool, Vec<String>) -> Staged + 'a {
        move |rows, unchanged, pruned| Staged {
            table: table.to_string(),
            version: version.to_string(),
            rows,
            sha256: sha256.to_string(),
            unchanged,
            pruned,
            replaces: None,
        }
    }
}

/// Where a published list now lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub table: String,
    pub version: String,
    pub rows: u64,
    /// Where a reader finds the current list (path or table name).
    pub location: String,
    /// Versions (or leftover staging tables) removed while publishing.
    pub pruned: Vec<String>,
    /// SHA-256 (hex) of the published list file, as recorded by the sink.
    #[serde(default)]
    pub sha256: String,
    /// Nothing was done: the table already held this version with this content.
    #[serde(default)]
    pub unchanged: bool,
}

/// One list of a publish: the table it becomes and its Parquet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFile {
    pub table: String,
    pub input: PathBuf,
}

/// What a sink's operations end with.
pub type SinkResult<T> = Result<T, SinkError>;

/// What every sink does.
pub trait Sink {
    /// Checks the store is reachable and writable.
    fn healthcheck(&self) -> Result<(), SinkError>;
    /// Stores the Parquet list at `input` as version `version` of `table`, not yet
    /// visible to readers. If the table's current version is `version` with the
    /// same content, nothing is staged and the result is marked `unchanged`.
    fn write_staging(&self, table: &str, version: &str, input: &Path) -> Result<Staged, SinkError>;
    /// Makes `staged` the current version of its table (nothing, if `unchanged`).
    fn swap(&self, staged: &Staged) -> Result<Published, SinkError>;
    /// Stages and swaps: the whole publish of one list.
    fn publish(&self, table: &str, version: &str, input: &Path) -> Result<Published, SinkError> {
        let staged = self.write_staging(table, version, input)?;
        self.swap(&staged)
    }
    /// Publishes several lists as one version: all are staged before any is
    /// switched, so a failure while staging changes no table. This default then
    /// switches the tables one after another (each atomically); a sink that can
    /// switch them in one step overrides it.
    fn publish_group(&self, lists: &[ListFile], version: &str) -> SinkResult<Vec<Published>> {
        let staged = lists
            .iter()
            .map(|l| self.write_staging(&l.table, version, &l.input))
            .collect::<Result<Vec<_>, _>>()?;
        staged.iter().map(|s| self.swap(s)).collect()
    }
    /// Makes the version before the current one current again; a second rollback
    /// undoes the first.
    fn rollback(&self, table: &str) -> Result<Published, SinkError>;
    /// Rolls back tables published together; by default one after another.
    fn rollback_group(&self, tables: &[String]) -> Result<Vec<Published>, SinkError> {
        tables.iter().map(|t| self.rollback(t)).collect()
    }
}

/// The error of a publish that lost the race for its table's pointer: another
/// publisher made `now` current after this one staged against `replaces`.
fn lost_race(sink: &str, staged: &Staged, now: Option<&str>) -> SinkError {
    SinkError::Rejected {
        sink: sink.to_string(),
        message: format!(
            "table `{}`: another publisher made `{}` current after this publish read `{}`; not switched (publish again if this list should win)",
            staged.table,
            now.unwrap_or("nothing"),
            staged.replaces.as_deref().unwrap_or("nothing"),
        ),
    }
}

/// SHA-256 (hex) of the list file at `path`: what "the same content" means.
fn sha256_of(sink: &str, path: &Path) -> Result<String, SinkError> {
    crate::artifact::describe(path)
        .map(|entry| entry.sha256)
        .map_err(|e| SinkError::Rejected {
            sink: sink.to_string(),
            message: format!("cannot read list: {e}"),
        })
}

/// A configured sink, built from its settings.
#[derive(Debug, Clone)]
pub enum AnySink {
    Parquet(parquet::ParquetSink),
    /// The Parquet sink with its `path` in S3 or GCS.
    ObjectParquet(object::ObjectParquetSink),
    Postgres(postgres::PostgresSink),
    BigQuery(bigquery::BigQuerySink),
}

impl AnySink {
    pub fn from_config(name: &str, config: &SinkConfig) -> Self {
        match config {
            SinkConfig::Parquet(c) if crate::store::is_url(&c.path.to_string_lossy()) => {
                AnySink::ObjectParquet(object::ObjectParquetSink::new(name, c))
            }
            SinkConfig::Parquet(c) => AnySink::Parquet(parquet::ParquetSink::new(name, c.clone())),
            SinkConfig::Postgres(c) => {
                AnySink::Postgres(postgres::PostgresSink::new(name, c.clone()))
            }
            SinkConfig::Bigquery(c) => {
                AnySink::BigQuery(bigquery::BigQuerySink::new(name, c.clone()))
            }
        }
    }

    /// The sink behind the enum. Its methods block (files, or a database from the
    /// SQL runtime): call them outside async code, e.g. in `spawn_blocking`.
    pub fn get(&self) -> &dyn Sink {
        match self {
            AnySink::Parquet(s) => s,
            AnySink::ObjectParquet(s) => s,
            AnySink::Postgres(s) => s,
            AnySink::BigQuery(s) => s,
        }
    }
}
