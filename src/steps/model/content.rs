//! `content`: item similarity by content alone, the cosine of the item-features
//! vectors of a `vectorize` step; no factorization, no interactions needed for
//! an item to get similar items. Its artifact adds `features.parquet`: `item,
//! feature` (dense indices, UInt32) and `weight`.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{FeatureUse, Fit, Fitted, ModelKind, TrainData, Trained};
use crate::artifact::interactions;
use crate::artifact::model::{Columns, ModelFiles, sparse_batch};
use crate::models::content::{ContentModel, ContentSimilarity};
use crate::models::{Recommender, StopFlag};
use crate::steps::StepError;

pub const FEATURES_FILE: &str = "features.parquet";
const FEATURE_COLUMNS: [&str; 3] = ["item", "feature", "weight"];

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
        let items = artifact.sparse(FEATURES_FILE, FEATURE_COLUMNS, None)?;
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
        let batch = sparse_batch(&self.items, FEATURE_COLUMNS)?;
        Ok(Columns {
            files: vec![(FEATURES_FILE, batch)],
            ..Columns::default()
        })
    }
}
