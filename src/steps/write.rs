//! `write`: publishes list artifacts to a named sink, staged then swapped in, so
//! the service reading a table sees the old list or the new one.
//!
//! Invariant: an empty list is never published unless the step allows it
//! (`allow_empty`): a recommend step that matched nothing would otherwise
//! replace a good list with none. The refusal comes before anything is staged,
//! so the previous list stays current. Nor is a file that is not a list: the
//! id, `rank` and `score` columns must be there, ranks from 1, scores finite
//! (a service would sort by NaN). Several lists of one step are published
//! as one group ([`Sink::publish_group`](crate::sinks::Sink::publish_group)):
//! if any is refused, none is published.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, Float64Array, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
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
    for list in &job.lists {
        let rows = check_list(&list.input).map_err(|e| {
            StepError::Data(format!(
                "the list for table `{}` ({}): {e}; nothing was published and the previous \
                 list stays current",
                list.table,
                list.input.display()
            ))
        })?;
        if rows == 0 && !job.allow_empty {
            return Err(StepError::Data(format!(
                "the list for table `{}` is empty; nothing was published and the previous list stays current \
                 (set `allow_empty = true` on the write step, or pass `--allow-empty`, to publish an empty list)",
                list.table
            )));
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

/// The rows of the list at `path`, once it is checked to be one: the columns of
/// a user→item or item→item list, every rank at least 1, every score finite.
/// Streams the file: a list may not fit in memory at once.
fn check_list(path: &Path) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("not a Parquet list: {e}"))?;
    let schema = builder.schema().clone();
    let has = |c: &str| schema.column_with_name(c).is_some();
    let ids = (has("user_id") && has("item_id")) || (has("item_id") && has("similar_item_id"));
    if !(ids && has("rank") && has("score")) {
        return Err(
            "not a list: a list has `user_id, item_id` (or `item_id, similar_item_id`), `rank` and `score`"
                .into(),
        );
    }
    // Only the two checked columns are decoded.
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["rank", "score"]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| format!("unreadable: {e}"))?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| format!("unreadable: {e}"))?;
        let rank = as_type::<Int64Array>(&batch, "rank", &DataType::Int64)?;
        let score = as_type::<Float64Array>(&batch, "score", &DataType::Float64)?;
        let bad = |what: &str, is_bad: &dyn Fn(usize) -> bool| match (0..batch.num_rows())
            .find(|&i| is_bad(i))
        {
            Some(i) => Err(format!("row {}: {what}", rows + i as u64 + 1)),
            None => Ok(()),
        };
        bad("`rank` must be 1 or more", &|i| {
            rank.is_null(i) || rank.value(i) < 1
        })?;
        bad("`score` must be a finite number", &|i| {
            score.is_null(i) || !score.value(i).is_finite()
        })?;
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// Column `name` of `batch` cast to `to`, as the array type `A` of that type.
fn as_type<A: Array + Clone + 'static>(
    batch: &arrow::record_batch::RecordBatch,
    name: &str,
    to: &DataType,
) -> Result<A, String> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| format!("no `{name}` column"))?;
    let cast = cast(column, to).map_err(|e| format!("`{name}`: {e}"))?;
    cast.as_any()
        .downcast_ref::<A>()
        .cloned()
        .ok_or_else(|| format!("`{name}` is not {to}"))
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
