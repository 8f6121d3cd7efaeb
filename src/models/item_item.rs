//! Item-based collaborative filtering without a trained model: two items are
//! similar when the same users interacted with both (as implicit's
//! ItemItemRecommender). Each item keeps its `neighbors` most similar items; a
//! user's score for an item is the sum of its similarities to the user's items,
//! weighted by the user's values.

use rayon::prelude::*;

use super::{Csr, Recommender, StopFlag, Stopped};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Similarity {
    /// Dot product of the items' user vectors over the product of their norms.
    Cosine,
    /// Shared users over users of either item (values ignored).
    Jaccard,
    /// Dot product of BM25-weighted user vectors (long user histories count less).
    Bm25 { k1: f32, b: f32 },
}

/// The top `neighbors` similar items of every item (items × items, self excluded).
pub fn neighbors(
    user_items: &Csr,
    similarity: Similarity,
    neighbors: usize,
    stop: &StopFlag,
) -> Result<Csr, Stopped> {
    let weighted = match similarity {
        Similarity::Bm25 { k1, b } => bm25(user_items, k1, b),
        Similarity::Jaccard => Csr {
            data: vec![1.0; user_items.nnz()],
            ..user_items.clone()
        },
        Similarity::Cosine => user_items.clone(),
    };
    let item_users = weighted.transpose();
    let n_items = item_users.n_rows;
    let norms: Vec<f32> = (0..n_items)
        .map(|i| match similarity {
            Similarity::Cosine => item_users
                .row(i)
                .1
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt(),
            _ => item_users.row(i).1.iter().sum::<f32>(),
        })
        .collect();
    let lists: Vec<Vec<(u32, f32)>> = (0..n_items)
        .into_par_iter()
        .map_init(
            || vec![0f32; n_items],
            |acc, i| {
                if stop.is_stopped() {
                    return Err(Stopped);
                }
                let mut touched = Vec::new();
                let (users, w_iu) = item_users.row(i);
                for (&u, &wi) in users.iter().zip(w_iu) {
                    let (items, w_uj) = weighted.row(u as usize);
                    for (&j, &wj) in items.iter().zip(w_uj) {
                        if acc[j as usize] == 0.0 {
                            touched.push(j);
                        }
                        acc[j as usize] += wi * wj;
                    }
                }
                let mut scored: Vec<(u32, f32)> = touched
                    .iter()
                    .filter(|&&j| j as usize != i)
                    .map(|&j| {
                        let dot = acc[j as usize];
                        let s = match similarity {
                            Similarity::Cosine => {
                                dot / (norms[i] * norms[j as usize]).max(f32::MIN_POSITIVE)
                            }
                            Similarity::Jaccard => {
                                dot / (norms[i] + norms[j as usize] - dot).max(1.0)
                            }
                            Similarity::Bm25 { .. } => dot,
                        };
                        (j, s)
                    })
                    .collect();
                for &j in &touched {
                    acc[j as usize] = 0.0;
                }
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                scored.truncate(neighbors);
                Ok(scored)
            },
        )
        .collect::<Result<_, _>>()?;
    let (mut rows, mut cols, mut vals) = (Vec::new(), Vec::new(), Vec::new());
    for (i, list) in lists.iter().enumerate() {
        for &(j, s) in list {
            rows.push(i as u32);
            cols.push(j);
            vals.push(s);
        }
    }
    Ok(Csr::from_triplets(n_items, n_items, &rows, &cols, &vals))
}

/// BM25 weights of a user×item matrix, as implicit's `bm25_weight` applied to the
/// item×user matrix: a user's row is normalised by its length against the mean.
fn bm25(m: &Csr, k1: f32, b: f32) -> Csr {
    let n_users = m.n_rows.max(1) as f32;
    let mut df = vec![0f32; m.n_cols];
    for &i in &m.indices {
        df[i as usize] += 1.0;
    }
    let idf: Vec<f32> = df
        .iter()
        .map(|&d| (n_users / (1.0 + d)).ln().max(0.0))
        .collect();
    let lengths: Vec<f32> = (0..m.n_rows).map(|u| m.row(u).1.iter().sum()).collect();
    let mean = lengths.iter().sum::<f32>() / n_users;
    let mut out = m.clone();
    for (u, &len) in lengths.iter().enumerate() {
        let norm = k1 * (1.0 - b + b * len / mean.max(f32::MIN_POSITIVE));
        for p in m.indptr[u]..m.indptr[u + 1] {
            let v = m.data[p];
            out.data[p] = v * (k1 + 1.0) / (norm + v) * idf[m.indices[p] as usize];
        }
    }
    out
}

/// User scores from item neighbours: `Σ_{i ∈ user} value_ui · sim(i, j)`.
pub struct ItemItemModel {
    pub neighbors: Csr,
    pub user_items: Csr,
}

impl Recommender for ItemItemModel {
    fn n_items(&self) -> usize {
        self.neighbors.n_cols
    }

    /// Items no neighbour of the user's items reaches score −∞: lists can be shorter
    /// than asked rather than padded with arbitrary items.
    fn score_block(&self, rows: &[u32], range: std::ops::Range<usize>, out: &mut [f32]) {
        let n = range.len();
        for (&u, scores) in rows.iter().zip(out.chunks_exact_mut(n.max(1))) {
            scores.fill(f32::NEG_INFINITY);
            if (u as usize) >= self.user_items.n_rows {
                continue;
            }
            let (items, values) = self.user_items.row(u as usize);
            for (&i, &v) in items.iter().zip(values) {
                let (js, sims) = self.neighbors.row(i as usize);
                for (&j, &s) in js.iter().zip(sims) {
                    let slot = &mut scores[j as usize];
                    *slot = if slot.is_finite() {
                        *slot + v * s
                    } else {
                        v * s
                    };
                }
            }
        }
    }
}

/// Item→item scores straight from the neighbour lists.
pub struct NeighborSimilarity<'a>(pub &'a Csr);

impl Recommender for NeighborSimilarity<'_> {
    fn n_items(&self) -> usize {
        self.0.n_cols
    }

    fn score_block(&self, rows: &[u32], range: std::ops::Range<usize>, out: &mut [f32]) {
        let n = range.len();
        for (&i, scores) in rows.iter().zip(out.chunks_exact_mut(n.max(1))) {
            scores.fill(f32::NEG_INFINITY);
            let (js, sims) = self.0.row(i as usize);
            for (&j, &s) in js.iter().zip(sims) {
                if range.contains(&(j as usize)) {
                    scores[j as usize - range.start] = s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_and_jaccard_of_a_tiny_matrix() {
        // users 0,1 share items 0 and 1; user 2 has items 1 and 2.
        let m = Csr::from_triplets(3, 3, &[0, 0, 1, 1, 2, 2], &[0, 1, 0, 1, 1, 2], &[1.0; 6]);
        let stop = StopFlag::default();
        let cos = neighbors(&m, Similarity::Cosine, 5, &stop).unwrap();
        // items 0 and 1: dot 2, norms √2 and √3.
        let (js, s) = cos.row(0);
        assert_eq!(js, &[1]);
        assert!((s[0] - 2.0 / (2f32.sqrt() * 3f32.sqrt())).abs() < 1e-6);
        let jac = neighbors(&m, Similarity::Jaccard, 5, &stop).unwrap();
        // items 1 and 2: 1 shared user of 3 distinct.
        let (js, s) = jac.row(2);
        assert_eq!((js, s), (&[1u32][..], &[1.0f32 / 3.0][..]));
        assert!(jac.row(0).0.iter().all(|&j| j != 0), "no self-similarity");
    }

    #[test]
    fn neighbours_are_capped_and_best_first() {
        let m = Csr::from_triplets(2, 4, &[0, 0, 0, 0, 1, 1], &[0, 1, 2, 3, 0, 1], &[1.0; 6]);
        let n = neighbors(&m, Similarity::Cosine, 1, &StopFlag::default()).unwrap();
        assert_eq!(n.row(0).0, &[1]);
    }
}
