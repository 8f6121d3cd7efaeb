//! `content`: item similarity by content alone, the cosine of the item-features
//! vectors of a `vectorize` step; no factorization, no interactions needed for
//! an item to get similar items. Its artifact adds `features.parquet`: `item,
//! feature` (dense indices, UInt32) and `weight`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, UInt32Array};
use arrow::datatypes::{Float32Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{FeatureUse, Fit, Fitted, ModelKind, TrainData, Trained};
use crate::artifact::interactions;
use crate::artifact::model::{Columns, ModelFiles, values};
use crate::models::content::{ContentModel, ContentSimilarity};
use crate::models::{Csr, Recommender, StopFlag};
use crate::steps::StepError;

pub const FEATURES_FILE: &str = "features.parquet";

/// Content similarity; it has no keys of its own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContentSpec {}

impl ModelKind for ContentSpec {
    const NAME: &'static str = "content";
    const ITEM_FEATURES: FeatureUse = FeatureUse::Required;

    fn fit(&self, data: &TrainData, _stop: &StopFlag) -> Result<Fit, StepError> {
        let features = data.item_features.ok_or_else(|| {
            StepError::Data(
                "model `content` needs item features: add a `vectorize` step to `needs`".into(),
            )
        })?;
        let described = (0..features.n_rows)
            .filter(|&r| !features.row(r).0.is_empty())
            .count();
        let model = ContentModel::new(features.clone(), data.matrix.clone());
        Ok(Fit {
            model: Box::new(model),
            report: json!({ "items_with_features": described, "features": features.n_cols }),
        })
    }

    fn load(artifact: &ModelFiles) -> Result<Fitted, StepError> {
        let (path, batches) = artifact.file(FEATURES_FILE)?;
        let rows = values::<UInt32Type>(&batches, "item", &path)?;
        let cols = values::<UInt32Type>(&batches, "feature", &path)?;
        let weights = values::<Float32Type>(&batches, "weight", &path)?;
        let n = artifact.items.len();
        if rows.iter().any(|&i| i as usize >= n) {
            return Err(StepError::Data(format!(
                "{}: item index out of range",
                path.display()
            )));
        }
        let n_features = cols.iter().max().map_or(0, |&f| f as usize + 1);
        let items = Csr::from_triplets(n, n_features, &rows, &cols, &weights);
        // Users are scored through their training interactions.
        let user_items =
            interactions::load_with(&artifact.meta.trained_on, &artifact.users, &artifact.items)?;
        Ok(Box::new(ContentModel::new(items, user_items)))
    }
}

impl Trained for ContentModel {
    fn similarity(&self) -> Option<Box<dyn Recommender + '_>> {
        Some(Box::new(ContentSimilarity(self)))
    }

    fn columns(&self) -> Result<Columns, StepError> {
        let m = &self.items;
        let rows: Vec<u32> = (0..m.n_rows)
            .flat_map(|r| std::iter::repeat_n(r as u32, m.row(r).0.len()))
            .collect();
        let batch = RecordBatch::try_from_iter([
            ("item", Arc::new(UInt32Array::from(rows)) as ArrayRef),
            (
                "feature",
                Arc::new(UInt32Array::from(m.indices.clone())) as ArrayRef,
            ),
            (
                "weight",
                Arc::new(Float32Array::from(m.data.clone())) as ArrayRef,
            ),
        ])
        .map_err(|e| StepError::Data(e.to_string()))?;
        Ok(Columns {
            files: vec![(FEATURES_FILE, batch)],
            ..Columns::default()
        })
    }
}
