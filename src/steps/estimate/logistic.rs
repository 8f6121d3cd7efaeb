//! `estimate` with `method = "logistic"`: the effect of attributes on the
//! outcome. Builds the design from the events' columns (numbers as they are,
//! categories one-hot against a reference level, products of pairs), holds out
//! the latest rows to measure the model, fits it ([`crate::stats::logistic`]),
//! and refuses to publish what the data cannot estimate: a constant column,
//! collinear columns, a column that separates the outcome (unless `l2` holds it
//! finite), a fit that did not converge.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{EstimateSpec, Method};
use crate::artifact::estimates::{self, Coefficient, FIT_FILE, PREDICTIONS_FILE, Prediction};
use crate::artifact::events::{EventRows, read_rows};
use crate::artifact::{self};
use crate::models::StopFlag;
use crate::stats::logistic::{self, Design, FitError, Options, Outcome, Solver, sigmoid};
use crate::steps::kind::Problem;
use crate::steps::{DATA_FILE, StepError, StepOutput, StepResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SolverChoice {
    Newton,
    Lbfgs,
}

const DEFAULT_HOLDOUT: f64 = 0.3;
/// Newton converges in about ten iterations or not at all; L-BFGS takes
/// hundreds on a badly scaled problem.
const DEFAULT_MAX_ITERATIONS: [usize; 2] = [100, 1000];
/// Newton's Hessian solve costs columns³ per iteration: beyond this, L-BFGS.
const NEWTON_MAX_COLUMNS: usize = 500;
/// More columns than this is not an attribute model (and its optimiser state
/// alone would be large): refused before fitting.
const MAX_COLUMNS: usize = 100_000;
/// An unpenalised coefficient that moves the log-odds by more than this over
/// its column's range (odds × 5·10⁸) is separation, not an effect.
const MAX_LOG_ODDS_SPAN: f64 = 20.0;
/// Columns the outcome lives in: never features.
/// Columns the outcome lives in, and the intercept's name: never features.
const OUTCOME_COLUMNS: &[&str] = &["converted", "trials", "successes", "ts", "const"];

pub fn problems(spec: &EstimateSpec, problems: &mut Vec<Problem>) {
    let features: Vec<&String> = spec.numeric.iter().chain(&spec.categorical).collect();
    if features.is_empty() {
        problems.push(Problem::new(
            "numeric",
            "name at least one feature column in `numeric` or `categorical`",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (key, list) in [
        ("numeric", &spec.numeric),
        ("categorical", &spec.categorical),
    ] {
        for name in list {
            if OUTCOME_COLUMNS.contains(&name.as_str()) {
                problems.push(Problem::new(
                    key,
                    format!("`{name}` holds the outcome, its time or the intercept; it cannot be a feature"),
                ));
            } else if !seen.insert(name.as_str()) {
                problems.push(Problem::new(
                    key,
                    format!("`{name}` is named twice; a feature is numeric or categorical, once"),
                ));
            }
        }
    }
    let mut pairs = std::collections::BTreeSet::new();
    for [a, b] in &spec.interactions {
        let unknown = [a, b].into_iter().find(|f| !features.contains(f));
        if let Some(f) = unknown {
            problems.push(Problem::new(
                "interactions",
                format!("`{f}` is not a feature; an interaction multiplies two columns named in `numeric` or `categorical`"),
            ));
        } else if a == b {
            problems.push(Problem::new(
                "interactions",
                format!("`{a}*{a}` multiplies a feature by itself; name two different features"),
            ));
        } else if !pairs.insert(if a < b { (a, b) } else { (b, a) }) {
            problems.push(Problem::new(
                "interactions",
                format!("`{a}*{b}` is named twice"),
            ));
        }
    }
    for column in spec.reference_levels.keys() {
        if !spec.categorical.contains(column) {
            problems.push(Problem::new(
                format!("reference_levels.{column}"),
                format!("`{column}` is not in `categorical`"),
            ));
        }
    }
    let mut range = |key: &str, value: Option<f64>, ok: bool, accepted: &str| {
        if let Some(v) = value
            && !ok
        {
            problems.push(Problem::new(
                key,
                format!("{v} is out of range; accepted: {accepted}"),
            ));
        }
    };
    let share = spec.min_level_share;
    range(
        "min_level_share",
        share,
        share.is_some_and(|v| (0.0..0.5).contains(&v)),
        "at least 0 and below 0.5 (e.g. 0.02)",
    );
    range(
        "l2",
        spec.l2,
        spec.l2.is_some_and(|v| (0.0..=1e6).contains(&v)),
        "0 (none) to 1e6 (e.g. 1.0)",
    );
    range(
        "holdout",
        spec.holdout,
        spec.holdout.is_some_and(|v| (0.0..=0.9).contains(&v)),
        "0 (no held-out figures) to 0.9 (e.g. 0.3)",
    );
    if spec
        .max_iterations
        .is_some_and(|m| !(1..=10_000).contains(&m))
    {
        problems.push(Problem::new(
            "max_iterations",
            "is out of range; accepted: 1 to 10000",
        ));
    }
}

pub fn describe(spec: &EstimateSpec) -> String {
    let features = spec.numeric.len() + spec.categorical.len();
    let l2 = match spec.l2 {
        Some(l) if l > 0.0 => format!(", L2 {l}"),
        _ => String::new(),
    };
    format!(
        "logistic regression on {features} feature(s){}{l2}, {}% intervals",
        match spec.interactions.len() {
            0 => String::new(),
            n => format!(" and {n} interaction(s)"),
        },
        spec.level * 100.0
    )
}

/// How a categorical column becomes one-hot columns.
#[derive(Debug)]
struct OneHot {
    /// Per code of the data: its dummy (an index into `names`), or `None` for
    /// the reference level.
    dummy_of: Vec<Option<u32>>,
    /// The non-reference levels, in column order.
    names: Vec<String>,
    reference: String,
    /// Levels too rare in training, counted as the most frequent level.
    merged: Vec<String>,
}

/// A feature's value in one row.
#[derive(Clone, Copy)]
enum Value {
    Number(f64),
    /// A dummy, or `None` at the reference level.
    Dummy(Option<u32>),
}

enum Feature<'a> {
    Numeric(&'a [f64]),
    Categorical(&'a [u32], OneHot),
}

impl Feature<'_> {
    fn value(&self, i: usize) -> Value {
        match self {
            Feature::Numeric(x) => Value::Number(x[i]),
            Feature::Categorical(codes, h) => Value::Dummy(h.dummy_of[codes[i] as usize]),
        }
    }
}

/// The columns of an interaction of features `a` and `b`.
enum Product {
    /// Number × number: one column.
    Numbers(u32),
    /// Dummy × number: a column per dummy, from `first`.
    Scaled { first: u32 },
    /// Dummy × dummy: a column per pair seen in training.
    Pairs(FxHashMap<(u32, u32), u32>),
}

/// The design: which columns each row has, and their names.
struct Terms<'a> {
    names: Vec<String>,
    /// Per feature: it, and its first column.
    features: Vec<(Feature<'a>, u32)>,
    interactions: Vec<(usize, usize, Product)>,
}

impl Terms<'_> {
    /// Row `i`'s non-zero entries, the intercept first.
    fn row(&self, i: usize, out: &mut Vec<(u32, f64)>) {
        out.clear();
        out.push((0, 1.0));
        for (feature, first) in &self.features {
            match feature.value(i) {
                Value::Number(x) if x != 0.0 => out.push((*first, x)),
                Value::Dummy(Some(d)) => out.push((first + d, 1.0)),
                _ => {}
            }
        }
        for (a, b, product) in &self.interactions {
            let (va, vb) = (self.features[*a].0.value(i), self.features[*b].0.value(i));
            let entry = match (product, va, vb) {
                (Product::Numbers(c), Value::Number(x), Value::Number(y)) => Some((*c, x * y)),
                (Product::Scaled { first }, Value::Dummy(Some(d)), Value::Number(x))
                | (Product::Scaled { first }, Value::Number(x), Value::Dummy(Some(d))) => {
                    Some((first + d, x))
                }
                (Product::Pairs(cols), Value::Dummy(Some(da)), Value::Dummy(Some(db))) => {
                    cols.get(&(da, db)).map(|&c| (c, 1.0))
                }
                _ => None,
            };
            if let Some(e) = entry.filter(|e| e.1 != 0.0) {
                out.push(e);
            }
        }
    }

    /// The design of `rows`; a product that overflows is an error naming it.
    fn design(&self, rows: &[usize]) -> Result<Design, StepError> {
        let mut x = Design::new(self.names.len());
        let mut entries = Vec::new();
        for &i in rows {
            self.row(i, &mut entries);
            if let Some(&(j, v)) = entries.iter().find(|e| !e.1.is_finite()) {
                return Err(data_error(format!(
                    "`{}` is {v} in row {}: a product of two features overflows; rescale them",
                    self.names[j as usize],
                    i + 1
                )));
            }
            x.push(entries.iter().copied());
        }
        Ok(x)
    }
}

fn data_error(message: String) -> StepError {
    StepError::Data(format!("{message}; nothing was written"))
}

/// The one-hot coding of categorical `name` from the training rows' trials.
fn one_hot(
    name: &str,
    levels: &crate::artifact::events::Levels,
    train: &[usize],
    trials: &[f64],
    spec: &EstimateSpec,
) -> Result<OneHot, StepError> {
    let mut weight = vec![0.0; levels.names.len()];
    for &i in train {
        weight[levels.codes[i] as usize] += trials[i];
    }
    let total: f64 = weight.iter().sum();
    let mode = (0..weight.len())
        .max_by(|&a, &b| weight[a].total_cmp(&weight[b]).then(b.cmp(&a)))
        .unwrap_or(0);
    let share = spec.min_level_share.unwrap_or(0.0);
    let kept_level = |c: usize| weight[c] > 0.0 && weight[c] >= share * total;
    let mut kept: Vec<u32> = (0..weight.len() as u32)
        .filter(|&c| kept_level(c as usize))
        .collect();
    levels.sorted(&mut kept);
    let merged: Vec<String> = (0..weight.len())
        .filter(|&c| weight[c] > 0.0 && !kept_level(c))
        .map(|c| levels.names[c].clone())
        .collect();
    if kept.len() < 2 {
        return Err(data_error(format!(
            "the categorical feature `{name}` has {} level in the training rows{}: it cannot be told apart from the intercept; remove it",
            kept.len(),
            kept.first()
                .map(|&c| format!(" (`{}`)", levels.names[c as usize]))
                .unwrap_or_default()
        )));
    }
    let reference = match spec.reference_levels.get(name) {
        Some(r) => *kept.iter().find(|&&c| &levels.names[c as usize] == r).ok_or_else(|| {
            data_error(format!(
                "`reference_levels.{name}` is `{r}`, which is not a level of `{name}` in the training rows; its levels: {}",
                kept.iter().map(|&c| format!("`{}`", levels.names[c as usize])).collect::<Vec<_>>().join(", ")
            ))
        })?,
        None => kept[0],
    };
    let columns: Vec<u32> = kept.iter().copied().filter(|&c| c != reference).collect();
    let mut dummy_of: Vec<Option<u32>> = vec![None; weight.len()];
    for (d, &c) in columns.iter().enumerate() {
        dummy_of[c as usize] = Some(d as u32);
    }
    // Rare levels, and levels only the held-out rows have, count as the most
    // frequent level: the best guess for a level the model has not learned.
    let mode_dummy = dummy_of[mode];
    for (c, dummy) in dummy_of.iter_mut().enumerate() {
        if !kept_level(c) {
            *dummy = mode_dummy;
        }
    }
    Ok(OneHot {
        dummy_of,
        names: columns
            .iter()
            .map(|&c| levels.names[c as usize].clone())
            .collect(),
        reference: levels.names[reference as usize].clone(),
        merged,
    })
}

/// Builds the terms: features in the spec's order (numeric, then categorical),
/// then the interactions.
fn terms<'a>(
    spec: &EstimateSpec,
    rows: &'a EventRows,
    train: &[usize],
) -> Result<(Terms<'a>, usize), StepError> {
    let mut names = vec!["const".to_string()];
    let mut features = Vec::new();
    let mut labels: Vec<Vec<String>> = Vec::new();
    for (name, x) in spec.numeric.iter().zip(&rows.numeric) {
        features.push((Feature::Numeric(x), names.len() as u32));
        labels.push(vec![name.clone()]);
        names.push(name.clone());
    }
    for (name, levels) in spec.categorical.iter().zip(&rows.categorical) {
        let h = one_hot(name, levels, train, &rows.trials, spec)?;
        let first = names.len() as u32;
        let these: Vec<String> = h.names.iter().map(|l| format!("{name}_{l}")).collect();
        names.extend(these.iter().cloned());
        labels.push(these);
        features.push((Feature::Categorical(&levels.codes, h), first));
    }
    let position = |f: &String| {
        spec.numeric
            .iter()
            .chain(&spec.categorical)
            .position(|g| g == f)
            .expect("validated: interactions name features")
    };
    let mut interactions = Vec::new();
    let mut empty_pairs = 0;
    for [a, b] in &spec.interactions {
        let (ia, ib) = (position(a), position(b));
        let first = names.len() as u32;
        let product = match (&features[ia].0, &features[ib].0) {
            (Feature::Numeric(_), Feature::Numeric(_)) => {
                names.push(format!("{a}:{b}"));
                Product::Numbers(first)
            }
            (Feature::Categorical(..), Feature::Numeric(_)) => {
                names.extend(labels[ia].iter().map(|l| format!("{l}:{b}")));
                Product::Scaled { first }
            }
            (Feature::Numeric(_), Feature::Categorical(..)) => {
                names.extend(labels[ib].iter().map(|l| format!("{a}:{l}")));
                Product::Scaled { first }
            }
            (Feature::Categorical(..), Feature::Categorical(..)) => {
                // Only pairs that occur in training: the others would be
                // columns of zeros.
                let mut seen: BTreeMap<(u32, u32), ()> = BTreeMap::new();
                for &i in train {
                    if let (Value::Dummy(Some(da)), Value::Dummy(Some(db))) =
                        (features[ia].0.value(i), features[ib].0.value(i))
                    {
                        seen.insert((da, db), ());
                    }
                }
                let all = labels[ia].len() * labels[ib].len();
                empty_pairs += all - seen.len();
                let mut cols = FxHashMap::default();
                for (da, db) in seen.into_keys() {
                    cols.insert((da, db), names.len() as u32);
                    names.push(format!(
                        "{}:{}",
                        labels[ia][da as usize], labels[ib][db as usize]
                    ));
                }
                Product::Pairs(cols)
            }
        };
        interactions.push((ia, ib, product));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(data_error(format!(
            "two columns would both be named `{twice}` (a feature named like another's level, or a level with `:`); rename one"
        )));
    }
    if names.len() > MAX_COLUMNS {
        return Err(data_error(format!(
            "the features make {} columns, more than {MAX_COLUMNS}; merge rare levels (`min_level_share`) or drop a feature",
            names.len()
        )));
    }
    Ok((
        Terms {
            names,
            features,
            interactions,
        },
        empty_pairs,
    ))
}

/// Counts of a set of rows.
fn counts(rows: &[usize], y: &EventRows) -> serde_json::Value {
    let trials: f64 = rows.iter().map(|&i| y.trials[i]).sum();
    let successes: f64 = rows.iter().map(|&i| y.successes[i]).sum();
    json!({ "rows": rows.len(), "trials": trials, "successes": successes })
}

fn list(names: &[&str], at_most: usize) -> String {
    let mut s = names
        .iter()
        .take(at_most)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > at_most {
        s.push_str(&format!(" and {} more", names.len() - at_most));
    }
    s
}

/// Reads the events, fits the model, writes its coefficients, per-item
/// predictions and fit record. Blocking and CPU-bound: call through the
/// compute pool.
pub fn run(
    spec: &EstimateSpec,
    input: &Path,
    out_dir: &Path,
    run_id: &str,
    stop: &StopFlag,
) -> StepResult {
    debug_assert_eq!(spec.method, Method::Logistic);
    let started = Instant::now();
    let rows = read_rows(input, &spec.numeric, &spec.categorical)?;
    let read_s = started.elapsed().as_secs_f64();
    stop.check()?;
    let n = rows.item.len();
    // The latest rows are held out: by `ts` when the events have it (a stable
    // sort keeps file order among equal times), else in file order.
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(t) = &rows.time {
        order.sort_by_key(|&i| t[i]);
    }
    let holdout = spec.holdout.unwrap_or(DEFAULT_HOLDOUT);
    let mut n_train = ((n as f64) * (1.0 - holdout)).floor() as usize;
    // Rows at the same time as the last training row train too: the held-out
    // rows are strictly later.
    if let Some(t) = &rows.time {
        while n_train > 0 && n_train < n && t[order[n_train]] == t[order[n_train - 1]] {
            n_train += 1;
        }
    }
    let (train, test) = order.split_at(n_train);
    let train_successes: f64 = train.iter().map(|&i| rows.successes[i]).sum();
    let train_trials: f64 = train.iter().map(|&i| rows.trials[i]).sum();
    if train.is_empty() || train_successes == 0.0 || train_successes == train_trials {
        return Err(data_error(format!(
            "the training rows ({} of {n}) have {train_successes} successes in {train_trials} trials: a regression needs both outcomes",
            train.len()
        )));
    }
    if holdout > 0.0 && test.is_empty() {
        return Err(data_error(format!(
            "{n} rows leave none to hold out at `holdout = {holdout}`; set `holdout = 0` to fit on all rows"
        )));
    }
    let (terms, empty_pairs) = terms(spec, &rows, train)?;
    let x = terms.design(train)?;
    let pick = |v: &[f64]| train.iter().map(|&i| v[i]).collect::<Vec<_>>();
    let (t, s) = (pick(&rows.trials), pick(&rows.successes));
    let y = Outcome {
        trials: &t,
        successes: &s,
    };
    let summary = x.column_summary(&y);
    let design_s = started.elapsed().as_secs_f64() - read_s;
    stop.check()?;
    let name = |j: usize| terms.names[j].as_str();
    let constant: Vec<&str> = (1..x.columns)
        .filter(|&j| summary[j].constant(train.len()))
        .map(name)
        .collect();
    if !constant.is_empty() {
        return Err(data_error(format!(
            "{} takes one value in every training row: it cannot be told apart from the intercept; remove it",
            list(&constant, 5)
        )));
    }
    let l2 = spec.l2.unwrap_or(0.0);
    let separated: Vec<&str> = (1..x.columns)
        .filter(|&j| summary[j].separates())
        .map(name)
        .collect();
    if l2 == 0.0 && !separated.is_empty() {
        let j = terms.names.iter().position(|t| t == separated[0]).unwrap();
        return Err(data_error(format!(
            "the outcome is separated: {} ({} training trials with {} successes{}) would get an infinite coefficient; merge rare levels (`min_level_share`), drop the feature, or set `l2` (e.g. 1.0) to hold it finite",
            list(&separated, 5),
            summary[j].trials,
            summary[j].successes,
            if separated.len() > 1 {
                " for the first"
            } else {
                ""
            }
        )));
    }
    let solver = match spec.solver {
        Some(SolverChoice::Newton) => Solver::Newton,
        Some(SolverChoice::Lbfgs) => Solver::Lbfgs,
        None if x.columns <= NEWTON_MAX_COLUMNS => Solver::Newton,
        None => Solver::Lbfgs,
    };
    if l2 == 0.0 && x.columns > logistic::MAX_SE_COLUMNS {
        return Err(data_error(format!(
            "{} columns without `l2`: beyond {} columns collinear columns cannot be checked; set `l2` (e.g. 1.0)",
            x.columns,
            logistic::MAX_SE_COLUMNS
        )));
    }
    if solver == Solver::Newton && x.columns > logistic::MAX_SE_COLUMNS {
        return Err(data_error(format!(
            "`solver = \"newton\"` with {} columns would hold a {0}×{0} Hessian; use `lbfgs` (the default beyond {NEWTON_MAX_COLUMNS} columns)",
            x.columns
        )));
    }
    let mut penalty = vec![l2; x.columns];
    penalty[0] = 0.0;
    let options = Options {
        penalty,
        solver,
        max_iterations: spec
            .max_iterations
            .unwrap_or(DEFAULT_MAX_ITERATIONS[(solver == Solver::Lbfgs) as usize]),
    };
    let pooled = train_successes / train_trials;
    let fit = logistic::fit(&x, &y, &options, (pooled / (1.0 - pooled)).ln(), stop).map_err(
        |e| match e {
            FitError::Stopped => StepError::from(crate::models::Stopped),
            FitError::Collinear(cols) => {
                let cols: Vec<&str> = cols.into_iter().map(name).collect();
                data_error(format!(
                    "{} are collinear in the training rows (one is a combination of the others): drop one, or set `l2` (e.g. 1.0)",
                    list(&cols, 6)
                ))
            }
        },
    )?;
    let fit_s = started.elapsed().as_secs_f64() - read_s - design_s;
    if l2 == 0.0 && !fit.converged {
        // A coefficient that swings the odds by 10⁸ over its column's range is
        // separation the 0/1 check cannot see (a numeric column); Newton then
        // runs off without converging, so this is checked first, to name it.
        let span = |j: usize| {
            let c = &summary[j];
            let (lo, hi) = match c.rows == train.len() {
                true => (c.min, c.max),
                false => (c.min.min(0.0), c.max.max(0.0)),
            };
            fit.coef[j].abs() * (hi - lo)
        };
        let extreme: Vec<&str> = (1..x.columns)
            .filter(|&j| span(j) > MAX_LOG_ODDS_SPAN)
            .map(name)
            .collect();
        if !extreme.is_empty() {
            return Err(data_error(format!(
                "the outcome is (nearly) separated by {}: the fit moves the log-odds by more than {MAX_LOG_ODDS_SPAN} over its range; drop or bin the feature, or set `l2` (e.g. 1.0)",
                list(&extreme, 5)
            )));
        }
    }
    if !fit.converged {
        return Err(data_error(format!(
            "the fit did not converge in {} iterations ({}; the last step moved a coefficient by {:.3e}): raise `max_iterations`, or set `l2` if the data are separated",
            fit.iterations,
            fit.solver.as_str(),
            fit.last_step
        )));
    }
    let coefficients: Vec<Coefficient> = (0..x.columns)
        .map(|j| Coefficient {
            term: terms.names[j].clone(),
            estimate: fit.coef[j],
            se: fit.se.as_ref().map(|se| se[j]),
            level: spec.level,
        })
        .collect();
    if let Some(c) = coefficients
        .iter()
        .find(|c| !c.estimate.is_finite() || c.se.is_some_and(|s| !s.is_finite()))
    {
        return Err(data_error(format!(
            "the coefficient of `{}` is not a finite number",
            c.term
        )));
    }
    // Every row's predicted rate: held-out figures, and each item's mean.
    let mut entries = Vec::new();
    let predicted: Vec<f64> = (0..n)
        .map(|i| {
            terms.row(i, &mut entries);
            sigmoid(entries.iter().map(|&(j, v)| fit.coef[j as usize] * v).sum())
        })
        .collect();
    // A held-out row's values can lie far outside the training rows'.
    if let Some(i) = predicted.iter().position(|p| !p.is_finite()) {
        return Err(data_error(format!(
            "the predicted rate of row {} is not a number: its features overflow the model (values far outside the training rows?)",
            i + 1
        )));
    }
    let heldout = (!test.is_empty()).then(|| {
        let pick = |v: &[f64]| test.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let (p, t, s) = (pick(&predicted), pick(&rows.trials), pick(&rows.successes));
        let y = Outcome {
            trials: &t,
            successes: &s,
        };
        let (logloss, auc) = logistic::heldout(&p, &y);
        let (global, _) = logistic::heldout(&vec![pooled; p.len()], &y);
        json!({ "logloss": logloss, "logloss_global": global, "auc": auc })
    });
    let mut per_item = vec![(0.0, 0.0, 0.0); rows.ids.len()];
    for i in 0..n {
        let item = &mut per_item[rows.item[i] as usize];
        item.0 += rows.trials[i];
        item.1 += rows.successes[i];
        item.2 += rows.trials[i] * predicted[i];
    }
    let predictions: Vec<Prediction> = rows
        .ids
        .iter()
        .zip(per_item)
        .map(|(id, (t, s, p))| Prediction {
            id: id.clone(),
            trials: t as u64,
            successes: s as u64,
            predicted: if t > 0.0 { p / t } else { pooled },
        })
        .collect();
    let mut references = BTreeMap::new();
    let mut merged = BTreeMap::new();
    for ((feature, _), name) in terms
        .features
        .iter()
        .zip(spec.numeric.iter().chain(&spec.categorical))
    {
        if let Feature::Categorical(_, h) = feature {
            references.insert(name.clone(), h.reference.clone());
            if !h.merged.is_empty() {
                merged.insert(name.clone(), h.merged.clone());
            }
        }
    }
    let mut record = json!({
        "method": "logistic",
        "solver": fit.solver,
        "iterations": fit.iterations,
        "converged": fit.converged,
        "l2": l2,
        "level": spec.level,
        "columns": x.columns,
        "loglik": fit.loglik,
        "split": {
            "by": if rows.time.is_some() { "ts" } else { "file order" },
            "holdout": holdout,
            "train": counts(train, &rows),
            "test": counts(test, &rows),
        },
        "heldout": heldout,
        "reference_levels": references,
        "merged_levels": merged,
        "separated": separated,
        "interaction_pairs_not_in_training": empty_pairs,
        "standard_errors": fit.se.is_some(),
    });
    let stamp = (run_id, Utc::now());
    let data = estimates::write_coefficients(&out_dir.join(DATA_FILE), &coefficients, stamp)?;
    let items = estimates::write_predictions(&out_dir.join(PREDICTIONS_FILE), predictions, stamp)?;
    let fit_file = artifact::write_json(&out_dir.join(FIT_FILE), &record)?;
    record["seconds"] = json!({ "read": read_s, "design": design_s, "fit": fit_s });
    Ok(StepOutput {
        rows: data.rows,
        files: vec![data, items, fit_file],
        details: record,
    })
}
