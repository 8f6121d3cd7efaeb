//! The embedded default source: DataFusion SQL over local Parquet and CSV files,
//! so a pipeline runs on a laptop with no warehouse account.
//!
//! A fresh session is made per query, so files that changed between runs are
//! listed again. Named parameters (`$days`) are bound with DataFusion's
//! `with_param_values`, which substitutes typed literals in the plan, never text.
//!
//! DataFusion's errors are chains ("Optimizer rule … failed", caused by a cast
//! error …) whose first line rarely says what is wrong: messages here come from
//! the root cause, with repeated prefixes ("Parquet error: Parquet error:")
//! removed and, for the usual mistakes (an empty or corrupt file, a text
//! parameter compared with a number), what to do about it.

use std::collections::BTreeMap;

use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use super::{Params, QueryResult, Source, SourceError};
use crate::config::settings::{DataFusionSourceConfig, FileFormat, TableFileConfig};
use crate::sources::ParamValue;

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
    empty_files(name, &table.path)?;
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
    result.map_err(|e| {
        let cause = describe(&e);
        let hint = match cause.contains("Parquet") {
            true => {
                "; it is not a readable Parquet file: write it again, or set `format` if it is CSV"
            }
            false => "",
        };
        SourceError::Table {
            table: name.to_string(),
            message: format!("cannot register {}: {cause}{hint}", table.path.display()),
        }
    })
}

/// A zero-byte file (a copy or an export that died) is not an empty table: it
/// has no schema, and DataFusion would read it as a table with no columns.
fn empty_files(name: &str, path: &std::path::Path) -> Result<(), SourceError> {
    let empty = |file: &std::path::Path| SourceError::Table {
        table: name.to_string(),
        message: format!(
            "{} is empty (0 bytes), so it has no columns: it was not written completely; write it again",
            file.display()
        ),
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() == 0 => Err(empty(path)),
        Ok(m) if m.is_dir() => {
            let Ok(entries) = std::fs::read_dir(path) else {
                return Ok(());
            };
            for entry in entries.flatten() {
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if !hidden && entry.metadata().is_ok_and(|m| m.is_file() && m.len() == 0) {
                    return Err(empty(&entry.path()));
                }
            }
            Ok(())
        }
        // Missing files and globs: DataFusion says what it found.
        _ => Ok(()),
    }
}

impl Source for DataFusionSource {
    async fn query(&self, sql: &str, params: &Params) -> Result<QueryResult, SourceError> {
        let ctx = self.context().await?;
        let values: Vec<(String, ScalarValue)> =
            params.iter().map(|(k, v)| (k.clone(), scalar(v))).collect();
        let error = |e| query_error(e, params);
        let frame = ctx.sql(sql).await.map_err(error)?;
        let frame = if values.is_empty() {
            frame
        } else {
            frame.with_param_values(values).map_err(error)?
        };
        let stream = frame.execute_stream().await.map_err(error)?;
        let schema = stream.schema();
        let params = params.clone();
        let batches = stream
            .map(move |b| b.map_err(|e| query_error(e, &params)))
            .boxed();
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

fn query_error(e: DataFusionError, params: &BTreeMap<String, ParamValue>) -> SourceError {
    match e.find_root() {
        DataFusionError::IoError(io) => return SourceError::Io(io.to_string()),
        DataFusionError::ObjectStore(os) => return SourceError::Io(os.to_string()),
        _ => {}
    }
    let mut message = describe(&e);
    if message.contains("Cannot cast") || message.contains("Cast error") {
        message.push_str(&cast_hint(&message, params));
    }
    SourceError::Query(message)
}

/// What to do when a bound value cannot be cast to the type it is compared
/// with: usually a text parameter (`"10"`, or a word) next to a number column.
fn cast_hint(message: &str, params: &BTreeMap<String, ParamValue>) -> String {
    let culprit = params.iter().find_map(|(name, v)| match v {
        ParamValue::Text(text) if message.contains(&format!("'{text}'")) => Some((name, text)),
        _ => None,
    });
    match culprit {
        Some((name, text)) => format!(
            "; parameter `${name}` is the text \"{text}\" but is used as another type: give a number without quotes in `params` (`{name} = 10`), or cast in the SQL (`CAST(${name} AS BIGINT)`)"
        ),
        None => "; a bound parameter or column does not have the type it is used as: check each parameter's type in `params` (text is quoted, numbers are not), or cast in the SQL".to_string(),
    }
}

/// The root cause of a DataFusion error chain as one line, without the
/// repeated prefixes nested errors add.
fn describe(e: &DataFusionError) -> String {
    let root = e.find_root();
    let text = match root {
        // The wrapped error's own text, without DataFusion's prefix for it.
        DataFusionError::ParquetError(p) => p.to_string(),
        DataFusionError::ArrowError(a, _) => a.to_string(),
        other => other.to_string(),
    };
    tidy(text.lines().next().unwrap_or_default())
}

/// `text` with each run of one repeated `… error: ` prefix cut to one.
fn tidy(text: &str) -> String {
    let mut out = text.trim().to_string();
    loop {
        let Some(end) = out.find(": ").map(|i| i + 2) else {
            return out;
        };
        let prefix = out[..end].to_string();
        if !prefix.to_lowercase().contains("error") || !out[end..].starts_with(&prefix) {
            return out;
        }
        out = out[end..].to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_prefixes_are_cut() {
        assert_eq!(
            tidy("Parquet error: Parquet error: Invalid Parquet file. Corrupt footer"),
            "Parquet error: Invalid Parquet file. Corrupt footer"
        );
        assert_eq!(
            tidy("Arrow error: Cast error: x"),
            "Arrow error: Cast error: x"
        );
        assert_eq!(tidy("no prefix at all"), "no prefix at all");
    }

    #[test]
    fn a_text_parameter_in_a_cast_error_is_named() {
        let params = BTreeMap::from([
            ("min_id".to_string(), ParamValue::Text("ten".into())),
            ("days".to_string(), ParamValue::Int(3)),
        ]);
        let hint = cast_hint("Cannot cast string 'ten' to value of Int64 type", &params);
        assert!(
            hint.contains("parameter `$min_id` is the text \"ten\""),
            "{hint}"
        );
        let hint = cast_hint("Cannot cast string 'x' to value of Int64 type", &params);
        assert!(hint.contains("check each parameter's type"), "{hint}");
    }
}
