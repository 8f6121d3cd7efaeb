//! RP3beta (Paudel et al. 2017): how likely a random walk item → user → item
//! goes from one item to another, each one-step probability raised to `alpha`,
//! divided by the target item's popularity to the power `beta` so that the walk
//! does not always end at the most popular items:
//!
//! `w(i, j) = deg(i)^-α · deg(j)^-β · Σ_{u who has i and j} deg(u)^-α`, `w(i, i) = 0`.
//!
//! Interactions count as present or absent (values are ignored), and rows are
//! not normalised: the kit's anchor and Dacrema et al.'s implementation without
//! its optional normalisation. Scoring is item-item's: a user's score for `j`
//! is the sum of `w(i, j)` over the user's items.

use rayon::prelude::*;

use super::{Csr, StopFlag, Stopped};

/// The walk's weights from every item (items × items, self excluded), each
/// row cut to its `keep` largest when given, else every item reached.
pub fn neighbors(
    user_items: &Csr,
    alpha: f32,
    beta: f32,
    keep: Option<usize>,
    stop: &StopFlag,
) -> Result<Csr, Stopped> {
    let item_users = user_items.transpose();
    let n_items = item_users.n_rows;
    // Degrees of at least 1, so an empty row or column weighs nothing
    // rather than dividing by zero.
    let degree = |m: &Csr, r: usize| (m.indptr[r + 1] - m.indptr[r]).max(1) as f32;
    let walk = Walk {
        user_items,
        item_users: &item_users,
        user_step: (0..user_items.n_rows)
            .map(|u| degree(user_items, u).powf(-alpha))
            .collect(),
        item_step: (0..n_items)
            .map(|i| degree(&item_users, i).powf(-alpha))
            .collect(),
        penalty: (0..n_items)
            .map(|j| degree(&item_users, j).powf(-beta))
            .collect(),
    };
    // Two passes: the rows' lengths, then the rows written in place. Counting
    // costs less than the fresh pages of a second copy of the result.
    let lens: Vec<usize> = (0..n_items)
        .into_par_iter()
        .map_init(
            || vec![u32::MAX; n_items],
            |mark, i| {
                stop.check()?;
                let reached = walk.reached(i, mark);
                Ok(keep.map_or(reached, |k| reached.min(k)))
            },
        )
        .collect::<Result<_, _>>()?;
    Csr::from_row_lists(
        n_items,
        &lens,
        || vec![0f32; n_items],
        |acc, i, row| {
            stop.check()?;
            walk.row(i, acc, row);
            Ok(())
        },
    )
}

/// The walk's matrices and per-node weights.
struct Walk<'a> {
    user_items: &'a Csr,
    item_users: &'a Csr,
    user_step: Vec<f32>,
    item_step: Vec<f32>,
    penalty: Vec<f32>,
}

impl Walk<'_> {
    /// How many items other than `i` the walk reaches from `i`; `mark` holds
    /// no `i` before.
    fn reached(&self, i: usize, mark: &mut [u32]) -> usize {
        let stamp = i as u32;
        mark[i] = stamp;
        let mut reached = 0;
        for &u in self.item_users.row(i).0 {
            for &j in self.user_items.row(u as usize).0 {
                reached += usize::from(mark[j as usize] != stamp);
                mark[j as usize] = stamp;
            }
        }
        reached
    }

    /// Item `i`'s row into the empty `row`, in column order; `acc` is all
    /// zeros before and after.
    fn row(&self, i: usize, acc: &mut [f32], row: &mut Vec<(u32, f32)>) {
        let users = self.item_users.row(i).0;
        let mut reach = 0;
        for &u in users {
            let step = self.user_step[u as usize];
            let items = self.user_items.row(u as usize).0;
            reach += items.len();
            for &j in items {
                acc[j as usize] += step;
            }
        }
        let scale = self.item_step[i];
        // Every step is positive, so a reached item has a positive sum. A row
        // reaching many items is read off the accumulator whole, without a
        // branch per item; a sparse one walked again and sorted.
        if reach * 8 > acc.len() {
            row.resize(acc.len(), (0, 0.0));
            let mut len = 0;
            for (j, a) in acc.iter_mut().enumerate() {
                row[len] = (j as u32, *a * scale * self.penalty[j]);
                len += usize::from(*a > 0.0 && j != i);
                *a = 0.0;
            }
            row.truncate(len);
        } else {
            for &u in users {
                for &j in self.user_items.row(u as usize).0 {
                    let a = std::mem::take(&mut acc[j as usize]);
                    if a > 0.0 && j as usize != i {
                        row.push((j, a * scale * self.penalty[j as usize]));
                    }
                }
            }
            row.sort_unstable_by_key(|e| e.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{evaluate, planted_split};
    use crate::models::item_item::ItemItemModel;
    use crate::models::popular::Popular;

    fn weight(w: &Csr, i: usize, j: u32) -> Option<f32> {
        let (js, ws) = w.row(i);
        js.iter().position(|&x| x == j).map(|p| ws[p])
    }

    #[test]
    fn weights_of_a_tiny_matrix_by_hand() {
        // Users 0 and 1 have items 0 and 1; user 2 has items 1 and 2. Every
        // user has degree 2; items have 2, 3 and 1.
        let m = Csr::from_triplets(3, 3, &[0, 0, 1, 1, 2, 2], &[0, 1, 0, 1, 1, 2], &[5.0; 6]);
        let stop = StopFlag::default();
        let w = neighbors(&m, 1.0, 0.0, None, &stop).unwrap();
        assert_eq!(weight(&w, 0, 1), Some(0.5)); // 1/2 · (1/2 + 1/2)
        assert_eq!(weight(&w, 0, 2), None); // no user has both
        assert!((weight(&w, 1, 0).unwrap() - 1.0 / 3.0).abs() < 1e-7);
        assert!((weight(&w, 1, 2).unwrap() - 1.0 / 6.0).abs() < 1e-7);
        assert_eq!(weight(&w, 2, 1), Some(0.5));
        assert_eq!(weight(&w, 1, 1), None);
        // α = β = 1/2: 3^-½ · 1^-½ · 2^-½ from item 1 to item 2.
        let w = neighbors(&m, 0.5, 0.5, None, &stop).unwrap();
        assert!((weight(&w, 1, 2).unwrap() - 6f32.sqrt().recip()).abs() < 1e-6);
        // Keeping one neighbour keeps the largest.
        let w = neighbors(&m, 1.0, 0.0, Some(1), &stop).unwrap();
        assert_eq!(w.row(1).0, &[0]);
    }

    /// The formula against the walk itself: dense transition matrices, each
    /// entry raised to α, multiplied, divided by popularity^β. Rows reaching
    /// most items and rows reaching few are read off differently: both shapes.
    #[test]
    fn weights_equal_the_dense_walk() {
        assert_walk(7, 6, &|u, i| (u * 7 + i * 3) % 5 < 2);
        assert_walk(60, 90, &|u, i| {
            i == u || i == (u + 1) % 90 || i == (u + 30) % 90
        });
    }

    fn assert_walk(users: usize, items: usize, has: &dyn Fn(usize, usize) -> bool) {
        let (alpha, beta) = (0.8f64, 0.4f64);
        let cells: Vec<(u32, u32)> = (0..users)
            .flat_map(|u| (0..items).map(move |i| (u, i)))
            .filter(|&(u, i)| has(u, i))
            .map(|(u, i)| (u as u32, i as u32))
            .collect();
        let (rows, cols): (Vec<u32>, Vec<u32>) = cells.iter().copied().unzip();
        let m = Csr::from_triplets(users, items, &rows, &cols, &vec![1.0; rows.len()]);
        let has = |u: usize, i: usize| has(u, i) as u8 as f64;
        let deg_u = |u: usize| (0..items).map(|i| has(u, i)).sum::<f64>().max(1.0);
        let deg_i = |i: usize| (0..users).map(|u| has(u, i)).sum::<f64>().max(1.0);
        let stop = StopFlag::default();
        let w = neighbors(&m, alpha as f32, beta as f32, None, &stop).unwrap();
        for i in 0..items {
            for j in 0..items {
                let walk: f64 = (0..users)
                    .map(|u| {
                        (has(u, i) / deg_i(i)).powf(alpha) * (has(u, j) / deg_u(u)).powf(alpha)
                    })
                    .sum::<f64>()
                    / deg_i(j).powf(beta);
                let expected = if i == j { 0.0 } else { walk };
                // An item the walk does not reach has no entry at all.
                let ours = weight(&w, i, j as u32);
                assert_eq!(ours.is_some(), expected > 0.0, "w({i}, {j}) = {ours:?}");
                let ours = ours.map_or(0.0, f64::from);
                assert!(
                    (ours - expected).abs() < 1e-6,
                    "w({i}, {j}) = {ours}, walk {expected}"
                );
            }
        }
        // Cut to two, each row keeps its two largest, still in column order.
        let cut = neighbors(&m, alpha as f32, beta as f32, Some(2), &stop).unwrap();
        for i in 0..items {
            let mut best: Vec<(u32, f32)> = w
                .row(i)
                .0
                .iter()
                .copied()
                .zip(w.row(i).1.iter().copied())
                .collect();
            best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            best.truncate(2);
            best.sort_by_key(|e| e.0);
            let kept: Vec<(u32, f32)> = cut
                .row(i)
                .0
                .iter()
                .copied()
                .zip(cut.row(i).1.iter().copied())
                .collect();
            assert_eq!(kept, best, "row {i}");
        }
    }

    /// On data with planted topics, the walk finds what popularity cannot.
    #[test]
    fn rp3beta_beats_popularity_on_held_out_data() {
        let (train, test) = planted_split();
        let stop = StopFlag::default();
        let pop = evaluate(&Popular::fit(&train, false), &train, &test, 10, &stop).unwrap();
        let model = ItemItemModel {
            neighbors: neighbors(&train, 0.8, 0.4, None, &stop).unwrap(),
            user_items: train.clone(),
        };
        let rp3 = evaluate(&model, &train, &test, 10, &stop).unwrap();
        assert!(
            rp3.precision > 1.3 * pop.precision,
            "rp3beta {rp3:?} vs popularity {pop:?}"
        );
        assert!(
            rp3.ndcg > 1.3 * pop.ndcg,
            "rp3beta {rp3:?} vs popularity {pop:?}"
        );
    }
}
