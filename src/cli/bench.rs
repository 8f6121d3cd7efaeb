//! `recpipe bench`: times recpipe's ALS (or any model, tuned or not) on the exact split the
//! anchor script wrote (`anchors.py --write-split`) with the anchors' protocol,
//! so the two can be compared as ratios from one run on one machine.
//!
//! Protocol (as `../shared/bench/anchors.py`): positives are rows with
//! `rating ≥ 4` (or every row), weighted by their rating; seen = every training
//! row; relevant = test positives; top-10 lists for all users and all items.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::anyhow;
use arrow::array::{Array, BooleanArray, Float32Array, Int64Array};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use recpipe::eval::{self, Metrics};
use recpipe::models::Recommender;
use recpipe::models::similarity::CosineSimilarity;
use recpipe::models::{Csr, StopFlag};
use recpipe::steps::model::als::AlsSpec;
use recpipe::steps::model::{ModelSpec, TrainData};
use recpipe::steps::train::model_of;
use recpipe::steps::tune::{self, Cells};
use recpipe::topn::{self, Selection};

use super::Failure;

/// The split and ALS settings of one benchmark run.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub split: PathBuf,
    /// Positives are rows with rating ≥ this; omit to use every row.
    #[arg(long)]
    pub positive_min: Option<f32>,
    #[arg(long, default_value_t = 64)]
    pub factors: usize,
    #[arg(long, default_value_t = 15)]
    pub iterations: usize,
    #[arg(long, default_value_t = 0.05)]
    pub regularization: f32,
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f32,
    /// ALS-WR: scale each row's regularization by its interaction count.
    #[arg(long)]
    pub scale_regularization: bool,
    /// `als` with the flags above, or any other model with its keys as
    /// `--set key=value` (`rp3beta`, `ease` against `strong_anchors.py`).
    #[arg(long, default_value = "als")]
    pub model: String,
    /// Model keys as `key=value` in TOML syntax, for a model other than `als`.
    #[arg(long = "set", value_parser = recpipe::steps::kind::parse_key_value)]
    pub set: Vec<(String, String)>,
    /// A TOML file holding a `tune` table, as in a pipeline: search on a
    /// validation split of the training positives first, then fit the choice.
    #[arg(long)]
    pub tune: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

/// Reads the split, times the fit and the lists on their own pool, prints one
/// JSON line.
pub fn run(a: BenchArgs) -> Result<(), Failure> {
    let split = read_split(&a.split, a.positive_min).map_err(|e| Failure::BadInput(anyhow!(e)))?;
    // The anchors' protocol, not the pipeline defaults: see the README.
    let spec = AlsSpec {
        factors: a.factors,
        iterations: a.iterations,
        regularization: a.regularization,
        alpha: a.alpha,
        scale_regularization: a.scale_regularization,
        ..Default::default()
    };
    let pool = recpipe::steps::compute_pool(a.threads).map_err(|e| Failure::Failed(e.into()))?;
    let other = match (a.model.as_str(), &a.tune) {
        ("als", None) => None,
        _ => Some(model_of(&a.model, &a.set).map_err(|e| Failure::BadInput(anyhow!(e)))?),
    };
    let tune = a
        .tune
        .as_deref()
        .map(tune::read)
        .transpose()
        .map_err(|e| Failure::BadInput(anyhow!(e)))?;
    let result = pool
        .install(|| match (other, tune) {
            (None, _) => measure(&split, &spec, a.repeats),
            (Some(base), None) => measure_model(&split, &base, a.repeats, None),
            (Some(base), Some(tune)) => {
                let cells = Cells::of_matrix(&split.train);
                let search = tune::search(&tune, &base, &cells, None, &StopFlag::default())
                    .map_err(|e| e.to_string())?;
                measure_model(&split, &search.chosen, a.repeats, Some(search.report()))
            }
        })
        .map_err(|e| Failure::BadInput(anyhow!(e)))?;
    println!(
        "{}",
        serde_json::to_string(&result).map_err(|e| Failure::Failed(e.into()))?
    );
    Ok(())
}

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
    /// The whole process: reading the split, fitting, scoring.
    pub peak_rss_mb: f64,
    /// From the start of the fit to the end of scoring, the split's matrices
    /// loaded (the high-water mark is reset after reading the split).
    pub model_peak_rss_mb: f64,
    pub csr_and_factors_mb: f64,
    /// The search that chose the settings (`--tune`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuned: Option<serde_json::Value>,
}

/// The split's training side: positives for training, every train row as "seen".
/// The test side is read when evaluating ([`Split::test`]), so it is not resident
/// while the model is fitted and scored.
pub struct Split {
    pub train: Csr,
    /// `None` when every train row is a positive: then `train` is also the seen set.
    seen: Option<Csr>,
    path: PathBuf,
    positive_min: Option<f32>,
}

impl Split {
    pub fn seen(&self) -> &Csr {
        self.seen.as_ref().unwrap_or(&self.train)
    }

    /// The test positives, the relevant items of each user.
    pub fn test(&self) -> Result<Csr, String> {
        let (test, _) = read_side(&self.path, true)?;
        Ok(test.csr(self.train.n_rows, self.train.n_cols, self.positive_min))
    }
}

/// Triplets of one side of the split.
#[derive(Default)]
struct Triplets {
    users: Vec<u32>,
    items: Vec<u32>,
    ratings: Vec<f32>,
}

impl Triplets {
    fn csr(&self, n_users: usize, n_items: usize, positive_min: Option<f32>) -> Csr {
        if positive_min.is_none_or(|m| self.ratings.iter().all(|&r| r >= m)) {
            return Csr::from_triplets(n_users, n_items, &self.users, &self.items, &self.ratings);
        }
        let keep = |k: &usize| positive_min.is_none_or(|m| self.ratings[*k] >= m);
        let idx: Vec<usize> = (0..self.users.len()).filter(keep).collect();
        let pick = |v: &[u32]| -> Vec<u32> { idx.iter().map(|&k| v[k]).collect() };
        let ratings: Vec<f32> = idx.iter().map(|&k| self.ratings[k]).collect();
        let (users, items) = (pick(&self.users), pick(&self.items));
        Csr::from_triplets(n_users, n_items, &users, &items, &ratings)
    }
}

/// Reads the split's training side batch by batch (the whole file is never in
/// memory at once: peak RSS is part of the benchmark).
pub fn read_split(path: &Path, positive_min: Option<f32>) -> Result<Split, String> {
    let (train, (n_users, n_items)) = read_side(path, false)?;
    let all_positive = positive_min.is_none_or(|m| train.ratings.iter().all(|&r| r >= m));
    Ok(Split {
        seen: (!all_positive).then(|| train.csr(n_users, n_items, None)),
        train: train.csr(n_users, n_items, positive_min),
        path: path.to_path_buf(),
        positive_min,
    })
}

/// The rows of one side, and the matrix shape (over both sides).
fn read_side(path: &Path, test: bool) -> Result<(Triplets, (usize, usize)), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let mut side = Triplets::default();
    let (mut n_users, mut n_items) = (0, 0);
    for b in reader {
        let b = b.map_err(|e| e.to_string())?;
        let uid = column::<Int64Array>(&b, "user_id")?;
        let iid = column::<Int64Array>(&b, "item_id")?;
        let rat = column::<Float32Array>(&b, "rating")?;
        let tst = column::<BooleanArray>(&b, "is_test")?;
        for row in 0..b.num_rows() {
            let (u, i) = (uid.value(row) as u32, iid.value(row) as u32);
            n_users = n_users.max(u as usize + 1);
            n_items = n_items.max(i as usize + 1);
            if tst.value(row) == test {
                side.users.push(u);
                side.items.push(i);
                side.ratings.push(rat.value(row));
            }
        }
    }
    Ok((side, (n_users, n_items)))
}

/// Column `name` of `b` as an `A`.
fn column<'a, A: Array + 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a A, String> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| format!("no column `{name}` of type {}", std::any::type_name::<A>()))
}

/// Rounds of the GEMM peak measurement, each about 10 ms: on a shared machine one
/// of three rounds once measured 146 GFLOP/s where 250 is usual.
const PEAK_ROUNDS: usize = 20;

/// Best GFLOP/s of a large square f32 GEMM on the current rayon pool (each thread
/// multiplies its own matrices, as the scoring blocks do).
pub fn gemm_peak() -> f64 {
    use rayon::prelude::*;
    let n = 512;
    let threads = rayon::current_num_threads();
    let a: Vec<f32> = (0..n * n).map(|x| (x % 7) as f32).collect();
    let mut best = 0f64;
    for _ in 0..PEAK_ROUNDS {
        let start = Instant::now();
        (0..threads).into_par_iter().for_each(|_| {
            let mut c = vec![0f32; n * n];
            for _ in 0..4 {
                recpipe::models::dense::gemm_nt(&a, &a, n, &mut c);
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

/// Resets the kernel's RSS high-water mark (Linux ≥ 4.0); false where it cannot.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Fits, times rec-all and sim-all (minimum over `repeats`), and evaluates.
/// The best of `repeats` timings of top-10 lists for every user (seen items
/// removed) and for every item (itself removed).
fn time_lists(
    split: &Split,
    model: &dyn Recommender,
    similarity: &dyn Recommender,
    repeats: usize,
    stop: &StopFlag,
) -> (f64, f64) {
    let users: Vec<u32> = (0..split.train.n_rows as u32).collect();
    let items: Vec<u32> = (0..split.train.n_cols as u32).collect();
    let (mut rec_all_s, mut sim_all_s) = (f64::MAX, f64::MAX);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let selection = Selection {
            k: 10,
            seen: Some(split.seen()),
            ..Selection::default()
        };
        std::hint::black_box(
            topn::select_block(model, &users, &selection, stop).expect("not stopped"),
        );
        rec_all_s = rec_all_s.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let selection = Selection {
            k: 10,
            exclude_self: true,
            ..Selection::default()
        };
        std::hint::black_box(
            topn::select_block(similarity, &items, &selection, stop).expect("not stopped"),
        );
        sim_all_s = sim_all_s.min(start.elapsed().as_secs_f64());
    }
    (rec_all_s, sim_all_s)
}

/// A model as a train step fits it (RP3beta and EASE on positives, values
/// ignored): the fit, the lists and the metrics; the factor-model fields are
/// not measured. `tuned` is the search that chose it, when one did.
pub fn measure_model(
    split: &Split,
    spec: &ModelSpec,
    repeats: usize,
    tuned: Option<serde_json::Value>,
) -> Result<BenchResult, String> {
    let stop = StopFlag::default();
    let load_peak = peak_rss_mb();
    let reset = reset_peak_rss();
    let data = TrainData {
        matrix: &split.train,
        item_features: None,
    };
    let mut fit_s = f64::MAX;
    let mut model = None;
    for _ in 0..repeats.max(1) {
        drop(model.take());
        let start = Instant::now();
        let fit = spec.fit(&data, &stop).map_err(|e| e.to_string())?;
        fit_s = fit_s.min(start.elapsed().as_secs_f64());
        model = Some(fit.model);
    }
    let model = model.expect("at least one fit");
    let similarity = model
        .similarity()
        .ok_or_else(|| format!("{} has no item similarity", spec.model()))?;
    let (rec_all_s, sim_all_s) =
        time_lists(split, model.as_ref(), similarity.as_ref(), repeats, &stop);
    let model_peak = peak_rss_mb();
    let metrics = eval::evaluate(model.as_ref(), split.seen(), &split.test()?, 10, &stop)
        .expect("not stopped");
    Ok(BenchResult {
        users: split.train.n_rows,
        items: split.train.n_cols,
        train_rows: split.train.nnz(),
        fit_s,
        rec_all_s,
        sim_all_s,
        gemm_gflops_peak: f64::NAN,
        rec_all_gflops: f64::NAN,
        metrics,
        peak_rss_mb: load_peak.max(peak_rss_mb()),
        model_peak_rss_mb: if reset { model_peak } else { f64::NAN },
        csr_and_factors_mb: f64::NAN,
        tuned,
    })
}

pub fn measure(split: &Split, spec: &AlsSpec, repeats: usize) -> Result<BenchResult, String> {
    let stop = StopFlag::default();
    let load_peak = peak_rss_mb();
    let reset = reset_peak_rss();
    let mut fit_s = f64::MAX;
    let mut model = None;
    for _ in 0..repeats.max(1) {
        // The previous fit's factors are dropped first, so that repeats do not
        // count two models in the peak.
        drop(model.take());
        let start = Instant::now();
        // The fit a train step runs, memory check included.
        let (m, _) = spec
            .fit_als(&split.train, &stop)
            .map_err(|e| e.to_string())?;
        fit_s = fit_s.min(start.elapsed().as_secs_f64());
        model = Some(m);
    }
    let model = model.expect("at least one fit");
    let sim = CosineSimilarity::new(&model.item_factors, model.factors);
    let (rec_all_s, sim_all_s) = time_lists(split, &model, &sim, repeats, &stop);
    let (users, items) = (split.train.n_rows, split.train.n_cols);
    let model_peak = peak_rss_mb();
    let metrics =
        eval::evaluate(&model, split.seen(), &split.test()?, 10, &stop).expect("not stopped");
    let flops = 2.0 * users as f64 * items as f64 * spec.factors as f64;
    let csr_bytes = |m: &Csr| (m.indptr.len() * 8 + m.indices.len() * 4 + m.data.len() * 4) as f64;
    let factor_bytes = ((model.user_factors.len() + model.item_factors.len()) * 4) as f64;
    Ok(BenchResult {
        users,
        items,
        train_rows: split.train.nnz(),
        fit_s,
        rec_all_s,
        sim_all_s,
        gemm_gflops_peak: gemm_peak(),
        rec_all_gflops: flops / rec_all_s / 1e9,
        metrics,
        peak_rss_mb: load_peak.max(peak_rss_mb()),
        model_peak_rss_mb: if reset { model_peak } else { f64::NAN },
        csr_and_factors_mb: (csr_bytes(&split.train) + factor_bytes) / 1048576.0,
        tuned: None,
    })
}
