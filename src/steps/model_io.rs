//! The model artifact: `model.json` (kind, parameters, sizes, training input),
//! `users.parquet` (`user_id` in dense-index order) and `items.parquet` (`item_id`
//! in dense-index order plus the model's per-item columns).
//!
//! The id maps travel with the model, so scoring never re-derives indices from
//! data that may have changed since training.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::StepError;
use super::interactions::IdColumn;
use crate::artifact::{self, FileEntry};
use crate::models::ids::Ids;
use crate::models::popular::Popular;
use crate::models::{IdMap, Recommender};

pub const META_FILE: &str = "model.json";
pub const USERS_FILE: &str = "users.parquet";
pub const ITEMS_FILE: &str = "items.parquet";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub model: String,
    pub params: serde_json::Value,
    pub n_users: usize,
    pub n_items: usize,
    pub nnz: usize,
    /// The interactions artifact the model was fitted on; also the "seen" items.
    pub trained_on: PathBuf,
}

/// A model read back from its artifact.
pub struct LoadedModel {
    pub meta: ModelMeta,
    pub users: IdMap,
    pub items: IdMap,
    pub model: Box<dyn Recommender + Send>,
}

pub fn ids_array(ids: &Ids) -> ArrayRef {
    match ids {
        Ids::Int(v) => Arc::new(Int64Array::from(v.clone())),
        Ids::Str(v) => Arc::new(StringArray::from(v.clone())),
    }
}

/// Writes a popularity model.
pub fn save_popular(
    dir: &Path,
    meta: &ModelMeta,
    users: &IdMap,
    items: &IdMap,
    model: &Popular,
) -> Result<Vec<FileEntry>, StepError> {
    let users_batch = RecordBatch::try_from_iter([("user_id", ids_array(users.ids()))])
        .map_err(|e| StepError::Data(e.to_string()))?;
    let items_batch = RecordBatch::try_from_iter([
        ("item_id", ids_array(items.ids())),
        (
            "score",
            Arc::new(Float32Array::from(model.scores.clone())) as ArrayRef,
        ),
    ])
    .map_err(|e| StepError::Data(e.to_string()))?;
    Ok(vec![
        artifact::write_parquet(&dir.join(USERS_FILE), users_batch.schema(), &[users_batch])?,
        artifact::write_parquet(&dir.join(ITEMS_FILE), items_batch.schema(), &[items_batch])?,
        artifact::write_json(&dir.join(META_FILE), meta)?,
    ])
}

/// Reads a model artifact written by `train`.
pub fn load(dir: &Path) -> Result<LoadedModel, StepError> {
    let meta: ModelMeta = artifact::read_json(&dir.join(META_FILE))?;
    let users_path = dir.join(USERS_FILE);
    let items_path = dir.join(ITEMS_FILE);
    let (_, user_batches) = artifact::read_parquet(&users_path)?;
    let (_, item_batches) = artifact::read_parquet(&items_path)?;
    let users = IdMap::from_sorted(read_ids(&user_batches, "user_id", &users_path)?);
    let items = IdMap::from_sorted(read_ids(&item_batches, "item_id", &items_path)?);
    if users.len() != meta.n_users || items.len() != meta.n_items {
        return Err(StepError::Data(format!(
            "{}: model.json says {} users and {} items, the id files hold {} and {}",
            dir.display(),
            meta.n_users,
            meta.n_items,
            users.len(),
            items.len()
        )));
    }
    let model: Box<dyn Recommender + Send> = match meta.model.as_str() {
        "popular" => {
            let mut scores = Vec::with_capacity(items.len());
            for b in &item_batches {
                let col = b
                    .column_by_name("score")
                    .and_then(|c| c.as_any().downcast_ref::<Float32Array>())
                    .ok_or_else(|| {
                        StepError::Data(format!(
                            "{}: no Float32 column `score`",
                            items_path.display()
                        ))
                    })?;
                scores.extend_from_slice(col.values());
            }
            Box::new(Popular { scores })
        }
        other => {
            return Err(StepError::Data(format!(
                "{}: unknown model `{other}`",
                dir.display()
            )));
        }
    };
    Ok(LoadedModel {
        meta,
        users,
        items,
        model,
    })
}

fn read_ids(batches: &[RecordBatch], name: &str, path: &Path) -> Result<Ids, StepError> {
    let mut ids = None;
    for b in batches {
        IdColumn::of(b, name, path)?.collect_into(&mut ids);
    }
    Ok(ids.unwrap_or(Ids::Int(Vec::new())))
}
