//! Sinks: the stores services read their lists from.
//!
//! Invariant: publishing is two phases. `write_staging` puts the complete new list
//! next to the current one, where no reader looks; `swap` makes it current in one
//! atomic step. A failure before or during either leaves the previous list current.

pub mod bigquery;
pub mod parquet;
pub mod postgres;

use std::path::Path;

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
/// runtime. `failure` gives an error's message and whether a retry could help:
/// retryable failures become `Io`, the rest `Rejected`.
fn block_on<T, E>(
    sink: &str,
    work: impl Future<Output = Result<T, E>> + Send,
    failure: impl FnOnce(E) -> (String, bool),
) -> Result<T, SinkError> {
    crate::sources::engine().block_on(work).map_err(|e| {
        let (sink, (message, retryable)) = (sink.to_string(), failure(e));
        match retryable {
            true => SinkError::Io { sink, message },
            false => SinkError::Rejected { sink, message },
        }
    })
}

/// A staged version, ready to swap in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub table: String,
    pub version: String,
    pub rows: u64,
}

/// Where a published list now lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub table: String,
    pub version: String,
    pub rows: u64,
    /// Where a reader finds the current list (path or table name).
    pub location: String,
    /// Versions removed because more than `keep_versions` were kept.
    pub pruned: Vec<String>,
}

/// What every sink does.
pub trait Sink {
    /// Checks the store is reachable and writable.
    fn healthcheck(&self) -> Result<(), SinkError>;
    /// Stores the Parquet list at `input` as version `version` of `table`, not yet
    /// visible to readers. Staging the same version again is a no-op.
    fn write_staging(&self, table: &str, version: &str, input: &Path) -> Result<Staged, SinkError>;
    /// Makes `staged` the current version of its table.
    fn swap(&self, staged: &Staged) -> Result<Published, SinkError>;
    /// Stages and swaps: the whole publish of one list.
    fn publish(&self, table: &str, version: &str, input: &Path) -> Result<Published, SinkError> {
        let staged = self.write_staging(table, version, input)?;
        self.swap(&staged)
    }
    /// Makes the version before the current one current again; a second rollback
    /// undoes the first.
    fn rollback(&self, table: &str) -> Result<Published, SinkError>;
}

/// A configured sink, built from its settings.
#[derive(Debug, Clone)]
pub enum AnySink {
    Parquet(parquet::ParquetSink),
    Postgres(postgres::PostgresSink),
    BigQuery(bigquery::BigQuerySink),
}

impl AnySink {
    pub fn from_config(name: &str, config: &SinkConfig) -> Self {
        match config {
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
            AnySink::Postgres(s) => s,
            AnySink::BigQuery(s) => s,
        }
    }
}
