//! A write step's publish gate (`[steps.<id>.gate]`): before anything is
//! staged, the run's `evaluate` figures and the shape of each list are held
//! against the last publish of the same step, and a run that falls short
//! publishes nothing. The previous lists stay current, the step fails as
//! [`StepError::Blocked`] (exit 3, `recpipe_publish_blocked`), and its error
//! says which check failed by how much.
//!
//! What the last publishes looked like is kept in the step's state folder
//! (`published.json`, the last ten), written after every successful publish,
//! gated or not, so a gate added later has something to compare with; a
//! rollback forgets the publishes it undid. The first publish
//! has nothing to compare with: only the checks within the run (lift over
//! popularity) apply.

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::BuildHasher;
use std::path::Path;

use arrow::array::{Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StepError;
use super::kind::{CheckContext, Problem};
use crate::eval::MetricName;

const RECORD_FILE: &str = "published.json";

/// What must hold before a write step publishes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// An `evaluate` step among `needs`: its figures must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate: Option<String>,
    /// The figure the evaluate checks use.
    #[serde(default)]
    pub metric: MetricName,
    /// The metric at least this × the last publish's.
    #[serde(default = "default_min_ratio")]
    pub min_ratio: f64,
    /// The metric at least this × popularity's in the same evaluation.
    #[serde(default = "default_min_lift")]
    pub min_lift: f64,
    /// Each list's rows at least this × the last publish's.
    #[serde(default = "default_min_rows")]
    pub min_rows_ratio: f64,
    /// Each list's distinct keys (users of a user list, items of an item
    /// list) at least this × the last publish's.
    #[serde(default = "default_min_keys")]
    pub min_keys_ratio: f64,
}

fn default_min_ratio() -> f64 {
    0.95
}
fn default_min_lift() -> f64 {
    1.0
}
fn default_min_rows() -> f64 {
    0.5
}
fn default_min_keys() -> f64 {
    0.8
}

/// A list's size as the gate compares it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub rows: u64,
    /// Distinct values of the list's key column.
    pub keys: u64,
}

/// What one publish looked like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub run_id: String,
    /// The evaluate figure (`metric`'s value) when the gate named one.
    #[serde(default)]
    pub metric: Option<(MetricName, f64)>,
    pub lists: BTreeMap<String, Shape>,
}

/// One comparison of the gate.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub value: f64,
    /// The least value that passes.
    pub floor: f64,
    pub passed: bool,
}

impl GateSpec {
    /// Bounds, and that `evaluate` names an `evaluate` step among `needs`.
    pub fn problems(&self, cx: &CheckContext) -> Vec<Problem> {
        let mut problems = self.bound_problems();
        if let Some(step) = &self.evaluate {
            match cx.need_kinds.get(step.as_str()) {
                None => problems.push(Problem::new(
                    "gate.evaluate",
                    format!("`{step}` is not in this step's `needs`; add the evaluate step there"),
                )),
                Some(&kind) if kind != "evaluate" => problems.push(Problem::new(
                    "gate.evaluate",
                    format!("`{step}` is a `{kind}` step, not an `evaluate` step; name the evaluate step whose figures must hold"),
                )),
                _ => {}
            }
        }
        problems
    }

    /// The ratios out of bounds.
    pub fn bound_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("gate.min_ratio", self.min_ratio),
            ("gate.min_lift", self.min_lift),
            ("gate.min_rows_ratio", self.min_rows_ratio),
            ("gate.min_keys_ratio", self.min_keys_ratio),
        ] {
            if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
                problems.push(Problem::new(
                    key,
                    format!("must be between 0 and 100, not {value}"),
                ));
            }
        }
        problems
    }

    /// Every check of this run's `figures` (an evaluate step's `metrics.json`)
    /// and list `shapes` against `last`.
    pub fn judge(
        &self,
        figures: Option<&Value>,
        shapes: &BTreeMap<String, Shape>,
        last: Option<&Record>,
    ) -> Vec<Check> {
        let mut checks = Vec::new();
        let mut check = |check: String, value: f64, floor: f64| {
            checks.push(Check {
                check,
                value,
                floor,
                // NaN fails every check.
                passed: value >= floor,
            })
        };
        let name = metric_key(self.metric);
        if let Some(figures) = figures {
            let value = figure(figures, "metrics", &name);
            let popularity = figure(figures, "popularity", &name);
            // Nothing over nothing is no lift; a missing figure fails.
            let lift = if value.is_nan() || popularity.is_nan() {
                f64::NAN
            } else if popularity > 0.0 {
                value / popularity
            } else if value > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            check(
                format!("{name} over popularity's ({popularity:.4})"),
                lift,
                self.min_lift,
            );
            if let Some((m, last_value)) = last.and_then(|l| l.metric)
                && m == self.metric
            {
                check(
                    format!("{name} against the last publish's ({last_value:.4})"),
                    value,
                    self.min_ratio * last_value,
                );
            }
        }
        for (table, shape) in shapes {
            let Some(before) = last.and_then(|l| l.lists.get(table)) else {
                continue;
            };
            check(
                format!(
                    "rows of `{table}` against the last publish's ({})",
                    before.rows
                ),
                shape.rows as f64,
                self.min_rows_ratio * before.rows as f64,
            );
            check(
                format!(
                    "keys of `{table}` against the last publish's ({})",
                    before.keys
                ),
                shape.keys as f64,
                self.min_keys_ratio * before.keys as f64,
            );
        }
        checks
    }
}

fn metric_key(m: MetricName) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `figures[part][name]`, NaN when absent (which fails its check).
fn figure(figures: &Value, part: &str, name: &str) -> f64 {
    figures[part][name].as_f64().unwrap_or(f64::NAN)
}

/// The evaluate figure a publish is recorded with.
pub fn recorded_metric(gate: &GateSpec, figures: Option<&Value>) -> Option<(MetricName, f64)> {
    let value = figure(figures?, "metrics", &metric_key(gate.metric));
    value.is_finite().then_some((gate.metric, value))
}

/// The error of a failed gate: every failed check, and what became of the lists.
pub fn refusal(checks: &[Check], last: Option<&Record>) -> Option<StepError> {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} is {:.4}, below {:.4}", c.check, c.value, c.floor))
        .collect();
    if failed.is_empty() {
        return None;
    }
    let kept = match last {
        Some(l) => format!("the lists of run `{}` stay current", l.run_id),
        None => "the previous lists stay current".to_string(),
    };
    Some(StepError::Blocked(format!(
        "{}; nothing was published and {kept}",
        failed.join("; ")
    )))
}

/// Publishes remembered per step, newest last: as many as a rollback can
/// reach back.
const HISTORY: usize = 10;

/// The publishes recorded in a step's state folder, oldest first.
fn history(state: &Path) -> Vec<Record> {
    super::read_state(state, RECORD_FILE).unwrap_or_default()
}

/// The last publish recorded in a step's state folder, if any.
pub fn last(state: &Path) -> Option<Record> {
    history(state).pop()
}

/// Records a publish in the step's state folder.
pub fn keep(state: &Path, record: &Record) -> Result<(), StepError> {
    let mut history = history(state);
    history.push(record.clone());
    let excess = history.len().saturating_sub(HISTORY);
    history.drain(..excess);
    super::keep_state(state, RECORD_FILE, &history)
}

/// After a rollback made the lists of run `version` current again: the
/// publishes after it are forgotten, so that the next gate compares with the
/// lists now current, or with none when the record does not reach back to it.
pub fn rolled_back(state: &Path, version: &str) -> Result<(), StepError> {
    let mut history = history(state);
    let kept = history
        .iter()
        .rposition(|r| r.run_id == version)
        .map_or(0, |p| p + 1);
    if kept == history.len() {
        return Ok(());
    }
    history.truncate(kept);
    super::keep_state(state, RECORD_FILE, &history)
}

/// Rows and distinct keys of a checked list file: the key is the first of
/// `user_id`, `item_id`, `term` and `arm_id` it has. Streams the one column.
pub fn shape(path: &Path) -> Result<Shape, StepError> {
    let fail = |e: String| StepError::Data(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| fail(e.to_string()))?;
    let key = ["user_id", "item_id", "term", "arm_id"]
        .into_iter()
        .find(|c| builder.schema().column_with_name(c).is_some())
        .ok_or_else(|| fail("no key column".into()))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), [key]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    // Keys are counted by a 64-bit hash: a collision among a billion keys is
    // unlikely, and a miscount of one changes no ratio.
    let hasher = rustc_hash::FxBuildHasher;
    let mut seen = rustc_hash::FxHashSet::default();
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| fail(e.to_string()))?;
        let text = cast(batch.column(0), &DataType::Utf8).map_err(|e| fail(e.to_string()))?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| fail(format!("`{key}` is not text")))?;
        for i in 0..text.len() {
            if text.is_valid(i) {
                seen.insert(hasher.hash_one(text.value(i)));
            }
        }
        rows += batch.num_rows() as u64;
    }
    Ok(Shape {
        rows,
        keys: seen.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gate() -> GateSpec {
        toml::from_str("evaluate = \"eval\"").unwrap()
    }

    fn shapes(rows: u64, keys: u64) -> BTreeMap<String, Shape> {
        BTreeMap::from([("recs".to_string(), Shape { rows, keys })])
    }

    #[test]
    fn a_regression_against_the_last_publish_is_refused() {
        let last = Record {
            run_id: "r1".into(),
            metric: Some((MetricName::Ndcg, 0.30)),
            lists: shapes(1000, 100),
        };
        let good = json!({"metrics": {"ndcg": 0.29}, "popularity": {"ndcg": 0.1}});
        let checks = gate().judge(Some(&good), &shapes(990, 99), Some(&last));
        assert!(refusal(&checks, Some(&last)).is_none(), "{checks:?}");
        // 0.28 < 0.95 × 0.30, and the list lost half its users.
        let worse = json!({"metrics": {"ndcg": 0.28}, "popularity": {"ndcg": 0.1}});
        let checks = gate().judge(Some(&worse), &shapes(1000, 50), Some(&last));
        let e = refusal(&checks, Some(&last)).unwrap().to_string();
        assert!(
            e.contains("ndcg against the last publish's (0.3000) is 0.2800"),
            "{e}"
        );
        assert!(e.contains("keys of `recs`"), "{e}");
        assert!(e.contains("run `r1` stay current"), "{e}");
    }

    #[test]
    fn no_lift_over_popularity_or_a_missing_figure_is_refused() {
        let flat = json!({"metrics": {"ndcg": 0.1}, "popularity": {"ndcg": 0.12}});
        let checks = gate().judge(Some(&flat), &shapes(10, 10), None);
        assert!(refusal(&checks, None).is_some());
        let missing = json!({"metrics": {}, "popularity": {"ndcg": 0.12}});
        let checks = gate().judge(Some(&missing), &shapes(10, 10), None);
        assert!(refusal(&checks, None).is_some());
        // Zero over zero is no lift, and a missing baseline is refused.
        let zero = json!({"metrics": {"ndcg": 0.0}, "popularity": {"ndcg": 0.0}});
        assert!(refusal(&gate().judge(Some(&zero), &shapes(10, 10), None), None).is_some());
        let no_baseline = json!({"metrics": {"ndcg": 0.2}, "popularity": {}});
        let checks = gate().judge(Some(&no_baseline), &shapes(10, 10), None);
        assert!(refusal(&checks, None).is_some());
        // The first publish of a list has no shape to compare.
        let fine = json!({"metrics": {"ndcg": 0.2}, "popularity": {"ndcg": 0.1}});
        assert!(refusal(&gate().judge(Some(&fine), &shapes(1, 1), None), None).is_none());
    }
}
