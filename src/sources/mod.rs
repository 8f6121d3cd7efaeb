//! Sources: where extract steps run their SQL. Each configured source is one
//! variant of [`AnySource`]; all return record batches as a stream.
//!
//! Invariant: query parameters are bound by the engine, never formatted into SQL.

pub mod bigquery;
pub mod datafusion;
pub mod postgres;

use std::collections::BTreeMap;
use std::pin::Pin;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::config::settings::SourceConfig;

/// A bound SQL parameter value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// Batches of a query result, in order.
pub type BatchStream = Pin<Box<dyn Stream<Item = Result<RecordBatch, SourceError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("query failed: {0}")]
    Query(String),
    #[error("table `{table}`: {message}")]
    Table { table: String, message: String },
    #[error("I/O error: {0}")]
    Io(String),
}

impl SourceError {
    /// Transient failures (I/O) are worth a retry; bad SQL is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Io(_))
    }
}

/// A query result: its schema, known before the first batch, and the batches.
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: BatchStream,
}

/// Query parameters by name, bound (never pasted into the SQL text).
pub type Params = BTreeMap<String, ParamValue>;

/// What every source can do.
pub trait Source {
    /// Runs `sql` with `params` bound by name.
    fn query(
        &self,
        sql: &str,
        params: &Params,
    ) -> impl Future<Output = Result<QueryResult, SourceError>> + Send;
}

/// A configured source, built from its settings.
#[derive(Debug, Clone)]
pub enum AnySource {
    DataFusion(datafusion::DataFusionSource),
    Postgres(postgres::PostgresSource),
    BigQuery(bigquery::BigQuerySource),
}

impl AnySource {
    pub fn from_config(config: &SourceConfig) -> Self {
        match config {
            SourceConfig::Datafusion(c) => {
                AnySource::DataFusion(datafusion::DataFusionSource::new(c.clone()))
            }
            SourceConfig::Postgres(c) => {
                AnySource::Postgres(postgres::PostgresSource::new(c.clone()))
            }
            SourceConfig::Bigquery(c) => {
                AnySource::BigQuery(bigquery::BigQuerySource::new(c.clone()))
            }
        }
    }

    pub async fn query(&self, sql: &str, params: &Params) -> Result<QueryResult, SourceError> {
        match self {
            AnySource::DataFusion(s) => s.query(sql, params).await,
            AnySource::Postgres(s) => s.query(sql, params).await,
            AnySource::BigQuery(s) => s.query(sql, params).await,
        }
    }

    /// After a query's reader panicked: the first local table file whose Parquet
    /// metadata does not read, with the reason (only the embedded engine has
    /// local files).
    pub fn unreadable_file(&self) -> Option<String> {
        match self {
            AnySource::DataFusion(s) => s.unreadable_file(),
            AnySource::Postgres(_) | AnySource::BigQuery(_) => None,
        }
    }

    /// Checks the source can be reached and its tables opened.
    pub async fn healthcheck(&self) -> Result<(), SourceError> {
        match self {
            AnySource::DataFusion(s) => s.healthcheck().await,
            AnySource::Postgres(s) => s.healthcheck().await,
            AnySource::BigQuery(s) => s.dry_run("SELECT 1", &BTreeMap::new()).await.map(|_| ()),
        }
    }
}

/// The runtime queries, and database sinks' writes, execute on. DataFusion does CPU work inside its async
/// operators; giving it its own threads keeps the daemon's runtime (health probes,
/// API) responsive while a large extract runs.
pub fn engine() -> &'static tokio::runtime::Runtime {
    static ENGINE: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("recpipe-sql")
            .enable_all()
            .build()
            .expect("cannot start the SQL engine runtime")
    })
}
