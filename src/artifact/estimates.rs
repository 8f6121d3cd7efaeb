//! The estimates artifact (`estimate` with `method = "beta_binomial"`): one row
//! per item with the counts it came from and its estimate,
//!
//! `item_id, [<group column>], trials, successes, raw_rate, posterior_mean,
//! lower, upper, p_above_reference, shrinkage, run_id, generated_at`
//!
//! in `data.parquet` (sorted by `item_id`, so reruns are byte-comparable), and the
//! priors they were shrunk toward in `prior.json`. `raw_rate` is null for an item
//! with no trials; `shrinkage` is κ / (κ + trials), how far the estimate moved
//! from the raw rate toward its prior's mean.

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
    (run_id, generated_at): (&str, DateTime<Utc>),
) -> Result<FileEntry, ArtifactError> {
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let n = rows.len();
    let ids: ArrayRef =
        match rows.first().map(|r| &r.id) {
            Some(IdValue::Str(_)) => Arc::new(StringArray::from_iter_values(rows.iter().map(
                |r| match &r.id {
                    IdValue::Str(s) => s.clone(),
                    IdValue::Int(v) => v.to_string(),
                },
            ))),
            _ => Arc::new(Int64Array::from_iter_values(rows.iter().map(
                |r| match &r.id {
                    IdValue::Int(v) => *v,
                    IdValue::Str(_) => 0,
                },
            ))),
        };
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
