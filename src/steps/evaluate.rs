//! `evaluate`: a hold-out evaluation of a model on the run's own interactions,
//! against the popularity baseline, written to `metrics.json` and the manifest, so
//! every run shows whether the model still earns its keep.

use std::path::Path;

use arrow::array::{Array, Float32Array, TimestampMicrosecondArray};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::json;

use super::interactions::IdColumn;
use super::{StepError, StepOutput, interactions, train};
use crate::artifact::{self, read_parquet};
use crate::eval::{self, Metrics};
use crate::models::ids::Ids;
use crate::models::popular::Popular;
use crate::models::{Csr, IdMap, Recommender, StopFlag};
use crate::steps::spec::{EvaluateSpec, SplitKind, TrainSpec};

pub const METRICS_FILE: &str = "metrics.json";

/// Blocking: call through [`super::compute`].
pub fn run(
    spec: &EvaluateSpec,
    input: &Path,
    out_dir: &Path,
    stop: &StopFlag,
) -> Result<StepOutput, StepError> {
    let (_, batches) = read_parquet(input)?;
    let (mut user_ids, mut item_ids) = (None, None);
    for b in &batches {
        IdColumn::of(b, "user_id", input)?.collect_into(&mut user_ids);
        IdColumn::of(b, "item_id", input)?.collect_into(&mut item_ids);
    }
    let users = IdMap::from_ids(user_ids.unwrap_or(Ids::Int(Vec::new())));
    let items = IdMap::from_ids(item_ids.unwrap_or(Ids::Int(Vec::new())));
    let (mut rows, mut cols, mut vals, mut ts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in &batches {
        let (u, i) = (
            IdColumn::of(b, "user_id", input)?,
            IdColumn::of(b, "item_id", input)?,
        );
        let value = b
            .column_by_name("value")
            .and_then(|c| c.as_any().downcast_ref::<Float32Array>());
        let time = b
            .column_by_name("ts")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>());
        if spec.split == SplitKind::Time && time.is_none() {
            return Err(StepError::Data(format!(
                "{}: `split = \"time\"` needs a `ts` column",
                input.display()
            )));
        }
        for r in 0..b.num_rows() {
            let (Some(ui), Some(ii)) = (users.index(u.get(r)), items.index(i.get(r))) else {
                continue;
            };
            rows.push(ui);
            cols.push(ii);
            vals.push(value.map_or(1.0, |v| v.value(r)));
            ts.push(time.map_or(0, |t| if t.is_valid(r) { t.value(r) } else { i64::MIN }));
        }
    }
    let is_test = split(&rows, &ts, spec);
    let part = |test: bool| {
        let keep: Vec<usize> = (0..rows.len()).filter(|&k| is_test[k] == test).collect();
        let r: Vec<u32> = keep.iter().map(|&k| rows[k]).collect();
        let c: Vec<u32> = keep.iter().map(|&k| cols[k]).collect();
        let v: Vec<f32> = keep.iter().map(|&k| vals[k]).collect();
        Csr::from_triplets(users.len(), items.len(), &r, &c, &v)
    };
    let (train_m, test_m) = (
        interactions::finite(part(false), input)?,
        interactions::finite(part(true), input)?,
    );
    if test_m.nnz() == 0 || train_m.nnz() == 0 {
        return Err(StepError::Data(format!(
            "{}: {} interactions are too few to hold out {}",
            input.display(),
            rows.len(),
            spec.test_fraction
        )));
    }
    let popular = Popular::fit(&train_m, false);
    let baseline = eval::evaluate(&popular, &train_m, &test_m, spec.k, stop)?;
    let model: Box<dyn Recommender> = match &spec.model {
        TrainSpec::Popular(p) => Box::new(train::fit_popular(&train_m, p)?),
        TrainSpec::Als(a) => Box::new(train::fit_als(&train_m, a, stop)?.0),
        TrainSpec::ItemItem(i) => Box::new(train::fit_item_item(&train_m, i, stop)?),
    };
    let metrics = eval::evaluate(model.as_ref(), &train_m, &test_m, spec.k, stop)?;
    let lift = |m: &Metrics, b: &Metrics| if b.ndcg > 0.0 { m.ndcg / b.ndcg } else { 0.0 };
    let details = json!({
        "model": spec.model.model(),
        "split": spec.split,
        "test_fraction": spec.test_fraction,
        "train_rows": train_m.nnz(),
        "test_rows": test_m.nnz(),
        "metrics": metrics,
        "popularity": baseline,
        "ndcg_lift_over_popularity": lift(&metrics, &baseline),
    });
    let file = artifact::write_json(&out_dir.join(METRICS_FILE), &details)?;
    Ok(StepOutput {
        files: vec![file],
        rows: metrics.users as u64,
        details,
    })
}

/// Which cells are held out: a seeded random `test_fraction` of them, or each
/// user's latest `floor(test_fraction · n_u)` by time (ties in a seeded order).
fn split(rows: &[u32], ts: &[i64], spec: &EvaluateSpec) -> Vec<bool> {
    let n = rows.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(spec.seed));
    let mut is_test = vec![false; n];
    match spec.split {
        SplitKind::Random => {
            let n_test = (spec.test_fraction * n as f64).round() as usize;
            for &k in &order[..n_test.min(n)] {
                is_test[k] = true;
            }
        }
        SplitKind::Time => {
            let mut rank = vec![0usize; n];
            for (pos, &k) in order.iter().enumerate() {
                rank[k] = pos;
            }
            let mut by_user: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
            for (k, &user) in rows.iter().enumerate() {
                by_user.entry(user).or_default().push(k);
            }
            for cells in by_user.values_mut() {
                cells.sort_by_key(|&k| (ts[k], rank[k]));
                let n_test = (spec.test_fraction * cells.len() as f64).floor() as usize;
                for &k in &cells[cells.len() - n_test..] {
                    is_test[k] = true;
                }
            }
        }
    }
    is_test
}
