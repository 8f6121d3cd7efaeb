//! The embedded default source: DataFusion SQL over local Parquet and CSV files,
//! so a pipeline runs on a laptop with no warehouse account.
//!
//! A fresh session is made per query, so files that changed between runs are
//! listed again. Named parameters (`$days`) are bound with DataFusion's
//! `with_param_values`, which substitutes typed literals in the plan, never text.

use std::collections::BTreeMap;

use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use super::{QueryResult, Source, SourceError};
use crate::config::pipeline::ParamValue;
use crate::config::settings::{DataFusionSourceConfig, FileFormat, TableFileConfig};

#[derive(Debug, Clone)]
pub struct DataFusionSource {
    config: DataFusionSourceConfig,
}

impl DataFusionSource {
    pub fn new(config: DataFusionSourceConfig) -> Self {
        Self { config }
    }

    /// Every configured table can be registered (its files exist and are readable).
    pub async fn healthcheck(&self) -> Result<(), SourceError> {
        self.context().await.map(|_| ())
    }

    async fn context(&self) -> Result<SessionContext, SourceError> {
        // Two partitions match the machine we size for and keep memory modest.
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        for (name, table) in &self.config.tables {
            register(&ctx, name, table).await?;
        }
        Ok(ctx)
    }
}

async fn register(
    ctx: &SessionContext,
    name: &str,
    table: &TableFileConfig,
) -> Result<(), SourceError> {
    let path = table.path.to_string_lossy();
    let format = table.format.unwrap_or_else(|| {
        if path.ends_with(".csv") || path.ends_with(".csv.gz") {
            FileFormat::Csv
        } else {
            FileFormat::Parquet
        }
    });
    let result = match format {
        FileFormat::Parquet => {
            ctx.register_parquet(name, path.as_ref(), ParquetReadOptions::default())
                .await
        }
        FileFormat::Csv => {
            ctx.register_csv(name, path.as_ref(), CsvReadOptions::new())
                .await
        }
    };
    result.map_err(|e| SourceError::Table {
        table: name.to_string(),
        message: format!(
            "cannot register {}: {}",
            table.path.display(),
            first_line(&e)
        ),
    })
}

impl Source for DataFusionSource {
    async fn query(
        &self,
        sql: &str,
        params: &BTreeMap<String, ParamValue>,
    ) -> Result<QueryResult, SourceError> {
        let ctx = self.context().await?;
        let values: Vec<(String, ScalarValue)> =
            params.iter().map(|(k, v)| (k.clone(), scalar(v))).collect();
        let frame = ctx.sql(sql).await.map_err(query_error)?;
        let frame = if values.is_empty() {
            frame
        } else {
            frame.with_param_values(values).map_err(query_error)?
        };
        let stream = frame.execute_stream().await.map_err(query_error)?;
        let schema = stream.schema();
        let batches = stream.map(|b| b.map_err(query_error)).boxed();
        Ok(QueryResult { schema, batches })
    }
}

fn scalar(v: &ParamValue) -> ScalarValue {
    match v {
        ParamValue::Bool(b) => ScalarValue::Boolean(Some(*b)),
        ParamValue::Int(i) => ScalarValue::Int64(Some(*i)),
        ParamValue::Float(f) => ScalarValue::Float64(Some(*f)),
        ParamValue::Text(s) => ScalarValue::Utf8(Some(s.clone())),
    }
}

fn query_error(e: DataFusionError) -> SourceError {
    match e {
        DataFusionError::IoError(io) => SourceError::Io(io.to_string()),
        DataFusionError::ObjectStore(os) => SourceError::Io(os.to_string()),
        other => SourceError::Query(first_line(&other)),
    }
}

/// DataFusion errors can carry long backtraces and plans; the first line says it.
fn first_line(e: &DataFusionError) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or_default().to_string()
}
