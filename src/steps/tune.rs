//! Hyper-parameter search for `train` and `evaluate` steps (`[steps.<id>.tune]`):
//! each candidate setting, of one model or several, is fitted on part of the
//! training interactions and scored on the rest (a validation split, random or
//! each user's latest), and the best by the chosen metric wins.
//!
//! Bounded by `max_trials` and `max_time` (checked before each trial but the
//! first) and
//! seeded: the same data and settings choose the same. A trial that fails (too
//! many items for `ease`, too little memory) is recorded and skipped; a stop
//! ends the search. The setting a previous run chose is tried first, so a
//! search cut short by its bounds never does worse than last time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::StepError;
use super::evaluate::{Cells, MAX_K, SplitKind};
use super::model::{FeatureUse, ModelSpec, TrainData};
use super::spec::Problem;
use crate::eval::{self, MetricName, Metrics};
use crate::models::StopFlag;

/// The most settings a search may list (after expanding every grid).
pub const MAX_SETTINGS: usize = 10_000;
/// The most trials a search may run.
pub const MAX_TRIALS: usize = 1000;

/// How a step searches: on which split, by which metric, within which bounds,
/// over which candidates.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TuneSpec {
    /// `ndcg`, `precision`, `recall` or `map`, at `k`.
    #[serde(default)]
    pub metric: MetricName,
    #[serde(default = "default_k")]
    pub k: usize,
    /// `random` cells, or each user's latest (`time`, by `ts`).
    #[serde(default)]
    pub split: SplitKind,
    #[serde(default = "default_fraction")]
    pub validation_fraction: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_trials")]
    pub max_trials: usize,
    /// Wall-clock bound of the search ("10m"); no trial starts after it.
    #[serde(
        default = "default_time",
        deserialize_with = "crate::config::values::duration",
        serialize_with = "as_text"
    )]
    pub max_time: Duration,
    /// Settings to try, each a model's keys where any key may be a list of
    /// values (every combination is a setting). Empty: the step's own model
    /// with its keys, over that model's usual ranges ([`default_grid`]).
    #[serde(default)]
    pub candidates: Vec<BTreeMap<String, toml::Value>>,
}

fn default_k() -> usize {
    10
}
fn default_fraction() -> f64 {
    0.2
}
fn default_seed() -> u64 {
    43
}
fn default_trials() -> usize {
    20
}
fn default_time() -> Duration {
    Duration::from_secs(600)
}
fn as_text<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// The usual search range of a model's keys, for a `tune` without candidates:
/// the ranges the kit's strong baselines search, and ALS's size and penalty.
pub fn default_grid(model: &str) -> Vec<(&'static str, Vec<toml::Value>)> {
    let floats = |v: &[f64]| v.iter().map(|&x| toml::Value::Float(x)).collect();
    let ints = |v: &[i64]| v.iter().map(|&x| toml::Value::Integer(x)).collect();
    match model {
        "ease" => vec![(
            "lambda",
            floats(&[10.0, 30.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0]),
        )],
        "rp3beta" => vec![
            ("alpha", floats(&[0.5, 0.8, 1.0])),
            ("beta", floats(&[0.0, 0.2, 0.4, 0.6])),
        ],
        "als" => vec![
            ("factors", ints(&[32, 64, 128])),
            ("regularization", floats(&[0.01, 0.1, 1.0])),
        ],
        "item_item" => vec![("neighbors", ints(&[20, 50, 100, 200]))],
        _ => Vec::new(),
    }
}

impl TuneSpec {
    /// Every setting the search may try, in the order written, each with the
    /// candidate it came from; or the problems that make the candidates
    /// unusable, keyed `tune.candidates`.
    pub fn settings(&self, base: &ModelSpec) -> Result<Vec<ModelSpec>, Vec<Problem>> {
        let candidates: Vec<BTreeMap<String, toml::Value>> = if self.candidates.is_empty() {
            let mut own = match toml::Value::try_from(base) {
                Ok(toml::Value::Table(t)) => t.into_iter().collect::<BTreeMap<_, _>>(),
                _ => BTreeMap::new(),
            };
            for (key, values) in default_grid(base.model()) {
                own.insert(key.to_string(), toml::Value::Array(values));
            }
            vec![own]
        } else {
            self.candidates.clone()
        };
        let mut settings = Vec::new();
        let mut problems = Vec::new();
        for (n, candidate) in candidates.iter().enumerate() {
            let at =
                |m: String| Problem::new("tune.candidates", format!("candidate {}: {m}", n + 1));
            let size = candidate.values().fold(1usize, |size, v| match v {
                toml::Value::Array(a) => size.saturating_mul(a.len()),
                _ => size,
            });
            if size == 0 {
                problems.push(at("a key lists no values".into()));
                continue;
            }
            if settings.len().saturating_add(size) > MAX_SETTINGS {
                problems.push(at(format!(
                    "the candidates expand to more than {MAX_SETTINGS} settings; list fewer values"
                )));
                break;
            }
            for combination in expand(candidate) {
                match toml::Value::Table(combination).try_into::<ModelSpec>() {
                    Ok(spec) => {
                        let mut bad: Vec<Problem> = spec
                            .problems()
                            .into_iter()
                            .map(|p| at(format!("{} = {}", p.key, p.message)))
                            .collect();
                        if spec.item_features() == FeatureUse::Required {
                            bad.push(at(format!(
                                "model `{}` needs item features; tuning fits on interactions alone",
                                spec.model()
                            )));
                        }
                        if bad.is_empty() {
                            settings.push(spec);
                        } else {
                            problems.extend(bad);
                            break;
                        }
                    }
                    Err(e) => {
                        problems.push(at(e.message().to_string()));
                        break;
                    }
                }
            }
        }
        match problems.is_empty() {
            true => Ok(settings),
            false => Err(problems),
        }
    }

    /// Bounds of the search's own keys and of its candidates.
    pub fn problems(&self, base: &ModelSpec) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            problems.push(Problem::new(
                "tune.validation_fraction",
                format!(
                    "must be between 0 and 1 (exclusive), not {}",
                    self.validation_fraction
                ),
            ));
        }
        let bounded = [
            ("tune.k", self.k, MAX_K),
            ("tune.max_trials", self.max_trials, MAX_TRIALS),
        ];
        for (key, value, max) in bounded {
            if !(1..=max).contains(&value) {
                problems.push(Problem::new(
                    key,
                    format!("must be between 1 and {max}, not {value}"),
                ));
            }
        }
        if self.max_time.is_zero() || self.max_time > crate::pipeline::load::MAX_STEP_TIMEOUT {
            problems.push(Problem::new(
                "tune.max_time",
                "must be more than zero and at most 7 days",
            ));
        }
        if let Err(p) = self.settings(base) {
            problems.extend(p);
        }
        problems
    }
}

/// Every combination of a candidate's listed values, keys in order.
fn expand(candidate: &BTreeMap<String, toml::Value>) -> Vec<toml::Table> {
    let mut out = vec![toml::Table::new()];
    for (key, value) in candidate {
        let values = match value {
            toml::Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        };
        out = out
            .into_iter()
            .flat_map(|t| {
                values.iter().map(move |v| {
                    let mut t = t.clone();
                    t.insert(key.clone(), v.clone());
                    t
                })
            })
            .collect();
    }
    out
}

/// One fitted and scored setting.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub setting: ModelSpec,
    /// The validation figures; `None` when the fit failed.
    pub metrics: Option<Metrics>,
    pub error: Option<String>,
    pub seconds: f64,
}

/// What a search tried and chose.
#[derive(Debug, Clone)]
pub struct Search {
    pub metric: MetricName,
    pub chosen: ModelSpec,
    pub trials: Vec<Trial>,
    /// Settings left untried by the bounds.
    pub untried: usize,
    /// Whether the previous choice was tried first.
    pub started_from_previous: bool,
    pub seconds: f64,
}

impl Search {
    /// The manifest's `tune` entry.
    pub fn report(&self) -> Value {
        json!({
            "metric": self.metric,
            "chosen": self.chosen,
            "trials": self.trials,
            "untried": self.untried,
            "started_from_previous": self.started_from_previous,
            "seconds": self.seconds,
        })
    }
}

/// Searches `tune`'s settings for `base`'s step on `cells` (the training
/// interactions); `previous` (the last run's choice) is tried first.
/// Blocking and CPU-heavy: runs on the compute pool.
pub fn search(
    tune: &TuneSpec,
    base: &ModelSpec,
    cells: &Cells,
    previous: Option<ModelSpec>,
    stop: &StopFlag,
) -> Result<Search, StepError> {
    let started = Instant::now();
    let mut settings = tune.settings(base).map_err(|p| {
        StepError::Data(
            p.into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    // Seeded order: a bound below the grid's size then samples it evenly
    // rather than trying only the first values written.
    settings.shuffle(&mut StdRng::seed_from_u64(tune.seed));
    let started_from_previous = previous.is_some();
    if let Some(p) = previous {
        settings.retain(|s| s != &p);
        settings.insert(0, p);
    }
    let is_validation = cells.split(tune.split, tune.validation_fraction, tune.seed);
    let (fit_m, valid_m) = cells.matrices(&is_validation, std::path::Path::new("tune"))?;
    if fit_m.nnz() == 0 || valid_m.nnz() == 0 {
        return Err(StepError::Data(format!(
            "tune: {} interactions are too few to hold out {} for validation",
            cells.rows.len(),
            tune.validation_fraction
        )));
    }
    let mut trials: Vec<Trial> = Vec::new();
    for setting in &settings {
        // The first trial always runs: a search ends with a choice.
        let spent = trials.len() >= tune.max_trials || started.elapsed() >= tune.max_time;
        if spent && !trials.is_empty() {
            break;
        }
        stop.check()?;
        let t0 = Instant::now();
        let data = TrainData {
            matrix: &fit_m,
            item_features: None,
        };
        let scored = setting.fit(&data, stop).and_then(|fit| {
            Ok(eval::evaluate(
                fit.model.as_ref(),
                &fit_m,
                &valid_m,
                tune.k,
                stop,
            )?)
        });
        let (metrics, error) = match scored {
            Ok(m) => (Some(m), None),
            Err(StepError::Stopped(s)) => return Err(StepError::Stopped(s)),
            Err(e) => (None, Some(e.to_string())),
        };
        trials.push(Trial {
            setting: setting.clone(),
            metrics,
            error,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let best = trials
        .iter()
        .filter_map(|t| Some((t, t.metrics.as_ref()?.get(tune.metric))))
        .filter(|(_, v)| v.is_finite())
        .fold(None, |best: Option<(&Trial, f64)>, (t, v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((t, v)),
        });
    let Some((best, _)) = best else {
        let errors: Vec<String> = trials.iter().filter_map(|t| t.error.clone()).collect();
        return Err(StepError::Data(format!(
            "tune: none of the {} trials succeeded{}",
            trials.len(),
            errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        )));
    };
    Ok(Search {
        metric: tune.metric,
        chosen: best.setting.clone(),
        untried: settings.len() - trials.len(),
        trials,
        started_from_previous,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::planted_split;

    fn tune(text: &str) -> TuneSpec {
        toml::from_str(text).unwrap()
    }

    const ACROSS_MODELS: &str = r#"
        [[candidates]]
        model = "popular"
        [[candidates]]
        model = "item_item"
        neighbors = [1, 2]
        [[candidates]]
        model = "rp3beta"
        alpha = 0.8
        beta = [0.0, 0.4]
    "#;

    /// On data with planted topics the walk finds them and popularity or a
    /// one-neighbour list cannot: the search must pick a walk, and its choice
    /// must hold on the held-out part it never saw.
    #[test]
    fn the_search_picks_the_planted_best_and_it_holds_on_held_out_data() {
        let (train, test) = planted_split();
        let cells = Cells::of_matrix(&train);
        let base = ModelSpec::Popular(Default::default());
        let stop = StopFlag::default();
        let search = search(&tune(ACROSS_MODELS), &base, &cells, None, &stop).unwrap();
        assert_eq!(search.trials.len(), 5);
        assert_eq!(search.chosen.model(), "rp3beta", "{:?}", search.report());
        let best = |t: &Trial| t.metrics.unwrap().ndcg;
        let top = search.trials.iter().map(best).fold(0.0, f64::max);
        assert!(
            search
                .trials
                .iter()
                .any(|t| t.setting == search.chosen && best(t) == top)
        );
        let fit = |s: &ModelSpec| {
            let data = TrainData {
                matrix: &train,
                item_features: None,
            };
            let model = s.fit(&data, &stop).unwrap().model;
            eval::evaluate(model.as_ref(), &train, &test, 10, &stop).unwrap()
        };
        assert!(fit(&search.chosen).ndcg > 1.3 * fit(&base).ndcg);
        // Seeded: the same search chooses the same, in the same order.
        let again = search_again(&cells, &base);
        assert_eq!(
            again,
            search
                .trials
                .iter()
                .map(|t| t.setting.clone())
                .collect::<Vec<_>>()
        );
    }

    fn search_again(cells: &Cells, base: &ModelSpec) -> Vec<ModelSpec> {
        let s = search(
            &tune(ACROSS_MODELS),
            base,
            cells,
            None,
            &StopFlag::default(),
        )
        .unwrap();
        s.trials.into_iter().map(|t| t.setting).collect()
    }

    #[test]
    fn bounds_hold_and_the_previous_choice_goes_first() {
        let (train, _) = planted_split();
        let cells = Cells::of_matrix(&train);
        let base = ModelSpec::Popular(Default::default());
        let mut spec = tune(ACROSS_MODELS);
        spec.max_trials = 2;
        let previous = spec.settings(&base).unwrap().pop().unwrap();
        let s = search(
            &spec,
            &base,
            &cells,
            Some(previous.clone()),
            &StopFlag::default(),
        )
        .unwrap();
        assert_eq!(s.trials.len(), 2);
        assert_eq!(s.untried, 3);
        assert_eq!(s.trials[0].setting, previous);
        // No trial starts once the time is up: the first always runs.
        spec.max_trials = 100;
        spec.max_time = Duration::from_nanos(1);
        let s = search(&spec, &base, &cells, None, &StopFlag::default()).unwrap();
        assert_eq!(s.trials.len(), 1);
        let stop = StopFlag::default();
        stop.stop();
        assert!(matches!(
            search(&spec, &base, &cells, None, &stop),
            Err(StepError::Stopped(_))
        ));
    }

    #[test]
    fn candidates_that_cannot_run_are_refused_by_key() {
        let base = ModelSpec::Popular(Default::default());
        let problems = tune(
            r#"
            max_trials = 0
            [[candidates]]
            model = "ease"
            lambda = [100, -1]
            [[candidates]]
            model = "als"
            factorz = 3
            "#,
        )
        .problems(&base);
        let text = format!("{problems:?}");
        assert!(text.contains("tune.max_trials"), "{text}");
        assert!(
            text.contains("candidate 1: lambda = must be between"),
            "{text}"
        );
        assert!(
            text.contains("candidate 2: unknown field `factorz`"),
            "{text}"
        );
        // Without candidates: the step's model over its usual range.
        let ease = ModelSpec::Ease(Default::default());
        assert_eq!(tune("").settings(&ease).unwrap().len(), 8);
    }
}
