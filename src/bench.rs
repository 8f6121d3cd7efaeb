//! `recpipe bench`: times recpipe's ALS on the exact split the anchor script wrote
//! (`anchors.py --write-split`) with the anchors' protocol, so the two can be
//! compared as ratios from one run on one machine.
//!
//! Protocol (as `../shared/bench/anchors.py`): positives are rows with
//! `rating ≥ 4` (or every row), weighted by their rating; seen = every training
//! row; relevant = test positives; top-10 lists for all users and all items.

use std::path::Path;
use std::time::Instant;

use arrow::array::{Array, BooleanArray, Float32Array, Int64Array};
use serde::Serialize;

use crate::artifact::read_parquet;
use crate::models::als::{self, AlsParams};
use crate::models::eval::{self, Metrics};
use crate::models::similarity::CosineSimilarity;
use crate::models::{Csr, StopFlag};
use crate::topn::{self, Selection};

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub users: usize,
    pub items: usize,
    pub train_rows: usize,
    pub fit_s: f64,
    pub rec_all_s: f64,
    pub sim_all_s: f64,
    pub gemm_gflops_peak: f64,
    pub rec_all_gflops: f64,
    pub metrics: Metrics,
    pub peak_rss_mb: f64,
    pub csr_and_factors_mb: f64,
}

/// The split's matrices: positives for training, every train row as "seen", test
/// positives as relevant.
pub struct Split {
    pub train: Csr,
    pub seen: Csr,
    pub test: Csr,
}

pub fn read_split(path: &Path, positive_min: Option<f32>) -> Result<Split, String> {
    let (_, batches) = read_parquet(path).map_err(|e| e.to_string())?;
    let (mut u, mut i, mut r, mut t) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in &batches {
        let get = |n: &str| b.column_by_name(n).ok_or(format!("no column `{n}`"));
        let uid = get("user_id")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or("user_id not Int64")?;
        let iid = get("item_id")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or("item_id not Int64")?;
        let rat = get("rating")?
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or("rating not Float32")?;
        let tst = get("is_test")?
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or("is_test not bool")?;
        for row in 0..b.num_rows() {
            u.push(uid.value(row) as u32);
            i.push(iid.value(row) as u32);
            r.push(rat.value(row));
            t.push(tst.value(row));
        }
    }
    // The Arrow batches are no longer needed: free them before the matrices grow.
    drop(batches);
    let n_users = u.iter().max().map_or(0, |m| *m as usize + 1);
    let n_items = i.iter().max().map_or(0, |m| *m as usize + 1);
    let pick = |test: bool, positives: bool| {
        let idx: Vec<usize> = (0..u.len())
            .filter(|&k| t[k] == test && (!positives || positive_min.is_none_or(|m| r[k] >= m)))
            .collect();
        let rows: Vec<u32> = idx.iter().map(|&k| u[k]).collect();
        let cols: Vec<u32> = idx.iter().map(|&k| i[k]).collect();
        let vals: Vec<f32> = idx.iter().map(|&k| r[k]).collect();
        Csr::from_triplets(n_users, n_items, &rows, &cols, &vals)
    };
    Ok(Split {
        train: pick(false, true),
        seen: pick(false, false),
        test: pick(true, true),
    })
}

/// Best GFLOP/s of a large square f32 GEMM on the current rayon pool (each thread
/// multiplies its own matrices, as the scoring blocks do).
pub fn gemm_peak() -> f64 {
    use rayon::prelude::*;
    let n = 512;
    let threads = rayon::current_num_threads();
    let a: Vec<f32> = (0..n * n).map(|x| (x % 7) as f32).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let start = Instant::now();
        (0..threads).into_par_iter().for_each(|_| {
            let mut c = vec![0f32; n * n];
            for _ in 0..4 {
                crate::models::dense::gemm_nt(&a, &a, n, &mut c);
            }
            std::hint::black_box(&c);
        });
        let flops = 2.0 * (n * n * n) as f64 * 4.0 * threads as f64;
        best = best.max(flops / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Fits, times rec-all and sim-all (minimum over `repeats`), and evaluates.
pub fn run(split: &Split, params: &AlsParams, repeats: usize) -> BenchResult {
    let stop = StopFlag::default();
    let mut fit_s = f64::MAX;
    let mut model = None;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let (m, _) = als::fit(&split.train, params, &stop).expect("not stopped");
        fit_s = fit_s.min(start.elapsed().as_secs_f64());
        model = Some(m);
    }
    let model = model.expect("at least one fit");
    let users: Vec<u32> = (0..split.train.n_rows as u32).collect();
    let items: Vec<u32> = (0..split.train.n_cols as u32).collect();
    let mut rec_all_s = f64::MAX;
    let mut sim_all_s = f64::MAX;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let selection = Selection {
            k: 10,
            seen: Some(&split.seen),
            ..Selection::default()
        };
        std::hint::black_box(
            topn::select_block(&model, &users, &selection, &stop).expect("not stopped"),
        );
        rec_all_s = rec_all_s.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let sim = CosineSimilarity::new(&model.item_factors, model.factors);
        let selection = Selection {
            k: 10,
            exclude_self: true,
            ..Selection::default()
        };
        std::hint::black_box(
            topn::select_block(&sim, &items, &selection, &stop).expect("not stopped"),
        );
        sim_all_s = sim_all_s.min(start.elapsed().as_secs_f64());
    }
    let metrics = eval::evaluate(&model, &split.seen, &split.test, 10, &stop).expect("not stopped");
    let flops = 2.0 * users.len() as f64 * items.len() as f64 * params.factors as f64;
    let csr_bytes = |m: &Csr| (m.indptr.len() * 8 + m.indices.len() * 4 + m.data.len() * 4) as f64;
    let factor_bytes = ((model.user_factors.len() + model.item_factors.len()) * 4) as f64;
    BenchResult {
        users: users.len(),
        items: items.len(),
        train_rows: split.train.nnz(),
        fit_s,
        rec_all_s,
        sim_all_s,
        gemm_gflops_peak: gemm_peak(),
        rec_all_gflops: flops / rec_all_s / 1e9,
        metrics,
        peak_rss_mb: peak_rss_mb(),
        csr_and_factors_mb: (csr_bytes(&split.train) + factor_bytes) / 1048576.0,
    }
}
