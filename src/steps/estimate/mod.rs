//! `estimate`: conversion rates with honest uncertainty, from an `events`
//! extract. `method = "beta_binomial"` shrinks each item's raw rate toward a
//! Beta prior fitted to all items (empirical Bayes, [`crate::stats`]), per group
//! if asked; `method = "logistic"` (the `logistic` module) fits the effect of attributes
//! on the outcome. Both artifacts ([`crate::artifact::estimates`]) are
//! published by `write` like a list.

mod logistic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::Instant;

use chrono::Utc;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kind::{CheckContext, Inputs, Problem, StepKind, create_output, refuse_flags};
use super::{DATA_FILE, StepContext, StepError, StepOutput, StepResult, StepRun};
use crate::artifact::estimates::{self, Estimate, GroupPrior, PRIOR_FILE, PriorRecord};
use crate::artifact::events::{ItemCounts, read_counts};
use crate::artifact::{self, ArtifactKind};
use crate::config::stores::is_pg_identifier;
use crate::models::{StopFlag, Stopped};
use crate::stats::beta_binomial::{self, Prior};

/// Estimates each item's rate from its trials and successes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateSpec {
    pub method: Method,
    /// The credible intervals' level.
    #[serde(default = "default_level")]
    pub level: f64,
    /// The rate `p_above_reference` compares each item with; the pooled rate of
    /// all items when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<f64>,
    /// A column of the events (a category …): one prior per group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A group with fewer items is shrunk toward the prior of all items
    /// (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_group_items: Option<usize>,
    /// logistic: numeric feature columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numeric: Vec<String>,
    /// logistic: categorical feature columns, one-hot against a reference level.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categorical: Vec<String>,
    /// logistic: pairs of features whose product is a feature too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interactions: Vec<[String; 2]>,
    /// logistic: the level each categorical is compared with (default: its
    /// first level, in number or text order).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reference_levels: BTreeMap<String, String>,
    /// logistic: levels in a smaller share of the training trials count as the
    /// column's most frequent level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_level_share: Option<f64>,
    /// logistic: the L2 penalty ½·l2·Σβ² (the intercept is not penalised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    /// logistic: the latest share of the rows (by `ts`, else file order) held
    /// out to measure the model (default 0.3; 0 for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
    /// logistic: default 100 for Newton, 1000 for L-BFGS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<usize>,
    /// logistic: `newton` or `lbfgs`; by default Newton up to
    /// 500 columns, L-BFGS beyond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver: Option<logistic::SolverChoice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Empirical Bayes: a Beta prior by maximum marginal likelihood.
    BetaBinomial,
    /// Logistic regression of the outcome on attributes.
    Logistic,
}

fn default_level() -> f64 {
    0.95
}

const DEFAULT_MIN_GROUP_ITEMS: usize = 20;

#[derive(clap::Args)]
pub struct EstimateArgs {
    /// An events Parquet file: `item_id` with `converted` (0/1 per row) or
    /// `trials` and `successes`.
    #[arg(long)]
    input: PathBuf,
    #[arg(long, value_enum, default_value = "beta-binomial")]
    method: Method,
    #[arg(long, default_value_t = 0.95)]
    level: f64,
    #[arg(long)]
    reference: Option<f64>,
    #[arg(long)]
    group: Option<String>,
    #[arg(long)]
    min_group_items: Option<usize>,
    /// logistic: numeric feature columns (comma-separated).
    #[arg(long, value_delimiter = ',')]
    numeric: Vec<String>,
    /// logistic: categorical feature columns (comma-separated).
    #[arg(long, value_delimiter = ',')]
    categorical: Vec<String>,
    /// logistic: an interaction of two features, `a*b` (repeatable).
    #[arg(long, value_parser = parse_pair)]
    interaction: Vec<[String; 2]>,
    /// logistic: a categorical's reference level, `column=level` (repeatable).
    #[arg(long, value_parser = parse_reference)]
    reference_level: Vec<(String, String)>,
    #[arg(long)]
    min_level_share: Option<f64>,
    #[arg(long)]
    l2: Option<f64>,
    #[arg(long)]
    holdout: Option<f64>,
    #[arg(long)]
    max_iterations: Option<usize>,
    #[arg(long, value_enum)]
    solver: Option<logistic::SolverChoice>,
    /// Folder for the estimates (or coefficients).
    #[arg(long)]
    output: PathBuf,
}

fn parse_pair(s: &str) -> Result<[String; 2], String> {
    match s.split_once('*') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok([a.into(), b.into()]),
        _ => Err(format!("`{s}` is not `a*b`, two feature columns")),
    }
}

fn parse_reference(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((c, l)) if !c.is_empty() => Ok((c.into(), l.into())),
        _ => Err(format!("`{s}` is not `column=level`")),
    }
}

impl EstimateSpec {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !(self.level > 0.0 && self.level < 1.0) {
            problems.push(Problem::new(
                "level",
                format!(
                    "{} is out of range; accepted: above 0 and below 1 (e.g. 0.95)",
                    self.level
                ),
            ));
        }
        let method = match self.method {
            Method::BetaBinomial => "beta_binomial",
            Method::Logistic => "logistic",
        };
        let mut only = |key: &str, set: bool, of: &str| {
            if set && of != method {
                problems.push(Problem::new(
                    key,
                    format!("applies to `method = \"{of}\"`, not `{method}`; remove it"),
                ));
            }
        };
        only("reference", self.reference.is_some(), "beta_binomial");
        only("group", self.group.is_some(), "beta_binomial");
        only(
            "min_group_items",
            self.min_group_items.is_some(),
            "beta_binomial",
        );
        for (key, set) in [
            ("numeric", !self.numeric.is_empty()),
            ("categorical", !self.categorical.is_empty()),
            ("interactions", !self.interactions.is_empty()),
            ("reference_levels", !self.reference_levels.is_empty()),
            ("min_level_share", self.min_level_share.is_some()),
            ("l2", self.l2.is_some()),
            ("holdout", self.holdout.is_some()),
            ("max_iterations", self.max_iterations.is_some()),
            ("solver", self.solver.is_some()),
        ] {
            only(key, set, "logistic");
        }
        match self.method {
            Method::BetaBinomial => self.beta_binomial_problems(&mut problems),
            Method::Logistic => logistic::problems(self, &mut problems),
        }
        problems
    }

    fn beta_binomial_problems(&self, problems: &mut Vec<Problem>) {
        if let Some(r) = self.reference
            && !(r > 0.0 && r < 1.0)
        {
            problems.push(Problem::new(
                "reference",
                format!("{r} is out of range; a rate above 0 and below 1"),
            ));
        }
        if let Some(g) = &self.group
            && (!is_pg_identifier(g) || estimates::COLUMNS.contains(&g.as_str()))
        {
            problems.push(Problem::new(
                "group",
                format!(
                    "`{g}` cannot be the group column: it becomes a column of the estimates, so it must be a lowercase name (letters, digits, `_`) other than {}",
                    estimates::COLUMNS.join(", ")
                ),
            ));
        }
        if self.min_group_items.is_some_and(|m| m < 2) {
            problems.push(Problem::new(
                "min_group_items",
                "must be at least 2: a prior is fitted to the variation between items",
            ));
        }
    }
}

impl StepKind for EstimateSpec {
    const NAME: &'static str = "estimate";
    const INPUTS: Inputs = Some(&[(ArtifactKind::Events, 1, 1)]);
    type Args = EstimateArgs;

    fn output(&self) -> ArtifactKind {
        match self.method {
            Method::BetaBinomial => ArtifactKind::Estimates,
            Method::Logistic => ArtifactKind::Coefficients,
        }
    }

    fn check(&self, _: &CheckContext) -> Vec<Problem> {
        self.problems()
    }

    fn describe(&self) -> String {
        match self.method {
            Method::BetaBinomial => {
                let by = self
                    .group
                    .as_ref()
                    .map(|g| format!(", a prior per `{g}`"))
                    .unwrap_or_default();
                format!(
                    "per-item rates by empirical Bayes, {}% intervals{by}",
                    self.level * 100.0
                )
            }
            Method::Logistic => logistic::describe(self),
        }
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        let input = step.data_of(ArtifactKind::Events)?;
        let (spec, out, run_id) = (
            self.clone(),
            step.out_dir.to_path_buf(),
            step.cx.run_id.clone(),
        );
        step.cx
            .compute(move |stop| match spec.method {
                Method::BetaBinomial => run(&spec, &input, &out, &run_id, stop),
                Method::Logistic => logistic::run(&spec, &input, &out, &run_id, stop),
            })
            .await
    }

    async fn run_alone(a: EstimateArgs, _project_dir: &Path, cx: &StepContext) -> StepResult {
        let spec = EstimateSpec {
            method: a.method,
            level: a.level,
            reference: a.reference,
            group: a.group,
            min_group_items: a.min_group_items,
            numeric: a.numeric,
            categorical: a.categorical,
            interactions: a.interaction,
            reference_levels: a.reference_level.into_iter().collect(),
            min_level_share: a.min_level_share,
            l2: a.l2,
            holdout: a.holdout,
            max_iterations: a.max_iterations,
            solver: a.solver,
        };
        refuse_flags(spec.problems())?;
        create_output(&a.output)?;
        let (input, out) = (a.input, a.output);
        cx.compute(move |stop| match spec.method {
            Method::BetaBinomial => run(&spec, &input, &out, "cli", stop),
            Method::Logistic => logistic::run(&spec, &input, &out, "cli", stop),
        })
        .await
    }
}

/// Reads the events, fits the priors, writes every item's estimate. Blocking and
/// CPU-bound: call through the compute pool.
pub fn run(
    spec: &EstimateSpec,
    input: &Path,
    out_dir: &Path,
    run_id: &str,
    stop: &StopFlag,
) -> StepResult {
    let started = Instant::now();
    let counts = read_counts(input, "item_id", spec.group.as_deref())?;
    let read_s = started.elapsed().as_secs_f64();
    stop.check()?;
    let global = beta_binomial::fit(&counts.trials, &counts.successes);
    let fit_s = started.elapsed().as_secs_f64() - read_s;
    let reference = spec.reference.unwrap_or(global.mean);
    // Each group's prior, or the global one for a small group.
    let mut groups: BTreeMap<String, (GroupPrior, Prior)> = BTreeMap::new();
    if let Some(of_item) = &counts.groups {
        let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, g) in of_item.iter().enumerate() {
            members.entry(g).or_default().push(i);
        }
        for (g, items) in members {
            stop.check()?;
            let fallback = items.len() < spec.min_group_items.unwrap_or(DEFAULT_MIN_GROUP_ITEMS);
            let prior = match fallback {
                true => global.clone(),
                false => {
                    let pick = |v: &[u64]| items.iter().map(|&i| v[i]).collect::<Vec<_>>();
                    beta_binomial::fit(&pick(&counts.trials), &pick(&counts.successes))
                }
            };
            let record = GroupPrior {
                items: items.len(),
                fallback,
                prior: json!(prior),
            };
            groups.insert(g.to_string(), (record, prior));
        }
    }
    // Items with the same counts under the same prior have the same posterior,
    // and tiny counts repeat: 10k items of a Zipf catalogue have about 1,400
    // distinct (trials, successes). Each distinct one is computed once.
    let group_of = |i: usize| -> Option<&str> { counts.groups.as_ref().map(|g| g[i].as_str()) };
    let mut distinct: FxHashMap<(Option<&str>, u64, u64), usize> = FxHashMap::default();
    let mut keys = Vec::new();
    let slot: Vec<usize> = (0..counts.ids.len())
        .map(|i| {
            let key = (group_of(i), counts.trials[i], counts.successes[i]);
            *distinct.entry(key).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            })
        })
        .collect();
    let posteriors: Vec<beta_binomial::Posterior> = keys
        .par_iter()
        .map(|&(group, n, c)| {
            stop.check()?;
            let prior = match group {
                Some(g) => &groups[g].1,
                None => &global,
            };
            Ok(beta_binomial::posterior(prior, c, n, spec.level, reference))
        })
        .collect::<Result<_, Stopped>>()?;
    let rows: Vec<Estimate> = (0..counts.ids.len())
        .map(|i| {
            let post = &posteriors[slot[i]];
            Estimate {
                id: counts.ids[i].clone(),
                group: group_of(i).map(str::to_string),
                trials: counts.trials[i],
                successes: counts.successes[i],
                posterior_mean: post.mean,
                lower: post.lower,
                upper: post.upper,
                p_above: post.p_above,
                shrinkage: post.shrinkage,
            }
        })
        .collect();
    stop.check()?;
    check_finite(&rows)?;
    let mut details = summary(spec, &counts, &global, &groups, reference);
    // Where the time went: reading and counting the events, then fitting the
    // priors and every item's posterior.
    details["seconds"] = json!({
        "read": read_s - counts.count_seconds,
        "count": counts.count_seconds,
        "fit": fit_s,
        "fit_and_posteriors": started.elapsed().as_secs_f64() - read_s,
    });
    let data = estimates::write(
        &out_dir.join(DATA_FILE),
        rows,
        spec.group.as_deref(),
        (run_id, Utc::now()),
    )?;
    let record = PriorRecord {
        method: "beta_binomial".into(),
        level: spec.level,
        reference,
        global: json!(global),
        groups: groups.into_iter().map(|(g, (r, _))| (g, r)).collect(),
    };
    let prior = artifact::write_json(&out_dir.join(PRIOR_FILE), &record)?;
    Ok(StepOutput {
        rows: data.rows,
        files: vec![data, prior],
        details,
    })
}

/// A non-finite estimate is a bug or a numeric failure, never something to publish.
fn check_finite(rows: &[Estimate]) -> Result<(), StepError> {
    match rows.iter().find(|r| {
        ![r.posterior_mean, r.lower, r.upper, r.p_above, r.shrinkage]
            .iter()
            .all(|v| v.is_finite())
    }) {
        Some(r) => Err(StepError::Data(format!(
            "the estimate of item {:?} ({} of {}) is not a finite number; nothing was written",
            r.id, r.successes, r.trials
        ))),
        None => Ok(()),
    }
}

/// The manifest's details: what a reader of the run page needs first.
fn summary(
    spec: &EstimateSpec,
    counts: &ItemCounts,
    global: &Prior,
    groups: &BTreeMap<String, (GroupPrior, Prior)>,
    reference: f64,
) -> serde_json::Value {
    let flat_note = global.flat.then_some(
        "no between-item variation beyond chance: every item is estimated at the pooled rate",
    );
    json!({
        "method": "beta_binomial",
        "items": counts.ids.len(),
        "rows": counts.rows,
        "trials": global.trials,
        "successes": global.successes,
        "level": spec.level,
        "reference": reference,
        "prior": {
            "mean": global.mean,
            "a": global.a,
            "b": global.b,
            "flat": global.flat,
            "lr": global.lr,
        },
        "note": flat_note,
        "groups": groups.len(),
        "groups_on_global_prior": groups.values().filter(|(r, _)| r.fallback).count(),
        "flat_groups": groups.values().filter(|(r, p)| !r.fallback && p.flat).count(),
    })
}
