//! Content similarity: the cosine of two items' feature vectors (from
//! `vectorize`), which needs no interactions, so it relates new items from the
//! day they appear. A user's scores are the summed similarity of an item to the
//! items they interacted with (their profile · the item).

use super::{Csr, Recommender};

/// Items × features with unit-length rows, and the same transposed (each
/// feature's items) to find the items a query shares a feature with.
pub struct ContentModel {
    pub items: Csr,
    postings: Csr,
    /// Users × items: whose profile is which items.
    pub user_items: Csr,
}

impl ContentModel {
    /// From item feature rows (any scale: they are normalised here).
    pub fn new(mut items: Csr, user_items: Csr) -> Self {
        for r in 0..items.n_rows {
            let span = items.indptr[r]..items.indptr[r + 1];
            let norm = items.data[span.clone()]
                .iter()
                .map(|w| w * w)
                .sum::<f32>()
                .sqrt();
            if norm > 0.0 {
                items.data[span].iter_mut().for_each(|w| *w /= norm);
            }
        }
        let postings = items.transpose();
        Self {
            items,
            postings,
            user_items,
        }
    }

    /// Adds `weight · (x · x_j)` to `scores[j − lo]` for every item `j` in
    /// `lo..lo + scores.len()` that shares a feature with `x`.
    fn accumulate(&self, x: (&[u32], &[f32]), weight: f32, lo: usize, scores: &mut [f32]) {
        let hi = lo + scores.len();
        for (&f, &xf) in x.0.iter().zip(x.1) {
            let (items, weights) = self.postings.row(f as usize);
            let start = items.partition_point(|&j| (j as usize) < lo);
            let end = items.partition_point(|&j| (j as usize) < hi);
            for (&j, &xj) in items[start..end].iter().zip(&weights[start..end]) {
                let s = &mut scores[j as usize - lo];
                let so_far = if s.is_finite() { *s } else { 0.0 };
                *s = so_far + weight * xf * xj;
            }
        }
    }
}

/// Scores that stay −∞ share no feature with the query: unrelated, never listed.
impl Recommender for ContentModel {
    fn n_items(&self) -> usize {
        self.items.n_rows
    }

    fn score_block(&self, users: &[u32], range: std::ops::Range<usize>, out: &mut [f32]) {
        let n = range.len();
        for (&u, scores) in users.iter().zip(out.chunks_exact_mut(n.max(1))) {
            scores.fill(f32::NEG_INFINITY);
            if (u as usize) < self.user_items.n_rows {
                for &i in self.user_items.row(u as usize).0 {
                    self.accumulate(self.items.row(i as usize), 1.0, range.start, scores);
                }
            }
        }
    }
}

/// Item→item cosine over the features.
pub struct ContentSimilarity<'a>(pub &'a ContentModel);

impl Recommender for ContentSimilarity<'_> {
    fn n_items(&self) -> usize {
        self.0.items.n_rows
    }

    fn score_block(&self, rows: &[u32], range: std::ops::Range<usize>, out: &mut [f32]) {
        let n = range.len();
        for (&i, scores) in rows.iter().zip(out.chunks_exact_mut(n.max(1))) {
            scores.fill(f32::NEG_INFINITY);
            self.0
                .accumulate(self.0.items.row(i as usize), 1.0, range.start, scores);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_features_and_profiles_of_users() {
        // items 0 and 1 share feature 0; item 2 has feature 1 only; item 3 none.
        let items = Csr::from_triplets(4, 2, &[0, 1, 1, 2], &[0, 0, 1, 1], &[2.0, 1.0, 1.0, 3.0]);
        let users = Csr::from_triplets(1, 4, &[0], &[2], &[1.0]);
        let m = ContentModel::new(items, users);
        let mut out = vec![0f32; 4];
        ContentSimilarity(&m).score_block(&[0], 0..4, &mut out);
        let half = 0.5f32.sqrt();
        assert!((out[0] - 1.0).abs() < 1e-6 && (out[1] - half).abs() < 1e-6);
        assert_eq!(out[2..], [f32::NEG_INFINITY, f32::NEG_INFINITY]);
        // the user knows item 2 (feature 1): item 1 is related, item 0 is not
        m.score_block(&[0], 1..4, &mut out[..3]);
        assert!((out[0] - half).abs() < 1e-6 && (out[1] - 1.0).abs() < 1e-6);
        assert_eq!(out[2], f32::NEG_INFINITY);
    }
}
