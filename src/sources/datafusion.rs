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

    /// The first Parquet file of the configured tables whose metadata does not
    /// read, as `path: reason`. Reads footers only; a panic in the reader counts
    /// as unreadable too.
    pub fn unreadable_file(&self) -> Option<String> {
        for table in self.config.tables.values() {
            if table.format == Some(FileFormat::Csv) {
                continue;
            }
            for file in files_of(&table.path) {
                let check = std::panic::catch_unwind(|| -> Result<(), String> {
                    let f = std::fs::File::open(&file).map_err(|e| e.to_string())?;
                    parquet::file::reader::SerializedFileReader::new(f)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
                let problem = match check {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e,
                    Err(_) => "its metadata cannot be read".to_string(),
                };
                return Some(format!("{}: {problem}", file.display()));
            }
        }
        None
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

/// The Parquet files of a table path: the file itself, or those of a folder.
fn files_of(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut files: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect();
            files.sort();
            files
        }
        Err(_) => vec![path.to_path_buf()],
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
