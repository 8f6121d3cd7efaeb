//! `ease`: the closed-form item-item model ([`crate::models::ease`]), scored
//! as item-item is and stored in the same `neighbors.parquet`. Interactions
//! count as present or absent, as in the paper (values are ignored). It
//! inverts an items × items matrix, so it refuses more than `max_items` items.

use serde::{Deserialize, Serialize};

use super::item_item::{MAX_NEIGHBORS, binary_neighbor_fit, load_neighbors, present};
use super::{Fit, Fitted, ModelKind, TrainData};
use crate::artifact::model::ModelFiles;
use crate::models::StopFlag;
use crate::models::ease::{self, EaseError};
use crate::steps::spec::{Problem, between, whole};
use crate::steps::{StepError, memory};

/// The most items `max_items` may allow: at this size the fit takes 78 s on
/// two cores and 3 GiB for the inverse in float32, growing as n³ and n²;
/// beyond it, ALS is the model.
pub const ITEM_CEILING: usize = 20_000;

/// Closed-form item-item regression with an L2 penalty.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EaseSpec {
    /// The L2 penalty on the weights (added to the Gram matrix's diagonal).
    pub lambda: f32,
    /// EDLAE's dropout probability: an item's penalty grows by
    /// `dropout / (1 − dropout)` × its popularity (0: plain EASE).
    pub dropout: f32,
    /// Weights kept per item (default: every non-zero one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neighbors: Option<usize>,
    /// Refuse data with more items than this.
    pub max_items: usize,
    /// `f32` (twice as fast) or `f64` for the inverse.
    pub precision: Precision,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    F64,
}

impl Default for EaseSpec {
    /// λ as the kit's search chose on MovieLens 100K.
    fn default() -> Self {
        Self {
            lambda: 400.0,
            dropout: 0.0,
            neighbors: None,
            max_items: 10_000,
            precision: Precision::F32,
        }
    }
}

impl ModelKind for EaseSpec {
    const NAME: &'static str = "ease";

    fn problems(&self) -> Vec<Problem> {
        [
            between("lambda", self.lambda, f32::MIN_POSITIVE, 1e9)
                .map(|p| Problem::new(p.key, format!("{} (it must be positive)", p.message))),
            between("dropout", self.dropout, 0.0, 0.95),
            self.neighbors
                .and_then(|k| whole("neighbors", k, MAX_NEIGHBORS)),
            whole("max_items", self.max_items, ITEM_CEILING),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn fit(&self, data: &TrainData, stop: &StopFlag) -> Result<Fit, StepError> {
        let matrix = data.matrix;
        let n = matrix.n_cols;
        if n > self.max_items {
            return Err(StepError::Data(format!(
                "ease inverts an items × items matrix and the data has {n} items, more than \
                 max_items = {}: use model = \"als\" (or rp3beta with neighbors) for this \
                 many items, or raise max_items (at most {ITEM_CEILING})",
                self.max_items
            )));
        }
        let kept = self.neighbors.unwrap_or(n.saturating_sub(1));
        let float_bytes = match self.precision {
            Precision::F32 => 4,
            Precision::F64 => 8,
        };
        memory::check(
            ease::memory(n, kept, float_bytes) + matrix.nnz() as u64 * 16,
            &format!("ease for {n} items"),
            "`max_items`, `neighbors`",
        )?;
        let user_items = present(matrix);
        let (lambda, dropout) = (f64::from(self.lambda), f64::from(self.dropout));
        let keep = self.neighbors;
        let neighbors = match self.precision {
            Precision::F32 => ease::weights::<f32>(&user_items, lambda, dropout, keep, stop),
            Precision::F64 => ease::weights::<f64>(&user_items, lambda, dropout, keep, stop),
        }
        .map_err(|e| match e {
            EaseError::Stopped(s) => StepError::Stopped(s),
            e => StepError::Data(e.to_string()),
        })?;
        Ok(binary_neighbor_fit(neighbors, user_items))
    }

    fn load(artifact: &ModelFiles) -> Result<Fitted, StepError> {
        Ok(Box::new(load_neighbors(artifact, true)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Csr;

    #[test]
    fn more_items_than_max_items_is_refused_naming_als() {
        let m = Csr::from_triplets(2, 3, &[0, 0, 1], &[0, 1, 2], &[1.0; 3]);
        let spec = EaseSpec {
            max_items: 2,
            ..EaseSpec::default()
        };
        let data = TrainData {
            matrix: &m,
            item_features: None,
        };
        let Err(e) = spec.fit(&data, &StopFlag::default()) else {
            panic!("fitted 3 items with max_items = 2");
        };
        let e = e.to_string();
        assert!(
            e.contains("3 items") && e.contains("model = \"als\""),
            "{e}"
        );
        // Bounds: λ must be positive, dropout below 1, max_items at most the ceiling.
        let bad = EaseSpec {
            lambda: 0.0,
            dropout: 1.0,
            max_items: ITEM_CEILING + 1,
            ..EaseSpec::default()
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["lambda", "dropout", "max_items"]);
    }
}
