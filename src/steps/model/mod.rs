//! The models a train or evaluate step can name, each one module here with its
//! keys and defaults, bounds, fit and artifact columns, listed once in
//! `model_kinds!` below; the compute itself is in `crate::models`.
//!
//! The model artifact: `model.json` (kind, parameters, sizes, training input),
//! `users.parquet` (`user_id` in dense-index order, plus the model's per-user
//! columns: `factors` for factor models), `items.parquet` (`item_id` in
//! dense-index order plus its per-item columns: `score` for popularity,
//! `factors` for ALS) and any whole files of its own (item-item's
//! `neighbors.parquet`). Factors are a `FixedSizeList<Float32>` column of
//! length `factors`.
//!
//! The id maps travel with the model, so scoring never re-derives indices from
//! data that may have changed since training.

pub mod als;
pub mod item_item;
pub mod popular;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StepError;
use super::interactions::IdColumn;
use super::kind::{Problem, SpecReader};
use crate::artifact::{self, FileEntry};
use crate::config::introspect::fields;
use crate::models::ids::Ids;
use crate::models::{Csr, IdMap, Recommender, StopFlag};

pub const META_FILE: &str = "model.json";
pub const USERS_FILE: &str = "users.parquet";
pub const ITEMS_FILE: &str = "items.parquet";

/// One model: its spec is what a pipeline file's model keys deserialize into.
pub trait ModelKind: Sized + Clone + Serialize + DeserializeOwned {
    /// The `model` key's value.
    const NAME: &'static str;

    /// Every value outside the range the model can run with (it would panic,
    /// exhaust memory, run for days or give NaN), by key.
    fn problems(&self) -> Vec<Problem> {
        Vec::new()
    }

    /// Fits the model on a users × items matrix; the report (training facts)
    /// goes into the step's manifest. Blocking and CPU-heavy: runs on the
    /// compute pool.
    fn fit(&self, matrix: &Csr, stop: &StopFlag) -> Result<Fit, StepError>;

    /// Reads the fitted model back from its artifact.
    fn load(artifact: &ModelFiles) -> Result<Fitted, StepError>;
}

/// A fitted model and the facts of its training.
pub struct Fit {
    pub model: Fitted,
    pub report: serde_json::Value,
}

/// A fitted model of any kind.
pub type Fitted = Box<dyn Trained>;

/// What a fitted model offers besides scoring users.
pub trait Trained: Recommender + Send {
    /// Item→item similarity, for models that have one.
    fn similarity(&self) -> Option<Box<dyn Recommender + '_>> {
        None
    }

    /// What the artifact stores of it beside the ids.
    fn columns(&self) -> Result<Columns, StepError>;
}

/// The columns of a model in its artifact: per user and per item (in dense-index
/// order, next to the ids) and whole files of its own.
#[derive(Default)]
pub struct Columns {
    pub users: Vec<(&'static str, ArrayRef)>,
    pub items: Vec<(&'static str, ArrayRef)>,
    pub files: Vec<(&'static str, RecordBatch)>,
}

/// Declares the models, each as `Variant(SpecType)`, and generates [`ModelSpec`]
/// and its dispatch.
macro_rules! model_kinds {
    ($($variant:ident($spec:ty),)*) => {
        /// Which model a step fits; the `model` key picks the variant.
        #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
        #[serde(tag = "model", rename_all = "snake_case")]
        pub enum ModelSpec {
            $($variant($spec),)*
        }

        impl ModelSpec {
            /// Every model's name, in the order of the list.
            pub const MODELS: &[&str] = &[$(<$spec as ModelKind>::NAME,)*];

            /// The keys of `model`, or `None` for an unknown model.
            pub fn keys_of(model: &str) -> Option<&'static [&'static str]> {
                $(if model == <$spec as ModelKind>::NAME {
                    return Some(fields::<$spec>());
                })*
                None
            }

            /// The spec of a `model` from its keys.
            pub fn read(model: &str, table: &mut impl SpecReader) -> Option<Self> {
                $(if model == <$spec as ModelKind>::NAME {
                    return table.own::<$spec>().map(ModelSpec::$variant);
                })*
                None
            }

            pub fn model(&self) -> &'static str {
                match self { $(ModelSpec::$variant(_) => <$spec as ModelKind>::NAME,)* }
            }

            pub fn problems(&self) -> Vec<Problem> {
                match self { $(ModelSpec::$variant(s) => s.problems(),)* }
            }

            pub fn fit(&self, matrix: &Csr, stop: &StopFlag) -> Result<Fit, StepError> {
                match self { $(ModelSpec::$variant(s) => s.fit(matrix, stop),)* }
            }

            fn load(artifact: &ModelFiles) -> Result<Fitted, StepError> {
                let name = artifact.meta.model.as_str();
                $(if name == <$spec as ModelKind>::NAME {
                    return <$spec as ModelKind>::load(artifact);
                })*
                Err(StepError::Data(format!(
                    "{}: unknown model `{name}`",
                    artifact.dir.display()
                )))
            }
        }
    };
}

model_kinds! {
    Popular(popular::PopularSpec),
    Als(als::AlsSpec),
    ItemItem(item_item::ItemItemSpec),
}

/// `key` must be a whole number from 1 to `max`.
pub(crate) fn whole(key: &str, value: usize, max: usize) -> Option<Problem> {
    (!(1..=max).contains(&value))
        .then(|| Problem::new(key, format!("must be between 1 and {max}, not {value}")))
}

/// `key` must be a finite number from `low` to `high`.
pub(crate) fn between(key: &str, value: f32, low: f32, high: f32) -> Option<Problem> {
    (!(value.is_finite() && (low..=high).contains(&value))).then(|| {
        Problem::new(
            key,
            format!("must be between {low} and {high}, not {value}"),
        )
    })
}

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

/// A model read back from its artifact.
pub struct LoadedModel {
    pub meta: ModelMeta,
    pub users: IdMap,
    pub items: IdMap,
    pub fitted: Fitted,
}

/// A model artifact as it is read: what a model's [`ModelKind::load`] reads from.
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
    pub fn user_floats(&self, name: &str) -> Result<Vec<f32>, StepError> {
        floats(&self.user_batches, name, &self.dir.join(USERS_FILE))
    }

    /// A per-item Float32 column.
    pub fn item_floats(&self, name: &str) -> Result<Vec<f32>, StepError> {
        floats(&self.item_batches, name, &self.dir.join(ITEMS_FILE))
    }

    /// The users' and the items' `factors` and their width.
    pub fn factors(&self) -> Result<(Vec<f32>, Vec<f32>, usize), StepError> {
        let (users, k) = factors(&self.user_batches, &self.dir.join(USERS_FILE))?;
        let (items, k_items) = factors(&self.item_batches, &self.dir.join(ITEMS_FILE))?;
        if k != k_items {
            return Err(StepError::Data(format!(
                "{}: users have {k} factors, items {k_items}",
                self.dir.display()
            )));
        }
        Ok((users, items, k))
    }

    /// One of the model's own files.
    pub fn file(&self, name: &str) -> Result<(PathBuf, Vec<RecordBatch>), StepError> {
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
pub fn factors_array(values: &[f32], k: usize) -> Result<ArrayRef, StepError> {
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

/// Writes a fitted model and its id maps.
pub fn save(
    dir: &Path,
    meta: &ModelMeta,
    users: &IdMap,
    items: &IdMap,
    fitted: &dyn Trained,
) -> Result<Vec<FileEntry>, StepError> {
    let columns = fitted.columns()?;
    let batch = |cols: Vec<(&str, ArrayRef)>| {
        RecordBatch::try_from_iter(cols).map_err(|e| StepError::Data(e.to_string()))
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
    let files = ModelFiles {
        dir: dir.to_path_buf(),
        meta,
        users,
        items,
        user_batches,
        item_batches,
    };
    let fitted = ModelSpec::load(&files)?;
    Ok(LoadedModel {
        meta: files.meta,
        users: files.users,
        items: files.items,
        fitted,
    })
}

pub fn floats(batches: &[RecordBatch], name: &str, path: &Path) -> Result<Vec<f32>, StepError> {
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
