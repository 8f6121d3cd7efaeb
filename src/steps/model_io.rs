//! The model artifact: `model.json` (kind, parameters, sizes, training input),
//! `users.parquet` (`user_id` in dense-index order, plus `factors` for factor
//! models) and `items.parquet` (`item_id` in dense-index order plus the model's
//! per-item column: `score` for popularity, `factors` for ALS). Factors are a
//! `FixedSizeList<Float32>` column of length `factors`.
//!
//! The id maps travel with the model, so scoring never re-derives indices from
//! data that may have changed since training.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::StepError;
use super::interactions::IdColumn;
use crate::artifact::{self, FileEntry};
use crate::models::als::AlsModel;
use crate::models::ids::Ids;
use crate::models::item_item::{ItemItemModel, NeighborSimilarity};
use crate::models::popular::Popular;
use crate::models::similarity::CosineSimilarity;
use crate::models::{Csr, IdMap, Recommender};

pub const META_FILE: &str = "model.json";
pub const USERS_FILE: &str = "users.parquet";
pub const ITEMS_FILE: &str = "items.parquet";
/// Item-item models: `item, neighbor` (dense item indices, UInt32) and `score`.
pub const NEIGHBORS_FILE: &str = "neighbors.parquet";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub model: String,
    pub params: serde_json::Value,
    pub n_users: usize,
    pub n_items: usize,
    pub nnz: usize,
    /// The interactions artifact the model was fitted on; also the "seen" items.
    pub trained_on: PathBuf,
    /// Training facts: loss per iteration …
    #[serde(default)]
    pub report: serde_json::Value,
}

/// A fitted model of any kind.
pub enum Fitted {
    Popular(Popular),
    Als(AlsModel),
    ItemItem(ItemItemModel),
}

impl Fitted {
    pub fn recommender(&self) -> &(dyn Recommender + Send) {
        match self {
            Fitted::Popular(m) => m,
            Fitted::Als(m) => m,
            Fitted::ItemItem(m) => m,
        }
    }

    /// Item→item similarity, for models that have one.
    pub fn similarity(&self) -> Option<Box<dyn Recommender + '_>> {
        match self {
            Fitted::Popular(_) => None,
            Fitted::Als(m) => Some(Box::new(CosineSimilarity::new(&m.item_factors, m.factors))),
            Fitted::ItemItem(m) => Some(Box::new(NeighborSimilarity(&m.neighbors))),
        }
    }
}

/// A model read back from its artifact.
pub struct LoadedModel {
    pub meta: ModelMeta,
    pub users: IdMap,
    pub items: IdMap,
    pub fitted: Fitted,
}

pub fn ids_array(ids: &Ids) -> ArrayRef {
    match ids {
        Ids::Int(v) => Arc::new(Int64Array::from(v.clone())),
        Ids::Str(v) => Arc::new(StringArray::from(v.clone())),
    }
}

fn factors_array(values: &[f32], k: usize) -> Result<ArrayRef, StepError> {
    let field = Arc::new(Field::new("item", DataType::Float32, false));
    FixedSizeListArray::try_new(
        field,
        k as i32,
        Arc::new(Float32Array::from(values.to_vec())),
        None,
    )
    .map(|a| Arc::new(a) as ArrayRef)
    .map_err(|e| StepError::Data(e.to_string()))
}

fn table(id_name: &str, ids: &IdMap, column: (&str, ArrayRef)) -> Result<RecordBatch, StepError> {
    RecordBatch::try_from_iter([(id_name, ids_array(ids.ids())), column])
        .map_err(|e| StepError::Data(e.to_string()))
}

/// Writes a fitted model and its id maps.
pub fn save(
    dir: &Path,
    meta: &ModelMeta,
    users: &IdMap,
    items: &IdMap,
    fitted: &Fitted,
) -> Result<Vec<FileEntry>, StepError> {
    let ids_only = |name: &str, ids: &IdMap| {
        RecordBatch::try_from_iter([(name, ids_array(ids.ids()))])
            .map_err(|e| StepError::Data(e.to_string()))
    };
    let (users_batch, items_batch) = match fitted {
        Fitted::Popular(m) => (
            ids_only("user_id", users)?,
            table(
                "item_id",
                items,
                ("score", Arc::new(Float32Array::from(m.scores.clone()))),
            )?,
        ),
        Fitted::Als(m) => (
            table(
                "user_id",
                users,
                ("factors", factors_array(&m.user_factors, m.factors)?),
            )?,
            table(
                "item_id",
                items,
                ("factors", factors_array(&m.item_factors, m.factors)?),
            )?,
        ),
        Fitted::ItemItem(_) => (ids_only("user_id", users)?, ids_only("item_id", items)?),
    };
    let mut files = Vec::new();
    if let Fitted::ItemItem(m) = fitted {
        let n = &m.neighbors;
        let rows: Vec<u32> = (0..n.n_rows)
            .flat_map(|r| std::iter::repeat_n(r as u32, n.row(r).0.len()))
            .collect();
        let batch = RecordBatch::try_from_iter([
            ("item", Arc::new(UInt32Array::from(rows)) as ArrayRef),
            (
                "neighbor",
                Arc::new(UInt32Array::from(n.indices.clone())) as ArrayRef,
            ),
            (
                "score",
                Arc::new(Float32Array::from(n.data.clone())) as ArrayRef,
            ),
        ])
        .map_err(|e| StepError::Data(e.to_string()))?;
        files.push(artifact::write_parquet(
            &dir.join(NEIGHBORS_FILE),
            batch.schema(),
            &[batch],
        )?);
    }
    files.push(artifact::write_parquet(
        &dir.join(USERS_FILE),
        users_batch.schema(),
        &[users_batch],
    )?);
    files.push(artifact::write_parquet(
        &dir.join(ITEMS_FILE),
        items_batch.schema(),
        &[items_batch],
    )?);
    files.push(artifact::write_json(&dir.join(META_FILE), meta)?);
    Ok(files)
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
    let fitted = match meta.model.as_str() {
        "popular" => Fitted::Popular(Popular {
            scores: floats(&item_batches, "score", &items_path)?,
        }),
        "als" => {
            let (user_factors, k) = factors(&user_batches, &users_path)?;
            let (item_factors, k_items) = factors(&item_batches, &items_path)?;
            if k != k_items {
                return Err(StepError::Data(format!(
                    "{}: users have {k} factors, items {k_items}",
                    dir.display()
                )));
            }
            Fitted::Als(AlsModel {
                factors: k,
                user_factors,
                item_factors,
            })
        }
        "item_item" => {
            let path = dir.join(NEIGHBORS_FILE);
            let (_, batches) = artifact::read_parquet(&path)?;
            let (mut rows, mut cols) = (Vec::new(), Vec::new());
            for b in &batches {
                for (name, out) in [("item", &mut rows), ("neighbor", &mut cols)] {
                    let col = b
                        .column_by_name(name)
                        .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
                        .ok_or_else(|| {
                            StepError::Data(format!(
                                "{}: no UInt32 column `{name}`",
                                path.display()
                            ))
                        })?;
                    out.extend_from_slice(col.values());
                }
            }
            let scores = floats(&batches, "score", &path)?;
            if rows.iter().chain(&cols).any(|&i| i as usize >= items.len()) {
                return Err(StepError::Data(format!(
                    "{}: item index out of range",
                    path.display()
                )));
            }
            let neighbors = Csr::from_triplets(items.len(), items.len(), &rows, &cols, &scores);
            // Users are scored through their training interactions.
            let user_items = super::interactions::load_with(&meta.trained_on, &users, &items)?;
            Fitted::ItemItem(ItemItemModel {
                neighbors,
                user_items,
            })
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
        fitted,
    })
}

fn floats(batches: &[RecordBatch], name: &str, path: &Path) -> Result<Vec<f32>, StepError> {
    let mut out = Vec::new();
    for b in batches {
        let col = b
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Float32Array>())
            .ok_or_else(|| {
                StepError::Data(format!("{}: no Float32 column `{name}`", path.display()))
            })?;
        out.extend_from_slice(col.values());
    }
    Ok(out)
}

/// The flattened `factors` column and its width.
fn factors(batches: &[RecordBatch], path: &Path) -> Result<(Vec<f32>, usize), StepError> {
    let mut out = Vec::new();
    let mut k = 0;
    for b in batches {
        let list = b
            .column_by_name("factors")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or_else(|| {
                StepError::Data(format!(
                    "{}: no FixedSizeList column `factors`",
                    path.display()
                ))
            })?;
        k = list.value_length() as usize;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| {
                StepError::Data(format!("{}: `factors` is not Float32", path.display()))
            })?;
        let start = list.offset() * k;
        out.extend_from_slice(&values.values()[start..start + list.len() * k]);
    }
    Ok((out, k))
}

fn read_ids(batches: &[RecordBatch], name: &str, path: &Path) -> Result<Ids, StepError> {
    let mut ids = None;
    for b in batches {
        IdColumn::of(b, name, path)?.collect_into(&mut ids);
    }
    Ok(ids.unwrap_or(Ids::Int(Vec::new())))
}
