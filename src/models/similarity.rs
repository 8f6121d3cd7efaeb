//! Item→item similarity from factors: the cosine of the angle between two items'
//! vectors, scored for a block of items with one GEMM.

use super::Recommender;
use super::dense::{gemm_nt, normalize_rows};

/// Scores every item against each query item by cosine similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct CosineSimilarity {
    k: usize,
    unit: Vec<f32>,
}

impl CosineSimilarity {
    /// From row-major item vectors (items × k).
    pub fn new(vectors: &[f32], k: usize) -> Self {
        let mut unit = vectors.to_vec();
        normalize_rows(&mut unit, k);
        Self { k, unit }
    }
}

impl Recommender for CosineSimilarity {
    fn n_items(&self) -> usize {
        self.unit.len().checked_div(self.k).unwrap_or(0)
    }

    fn score_block(&self, rows: &[u32], items: std::ops::Range<usize>, out: &mut [f32]) {
        let k = self.k;
        let mut q = Vec::with_capacity(rows.len() * k);
        for &r in rows {
            q.extend_from_slice(&self.unit[r as usize * k..(r as usize + 1) * k]);
        }
        gemm_nt(&q, &self.unit[items.start * k..items.end * k], k, out);
    }

    fn item_tile(&self) -> usize {
        super::dense::DENSE_ITEM_TILE
    }

    fn symmetric_vectors(&self) -> Option<(&[f32], usize)> {
        Some((&self.unit, self.k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_vectors_score_one() {
        let sim = CosineSimilarity::new(&[1.0, 0.0, 2.0, 0.0, 0.0, 3.0], 2);
        let mut out = vec![0f32; 3];
        sim.score_block(&[0], 0..3, &mut out);
        assert_eq!(out, vec![1.0, 1.0, 0.0]);
    }
}
