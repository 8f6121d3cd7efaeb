//! `rp3beta`: item-to-item weights of a popularity-penalised random walk
//! ([`crate::models::rp3beta`]), scored as item-item is and stored in the same
//! `neighbors.parquet`.

use serde::{Deserialize, Serialize};

use super::item_item::{
    MAX_NEIGHBORS, binary_neighbor_fit, check_neighbor_memory, load_neighbors, present,
};
use super::{Fit, Fitted, ModelKind, TrainData};
use crate::artifact::model::ModelFiles;
use crate::models::{StopFlag, rp3beta};
use crate::steps::StepError;
use crate::steps::spec::{Problem, between, whole};

/// A random walk item → user → item, penalised by the target's popularity.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rp3BetaSpec {
    /// Each one-step probability is raised to this (1: the plain walk).
    pub alpha: f32,
    /// The target item's popularity is divided out to this power (0: none).
    pub beta: f32,
    /// Similar items kept per item (default: every item the walk reaches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neighbors: Option<usize>,
}

impl Default for Rp3BetaSpec {
    /// The settings the kit's search chose on MovieLens 100K.
    fn default() -> Self {
        Self {
            alpha: 0.8,
            beta: 0.4,
            neighbors: None,
        }
    }
}

impl ModelKind for Rp3BetaSpec {
    const NAME: &'static str = "rp3beta";

    fn problems(&self) -> Vec<Problem> {
        [
            between("alpha", self.alpha, 0.0, 4.0),
            between("beta", self.beta, 0.0, 4.0),
            self.neighbors
                .and_then(|k| whole("neighbors", k, MAX_NEIGHBORS)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Fits the walk's weights after checking they fit in memory.
    fn fit(&self, data: &TrainData, stop: &StopFlag) -> Result<Fit, StepError> {
        let matrix = data.matrix;
        let kept = self.neighbors.unwrap_or(matrix.n_cols.saturating_sub(1));
        check_neighbor_memory(matrix, kept, &format!("rp3beta keeping {kept} neighbours"))?;
        let neighbors = rp3beta::neighbors(matrix, self.alpha, self.beta, self.neighbors, stop)?;
        // The walk ignores values: so does scoring.
        Ok(binary_neighbor_fit(neighbors, present(matrix)))
    }

    fn load(artifact: &ModelFiles) -> Result<Fitted, StepError> {
        Ok(Box::new(load_neighbors(artifact, true)?))
    }
}
