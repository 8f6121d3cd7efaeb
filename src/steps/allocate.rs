//! `allocate`: an A/B experiment that allocates itself. The step's table is the
//! experiment (its arms, minimum share, optional control, start and end, and
//! stopping rule), reviewed like any pipeline file; from an `arms` extract of
//! trials and successes per arm it computes each arm's Beta posterior, the
//! probability that it is best ([`crate::stats::bandit`]) and the new weights.
//! The allocation artifact ([`crate::artifact::allocation`]) is published by
//! `write` like a list.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::kind::{CheckContext, Inputs, Problem, StepKind, create_output, refuse};
use super::{DATA_FILE, StepContext, StepError, StepOutput, StepResult, StepRun};
use crate::artifact::allocation::{self, AllocationRecord, ArmRow, STATE_FILE, State};
use crate::artifact::events::{IdValue, read_counts};
use crate::artifact::{self, ArtifactKind};
use crate::models::StopFlag;
use crate::stats::bandit::{self, Arm, Rule};
use crate::stats::beta_binomial;
use crate::stats::special::{beta_quantile_ln, ln_beta};

/// An experiment and how it allocates.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllocateSpec {
    /// Its name: what the assignment API serves.
    pub experiment: String,
    pub arms: Vec<ArmSpec>,
    /// What is assigned: a user, a session … (default `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Every arm gets at least this share, so none starves (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_share: Option<f64>,
    /// An arm held at a fixed share (a control or holdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
    /// RFC 3339 times: before `start` every arm gets an equal share; after
    /// `end` the arm most likely best gets every unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Declare a winner when an arm's P(best) reaches `p_best` and every arm
    /// has `min_trials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopRule>,
    /// The Beta(a, b) each arm starts from (default [1, 1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<[f64; 2]>,
    /// Fit the prior to the arms by empirical Bayes instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empirical_prior: bool,
    /// `thompson` (default) or `top_two`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleChoice>,
    /// Top-two's chance of playing the best arm of a draw (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_two_beta: Option<f64>,
    /// Up to this many arms, P(best) is integrated exactly (default 100);
    /// beyond, Monte Carlo with `draws` draws (default 100,000) from `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_max_arms: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draws: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    pub id: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub arm: String,
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StopRule {
    pub p_best: f64,
    #[serde(default)]
    pub min_trials: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RuleChoice {
    Thompson,
    TopTwo,
}

const DEFAULT_DRAWS: usize = 100_000;
const MAX_DRAWS: usize = 10_000_000;
/// Exact integration of 80 arms takes about 50 ms, less than 1e5 draws.
const DEFAULT_EXACT_MAX_ARMS: usize = 100;
/// Exact integration costs arms² incomplete-beta evaluations per node.
const MAX_EXACT_ARMS: usize = 100;
const MAX_ARMS: usize = 100_000;
const LEVEL: f64 = 0.95;

#[derive(clap::Args)]
pub struct AllocateArgs {
    /// A Parquet file: `arm_id` with `converted` (0/1 per row) or `trials` and
    /// `successes`.
    #[arg(long)]
    input: PathBuf,
    /// The experiment: a TOML file with the keys of an `allocate` step.
    #[arg(long)]
    experiment: PathBuf,
    /// The time the allocation is for (RFC 3339; default now): decides
    /// whether the experiment has started or ended.
    #[arg(long)]
    logical_date: Option<DateTime<Utc>>,
    #[arg(long)]
    output: PathBuf,
}

fn time(value: &Option<String>) -> Result<Option<DateTime<Utc>>, String> {
    value
        .as_deref()
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    format!("`{v}` is not an RFC 3339 time (e.g. 2026-12-01T00:00:00+09:00): {e}")
                })
        })
        .transpose()
}

impl AllocateSpec {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push(Problem::new(key, message));
        if self.experiment.is_empty()
            || !self
                .experiment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problem(
                "experiment",
                format!(
                    "`{}` is not a name: letters, digits, `_` and `-` (it is part of the API's path)",
                    self.experiment
                ),
            );
        }
        let k = self.arms.len();
        if !(2..=MAX_ARMS).contains(&k) {
            problem(
                "arms",
                format!("{k} arms; an experiment compares 2 to {MAX_ARMS}"),
            );
        }
        let mut seen = BTreeSet::new();
        for arm in &self.arms {
            if arm.id.is_empty() || !seen.insert(arm.id.as_str()) {
                problem(
                    "arms",
                    format!("arm id `{}` is empty or named twice", arm.id),
                );
            }
        }
        let min_share = self.min_share.unwrap_or(0.0);
        let control_share = self.control.as_ref().map_or(0.0, |c| c.share);
        if !(0.0..1.0).contains(&min_share) {
            problem(
                "min_share",
                format!("{min_share} is out of range; accepted: 0 to below 1"),
            );
        }
        if let Some(c) = &self.control {
            if !seen.contains(c.arm.as_str()) {
                problem("control.arm", format!("`{}` is not one of the arms", c.arm));
            }
            if !(c.share > 0.0 && c.share < 1.0) {
                problem(
                    "control.share",
                    format!("{} is out of range; accepted: above 0 and below 1", c.share),
                );
            }
        }
        let others = k.saturating_sub(self.control.is_some() as usize) as f64;
        if control_share + others * min_share > 1.0 + 1e-12 {
            problem(
                "min_share",
                format!(
                    "{others} arms at {min_share} each{} leave no share for the posteriors to move; the shares must sum to at most 1",
                    if self.control.is_some() {
                        format!(" plus the control's {control_share}")
                    } else {
                        String::new()
                    }
                ),
            );
        }
        let (start, end) = (time(&self.start), time(&self.end));
        if let Err(e) = &start {
            problem("start", e.clone());
        }
        if let Err(e) = &end {
            problem("end", e.clone());
        }
        if let (Ok(Some(s)), Ok(Some(e))) = (start, end)
            && e <= s
        {
            problem("end", "is not after `start`".into());
        }
        if let Some(stop) = &self.stop
            && !(stop.p_best > 0.5 && stop.p_best < 1.0)
        {
            problem(
                "stop.p_best",
                format!(
                    "{} is out of range; accepted: above 0.5 and below 1 (e.g. 0.95)",
                    stop.p_best
                ),
            );
        }
        if let Some([a, b]) = self.prior {
            if !(a > 0.0 && b > 0.0 && a <= 1e9 && b <= 1e9) {
                problem(
                    "prior",
                    format!("[{a}, {b}] is not a Beta prior; both above 0 (and at most 1e9)"),
                );
            }
            if self.empirical_prior {
                problem(
                    "empirical_prior",
                    "set `prior` or `empirical_prior`, not both".into(),
                );
            }
        }
        match (self.rule, self.top_two_beta) {
            (Some(RuleChoice::TopTwo), Some(b)) if !(b > 0.0 && b < 1.0) => {
                problem(
                    "top_two_beta",
                    format!("{b} is out of range; accepted: above 0 and below 1"),
                );
            }
            (Some(RuleChoice::Thompson) | None, Some(_)) => {
                problem("top_two_beta", "applies to `rule = \"top_two\"`".into());
            }
            _ => {}
        }
        if self.exact_max_arms.is_some_and(|m| m > MAX_EXACT_ARMS) {
            problem(
                "exact_max_arms",
                format!("is out of range; accepted: 0 to {MAX_EXACT_ARMS}"),
            );
        }
        if self.draws.is_some_and(|d| !(1000..=MAX_DRAWS).contains(&d)) {
            problem(
                "draws",
                format!(
                    "is out of range; accepted: 1000 to {MAX_DRAWS} (100,000 keeps P(best) within 0.005)"
                ),
            );
        }
        problems
    }
}

impl StepKind for AllocateSpec {
    const NAME: &'static str = "allocate";
    const INPUTS: Inputs = Some(&[(ArtifactKind::Arms, 1, 1)]);
    type Args = AllocateArgs;

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Allocation
    }

    fn check(&self, _: &CheckContext) -> Vec<Problem> {
        self.problems()
    }

    fn describe(&self) -> String {
        format!(
            "experiment `{}`: {} arms by {}",
            self.experiment,
            self.arms.len(),
            match self.rule {
                Some(RuleChoice::TopTwo) => "top-two Thompson sampling",
                _ => "Thompson sampling",
            }
        )
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        let input = step.data_of(ArtifactKind::Arms)?;
        let (spec, out, run_id, at) = (
            self.clone(),
            step.out_dir.to_path_buf(),
            step.cx.run_id.clone(),
            step.cx.logical_date,
        );
        step.cx
            .compute(move |stop| run(&spec, &input, &out, (&run_id, at), stop))
            .await
    }

    async fn run_alone(a: AllocateArgs, _project_dir: &Path, cx: &StepContext) -> StepResult {
        let file = a.experiment.display().to_string();
        let text = std::fs::read_to_string(&a.experiment)
            .map_err(|e| StepError::Data(format!("{file}: {e}")))?;
        let spec: AllocateSpec =
            toml::from_str(&text).map_err(|e| StepError::Data(format!("{file}: {e}")))?;
        refuse(spec.problems(), |key| format!("{file}: {key}"))?;
        create_output(&a.output)?;
        let at = a.logical_date.unwrap_or_else(Utc::now);
        let (input, out) = (a.input, a.output);
        cx.compute(move |stop| run(&spec, &input, &out, ("cli", at), stop))
            .await
    }
}

/// Reads the arms' counts, computes the posteriors, P(best) and the weights,
/// and writes the allocation. Blocking and CPU-bound: call through the
/// compute pool.
pub fn run(
    spec: &AllocateSpec,
    input: &Path,
    out_dir: &Path,
    (run_id, logical_date): (&str, DateTime<Utc>),
    stop: &StopFlag,
) -> StepResult {
    let counts = read_counts(input, "arm_id", None)?;
    let logged: std::collections::HashMap<String, usize> = counts
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), i))
        .collect();
    let configured: std::collections::HashSet<&str> =
        spec.arms.iter().map(|a| a.id.as_str()).collect();
    if let Some(unknown) = logged.keys().find(|id| !configured.contains(id.as_str())) {
        return Err(StepError::Data(format!(
            "the logs have arm `{unknown}`, which experiment `{}` does not list; nothing was written",
            spec.experiment
        )));
    }
    let missing: Vec<&str> = spec
        .arms
        .iter()
        .map(|a| a.id.as_str())
        .filter(|id| !logged.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        return Err(StepError::Data(format!(
            "arm(s) {} of experiment `{}` are missing from the logs (a query that drops arms with no trials?); give every arm a row, with 0 trials if need be; nothing was written",
            missing
                .iter()
                .take(10)
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            spec.experiment
        )));
    }
    // Counts in the configured order of the arms.
    let trials: Vec<u64> = spec
        .arms
        .iter()
        .map(|a| counts.trials[logged[&a.id]])
        .collect();
    let successes: Vec<u64> = spec
        .arms
        .iter()
        .map(|a| counts.successes[logged[&a.id]])
        .collect();
    let [a0, b0] = match (spec.prior, spec.empirical_prior) {
        (Some(p), _) => p,
        (None, true) => {
            let fit = beta_binomial::fit(&trials, &successes);
            match (fit.a, fit.b) {
                (Some(a), Some(b)) => [a, b],
                // No difference between arms beyond chance: no information to
                // borrow, so the uniform prior.
                _ => [1.0, 1.0],
            }
        }
        (None, false) => [1.0, 1.0],
    };
    let arms: Vec<Arm> = trials
        .iter()
        .zip(&successes)
        .map(|(&n, &c)| Arm {
            a: a0 + c as f64,
            b: b0 + (n - c) as f64,
        })
        .collect();
    let exact = arms.len() <= spec.exact_max_arms.unwrap_or(DEFAULT_EXACT_MAX_ARMS);
    let draws = spec.draws.unwrap_or(DEFAULT_DRAWS);
    let seed = spec.seed.unwrap_or(0);
    let (p_best, p_best_se) = match exact {
        true => (bandit::p_best_exact(&arms, stop)?, vec![0.0; arms.len()]),
        false => bandit::p_best_mc(&arms, draws, seed, stop)?,
    };
    stop.check()?;
    let best = (0..arms.len())
        .max_by(|&i, &j| p_best[i].total_cmp(&p_best[j]))
        .unwrap_or(0);
    let started = time(&spec.start)
        .ok()
        .flatten()
        .is_none_or(|s| logical_date >= s);
    let ended = time(&spec.end)
        .ok()
        .flatten()
        .is_some_and(|e| logical_date >= e);
    let decided = spec.stop.as_ref().is_some_and(|rule| {
        p_best[best] >= rule.p_best && trials.iter().all(|&n| n >= rule.min_trials)
    });
    let state = match (started, decided, ended) {
        (false, _, _) => State::Scheduled,
        (true, true, _) => State::Winner,
        (true, false, true) => State::Ended,
        (true, false, false) => State::Running,
    };
    let rule = match spec.rule {
        Some(RuleChoice::TopTwo) => Rule::TopTwo {
            beta: spec.top_two_beta.unwrap_or(0.5),
        },
        _ => Rule::Thompson,
    };
    let k = arms.len();
    let min_share = spec.min_share.unwrap_or(0.0);
    let control = spec.control.as_ref().and_then(|c| {
        spec.arms
            .iter()
            .position(|a| a.id == c.arm)
            .map(|i| (i, c.share))
    });
    let weights: Vec<f64> = match state {
        State::Winner | State::Ended => (0..k).map(|i| (i == best) as u8 as f64).collect(),
        State::Scheduled | State::Running => {
            let (fixed, free_arms): (f64, Vec<usize>) = match control {
                Some((c, share)) => (share, (0..k).filter(|&i| i != c).collect()),
                None => (0.0, (0..k).collect()),
            };
            let p: Vec<f64> = free_arms
                .iter()
                .map(|&i| {
                    if state == State::Scheduled {
                        1.0
                    } else {
                        p_best[i]
                    }
                })
                .collect();
            // The minimum share is of all units; inside the free part it is larger.
            let inner = bandit::allocate(&p, rule, min_share / (1.0 - fixed));
            let mut w = vec![0.0; k];
            for (&i, share) in free_arms.iter().zip(inner) {
                w[i] = (1.0 - fixed) * share;
            }
            if let Some((c, share)) = control {
                w[c] = share;
            }
            w
        }
    };
    let total: f64 = weights.iter().sum();
    if !weights.iter().all(|w| w.is_finite() && *w >= 0.0) || (total - 1.0).abs() > 1e-9 {
        return Err(StepError::Internal(format!(
            "the weights {weights:?} do not sum to 1; nothing was written"
        )));
    }
    let tail = (1.0 - LEVEL) / 2.0;
    let rows: Vec<ArmRow> = (0..k)
        .map(|i| {
            let ln_b = ln_beta(arms[i].a, arms[i].b);
            ArmRow {
                id: IdValue::Str(spec.arms[i].id.clone()),
                description: spec.arms[i].description.clone(),
                trials: trials[i],
                successes: successes[i],
                posterior_mean: arms[i].a / (arms[i].a + arms[i].b),
                lower: beta_quantile_ln(arms[i].a, arms[i].b, tail, ln_b),
                upper: beta_quantile_ln(arms[i].a, arms[i].b, 1.0 - tail, ln_b),
                p_best: p_best[i],
                p_best_se: p_best_se[i],
                weight: weights[i],
            }
        })
        .collect();
    let record = AllocationRecord {
        experiment: spec.experiment.clone(),
        unit: spec.unit.clone().unwrap_or_else(|| "user".into()),
        state,
        winner: matches!(state, State::Winner | State::Ended).then(|| spec.arms[best].id.clone()),
        method: if exact { "exact" } else { "monte_carlo" }.into(),
        draws: (!exact).then_some(draws),
        seed: (!exact).then_some(seed),
        rule: match rule {
            Rule::Thompson => "thompson".into(),
            Rule::TopTwo { beta } => format!("top_two (beta {beta})"),
        },
        min_share,
        logical_date,
        level: LEVEL,
        prior: [a0, b0],
    };
    let data = allocation::write(&out_dir.join(DATA_FILE), &rows, (run_id, Utc::now()))?;
    let state_file = artifact::write_json(&out_dir.join(STATE_FILE), &record)?;
    let details = serde_json::json!({
        "experiment": record.experiment,
        "state": record.state,
        "winner": record.winner,
        "method": record.method,
        "arms": rows.iter().map(|r| serde_json::json!({
            "arm": r.id.to_string(), "trials": r.trials, "successes": r.successes,
            "p_best": r.p_best, "weight": r.weight,
        })).collect::<Vec<_>>(),
    });
    Ok(StepOutput {
        rows: data.rows,
        files: vec![data, state_file],
        details,
    })
}
