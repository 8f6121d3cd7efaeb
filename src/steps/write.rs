//! `write`: publishes list artifacts to a named sink, staged then swapped in, so
//! the service reading a table sees the old list or the new one.
//!
//! Invariant: an empty list is never published unless the step allows it
//! (`allow_empty`): a recommend step that matched nothing would otherwise
//! replace a good list with none. The refusal comes before anything is staged,
//! so the previous list stays current. Several lists of one step are published
//! as one group ([`Sink::publish_group`](crate::sinks::Sink::publish_group)):
//! if any is refused, none is published.

use serde_json::json;

use super::{StepError, StepOutput};
use crate::sinks::{AnySink, ListFile, Published};

/// What one write step publishes, resolved from the pipeline or the command line.
#[derive(Debug, Clone)]
pub struct WriteJob {
    pub sink: AnySink,
    /// One list, or several published together.
    pub lists: Vec<ListFile>,
    /// The version name (the run id).
    pub version: String,
    pub allow_empty: bool,
}

/// Blocking file or network I/O: call through `spawn_blocking`.
pub fn run(job: &WriteJob) -> Result<StepOutput, StepError> {
    if !job.allow_empty {
        for list in &job.lists {
            let rows = crate::sinks::parquet::parquet_rows(&list.input).map_err(|e| {
                StepError::Data(format!("cannot read list {}: {e}", list.input.display()))
            })?;
            if rows == 0 {
                return Err(StepError::Data(format!(
                    "the list for table `{}` is empty; nothing was published and the previous list stays current \
                     (set `allow_empty = true` on the write step, or pass `--allow-empty`, to publish an empty list)",
                    list.table
                )));
            }
        }
    }
    let sink = job.sink.get();
    sink.healthcheck()?;
    let published = match job.lists.as_slice() {
        [one] => vec![sink.publish(&one.table, &job.version, &one.input)?],
        lists => sink.publish_group(lists, &job.version)?,
    };
    Ok(output(published))
}

/// One list keeps its flat details (`location`, `rows` …); a group lists each
/// table under `tables`. `rows` is the sum of what readers now see.
fn output(published: Vec<Published>) -> StepOutput {
    let rows = published.iter().map(|p| p.rows).sum();
    let details = match published.as_slice() {
        [one] => json!(one),
        all => json!({
            "tables": all,
            "unchanged": all.iter().all(|p| p.unchanged),
        }),
    };
    StepOutput {
        rows,
        details,
        files: Vec::new(),
    }
}
