//! Item-features artifacts, written by `vectorize`: `data.parquet` (`item_id,
//! feature, weight`, one row per item and feature, sorted by item then feature),
//! `vocabulary.parquet` (`feature, df`: the features kept and in how many items
//! each occurred) and `vectorizer.json` (the corpus facts and settings that made
//! the weights). A later `vectorize` given this folder as its vocabulary maps new
//! items to the same features with the same weights.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::interactions::{IdColumn, check_type};
use super::{
    ArtifactError, DATA_FILE, FileEntry, read_json, read_parquet, write_json, write_parquet,
};
use crate::models::ids::Ids;
use crate::models::text::Corpus;
use crate::models::{Csr, IdMap};

pub const VOCABULARY_FILE: &str = "vocabulary.parquet";
pub const VECTORIZER_FILE: &str = "vectorizer.json";

/// Items × features, in the artifact's own dense indices.
pub struct ItemFeatures {
    pub items: IdMap,
    /// Feature names, sorted; a column of `matrix` each.
    pub features: Vec<String>,
    pub matrix: Csr,
}

/// What made the weights: read back to weigh new items the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vectorizer {
    pub corpus: Corpus,
    /// The step's settings (weighting, normalisation, columns).
    pub settings: serde_json::Value,
}

/// The features kept, with their document frequencies.
pub type Vocabulary = Vec<(String, usize)>;

fn invalid(path: &Path, e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Invalid(format!("{}: {e}", path.display()))
}

/// Writes the three files of an item-features artifact into `dir`.
pub fn write(
    dir: &Path,
    features: &ItemFeatures,
    vocabulary: &Vocabulary,
    vectorizer: &Vectorizer,
) -> Result<Vec<FileEntry>, ArtifactError> {
    let m = &features.matrix;
    let rows: Vec<u32> = (0..m.n_rows)
        .flat_map(|r| std::iter::repeat_n(r as u32, m.row(r).0.len()))
        .collect();
    let ids: ArrayRef = match features.items.ids() {
        Ids::Int(v) => Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|&r| v[r as usize]),
        )),
        Ids::Str(v) => Arc::new(StringArray::from_iter_values(
            rows.iter().map(|&r| &v[r as usize]),
        )),
    };
    let names =
        StringArray::from_iter_values(m.indices.iter().map(|&f| &features.features[f as usize]));
    let data = RecordBatch::try_from_iter([
        ("item_id", ids),
        ("feature", Arc::new(names) as ArrayRef),
        (
            "weight",
            Arc::new(Float32Array::from(m.data.clone())) as ArrayRef,
        ),
    ])
    .map_err(|e| invalid(dir, e))?;
    let vocab = RecordBatch::try_from_iter([
        (
            "feature",
            Arc::new(StringArray::from_iter_values(
                vocabulary.iter().map(|v| &v.0),
            )) as ArrayRef,
        ),
        (
            "df",
            Arc::new(Int64Array::from_iter_values(
                vocabulary.iter().map(|v| v.1 as i64),
            )) as ArrayRef,
        ),
    ])
    .map_err(|e| invalid(dir, e))?;
    Ok(vec![
        write_parquet(&dir.join(DATA_FILE), data.schema(), &[data])?,
        write_parquet(&dir.join(VOCABULARY_FILE), vocab.schema(), &[vocab])?,
        write_json(&dir.join(VECTORIZER_FILE), vectorizer)?,
    ])
}

/// Reads the item × feature matrix of an artifact folder.
pub fn read(dir: &Path) -> Result<ItemFeatures, ArtifactError> {
    let path = dir.join(DATA_FILE);
    let (_, batches) = read_parquet(&path)?;
    let mut ids = None;
    for b in &batches {
        IdColumn::of(b, "item_id", &path)?.collect_into(&mut ids);
    }
    let items = IdMap::from_ids(ids.unwrap_or(Ids::Int(Vec::new())));
    let mut names: Vec<String> = Vec::new();
    let mut triplets = (Vec::new(), Vec::new(), Vec::new());
    let mut index: std::collections::HashMap<String, u32> = Default::default();
    for b in &batches {
        let item = IdColumn::of(b, "item_id", &path)?;
        check_type(&item, &items, "item_id", &path)?;
        let feature = string_column(b, "feature", &path)?;
        let weight = b
            .column_by_name("weight")
            .and_then(|c| c.as_any().downcast_ref::<Float32Array>())
            .ok_or_else(|| invalid(&path, "no Float32 column `weight`"))?;
        for row in 0..b.num_rows() {
            let w = weight.value(row);
            if !w.is_finite() || feature.is_null(row) {
                return Err(invalid(
                    &path,
                    format!("row {row}: a null feature or a non-finite weight"),
                ));
            }
            let name = feature.value(row);
            let f = *index.entry(name.to_string()).or_insert_with(|| {
                names.push(name.to_string());
                (names.len() - 1) as u32
            });
            let i = items.index(item.get(row)).expect("collected above");
            triplets.0.push(i);
            triplets.1.push(f);
            triplets.2.push(w);
        }
    }
    // Sorted feature names, so the same features always get the same columns.
    let mut order: Vec<u32> = (0..names.len() as u32).collect();
    order.sort_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
    let mut rank = vec![0u32; names.len()];
    for (r, &f) in order.iter().enumerate() {
        rank[f as usize] = r as u32;
    }
    let cols: Vec<u32> = triplets.1.iter().map(|&f| rank[f as usize]).collect();
    let matrix = Csr::from_triplets(items.len(), names.len(), &triplets.0, &cols, &triplets.2);
    let features = order
        .into_iter()
        .map(|f| names[f as usize].clone())
        .collect();
    Ok(ItemFeatures {
        items,
        features,
        matrix,
    })
}

/// The features' rows in the dense indices of `items`; an item without
/// features gets an empty row, a featured item not in `items` is left out.
pub fn align(features: &ItemFeatures, items: &IdMap) -> Csr {
    let (mut r, mut c, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for own in 0..features.items.len() {
        if let Some(row) = items.index(features.items.id(own)) {
            let (cols, weights) = features.matrix.row(own);
            r.extend(std::iter::repeat_n(row, cols.len()));
            c.extend_from_slice(cols);
            v.extend_from_slice(weights);
        }
    }
    Csr::from_triplets(items.len(), features.features.len(), &r, &c, &v)
}

/// Reads the vocabulary and the vectorizer facts of an artifact folder.
pub fn read_vocabulary(dir: &Path) -> Result<(Vocabulary, Vectorizer), ArtifactError> {
    let path = dir.join(VOCABULARY_FILE);
    let (_, batches) = read_parquet(&path)?;
    let mut vocabulary = Vec::new();
    for b in &batches {
        let feature = string_column(b, "feature", &path)?;
        let df = b
            .column_by_name("df")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| invalid(&path, "no Int64 column `df`"))?;
        for row in 0..b.num_rows() {
            vocabulary.push((
                feature.value(row).to_string(),
                df.value(row).max(0) as usize,
            ));
        }
    }
    let vectorizer = read_json(&dir.join(VECTORIZER_FILE))?;
    Ok((vocabulary, vectorizer))
}

fn string_column<'a>(
    b: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a StringArray, ArtifactError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| invalid(path, format!("no Utf8 column `{name}`")))
}
