//! `item_item`: item-based co-occurrence similarity (cosine, Jaccard or BM25),
//! which needs no factorization. Its artifact adds `neighbors.parquet`: `item,
//! neighbor` (dense item indices, UInt32) and `score`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, UInt32Array};
use arrow::datatypes::{Float32Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Fit, Fitted, ModelKind, TrainData, Trained};
use crate::artifact::interactions;
use crate::artifact::model::{Columns, ModelFiles, values};
use crate::models::item_item::{self, ItemItemModel, NeighborSimilarity, Similarity};
use crate::models::{Csr, Recommender, StopFlag};
use crate::steps::spec::{Problem, between, whole};
use crate::steps::{StepError, memory};

pub const NEIGHBORS_FILE: &str = "neighbors.parquet";
/// The most neighbours the bounds accept per item.
pub const MAX_NEIGHBORS: usize = 10_000;

/// Item-based co-occurrence similarity: needs no factorization.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ItemItemSpec {
    /// `cosine`, `jaccard` or `bm25`.
    pub similarity: ItemSimilarity,
    /// Similar items kept per item.
    pub neighbors: usize,
    pub bm25_k1: f32,
    pub bm25_b: f32,
}

impl Default for ItemItemSpec {
    fn default() -> Self {
        Self {
            similarity: ItemSimilarity::Cosine,
            neighbors: 50,
            bm25_k1: 1.2,
            bm25_b: 0.75,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemSimilarity {
    #[default]
    Cosine,
    Jaccard,
    Bm25,
}

impl ItemItemSpec {
    fn similarity(&self) -> Similarity {
        match self.similarity {
            ItemSimilarity::Cosine => Similarity::Cosine,
            ItemSimilarity::Jaccard => Similarity::Jaccard,
            ItemSimilarity::Bm25 => Similarity::Bm25 {
                k1: self.bm25_k1,
                b: self.bm25_b,
            },
        }
    }
}

impl ModelKind for ItemItemSpec {
    const NAME: &'static str = "item_item";

    fn problems(&self) -> Vec<Problem> {
        [
            whole("neighbors", self.neighbors, MAX_NEIGHBORS),
            between("bm25_k1", self.bm25_k1, 0.0, 100.0),
            between("bm25_b", self.bm25_b, 0.0, 1.0),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Fits item-item neighbours after checking they fit in memory.
    fn fit(&self, data: &TrainData, stop: &StopFlag) -> Result<Fit, StepError> {
        let matrix = data.matrix;
        // Kept lists, the transposed matrix and a dense accumulator per thread.
        let items = matrix.n_cols as u64;
        let bytes = items * self.neighbors.min(matrix.n_cols) as u64 * 8
            + matrix.nnz() as u64 * 16
            + rayon::current_num_threads() as u64 * items * 4;
        memory::check(
            bytes,
            &format!(
                "item-item with {} neighbors for {items} items",
                self.neighbors
            ),
            "`neighbors`",
        )?;
        let neighbors = item_item::neighbors(matrix, self.similarity(), self.neighbors, stop)?;
        let report = json!({ "neighbor_pairs": neighbors.nnz() });
        let model = ItemItemModel {
            neighbors,
            user_items: matrix.clone(),
        };
        Ok(Fit {
            model: Box::new(model),
            report,
        })
    }

    fn load(artifact: &ModelFiles) -> Result<Fitted, StepError> {
        let (path, batches) = artifact.file(NEIGHBORS_FILE)?;
        let rows = values::<UInt32Type>(&batches, "item", &path)?;
        let cols = values::<UInt32Type>(&batches, "neighbor", &path)?;
        let scores = values::<Float32Type>(&batches, "score", &path)?;
        let n = artifact.items.len();
        if rows.iter().chain(&cols).any(|&i| i as usize >= n) {
            return Err(StepError::Data(format!(
                "{}: item index out of range",
                path.display()
            )));
        }
        let neighbors = Csr::from_triplets(n, n, &rows, &cols, &scores);
        // Users are scored through their training interactions.
        let user_items =
            interactions::load_with(&artifact.meta.trained_on, &artifact.users, &artifact.items)?;
        Ok(Box::new(ItemItemModel {
            neighbors,
            user_items,
        }))
    }
}

impl Trained for ItemItemModel {
    fn similarity(&self) -> Option<Box<dyn Recommender + '_>> {
        Some(Box::new(NeighborSimilarity(&self.neighbors)))
    }

    fn columns(&self) -> Result<Columns, StepError> {
        let n = &self.neighbors;
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
        Ok(Columns {
            files: vec![(NEIGHBORS_FILE, batch)],
            ..Columns::default()
        })
    }
}
