//! `item_item`: item-based co-occurrence similarity (cosine, Jaccard or BM25),
//! which needs no factorization. Its artifact adds `neighbors.parquet`: `item,
//! neighbor` (dense item indices, UInt32) and `score`.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Fit, Fitted, ModelKind, TrainData, Trained};
use crate::artifact::interactions;
use crate::artifact::model::{Columns, ModelFiles, sparse_batch};
use crate::models::item_item::{self, ItemItemModel, NeighborSimilarity, Similarity};
use crate::models::{Csr, Recommender, StopFlag};
use crate::steps::spec::{Problem, between, whole};
use crate::steps::{StepError, memory};

pub const NEIGHBORS_FILE: &str = "neighbors.parquet";
const NEIGHBOR_COLUMNS: [&str; 3] = ["item", "neighbor", "score"];
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
        check_neighbor_memory(
            matrix,
            self.neighbors,
            &format!("item-item with {} neighbors", self.neighbors),
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
        Ok(Box::new(load_neighbors(artifact, false)?))
    }
}

/// Refuses a neighbour model that would not fit in memory: `kept` lists of
/// each item (8 bytes an entry), the transposed matrix and a dense accumulator
/// per thread.
pub fn check_neighbor_memory(matrix: &Csr, kept: usize, what: &str) -> Result<(), StepError> {
    let items = matrix.n_cols as u64;
    let bytes = items * kept.min(matrix.n_cols) as u64 * 8
        + matrix.nnz() as u64 * 16
        + rayon::current_num_threads() as u64 * items * 4;
    memory::check(bytes, &format!("{what} for {items} items"), "`neighbors`")
}

/// The interactions as present or absent, as the walk and EASE read them.
pub fn present(matrix: &Csr) -> Csr {
    let mut binary = matrix.clone();
    binary.data.fill(1.0);
    binary
}

/// A fitted neighbour model over present-or-absent interactions (`rp3beta`,
/// `ease`): scored as item-item is, with its pair count as the report.
pub fn binary_neighbor_fit(neighbors: Csr, user_items: Csr) -> Fit {
    Fit {
        report: json!({ "neighbor_pairs": neighbors.nnz() }),
        model: Box::new(ItemItemModel {
            neighbors,
            user_items,
        }),
    }
}

/// A model scored through item neighbours, read back: its neighbours, and the
/// users' training interactions (present or absent when `binary`).
pub fn load_neighbors(artifact: &ModelFiles, binary: bool) -> Result<ItemItemModel, StepError> {
    let n = artifact.items.len();
    let neighbors = artifact.sparse(NEIGHBORS_FILE, NEIGHBOR_COLUMNS, Some(n))?;
    let mut user_items =
        interactions::load_with(&artifact.meta.trained_on, &artifact.users, &artifact.items)?;
    if binary {
        user_items.data.fill(1.0);
    }
    Ok(ItemItemModel {
        neighbors,
        user_items,
    })
}

impl Trained for ItemItemModel {
    fn similarity(&self) -> Option<Box<dyn Recommender + '_>> {
        Some(Box::new(NeighborSimilarity(&self.neighbors)))
    }

    fn columns(&self) -> Result<Columns, StepError> {
        let batch = sparse_batch(&self.neighbors, NEIGHBOR_COLUMNS)?;
        Ok(Columns {
            files: vec![(NEIGHBORS_FILE, batch)],
            ..Columns::default()
        })
    }
}
