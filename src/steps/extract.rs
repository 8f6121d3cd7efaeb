//! `extract`: runs an SQL file against a source and stores the checked result as
//! Parquet. The run id and logical date are bound as `$run_id` and
//! `$logical_date` (RFC 3339 text) next to the step's own `params`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::StreamExt;
use serde_json::json;

use super::{StepContext, StepError, StepOutput};
use crate::artifact::ParquetWriter;
use crate::artifact::Role;
use crate::artifact::contract;
use crate::sources::ParamValue;
use crate::sources::{AnySource, SourceError};

/// Everything one extract needs, resolved from the pipeline or the command line.
#[derive(Debug, Clone)]
pub struct ExtractJob {
    pub source: AnySource,
    pub sql_path: PathBuf,
    pub params: BTreeMap<String, ParamValue>,
    pub role: Role,
    pub allow_empty: bool,
}

pub async fn run(
    job: ExtractJob,
    output: PathBuf,
    cx: &StepContext,
) -> Result<StepOutput, StepError> {
    let sql = tokio::fs::read_to_string(&job.sql_path)
        .await
        .map_err(|e| {
            StepError::Data(format!(
                "cannot read SQL file {}: {e}",
                job.sql_path.display()
            ))
        })?;
    let mut params = BTreeMap::from([
        ("run_id".to_string(), ParamValue::Text(cx.run_id.clone())),
        (
            "logical_date".to_string(),
            ParamValue::Text(cx.logical_date.to_rfc3339()),
        ),
    ]);
    params.extend(job.params.clone());
    let stop = cx.stop.clone();
    let sql_path = job.sql_path.clone();
    let source = job.source.clone();
    let work = async move {
        let result = job.source.query(&sql, &params).await?;
        let target = contract::conform_schema(job.role, &result.schema).map_err(StepError::Data)?;
        let mut sink = ParquetWriter::create(&output, target.clone())?;
        let mut batches = result.batches;
        let mut rows = 0u64;
        while let Some(batch) = batches.next().await {
            if stop.is_stopped() {
                return Err(StepError::Stopped(crate::models::Stopped));
            }
            let batch = batch?;
            let batch = contract::conform_batch(job.role, &batch, &target, rows)
                .map_err(StepError::Data)?;
            rows += batch.num_rows() as u64;
            sink.write(&batch)?;
        }
        if rows == 0 && !job.allow_empty {
            return Err(StepError::Data(format!(
                "the query returned no rows; an empty `{}` table is an error (set `allow_empty = true` if it is expected)",
                job.role.as_str()
            )));
        }
        let file = sink.finish()?;
        Ok(StepOutput {
            rows,
            details: json!({ "role": job.role.as_str(), "columns": file.schema }),
            files: vec![file],
        })
    };
    // Aborted when this future is dropped (a cancelled run), so a query does not
    // go on in the background.
    let mut task = AbortOnDrop(crate::sources::engine().spawn(work));
    let joined = (&mut task.0).await;
    match joined {
        Ok(r) => r.map_err(|e| match e {
            StepError::Source(SourceError::Query(m)) => {
                StepError::Source(SourceError::Query(format!("{}: {m}", sql_path.display())))
            }
            other => other,
        }),
        Err(e) => match e.try_into_panic() {
            // A panic inside DataFusion or the parquet crate comes from a file it
            // could not read (a corrupt footer, say): a data error naming the file.
            Ok(panic) => {
                // Reading footers is file I/O: off the async threads.
                let unreadable = tokio::task::spawn_blocking(move || source.unreadable_file());
                Err(StepError::Data(format!(
                    "{}: reading the query's input failed ({}){}",
                    sql_path.display(),
                    super::panic_message(&panic),
                    match unreadable.await.ok().flatten() {
                        Some(file) => format!("; {file}"),
                        None => "; a table file may be corrupt".to_string(),
                    }
                )))
            }
            Err(e) => Err(StepError::Panic(e.to_string())),
        },
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
