//! The allocation artifact (`allocate`): one row per arm of an experiment,
//!
//! `arm_id, description, trials, successes, posterior_mean, lower, upper,
//! p_best, p_best_se, weight, run_id, generated_at`
//!
//! in `data.parquet` (in the configured order of the arms), and the
//! experiment's state in `allocation.json`. `weight` is the share of units the
//! arm gets from now on; the weights sum to 1.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::estimates::{finish, id_array};
use super::events::IdValue;
use super::{ArtifactError, FileEntry};

pub const STATE_FILE: &str = "allocation.json";

/// One arm's row.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmRow {
    pub id: IdValue,
    pub description: String,
    pub trials: u64,
    pub successes: u64,
    pub posterior_mean: f64,
    pub lower: f64,
    pub upper: f64,
    pub p_best: f64,
    /// The Monte Carlo standard error of `p_best` (0 when integrated exactly).
    pub p_best_se: f64,
    pub weight: f64,
}

/// Where an experiment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Before its start: every arm gets an equal share.
    Scheduled,
    /// Weights follow the posteriors.
    Running,
    /// The stopping rule declared a winner, which gets every unit.
    Winner,
    /// Past its end without a winner: the arm most likely best gets every unit.
    Ended,
}

/// `allocation.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationRecord {
    pub experiment: String,
    /// What is assigned (a user, a session …): the API's `unit`.
    pub unit: String,
    pub state: State,
    /// The arm every unit gets, once there is one.
    pub winner: Option<String>,
    /// `exact` (numerical integration) or `monte_carlo`.
    pub method: String,
    pub draws: Option<usize>,
    pub seed: Option<u64>,
    pub rule: String,
    pub min_share: f64,
    pub logical_date: DateTime<Utc>,
    /// The credible intervals' level.
    pub level: f64,
    /// The Beta prior each arm's posterior starts from.
    pub prior: [f64; 2],
}

/// Writes the arms, in the order given, to `path`.
pub fn write(
    path: &Path,
    rows: &[ArmRow],
    stamp: (&str, DateTime<Utc>),
) -> Result<FileEntry, ArtifactError> {
    let ids = id_array(rows.iter().map(|r| &r.id));
    let float = |f: &dyn Fn(&ArmRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
    };
    let count = |f: &dyn Fn(&ArmRow) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| f(r) as i64),
        ))
    };
    let mut fields = vec![Field::new("arm_id", ids.data_type().clone(), false)];
    let mut columns = vec![ids];
    for (name, column) in [
        (
            "description",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.description.as_str()),
            )) as ArrayRef,
        ),
        ("trials", count(&|r| r.trials)),
        ("successes", count(&|r| r.successes)),
        ("posterior_mean", float(&|r| r.posterior_mean)),
        ("lower", float(&|r| r.lower)),
        ("upper", float(&|r| r.upper)),
        ("p_best", float(&|r| r.p_best)),
        ("p_best_se", float(&|r| r.p_best_se)),
        ("weight", float(&|r| r.weight)),
    ] {
        fields.push(Field::new(name, column.data_type().clone(), false));
        columns.push(column);
    }
    finish(path, fields, columns, stamp)
}

/// The allocation in step folder `dir`: its state and its arms, in order.
pub fn read(dir: &Path) -> Result<(AllocationRecord, Vec<ArmRow>), ArtifactError> {
    let record: AllocationRecord = super::read_json(&dir.join(STATE_FILE))?;
    let path = dir.join(super::DATA_FILE);
    let mut rows = Vec::new();
    super::for_each_batch(&path, |batch| {
        let column = |name: &str, to: &DataType| {
            let c = batch.column_by_name(name).ok_or_else(|| {
                ArtifactError::Invalid(format!("{}: no `{name}` column", path.display()))
            })?;
            cast(c, to)
                .map_err(|e| ArtifactError::Invalid(format!("{}: `{name}`: {e}", path.display())))
        };
        let (ids, descriptions) = (
            column("arm_id", &DataType::Utf8)?,
            column("description", &DataType::Utf8)?,
        );
        let (ids, descriptions) = (ids.as_string::<i32>(), descriptions.as_string::<i32>());
        let counts = ["trials", "successes"].map(|n| column(n, &DataType::Int64));
        let floats = [
            "posterior_mean",
            "lower",
            "upper",
            "p_best",
            "p_best_se",
            "weight",
        ]
        .map(|n| column(n, &DataType::Float64));
        let [trials, successes] = counts.map(|c| c.map(|c| c.as_primitive::<Int64Type>().clone()));
        let [mean, lower, upper, p_best, p_best_se, weight] =
            floats.map(|c| c.map(|c| c.as_primitive::<Float64Type>().clone()));
        let (trials, successes) = (trials?, successes?);
        let (mean, lower, upper, p_best, p_best_se, weight) =
            (mean?, lower?, upper?, p_best?, p_best_se?, weight?);
        for i in 0..batch.num_rows() {
            rows.push(ArmRow {
                id: IdValue::Str(ids.value(i).to_string()),
                description: descriptions.value(i).to_string(),
                trials: trials.value(i).max(0) as u64,
                successes: successes.value(i).max(0) as u64,
                posterior_mean: mean.value(i),
                lower: lower.value(i),
                upper: upper.value(i),
                p_best: p_best.value(i),
                p_best_se: p_best_se.value(i),
                weight: weight.value(i),
            });
        }
        Ok(())
    })?;
    Ok((record, rows))
}
