//! Model artifacts: `model.json` (kind, parameters, sizes, training input),
//! `users.parquet` (`user_id` in dense-index order, plus the model's per-user
//! columns: `factors` for factor models), `items.parquet` (`item_id` in
//! dense-index order plus its per-item columns: `score` for popularity,
//! `factors` for ALS) and any whole files of its own (item-item's
//! `neighbors.parquet`). Factors are a `FixedSizeList<Float32>` column of
//! length `factors`. Which columns a model has is the model's business
//! (`steps::model`); this module reads and writes them.
//!
//! The id maps travel with the model, so scoring never re-derives indices from
//! data that may have changed since training.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, StringArray, UInt32Array,
};
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Float32Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::interactions::IdColumn;
use super::{ArtifactError, FileEntry};
use crate::artifact;
use crate::models::ids::Ids;
use crate::models::{Csr, IdMap};

pub const META_FILE: &str = "model.json";
pub const USERS_FILE: &str = "users.parquet";
pub const ITEMS_FILE: &str = "items.parquet";

/// The columns of a model in its artifact: per user and per item (in dense-index
/// order, next to the ids) and whole files of its own.
#[derive(Default)]
pub struct Columns {
    pub users: Vec<(&'static str, ArrayRef)>,
    pub items: Vec<(&'static str, ArrayRef)>,
    pub files: Vec<(&'static str, RecordBatch)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub model: String,
    pub params: serde_json::Value,
    pub n_users: usize,
    pub n_items: usize,
    pub nnz: usize,
    /// The interactions artifact the model was fitted on; also the "seen" items.
    /// Relative to the model's folder when both are in one run directory
    /// (`../<step>/data.parquet`), so the run directory can move (to object
    /// storage and back into a pod); [`read`] makes it a full path.
    pub trained_on: PathBuf,
    /// Training facts: loss per iteration …
    #[serde(default)]
    pub report: serde_json::Value,
}

/// A model artifact as it is read: what each model's `load` (in `steps::model`) reads from.
pub struct ModelFiles {
    pub dir: PathBuf,
    pub meta: ModelMeta,
    pub users: IdMap,
    pub items: IdMap,
    user_batches: Vec<RecordBatch>,
    item_batches: Vec<RecordBatch>,
}

impl ModelFiles {
    /// A per-user Float32 column.
    pub fn user_floats(&self, name: &str) -> Result<Vec<f32>, ArtifactError> {
        values::<Float32Type>(&self.user_batches, name, &self.dir.join(USERS_FILE))
    }

    /// A per-item Float32 column.
    pub fn item_floats(&self, name: &str) -> Result<Vec<f32>, ArtifactError> {
        values::<Float32Type>(&self.item_batches, name, &self.dir.join(ITEMS_FILE))
    }

    /// The users' and the items' `factors` and their width.
    pub fn factors(&self) -> Result<(Vec<f32>, Vec<f32>, usize), ArtifactError> {
        let (users, k) = factors(&self.user_batches, &self.dir.join(USERS_FILE))?;
        let (items, k_items) = factors(&self.item_batches, &self.dir.join(ITEMS_FILE))?;
        if k != k_items {
            return Err(ArtifactError::Invalid(format!(
                "{}: users have {k} factors, items {k_items}",
                self.dir.display()
            )));
        }
        Ok((users, items, k))
    }

    /// One of the model's own files.
    pub fn file(&self, name: &str) -> Result<(PathBuf, Vec<RecordBatch>), ArtifactError> {
        let path = self.dir.join(name);
        let (_, batches) = artifact::read_parquet(&path)?;
        Ok((path, batches))
    }
}

pub fn ids_array(ids: &Ids) -> ArrayRef {
    match ids {
        Ids::Int(v) => Arc::new(Int64Array::from(v.clone())),
        Ids::Str(v) => Arc::new(StringArray::from(v.clone())),
    }
}

/// Factors (row-major, `k` wide) as a `FixedSizeList<Float32>` column.
pub fn factors_array(values: &[f32], k: usize) -> Result<ArrayRef, ArtifactError> {
    let field = Arc::new(Field::new("item", DataType::Float32, false));
    FixedSizeListArray::try_new(
        field,
        k as i32,
        Arc::new(Float32Array::from(values.to_vec())),
        None,
    )
    .map(|a| Arc::new(a) as ArrayRef)
    .map_err(|e| ArtifactError::Invalid(e.to_string()))
}

/// Writes a model's columns and its id maps.
pub fn write(
    dir: &Path,
    meta: &ModelMeta,
    users: &IdMap,
    items: &IdMap,
    columns: Columns,
) -> Result<Vec<FileEntry>, ArtifactError> {
    let batch = |cols: Vec<(&str, ArrayRef)>| {
        RecordBatch::try_from_iter(cols).map_err(|e| ArtifactError::Invalid(e.to_string()))
    };
    let mut users_cols = vec![("user_id", ids_array(users.ids()))];
    users_cols.extend(columns.users);
    let mut items_cols = vec![("item_id", ids_array(items.ids()))];
    items_cols.extend(columns.items);
    let mut files = Vec::new();
    let parts = columns.files.into_iter().chain([
        (USERS_FILE, batch(users_cols)?),
        (ITEMS_FILE, batch(items_cols)?),
    ]);
    for (name, batch) in parts {
        files.push(artifact::write_parquet(
            &dir.join(name),
            batch.schema(),
            &[batch],
        )?);
    }
    files.push(artifact::write_json(&dir.join(META_FILE), meta)?);
    Ok(files)
}

/// Reads a model artifact's metadata, ids and per-user and per-item columns.
pub fn read(dir: &Path) -> Result<ModelFiles, ArtifactError> {
    let mut meta: ModelMeta = artifact::read_json(&dir.join(META_FILE))?;
    meta.trained_on = dir.join(&meta.trained_on);
    let users_path = dir.join(USERS_FILE);
    let items_path = dir.join(ITEMS_FILE);
    let (_, user_batches) = artifact::read_parquet(&users_path)?;
    let (_, item_batches) = artifact::read_parquet(&items_path)?;
    let users = IdMap::from_sorted(read_ids(&user_batches, "user_id", &users_path)?);
    let items = IdMap::from_sorted(read_ids(&item_batches, "item_id", &items_path)?);
    if users.len() != meta.n_users || items.len() != meta.n_items {
        return Err(ArtifactError::Invalid(format!(
            "{}: model.json says {} users and {} items, the id files hold {} and {}",
            dir.display(),
            meta.n_users,
            meta.n_items,
            users.len(),
            items.len()
        )));
    }
    Ok(ModelFiles {
        dir: dir.to_path_buf(),
        meta,
        users,
        items,
        user_batches,
        item_batches,
    })
}

/// A sparse matrix as a file of a model: one row per entry, the row and column
/// (dense indices, UInt32) and the value (Float32) under `names`.
pub fn sparse_batch(m: &Csr, names: [&str; 3]) -> Result<RecordBatch, ArtifactError> {
    let rows: Vec<u32> = (0..m.n_rows)
        .flat_map(|r| std::iter::repeat_n(r as u32, m.row(r).0.len()))
        .collect();
    RecordBatch::try_from_iter([
        (names[0], Arc::new(UInt32Array::from(rows)) as ArrayRef),
        (
            names[1],
            Arc::new(UInt32Array::from(m.indices.clone())) as ArrayRef,
        ),
        (
            names[2],
            Arc::new(Float32Array::from(m.data.clone())) as ArrayRef,
        ),
    ])
    .map_err(|e| ArtifactError::Invalid(e.to_string()))
}

impl ModelFiles {
    /// Reads back a [`sparse_batch`] file as a matrix of one row per item and
    /// `n_cols` columns (`None`: as many as its largest column index needs).
    pub fn sparse(
        &self,
        file: &str,
        names: [&str; 3],
        n_cols: Option<usize>,
    ) -> Result<Csr, ArtifactError> {
        let (path, batches) = self.file(file)?;
        let rows = values::<UInt32Type>(&batches, names[0], &path)?;
        let cols = values::<UInt32Type>(&batches, names[1], &path)?;
        let vals = values::<Float32Type>(&batches, names[2], &path)?;
        let n = self.items.len();
        let n_cols = n_cols.unwrap_or_else(|| cols.iter().max().map_or(0, |&c| c as usize + 1));
        if rows.iter().any(|&r| r as usize >= n) || cols.iter().any(|&c| c as usize >= n_cols) {
            return Err(ArtifactError::Invalid(format!(
                "{}: index out of range",
                path.display()
            )));
        }
        Ok(Csr::from_triplets(n, n_cols, &rows, &cols, &vals))
    }
}

/// The values of primitive column `name` (of type `T`) across `batches`.
pub fn values<T: ArrowPrimitiveType>(
    batches: &[RecordBatch],
    name: &str,
    path: &Path,
) -> Result<Vec<T::Native>, ArtifactError> {
    let mut out = Vec::new();
    for b in batches {
        let col = b
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<T>())
            .ok_or_else(|| {
                ArtifactError::Invalid(format!(
                    "{}: no {} column `{name}`",
                    path.display(),
                    T::DATA_TYPE
                ))
            })?;
        out.extend_from_slice(col.values());
    }
    Ok(out)
}

/// The flattened `factors` column and its width.
fn factors(batches: &[RecordBatch], path: &Path) -> Result<(Vec<f32>, usize), ArtifactError> {
    let mut out = Vec::new();
    let mut k = 0;
    for b in batches {
        let list = b
            .column_by_name("factors")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or_else(|| {
                ArtifactError::Invalid(format!(
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
                ArtifactError::Invalid(format!("{}: `factors` is not Float32", path.display()))
            })?;
        let start = list.offset() * k;
        out.extend_from_slice(&values.values()[start..start + list.len() * k]);
    }
    Ok((out, k))
}

fn read_ids(batches: &[RecordBatch], name: &str, path: &Path) -> Result<Ids, ArtifactError> {
    let mut ids = None;
    for b in batches {
        IdColumn::of(b, name, path)?.collect_into(&mut ids);
    }
    Ok(ids.unwrap_or(Ids::Int(Vec::new())))
}
