//! Most-popular items: the baseline every learned model has to beat.

use super::{Csr, Recommender};

/// Item scores shared by all users.
#[derive(Debug, Clone, PartialEq)]
pub struct Popular {
    pub scores: Vec<f32>,
}

impl Popular {
    /// Scores each item by its number of distinct users (`by_value = false`) or by
    /// the sum of its interaction values.
    pub fn fit(interactions: &Csr, by_value: bool) -> Self {
        let mut scores = vec![0f32; interactions.n_cols];
        for (&item, &value) in interactions.indices.iter().zip(&interactions.data) {
            scores[item as usize] += if by_value { value } else { 1.0 };
        }
        Self { scores }
    }
}

impl Recommender for Popular {
    fn n_items(&self) -> usize {
        self.scores.len()
    }

    fn score_block(&self, _rows: &[u32], items: std::ops::Range<usize>, out: &mut [f32]) {
        let tile = &self.scores[items];
        for row in out.chunks_exact_mut(tile.len().max(1)) {
            row.copy_from_slice(tile);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_users_or_sums_values() {
        let m = Csr::from_triplets(3, 3, &[0, 1, 2, 0], &[0, 0, 1, 0], &[2.0, 1.0, 5.0, 1.0]);
        assert_eq!(Popular::fit(&m, false).scores, vec![2.0, 1.0, 0.0]);
        assert_eq!(Popular::fit(&m, true).scores, vec![4.0, 5.0, 0.0]);
    }
}
