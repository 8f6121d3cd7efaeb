//! Hyper-parameter search for `train` and `evaluate` steps (`[steps.<id>.tune]`):
//! each candidate setting, of one model or several, is fitted on part of the
//! training interactions and scored on the rest (a validation split, random or
//! each user's latest), and the best by the chosen metric wins.
//!
//! Bounded by `max_trials` and `max_time` (checked before each trial but the
//! first) and seeded: the same data and settings choose the same. A trial that fails (too
//! many items for `ease`, too little memory) is recorded and skipped; a stop
//! ends the search. The setting a previous run chose is tried first, so a
//! search cut short by its bounds never does worse than last time.
//!
//! The cells of an interactions file and their splits ([`Cells`]) are here
//! too: `evaluate` holds out its test part with the same split.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{Array, Float32Array, TimestampMicrosecondArray};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::StepError;
use super::model::{FeatureUse, ModelSpec, TrainData};
use super::spec::Problem;
use crate::artifact::interactions::{self, IdColumn};
use crate::artifact::read_parquet;
use crate::eval::{self, MAX_K, MetricName, Metrics};
use crate::models::ids::Ids;
use crate::models::{Csr, IdMap, StopFlag};

/// The most settings a search may list (after expanding every grid).
pub const MAX_SETTINGS: usize = 10_000;
/// The most trials a search may run.
pub const MAX_TRIALS: usize = 1000;
/// The longest `max_time`: a step's longest timeout.
pub const MAX_TIME: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// Every setting the search may try, in the order written; or the
    /// problems that make the candidates unusable, keyed `tune.candidates`.
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
        if self.max_time.is_zero() || self.max_time > MAX_TIME {
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
    let (fit_m, valid_m) = cells.matrices(&is_validation, Path::new("tune"))?;
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

/// The positions whose flag equals `test`.
fn kept(is_test: &[bool], test: bool) -> Vec<usize> {
    (0..is_test.len()).filter(|&k| is_test[k] == test).collect()
}

fn pick<T: Copy>(values: &[T], keep: &[usize]) -> Vec<T> {
    keep.iter().map(|&k| values[k]).collect()
}

/// Reads a `--tune` file: a `tune` table as a pipeline file holds it.
pub fn read(path: &Path) -> Result<TuneSpec, StepError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StepError::Data(format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| StepError::Data(format!("{}: {e}", path.display())))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    #[default]
    Random,
    Time,
}

/// Interactions as cells, each with its user and item index, value and time
/// (`i64::MIN` when null or absent), in file order.
pub struct Cells {
    pub users: IdMap,
    pub items: IdMap,
    pub rows: Vec<u32>,
    pub cols: Vec<u32>,
    pub vals: Vec<f32>,
    pub ts: Vec<i64>,
}

impl Cells {
    /// Reads an interactions file; `need_time` refuses one without `ts`.
    pub fn read(input: &Path, need_time: bool) -> Result<Self, StepError> {
        let (_, batches) = read_parquet(input)?;
        let (mut user_ids, mut item_ids) = (None, None);
        for b in &batches {
            IdColumn::of(b, "user_id", input)?.collect_into(&mut user_ids);
            IdColumn::of(b, "item_id", input)?.collect_into(&mut item_ids);
        }
        let users = IdMap::from_ids(user_ids.unwrap_or(Ids::Int(Vec::new())));
        let items = IdMap::from_ids(item_ids.unwrap_or(Ids::Int(Vec::new())));
        let (mut rows, mut cols, mut vals, mut ts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
            if need_time && time.is_none() {
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
        Ok(Cells {
            users,
            items,
            rows,
            cols,
            vals,
            ts,
        })
    }

    /// The cells of a matrix, its row and column indices as ids, untimed.
    pub fn of_matrix(m: &Csr) -> Cells {
        let ids = |n: usize| IdMap::from_ids(Ids::Int((0..n as i64).collect()));
        let rows = (0..m.n_rows)
            .flat_map(|r| std::iter::repeat_n(r as u32, m.indptr[r + 1] - m.indptr[r]))
            .collect();
        Cells {
            users: ids(m.n_rows),
            items: ids(m.n_cols),
            rows,
            cols: m.indices.clone(),
            vals: m.data.clone(),
            ts: vec![0; m.nnz()],
        }
    }

    /// The cells whose flag in `is_test` equals `test`, with the same id maps.
    pub fn subset(&self, is_test: &[bool], test: bool) -> Cells {
        let keep = kept(is_test, test);
        Cells {
            users: self.users.clone(),
            items: self.items.clone(),
            rows: pick(&self.rows, &keep),
            cols: pick(&self.cols, &keep),
            vals: pick(&self.vals, &keep),
            ts: pick(&self.ts, &keep),
        }
    }

    /// The training and held-out matrices of a split (users × items, all ids).
    pub fn matrices(&self, is_test: &[bool], input: &Path) -> Result<(Csr, Csr), StepError> {
        let part = |test: bool| {
            let keep = kept(is_test, test);
            let (rows, cols, vals) = (
                pick(&self.rows, &keep),
                pick(&self.cols, &keep),
                pick(&self.vals, &keep),
            );
            Csr::from_triplets(self.users.len(), self.items.len(), &rows, &cols, &vals)
        };
        Ok((
            interactions::finite(part(false), input)?,
            interactions::finite(part(true), input)?,
        ))
    }

    /// Which cells are held out: a seeded random `fraction` of them, or each
    /// user's latest `floor(fraction · n_u)` by time (ties in a seeded order).
    pub fn split(&self, kind: SplitKind, fraction: f64, seed: u64) -> Vec<bool> {
        let (rows, ts) = (&self.rows, &self.ts);
        let n = rows.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut is_test = vec![false; n];
        match kind {
            SplitKind::Random => {
                let n_test = (fraction * n as f64).round() as usize;
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
                    let n_test = (fraction * cells.len() as f64).floor() as usize;
                    for &k in &cells[cells.len() - n_test..] {
                        is_test[k] = true;
                    }
                }
            }
        }
        is_test
    }
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
