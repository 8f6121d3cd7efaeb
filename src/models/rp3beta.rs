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
    let user_step: Vec<f32> = (0..user_items.n_rows)
        .map(|u| degree(user_items, u).powf(-alpha))
        .collect();
    let item_step: Vec<f32> = (0..n_items)
        .map(|i| degree(&item_users, i).powf(-alpha))
        .collect();
    let penalty: Vec<f32> = (0..n_items)
        .map(|j| degree(&item_users, j).powf(-beta))
        .collect();
    let rows: Vec<(Vec<u32>, Vec<f32>)> = (0..n_items)
        .into_par_iter()
        .map_init(
            || vec![0f32; n_items],
            |acc, i| {
                if stop.is_stopped() {
                    return Err(Stopped);
                }
                let mut touched = Vec::new();
                for &u in item_users.row(i).0 {
                    for &j in user_items.row(u as usize).0 {
                        if acc[j as usize] == 0.0 {
                            touched.push(j);
                        }
                        acc[j as usize] += user_step[u as usize];
                    }
                }
                // Rows come out in column order: a row reaching many items is
                // read off the accumulator in order, a sparse one sorted.
                if touched.len() * 8 > n_items {
                    touched.clear();
                    touched.extend((0..n_items as u32).filter(|&j| acc[j as usize] > 0.0));
                } else {
                    touched.sort_unstable();
                }
                let scale = item_step[i];
                let weigh = |j: u32| acc[j as usize] * scale * penalty[j as usize];
                let js: Vec<u32> = touched
                    .iter()
                    .copied()
                    .filter(|&j| j as usize != i)
                    .collect();
                let row: (Vec<u32>, Vec<f32>) = match keep.filter(|&k| k < js.len()) {
                    None => {
                        let ws = js.iter().map(|&j| weigh(j)).collect();
                        (js, ws)
                    }
                    Some(k) => {
                        let mut row: Vec<(u32, f32)> = js.iter().map(|&j| (j, weigh(j))).collect();
                        row.select_nth_unstable_by(k, |a, b| {
                            b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
                        });
                        row.truncate(k);
                        row.sort_unstable_by_key(|e| e.0);
                        row.into_iter().unzip()
                    }
                };
                for &j in &touched {
                    acc[j as usize] = 0.0;
                }
                Ok(row)
            },
        )
        .collect::<Result<_, _>>()?;
    Ok(Csr::from_rows(n_items, rows))
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
    /// entry raised to α, multiplied, divided by popularity^β.
    #[test]
    fn weights_equal_the_dense_walk() {
        let (users, items, alpha, beta) = (7usize, 6usize, 0.8f64, 0.4f64);
        let mut cells = Vec::new();
        for u in 0..users {
            for i in 0..items {
                if (u * 7 + i * 3) % 5 < 2 {
                    cells.push((u as u32, i as u32));
                }
            }
        }
        let (rows, cols): (Vec<u32>, Vec<u32>) = cells.iter().copied().unzip();
        let m = Csr::from_triplets(users, items, &rows, &cols, &vec![1.0; rows.len()]);
        let has = |u: usize, i: usize| cells.contains(&(u as u32, i as u32)) as u8 as f64;
        let deg_u = |u: usize| (0..items).map(|i| has(u, i)).sum::<f64>().max(1.0);
        let deg_i = |i: usize| (0..users).map(|u| has(u, i)).sum::<f64>().max(1.0);
        let w = neighbors(&m, alpha as f32, beta as f32, None, &StopFlag::default()).unwrap();
        for i in 0..items {
            for j in 0..items {
                let walk: f64 = (0..users)
                    .map(|u| {
                        (has(u, i) / deg_i(i)).powf(alpha) * (has(u, j) / deg_u(u)).powf(alpha)
                    })
                    .sum::<f64>()
                    / deg_i(j).powf(beta);
                let ours = weight(&w, i, j as u32).map_or(0.0, f64::from);
                let expected = if i == j { 0.0 } else { walk };
                assert!(
                    (ours - expected).abs() < 1e-6,
                    "w({i}, {j}) = {ours}, walk {expected}"
                );
            }
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
