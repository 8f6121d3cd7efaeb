//! Offline evaluation: hold-out splits and ranking metrics at `k`, with the
//! protocol of the benchmark anchors (`../shared/bench/anchors.py`): a user is
//! evaluated when it has at least one held-out positive and one training row;
//! training items are excluded from its list; gains are binary.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::models::{Csr, Recommender, StopFlag, Stopped};
use crate::topn::{self, Selection};

/// Mean metrics over the evaluated users.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Metrics {
    pub k: usize,
    pub users: usize,
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub map: f64,
    /// Distinct items in all evaluated users' lists over all items.
    pub coverage: f64,
}

/// The deepest cut-off an evaluation scores.
pub const MAX_K: usize = 1000;

/// A figure of [`Metrics`] a pipeline can name (`metric = "ndcg"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    #[default]
    Ndcg,
    Precision,
    Recall,
    Map,
}

impl Metrics {
    pub fn get(&self, name: MetricName) -> f64 {
        match name {
            MetricName::Ndcg => self.ndcg,
            MetricName::Precision => self.precision,
            MetricName::Recall => self.recall,
            MetricName::Map => self.map,
        }
    }
}

/// Splits the cells of `m` into train and test, `round(fraction · nnz)` of them
/// chosen at random (seeded) for test.
pub fn split_random(m: &Csr, fraction: f64, seed: u64) -> (Csr, Csr) {
    let mut order: Vec<usize> = (0..m.nnz()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_test = (fraction * m.nnz() as f64).round() as usize;
    let mut is_test = vec![false; m.nnz()];
    for &i in &order[..n_test.min(order.len())] {
        is_test[i] = true;
    }
    split_by(m, &is_test)
}

/// Splits by a per-cell flag (cells in CSR order).
pub fn split_by(m: &Csr, is_test: &[bool]) -> (Csr, Csr) {
    let mut parts = [
        (Vec::new(), Vec::new(), Vec::new()),
        (Vec::new(), Vec::new(), Vec::new()),
    ];
    for r in 0..m.n_rows {
        for p in m.indptr[r]..m.indptr[r + 1] {
            let part = &mut parts[usize::from(is_test[p])];
            part.0.push(r as u32);
            part.1.push(m.indices[p]);
            part.2.push(m.data[p]);
        }
    }
    let [train, test] = parts;
    (
        Csr::from_triplets(m.n_rows, m.n_cols, &train.0, &train.1, &train.2),
        Csr::from_triplets(m.n_rows, m.n_cols, &test.0, &test.1, &test.2),
    )
}

/// Ranks items for every evaluated user (train items excluded) and scores the lists
/// against `test`.
pub fn evaluate(
    model: &dyn Recommender,
    train: &Csr,
    test: &Csr,
    k: usize,
    stop: &StopFlag,
) -> Result<Metrics, Stopped> {
    let users: Vec<u32> = (0..test.n_rows as u32)
        .filter(|&u| {
            !test.row(u as usize).0.is_empty()
                && (u as usize) < train.n_rows
                && !train.row(u as usize).0.is_empty()
        })
        .collect();
    let selection = Selection {
        k,
        seen: Some(train),
        ..Selection::default()
    };
    // Users are ranked a chunk at a time, so the lists of all users are never held
    // at once: memory stays that of one chunk however many users are evaluated.
    let mut sums = [0f64; 4];
    let mut shown = vec![false; model.n_items()];
    for chunk in users.chunks(EVAL_CHUNK) {
        let lists = topn::select_block(model, chunk, &selection, stop)?;
        let per_user: Vec<[f64; 4]> = chunk
            .par_iter()
            .zip(&lists)
            .map(|(&u, list)| user_metrics(list, test.row(u as usize).0, k))
            .collect();
        for m in per_user {
            sums.iter_mut().zip(m).for_each(|(s, v)| *s += v);
        }
        for s in lists.iter().flatten() {
            shown[s.item as usize] = true;
        }
    }
    let n = users.len().max(1) as f64;
    Ok(Metrics {
        k,
        users: users.len(),
        precision: sums[0] / n,
        recall: sums[1] / n,
        ndcg: sums[2] / n,
        map: sums[3] / n,
        coverage: shown.iter().filter(|&&s| s).count() as f64 / shown.len().max(1) as f64,
    })
}

/// Users ranked per call of the top-N selection in [`evaluate`]. Ranking all
/// users in one call held every list at once and made evaluation the peak of the
/// benchmark run (124 MB, against 119 MB for fit and scoring on the 5M set).
const EVAL_CHUNK: usize = 4096;

/// Precision, recall, nDCG and average precision of one list against the user's
/// sorted `relevant` items.
fn user_metrics(list: &[topn::Scored], relevant: &[u32], k: usize) -> [f64; 4] {
    let (mut hits, mut dcg, mut ap) = (0usize, 0f64, 0f64);
    for (rank, s) in list.iter().enumerate() {
        if relevant.binary_search(&s.item).is_ok() {
            hits += 1;
            dcg += 1.0 / ((rank + 2) as f64).log2();
            ap += hits as f64 / (rank + 1) as f64;
        }
    }
    let ideal_n = relevant.len().min(k);
    let idcg: f64 = (0..ideal_n).map(|r| 1.0 / ((r + 2) as f64).log2()).sum();
    [
        hits as f64 / k as f64,
        hits as f64 / relevant.len() as f64,
        if idcg > 0.0 { dcg / idcg } else { 0.0 },
        if ideal_n > 0 {
            ap / ideal_n as f64
        } else {
            0.0
        },
    ]
}

/// A held-out split of generated data with planted topics (800 users, 300
/// items), on which a model must beat popularity.
#[cfg(test)]
pub(crate) fn planted_split() -> (Csr, Csr) {
    let data = crate::synth::generate(&crate::synth::SynthSpec {
        users: 800,
        items: 300,
        events: 16_000,
        ..Default::default()
    });
    let col = |name: &str| -> Vec<u32> {
        let a = data.interactions.column_by_name(name).unwrap();
        a.as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .values()
            .iter()
            .map(|&v| (v - 1) as u32)
            .collect()
    };
    let (rows, cols) = (col("user_id"), col("item_id"));
    let m = Csr::from_triplets(800, 300, &rows, &cols, &vec![1.0; rows.len()]);
    split_random(&m, 0.2, 42)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::als::{self, AlsParams};
    use crate::models::popular::Popular;

    #[test]
    fn perfect_model_scores_one() {
        // Each user's single test item is the only unseen item with a high score.
        let train = Csr::from_triplets(2, 3, &[0, 1], &[0, 1], &[1.0, 1.0]);
        let test = Csr::from_triplets(2, 3, &[0, 1], &[2, 2], &[1.0, 1.0]);
        let model = Popular {
            scores: vec![0.0, 0.0, 5.0],
        };
        let m = evaluate(&model, &train, &test, 1, &StopFlag::default()).unwrap();
        assert_eq!(
            (m.users, m.precision, m.recall, m.ndcg, m.map),
            (2, 1.0, 1.0, 1.0, 1.0)
        );
    }

    #[test]
    fn split_keeps_every_cell_once() {
        let m = Csr::from_triplets(3, 4, &[0, 0, 1, 2, 2], &[0, 1, 2, 3, 0], &[1.0; 5]);
        let (train, test) = split_random(&m, 0.4, 7);
        assert_eq!((train.nnz(), test.nnz()), (3, 2));
        let mut cells = Vec::new();
        for part in [&train, &test] {
            for r in 0..3 {
                cells.extend(part.row(r).0.iter().map(|&c| (r, c)));
            }
        }
        cells.sort();
        assert_eq!(cells, vec![(0, 0), (0, 1), (1, 2), (2, 0), (2, 3)]);
    }

    /// On data with planted topics, ALS must find the structure popularity cannot.
    #[test]
    fn als_beats_popularity_on_held_out_data() {
        let (train, test) = planted_split();
        let stop = StopFlag::default();
        let pop = evaluate(&Popular::fit(&train, false), &train, &test, 10, &stop).unwrap();
        let params = AlsParams {
            factors: 32,
            iterations: 10,
            ..AlsParams::default()
        };
        let (model, _) = als::fit(&train, &params, &stop).unwrap();
        let als = evaluate(&model, &train, &test, 10, &stop).unwrap();
        assert!(
            als.precision > 1.3 * pop.precision,
            "als {als:?} vs popularity {pop:?}"
        );
        assert!(
            als.ndcg > 1.3 * pop.ndcg,
            "als {als:?} vs popularity {pop:?}"
        );
    }
}
