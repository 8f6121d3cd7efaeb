//! `off_policy`: how a candidate allocation would have done, estimated from
//! logs of another one. Each logged row carries the arm shown, its outcome and
//! the probability the logging policy showed it with (the logged propensity,
//! never a recomputed one: a live policy's probabilities drift); each row's
//! weight is the candidate's probability of that arm over the logged one.
//! IPW and self-normalised IPW ([`crate::stats::bandit::off_policy`]) come
//! with the largest weight and the effective sample size, so an estimate
//! resting on a handful of rows says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::kind::{CheckContext, Inputs, Problem, StepKind, create_output, refuse_flags};
use super::{DATA_FILE, StepContext, StepOutput, StepResult, StepRun};
use crate::artifact::{self, ArtifactError, ArtifactKind, for_each_batch};
use crate::models::StopFlag;
use crate::stats::bandit::{OffPolicy, off_policy};

/// An estimate whose effective sample size is below this (or below 1% of the
/// rows) carries a caution.
const MIN_EFFECTIVE_ROWS: f64 = 30.0;

/// Evaluates the allocation it needs against the logs it needs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OffPolicySpec {
    /// Weights above each of these are clipped to it, for an estimate each
    /// besides the unclipped one (default `[100]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clips: Option<Vec<f64>>,
}

#[derive(clap::Args)]
pub struct OffPolicyArgs {
    /// Logged rows: `arm_id`, `converted` (or `reward`), `propensity`, and
    /// optionally `position`.
    #[arg(long)]
    logs: PathBuf,
    /// The candidate: `arm_id`, optionally `position`, and `probability` (or
    /// `weight`, as an allocation has). Without `position`, a logged row's
    /// position is ignored.
    #[arg(long)]
    policy: PathBuf,
    #[arg(long, value_delimiter = ',')]
    clips: Option<Vec<f64>>,
    #[arg(long)]
    output: PathBuf,
}

impl OffPolicySpec {
    fn problems(&self) -> Vec<Problem> {
        match &self.clips {
            Some(c) if c.iter().any(|v| !(v.is_finite() && *v >= 1.0)) || c.len() > 16 => {
                vec![Problem::new(
                    "clips",
                    "each clip must be a finite weight of at least 1 (at most 16 of them)",
                )]
            }
            _ => Vec::new(),
        }
    }
}

impl StepKind for OffPolicySpec {
    const NAME: &'static str = "off_policy";
    const INPUTS: Inputs = Some(&[(ArtifactKind::Arms, 1, 1), (ArtifactKind::Allocation, 1, 1)]);
    type Args = OffPolicyArgs;

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Metrics
    }

    fn check(&self, _: &CheckContext) -> Vec<Problem> {
        self.problems()
    }

    fn describe(&self) -> String {
        "IPW and self-normalised IPW of an allocation on logged propensities".into()
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        let logs = step.data_of(ArtifactKind::Arms)?;
        let policy = step.data_of(ArtifactKind::Allocation)?;
        let (spec, out, run_id) = (
            self.clone(),
            step.out_dir.to_path_buf(),
            step.cx.run_id.clone(),
        );
        step.cx
            .compute(move |stop| run(&spec, &logs, &policy, &out, &run_id, stop))
            .await
    }

    async fn run_alone(a: OffPolicyArgs, _project_dir: &Path, cx: &StepContext) -> StepResult {
        let spec = OffPolicySpec { clips: a.clips };
        refuse_flags(spec.problems())?;
        create_output(&a.output)?;
        let (logs, policy, out) = (a.logs, a.policy, a.output);
        cx.compute(move |stop| run(&spec, &logs, &policy, &out, "cli", stop))
            .await
    }
}

fn invalid(path: &Path, message: String) -> ArtifactError {
    ArtifactError::Invalid(format!(
        "{}: {message}; nothing was written",
        path.display()
    ))
}

/// The first of `names` that `batch` has, as f64 with no nulls.
fn floats(path: &Path, batch: &RecordBatch, names: &[&str]) -> Result<Vec<f64>, ArtifactError> {
    let Some((name, col)) = names
        .iter()
        .find_map(|n| batch.column_by_name(n).map(|c| (n, c)))
    else {
        return Err(invalid(
            path,
            format!("needs a `{}` column", names.join("` or `")),
        ));
    };
    let col = cast(col, &DataType::Float64).map_err(|e| invalid(path, format!("`{name}`: {e}")))?;
    let col = col.as_primitive::<Float64Type>();
    if let Some(i) = (0..col.len()).find(|&i| col.is_null(i)) {
        return Err(invalid(
            path,
            format!("`{name}` is null in row {} of a batch", i + 1),
        ));
    }
    Ok(col.values().to_vec())
}

/// Each row's arm, and its position when `with_position` (0 otherwise).
fn keys(
    path: &Path,
    batch: &RecordBatch,
    with_position: bool,
) -> Result<Vec<(String, i64)>, ArtifactError> {
    let ids = batch
        .column_by_name("arm_id")
        .ok_or_else(|| invalid(path, "needs an `arm_id` column".into()))?;
    let ids = cast(ids, &DataType::Utf8).map_err(|e| invalid(path, format!("`arm_id`: {e}")))?;
    let ids = ids.as_string::<i32>();
    let positions = match (with_position, batch.column_by_name("position")) {
        (false, _) => None,
        (true, None) => {
            return Err(invalid(
                path,
                "needs a `position` column: the candidate gives one per (arm, position)".into(),
            ));
        }
        (true, Some(p)) => {
            Some(cast(p, &DataType::Int64).map_err(|e| invalid(path, format!("`position`: {e}")))?)
        }
    };
    (0..batch.num_rows())
        .map(|i| {
            if ids.is_null(i) || positions.as_ref().is_some_and(|p| p.is_null(i)) {
                return Err(invalid(
                    path,
                    format!("`arm_id` or `position` is null in row {} of a batch", i + 1),
                ));
            }
            let position = positions
                .as_ref()
                .map_or(0, |p| p.as_primitive::<Int64Type>().value(i));
            Ok((ids.value(i).to_string(), position))
        })
        .collect()
}

/// A candidate's probability of each (arm, position).
type Candidate = HashMap<(String, i64), f64>;

/// The candidate's probability of each (arm, position), and whether it has
/// positions at all.
fn read_candidate(path: &Path) -> Result<(Candidate, bool), ArtifactError> {
    let mut candidate = HashMap::new();
    let mut totals: HashMap<i64, f64> = HashMap::new();
    let schema = artifact::open_parquet(path)?.0;
    let positioned = schema.field_with_name("position").is_ok();
    for_each_batch(path, |batch| {
        let p = floats(path, &batch, &["probability", "weight"])?;
        for (key, p) in keys(path, &batch, positioned)?.into_iter().zip(p) {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(
                    path,
                    format!(
                        "arm `{}` has probability {p}; a probability is in [0, 1]",
                        key.0
                    ),
                ));
            }
            *totals.entry(key.1).or_default() += p;
            if candidate.insert(key.clone(), p).is_some() {
                return Err(invalid(
                    path,
                    format!("arm `{}` (position {}) appears twice", key.0, key.1),
                ));
            }
        }
        Ok(())
    })?;
    if let Some((position, total)) = totals.iter().find(|(_, t)| **t > 1.0 + 1e-9) {
        return Err(invalid(
            path,
            format!("the probabilities at position {position} sum to {total}, above 1"),
        ));
    }
    Ok((candidate, positioned))
}

/// Each logged row's reward and weight: the candidate's probability of its
/// (arm, position) over the logged propensity.
fn read_logs(
    path: &Path,
    candidate: &Candidate,
    positioned: bool,
) -> Result<(Vec<f64>, Vec<f64>), ArtifactError> {
    let (mut rewards, mut weights) = (Vec::new(), Vec::new());
    for_each_batch(path, |batch| {
        let r = floats(path, &batch, &["converted", "reward"])?;
        let ps = floats(path, &batch, &["propensity"])?;
        for ((key, r), p) in keys(path, &batch, positioned)?.iter().zip(r).zip(ps) {
            let row = rewards.len() + 1;
            if !(p > 0.0 && p <= 1.0) {
                return Err(invalid(
                    path,
                    format!("row {row}: propensity {p}; a logged propensity is in (0, 1]"),
                ));
            }
            if !r.is_finite() {
                return Err(invalid(
                    path,
                    format!("row {row}: reward {r} is not finite"),
                ));
            }
            rewards.push(r);
            // An arm the candidate never plays weighs 0.
            weights.push(candidate.get(key).copied().unwrap_or(0.0) / p);
        }
        Ok(())
    })?;
    Ok((rewards, weights))
}

/// Reads both files, weighs every logged row and writes one estimate per clip.
pub fn run(
    spec: &OffPolicySpec,
    logs: &Path,
    policy: &Path,
    out_dir: &Path,
    run_id: &str,
    stop: &StopFlag,
) -> StepResult {
    let (candidate, positioned) = read_candidate(policy)?;
    let (rewards, weights) = read_logs(logs, &candidate, positioned)?;
    stop.check()?;
    if rewards.is_empty() {
        return Err(invalid(logs, "has no rows to evaluate with".into()).into());
    }
    if weights.iter().all(|w| *w == 0.0) {
        return Err(invalid(
            policy,
            "gives probability 0 to the arm of every logged row: there is nothing to weigh".into(),
        )
        .into());
    }
    let mut estimates: Vec<OffPolicy> = vec![off_policy(&rewards, &weights, None)];
    for &c in spec.clips.as_deref().unwrap_or(&[100.0]) {
        estimates.push(off_policy(&rewards, &weights, Some(c)));
    }
    let column = |f: &dyn Fn(&OffPolicy) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(estimates.iter().map(f)))
    };
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (name, values) in [
        ("clip", column(&|e| e.clip)),
        ("ipw", column(&|e| Some(e.ipw))),
        ("ipw_se", column(&|e| Some(e.ipw_se))),
        ("snipw", column(&|e| Some(e.snipw))),
        ("snipw_se", column(&|e| Some(e.snipw_se))),
        ("max_weight", column(&|e| Some(e.max_weight))),
        (
            "effective_sample_size",
            column(&|e| Some(e.effective_sample_size)),
        ),
    ] {
        fields.push(Field::new(name, DataType::Float64, name == "clip"));
        columns.push(values);
    }
    // A confident-looking number resting on a few heavy rows must say so.
    let cautions: Vec<Option<String>> = estimates
        .iter()
        .map(|e| {
            let ess = e.effective_sample_size;
            (ess < MIN_EFFECTIVE_ROWS.max(0.01 * rewards.len() as f64)).then(|| {
                format!(
                    "the weights rest on about {ess:.0} of {} rows: too few to trust",
                    rewards.len()
                )
            })
        })
        .collect();
    fields.push(Field::new("caution", DataType::Utf8, true));
    columns.push(Arc::new(StringArray::from(cautions.clone())));
    let data = artifact::estimates::finish(
        &out_dir.join(DATA_FILE),
        fields,
        columns,
        (run_id, Utc::now()),
    )?;
    Ok(StepOutput {
        rows: data.rows,
        files: vec![data],
        details: serde_json::json!({
            "rows": rewards.len(),
            "estimates": estimates,
            "caution": cautions[0],
        }),
    })
}
