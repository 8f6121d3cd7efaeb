//! What `estimate` leaves. Rows are sorted by `item_id` (or by term), so reruns
//! are byte-comparable.
//!
//! The estimates artifact (`method = "beta_binomial"`): one row per item with the
//! counts it came from and its estimate,
//!
//! `item_id, [<group column>], trials, successes, raw_rate, posterior_mean,
//! lower, upper, p_above_reference, shrinkage, run_id, generated_at`
//!
//! in `data.parquet`, and the priors they were shrunk toward in `prior.json`.
//! `raw_rate` is null for an item with no trials; `shrinkage` is κ / (κ + trials),
//! how far the estimate moved from the raw rate toward its prior's mean.
//!
//! The coefficients artifact (`method = "logistic"`): one row per term,
//!
//! `term, estimate, std_error, z, p_value, lower, upper, odds_ratio, run_id,
//! generated_at`
//!
//! in `data.parquet` (standard errors and what follows from them are null beyond
//! [`crate::stats::logistic::MAX_SE_COLUMNS`] columns); each item's predicted rate
//! in `predictions.parquet` (`item_id, trials, successes, raw_rate,
//! predicted_rate, run_id, generated_at`); how the model was fitted and how it
//! did on held-out rows in `fit.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::events::IdValue;
use super::{ArtifactError, FileEntry, write_parquet};

pub const PRIOR_FILE: &str = "prior.json";
pub const FIT_FILE: &str = "fit.json";
pub const PREDICTIONS_FILE: &str = "predictions.parquet";

/// The columns besides the group's; the group column may not take these names.
pub const COLUMNS: &[&str] = &[
    "item_id",
    "trials",
    "successes",
    "raw_rate",
    "posterior_mean",
    "lower",
    "upper",
    "p_above_reference",
    "shrinkage",
    "run_id",
    "generated_at",
];

/// One item's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub id: IdValue,
    pub group: Option<String>,
    pub trials: u64,
    pub successes: u64,
    pub posterior_mean: f64,
    pub lower: f64,
    pub upper: f64,
    pub p_above: f64,
    pub shrinkage: f64,
}

/// What `prior.json` records: how the estimates were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorRecord {
    pub method: String,
    /// The credible intervals' level.
    pub level: f64,
    /// The rate `p_above_reference` compares with.
    pub reference: f64,
    /// The prior of all items.
    pub global: serde_json::Value,
    /// Per group (when grouped): its prior, or the global one for a group with
    /// too few items (`fallback`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, GroupPrior>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupPrior {
    pub items: usize,
    /// Too few items for a prior of its own: shrunk toward the global prior.
    pub fallback: bool,
    pub prior: serde_json::Value,
}

/// Writes the estimates, sorted by id, to `path`.
pub fn write(
    path: &Path,
    mut rows: Vec<Estimate>,
    group_column: Option<&str>,
    stamp: (&str, DateTime<Utc>),
) -> Result<FileEntry, ArtifactError> {
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let ids = id_array(rows.iter().map(|r| &r.id));
    let float = |f: &dyn Fn(&Estimate) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
    };
    let mut fields = vec![Field::new("item_id", ids.data_type().clone(), false)];
    let mut columns = vec![ids];
    if let Some(name) = group_column {
        fields.push(Field::new(name, DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.group.clone().unwrap_or_default()),
        )));
    }
    let counts = |f: &dyn Fn(&Estimate) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| f(r) as i64),
        ))
    };
    let raw: ArrayRef =
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| {
            (r.trials > 0).then(|| r.successes as f64 / r.trials as f64)
        })));
    for (name, nullable, column) in [
        ("trials", false, counts(&|r| r.trials)),
        ("successes", false, counts(&|r| r.successes)),
        ("raw_rate", true, raw),
        ("posterior_mean", false, float(&|r| r.posterior_mean)),
        ("lower", false, float(&|r| r.lower)),
        ("upper", false, float(&|r| r.upper)),
        ("p_above_reference", false, float(&|r| r.p_above)),
        ("shrinkage", false, float(&|r| r.shrinkage)),
    ] {
        fields.push(Field::new(name, column.data_type().clone(), nullable));
        columns.push(column);
    }
    finish(path, fields, columns, stamp)
}

/// The `item_id` column, typed as the data had it.
pub(super) fn id_array<'a>(ids: impl ExactSizeIterator<Item = &'a IdValue> + Clone) -> ArrayRef {
    let text = ids.clone().any(|id| matches!(id, IdValue::Str(_)));
    match text {
        true => Arc::new(StringArray::from_iter_values(ids.map(|id| match id {
            IdValue::Str(s) => s.clone(),
            IdValue::Int(v) => v.to_string(),
        }))),
        false => Arc::new(Int64Array::from_iter_values(ids.map(|id| match id {
            IdValue::Int(v) => *v,
            IdValue::Str(_) => unreachable!("checked above"),
        }))),
    }
}

/// Adds `run_id, generated_at` and writes the batch.
pub(crate) fn finish(
    path: &Path,
    mut fields: Vec<Field>,
    mut columns: Vec<ArrayRef>,
    (run_id, generated_at): (&str, DateTime<Utc>),
) -> Result<FileEntry, ArtifactError> {
    let n = columns.first().map_or(0, |c| c.len());
    fields.push(Field::new("run_id", DataType::Utf8, false));
    columns.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(run_id, n),
    )));
    fields.push(Field::new(
        "generated_at",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    ));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(
            generated_at.timestamp_micros(),
            n,
        ))
        .with_timezone("UTC"),
    ));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| ArtifactError::Invalid(e.to_string()))?;
    write_parquet(path, schema, &[batch])
}

/// One term of a logistic regression. `se` is absent when it was not computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Coefficient {
    pub term: String,
    pub estimate: f64,
    pub se: Option<f64>,
    /// The confidence level of `lower` and `upper`.
    pub level: f64,
}

/// Writes the coefficients, in the order given (the intercept first), to `path`.
pub fn write_coefficients(
    path: &Path,
    rows: &[Coefficient],
    stamp: (&str, DateTime<Utc>),
) -> Result<FileEntry, ArtifactError> {
    use crate::stats::special::{normal_quantile, normal_two_sided};
    let z = |c: &Coefficient| c.se.map(|se| c.estimate / se);
    let half = |c: &Coefficient| c.se.map(|se| se * normal_quantile(0.5 + c.level / 2.0));
    let column = |f: &dyn Fn(&Coefficient) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(f)))
    };
    let mut fields = vec![Field::new("term", DataType::Utf8, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.term.as_str()),
    ))];
    for (name, nullable, values) in [
        ("estimate", false, column(&|c| Some(c.estimate))),
        ("std_error", true, column(&|c| c.se)),
        ("z", true, column(&z)),
        ("p_value", true, column(&|c| z(c).map(normal_two_sided))),
        ("lower", true, column(&|c| half(c).map(|h| c.estimate - h))),
        ("upper", true, column(&|c| half(c).map(|h| c.estimate + h))),
        ("odds_ratio", false, column(&|c| Some(c.estimate.exp()))),
    ] {
        fields.push(Field::new(name, DataType::Float64, nullable));
        columns.push(values);
    }
    finish(path, fields, columns, stamp)
}

/// One item's observed and predicted rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub id: IdValue,
    pub trials: u64,
    pub successes: u64,
    /// The mean predicted rate over the item's trials.
    pub predicted: f64,
}

/// Writes the per-item predictions, sorted by id, to `path`.
pub fn write_predictions(
    path: &Path,
    mut rows: Vec<Prediction>,
    stamp: (&str, DateTime<Utc>),
) -> Result<FileEntry, ArtifactError> {
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let count = |f: &dyn Fn(&Prediction) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| f(r) as i64),
        ))
    };
    let ids = id_array(rows.iter().map(|r| &r.id));
    let fields = vec![
        Field::new("item_id", ids.data_type().clone(), false),
        Field::new("trials", DataType::Int64, false),
        Field::new("successes", DataType::Int64, false),
        Field::new("raw_rate", DataType::Float64, true),
        Field::new("predicted_rate", DataType::Float64, false),
    ];
    let columns: Vec<ArrayRef> = vec![
        ids,
        count(&|r| r.trials),
        count(&|r| r.successes),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| {
            (r.trials > 0).then(|| r.successes as f64 / r.trials as f64)
        }))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.predicted),
        )),
    ];
    finish(path, fields, columns, stamp)
}
