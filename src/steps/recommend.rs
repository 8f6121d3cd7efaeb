//! `recommend`: top-N items per user from a model artifact, with the user's seen
//! items and every filter list removed, written as the user→item contract:
//! `user_id, item_id, rank (1-based), score, run_id, generated_at`.
//!
//! Users are scored in blocks that stream to the Parquet writer, so memory is
//! bounded by one block of lists, never users × items.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::interactions::{self, IdColumn};
use super::{StepError, StepOutput, model_io};
use crate::artifact::{ParquetSink, read_parquet};
use crate::models::ids::Ids;
use crate::models::{Csr, IdMap, StopFlag};
use crate::topn::{self, Exclusions, Scored};

/// Users scored per block: large enough to keep both cores busy, small enough that
/// a block of lists stays a few MB.
const USER_BLOCK: usize = 4096;

#[derive(Debug, Clone)]
pub struct RecommendJob {
    pub model_dir: PathBuf,
    /// Whose seen items to exclude; `None` uses the model's training interactions.
    pub interactions: Option<PathBuf>,
    pub filters: Vec<PathBuf>,
    pub top_n: usize,
    pub exclude_seen: bool,
    pub run_id: String,
    pub generated_at: DateTime<Utc>,
}

/// Blocking: call through [`super::compute`] so scoring runs on the compute pool.
pub fn run(job: &RecommendJob, output: &Path, stop: &StopFlag) -> Result<StepOutput, StepError> {
    let loaded = model_io::load(&job.model_dir)?;
    let seen = if job.exclude_seen {
        let path = job
            .interactions
            .clone()
            .unwrap_or_else(|| loaded.meta.trained_on.clone());
        Some(interactions::load_with(
            &path,
            &loaded.users,
            &loaded.items,
        )?)
    } else {
        None
    };
    let mut denied_items = Vec::new();
    let mut pair_rows = Vec::new();
    let mut pair_cols = Vec::new();
    let mut provenance = Vec::new();
    for path in &job.filters {
        let before = (denied_items.len(), pair_rows.len());
        let rows = read_filter(
            path,
            &loaded.users,
            &loaded.items,
            &mut denied_items,
            (&mut pair_rows, &mut pair_cols),
        )?;
        provenance.push(json!({
            "file": path.display().to_string(),
            "rows": rows,
            "items": denied_items.len() - before.0,
            "pairs": pair_rows.len() - before.1,
        }));
    }
    denied_items.sort_unstable();
    denied_items.dedup();
    let pairs = Csr::from_triplets(
        loaded.users.len(),
        loaded.items.len(),
        &pair_rows,
        &pair_cols,
        &vec![1.0; pair_rows.len()],
    );
    let exclusions = Exclusions {
        seen: seen.as_ref(),
        denied_items: &denied_items,
        denied_pairs: (pairs.nnz() > 0).then_some(&pairs),
    };
    let schema = output_schema(&loaded.users, &loaded.items);
    let mut sink = ParquetSink::create(output, schema.clone())?;
    let users: Vec<u32> = (0..loaded.users.len() as u32).collect();
    let mut rows = 0u64;
    for block in users.chunks(USER_BLOCK) {
        let lists =
            topn::recommend_block(loaded.model.as_ref(), block, job.top_n, &exclusions, stop)?;
        let batch = to_batch(&schema, block, &lists, &loaded.users, &loaded.items, job)?;
        rows += batch.num_rows() as u64;
        sink.write(&batch)?;
    }
    let file = sink.finish()?;
    Ok(StepOutput {
        rows,
        details: json!({
            "users": loaded.users.len(),
            "items": loaded.items.len(),
            "top_n": job.top_n,
            "excluded_seen": seen.as_ref().map_or(0, Csr::nnz),
            "denied_items": denied_items.len(),
            "denied_pairs": pairs.nnz(),
            "filters": provenance,
        }),
        files: vec![file],
    })
}

/// Adds a filter list's rows: rows without `user_id` (or with a null one) deny the
/// item for everyone, rows with one deny the pair. Ids the model does not know are
/// skipped: they could not be recommended anyway.
fn read_filter(
    path: &Path,
    users: &IdMap,
    items: &IdMap,
    denied: &mut Vec<u32>,
    pairs: (&mut Vec<u32>, &mut Vec<u32>),
) -> Result<u64, StepError> {
    let (_, batches) = read_parquet(path)?;
    let mut rows = 0u64;
    for b in &batches {
        rows += b.num_rows() as u64;
        let item_col = IdColumn::of(b, "item_id", path)?;
        interactions::check_type(&item_col, items, "item_id", path)?;
        let user_col = match b.column_by_name("user_id") {
            Some(_) => {
                let c = IdColumn::of(b, "user_id", path)?;
                interactions::check_type(&c, users, "user_id", path)?;
                Some((c, b.column_by_name("user_id").cloned()))
            }
            None => None,
        };
        for row in 0..b.num_rows() {
            let Some(item) = items.index(item_col.get(row)) else {
                continue;
            };
            match &user_col {
                Some((c, Some(raw))) if raw.is_valid(row) => {
                    if let Some(user) = users.index(c.get(row)) {
                        pairs.0.push(user);
                        pairs.1.push(item);
                    }
                }
                _ => denied.push(item),
            }
        }
    }
    Ok(rows)
}

fn id_type(map: &IdMap) -> DataType {
    match map.ids() {
        Ids::Int(_) => DataType::Int64,
        Ids::Str(_) => DataType::Utf8,
    }
}

pub fn output_schema(users: &IdMap, items: &IdMap) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", id_type(users), false),
        Field::new("item_id", id_type(items), false),
        Field::new("rank", DataType::Int32, false),
        Field::new("score", DataType::Float32, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new(
            "generated_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

fn gather(map: &IdMap, indices: impl Iterator<Item = u32>) -> ArrayRef {
    match map.ids() {
        Ids::Int(v) => Arc::new(Int64Array::from_iter_values(indices.map(|i| v[i as usize]))),
        Ids::Str(v) => Arc::new(StringArray::from_iter_values(
            indices.map(|i| v[i as usize].as_str()),
        )),
    }
}

fn to_batch(
    schema: &SchemaRef,
    users: &[u32],
    lists: &[Vec<Scored>],
    user_ids: &IdMap,
    item_ids: &IdMap,
    job: &RecommendJob,
) -> Result<RecordBatch, StepError> {
    let n: usize = lists.iter().map(Vec::len).sum();
    let user_idx = users
        .iter()
        .zip(lists)
        .flat_map(|(&u, l)| std::iter::repeat_n(u, l.len()));
    let item_idx = lists.iter().flatten().map(|s| s.item);
    let ranks = lists.iter().flat_map(|l| 1..=l.len() as i32);
    let scores = lists.iter().flatten().map(|s| s.score);
    let ts = job.generated_at.timestamp_micros();
    let columns: Vec<ArrayRef> = vec![
        gather(user_ids, user_idx),
        gather(item_ids, item_idx),
        Arc::new(Int32Array::from_iter_values(ranks)),
        Arc::new(Float32Array::from_iter_values(scores)),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            job.run_id.as_str(),
            n,
        ))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(ts, n))
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| StepError::Data(e.to_string()))
}
