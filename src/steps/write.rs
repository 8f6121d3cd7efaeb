//! `write`: publishes list artifacts to a named sink, staged then swapped in, so
//! the service reading a table sees the old list or the new one.
//!
//! Invariant: an empty list is never published unless the step allows it
//! (`allow_empty`): a recommend step that matched nothing would otherwise
//! replace a good list with none. The refusal comes before anything is staged,
//! so the previous list stays current. Nor is a file that is not a list: the
//! id, `rank` and `score` columns must be there, ranks from 1, scores finite
//! (a service would sort by NaN). Several lists of one step are published
//! as one group ([`Sink::publish_group`](crate::sinks::Sink::publish_group)):
//! if any is refused, none is published.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, Float64Array, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use chrono::Utc;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::gate::{self, GateSpec, Record};
use super::kind::{
    CheckContext, Inputs, Problem, StepKind, Target, parse_key_value, refuse, settings_of,
};
use super::{StepContext, StepError, StepOutput, StepResult, StepRun, blocking};
use crate::artifact::{ArtifactKind, read_json};
use crate::config::diagnostic::{is_table_name, unknown_name};
use crate::sinks::{AnySink, ListFile, Published};

/// Publishes a list to a named sink as `table`, atomically; or several lists
/// together, `tables = { <need> = "<table>", … }`, switched as one where the
/// sink can (PostgreSQL: one transaction).
///
/// Keys absent from a file are not serialized, so adding them did not change the
/// fingerprint (`spec_hash`) of existing write steps.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WriteSpec {
    pub sink: String,
    /// The table of the step's one list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The table of each list, by the step (in `needs`) that makes it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, String>,
    /// Publish an empty list too; by default an empty list fails the step and
    /// the previous list stays current.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_empty: bool,
    /// What must hold before anything is published ([`gate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSpec>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl WriteSpec {
    /// `(list step, table)` for each list this step publishes; `list_steps` are
    /// the steps among its needs that make a list (for the `table` form, the one).
    pub fn targets<'a>(&'a self, list_steps: &[&'a str]) -> Vec<(&'a str, &'a str)> {
        match &self.table {
            Some(table) => list_steps.iter().map(|s| (*s, table.as_str())).collect(),
            None => self
                .tables
                .iter()
                .map(|(s, t)| (s.as_str(), t.as_str()))
                .collect(),
        }
    }

    /// The tables this step publishes, in the order they are published.
    pub fn table_names(&self) -> Vec<&str> {
        match &self.table {
            Some(table) => vec![table.as_str()],
            None => self.tables.values().map(String::as_str).collect(),
        }
    }
}

#[derive(clap::Args)]
pub struct WriteArgs {
    #[arg(long)]
    input: PathBuf,
    /// A sink from the settings.
    #[arg(long)]
    sink: String,
    #[arg(long)]
    table: String,
    /// The version name. Writing the same version with the same list again does
    /// nothing; with a different list, publishes it.
    #[arg(long)]
    version: Option<String>,
    /// Publish the list even if it has no rows (by default an empty list is
    /// refused and the previous list stays current).
    #[arg(long)]
    allow_empty: bool,
    /// A folder kept from one write of this table to the next: each publish is
    /// recorded there, and a gate compares the list with the last one.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Hold a publish gate, its keys as in a pipeline (`--gate min_ratio=0.9`,
    /// repeated); `--gate-metrics` alone holds one with the defaults.
    #[arg(long = "gate", value_parser = parse_key_value)]
    gate: Vec<(String, String)>,
    /// An `evaluate` step's `metrics.json`, whose figures the gate holds (lift
    /// over popularity, and against the last publish with `--state`).
    #[arg(long)]
    gate_metrics: Option<PathBuf>,
}

/// What a write step publishes: lists, per-item estimates and coefficients.
fn publishable(kind: ArtifactKind) -> bool {
    matches!(
        kind,
        ArtifactKind::UserRecs
            | ArtifactKind::ItemRecs
            | ArtifactKind::Estimates
            | ArtifactKind::Coefficients
            | ArtifactKind::Allocation
    )
}

impl StepKind for WriteSpec {
    const NAME: &'static str = "write";
    // One list, or one per entry of `tables` (see `input_problems`).
    const INPUTS: Inputs = Some(&[
        (ArtifactKind::UserRecs, 0, 1),
        (ArtifactKind::ItemRecs, 0, 1),
        (ArtifactKind::Estimates, 0, 1),
        (ArtifactKind::Coefficients, 0, 1),
        (ArtifactKind::Allocation, 0, 1),
        // An evaluate step whose figures the `gate` holds.
        (ArtifactKind::Metrics, 0, 1),
    ]);
    type Args = WriteArgs;

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Published
    }

    fn check(&self, cx: &CheckContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !cx.settings.sinks.contains_key(&self.sink) {
            let message = unknown_name("sink", &self.sink, cx.settings.sinks.keys());
            problems.push(Problem::new("sink", message));
        }
        let bad_name = |t: &str| {
            format!(
                "`{t}` is not a valid table name; use letters, digits and `_`, starting with a letter (at most 48 characters)"
            )
        };
        match (&self.table, self.tables.is_empty()) {
            (Some(_), false) => problems.push(Problem::new(
                "tables",
                "set `table` (one list) or `tables` (several lists published together), not both",
            )),
            (None, true) => problems.push(Problem::new(
                "table",
                "missing `table`; name the table to publish to, or publish several lists together with `tables = { <step> = \"<table>\", … }`",
            )),
            (Some(t), true) if !is_table_name(t) => problems.push(Problem::new("table", bad_name(t))),
            _ => {}
        }
        if let Some(gate) = &self.gate {
            problems.extend(gate.problems(cx));
        }
        let mut seen = BTreeSet::new();
        for (need, table) in self.tables.iter().filter(|_| self.table.is_none()) {
            let key = format!("tables.{need}");
            if !cx.needs.contains(need) {
                problems.push(Problem::new(
                    key,
                    format!(
                        "`{need}` is not in this step's `needs`; name the step that makes the list"
                    ),
                ));
            } else if !is_table_name(table) {
                problems.push(Problem::new(key, bad_name(table)));
            } else if !seen.insert(table.as_str()) {
                problems.push(Problem::new(
                    key,
                    format!("table `{table}` is named twice; give each list its own table"),
                ));
            }
        }
        problems
    }

    fn input_problems(&self, given: &[(&str, ArtifactKind)]) -> Option<Vec<String>> {
        let gated = self.gate.as_ref().and_then(|g| g.evaluate.as_deref());
        if let Some((step, _)) = given
            .iter()
            .find(|(name, k)| *k == ArtifactKind::Metrics && Some(*name) != gated)
        {
            return Some(vec![format!(
                "`{step}` gives evaluation figures, which a write step reads only for its gate: \
                 add `gate = {{ evaluate = \"{step}\" }}` or remove it from `needs`"
            )]);
        }
        let lists: Vec<&str> = given
            .iter()
            .filter(|(_, k)| publishable(*k))
            .map(|(name, _)| *name)
            .collect();
        if self.table.is_some() || self.tables.is_empty() {
            if lists.len() == 1 {
                return Some(Vec::new());
            }
            let several = match lists.len() {
                0 => "",
                _ => "; publish several together with `tables = { <step> = \"<table>\", … }`",
            };
            return Some(vec![format!(
                "a `write` step needs exactly one list (`user_recs` or `item_recs`), `estimates`, `coefficients` or `allocation`, not {}{several}",
                lists.len()
            )]);
        }
        let unnamed = lists.iter().filter(|l| !self.tables.contains_key(**l)).map(|list| {
            format!(
                "`{list}` gives a list that `tables` does not name; add `{list} = \"<table>\"` to `tables`"
            )
        });
        let not_lists = self
            .tables
            .keys()
            .filter(|n| given.iter().any(|(name, k)| name == n && !publishable(*k)))
            .map(|need| {
                format!(
                    "`{need}` in `tables` gives no list; name a `recommend`, `similar_items` or `estimate` step"
                )
            });
        Some(unnamed.chain(not_lists).collect())
    }

    fn publishes(&self) -> Vec<Target<'_>> {
        let key = if self.table.is_some() {
            "table"
        } else {
            "tables"
        };
        self.table_names()
            .into_iter()
            .map(|table| Target {
                key,
                sink: &self.sink,
                table,
            })
            .collect()
    }

    fn describe(&self) -> String {
        match &self.table {
            Some(table) => format!("to sink `{}` table `{table}`", self.sink),
            None => format!(
                "to sink `{}` tables {} (published together)",
                self.sink,
                self.tables
                    .iter()
                    .map(|(step, table)| format!("`{table}` ← {step}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        let sink = step.sink(&self.sink)?;
        // Validation guarantees a table for every list among the inputs.
        let list_steps: Vec<&str> = step
            .inputs
            .iter()
            .filter(|i| publishable(i.kind))
            .map(|i| i.step.as_str())
            .collect();
        let lists = self
            .targets(&list_steps)
            .into_iter()
            .map(|(name, table)| {
                let input = step.inputs.iter().find(|i| i.step == name).ok_or_else(|| {
                    StepError::Internal(format!("`tables` names `{name}`, which is not an input"))
                })?;
                // A list split into parts (`shards`) is published as one file.
                let joined = step.out_dir.join(format!("{name}.parquet"));
                Ok(ListFile {
                    table: table.to_string(),
                    input: crate::artifact::lists::joined(&input.dir, &joined)?,
                })
            })
            .collect::<Result<Vec<_>, StepError>>()?;
        if lists.is_empty() {
            return Err(StepError::Internal("no list to write".into()));
        }
        let figures = match self.gate.as_ref().and_then(|g| g.evaluate.as_ref()) {
            Some(name) => {
                let input = step
                    .inputs
                    .iter()
                    .find(|i| &i.step == name)
                    .ok_or_else(|| {
                        StepError::Internal(format!(
                            "the gate names `{name}`, which is not an input"
                        ))
                    })?;
                let path = input.dir.join(super::evaluate::METRICS_FILE);
                Some(read_json::<serde_json::Value>(&path)?)
            }
            None => None,
        };
        let job = WriteJob {
            sink,
            lists,
            version: step.cx.run_id.clone(),
            allow_empty: self.allow_empty,
            gate: self.gate.clone().map(|spec| (spec, figures)),
            state: step.cx.step_state.clone(),
        };
        blocking(move || run(&job)).await
    }

    async fn run_alone(a: WriteArgs, project_dir: &Path, _cx: &StepContext) -> StepResult {
        let settings = settings_of(project_dir)?;
        let config = settings
            .sinks
            .get(&a.sink)
            .ok_or_else(|| StepError::Data(format!("unknown sink `{}`", a.sink)))?;
        if !is_table_name(&a.table) {
            return Err(StepError::Data(format!(
                "`{}` is not a valid table name",
                a.table
            )));
        }
        let version = a.version.unwrap_or_else(|| {
            format!("cli-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ")).replace('.', "-")
        });
        if !crate::config::diagnostic::is_valid_run_id(&version) {
            return Err(StepError::Data(format!(
                "`{version}` is not a valid version name"
            )));
        }
        let gate = match (a.gate.is_empty(), &a.gate_metrics) {
            (true, None) => None,
            _ => Some((
                gate_of(&a.gate)?,
                a.gate_metrics.as_deref().map(read_json).transpose()?,
            )),
        };
        let job = WriteJob {
            sink: AnySink::from_config(&a.sink, config),
            lists: vec![ListFile {
                table: a.table,
                input: a.input,
            }],
            version,
            allow_empty: a.allow_empty,
            gate,
            state: a.state,
        };
        blocking(move || run(&job)).await
    }
}

/// The gate `--gate key=value` pairs describe: its figures come from
/// `--gate-metrics`, not from a step.
fn gate_of(pairs: &[(String, String)]) -> Result<GateSpec, StepError> {
    let text: String = pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let spec: GateSpec =
        toml::from_str(&text).map_err(|e| StepError::Data(format!("--gate: {}", e.message())))?;
    if spec.evaluate.is_some() {
        return Err(StepError::Data(
            "--gate evaluate: names a pipeline's step; give its metrics.json as --gate-metrics"
                .into(),
        ));
    }
    refuse(spec.bound_problems(), |k| {
        format!("--gate {}", k.trim_start_matches("gate."))
    })?;
    Ok(spec)
}

/// What one write step publishes, resolved from the pipeline or the command line.
#[derive(Debug, Clone)]
pub struct WriteJob {
    pub sink: AnySink,
    /// One list, or several published together.
    pub lists: Vec<ListFile>,
    /// The version name (the run id).
    pub version: String,
    pub allow_empty: bool,
    /// The gate and the figures of the evaluate step it names.
    pub gate: Option<(GateSpec, Option<serde_json::Value>)>,
    /// The step's state folder: the last publish is recorded there.
    pub state: Option<PathBuf>,
}

/// Blocking file or network I/O: call through `spawn_blocking`.
pub fn run(job: &WriteJob) -> Result<StepOutput, StepError> {
    for list in &job.lists {
        let rows = check_list(&list.input).map_err(|e| {
            StepError::Data(format!(
                "the list for table `{}` ({}): {e}; nothing was published and the previous \
                 list stays current",
                list.table,
                list.input.display()
            ))
        })?;
        if rows == 0 && !job.allow_empty {
            return Err(StepError::Data(format!(
                "the list for table `{}` is empty; nothing was published and the previous list stays current \
                 (set `allow_empty = true` on the write step, or pass `--allow-empty`, to publish an empty list)",
                list.table
            )));
        }
    }
    // Shapes are what the next run's gate compares with: measured whenever
    // there is a state folder to keep them in.
    let shapes = match (&job.state, &job.gate) {
        (None, None) => BTreeMap::new(),
        _ => job
            .lists
            .iter()
            .map(|l| Ok((l.table.clone(), gate::shape(&l.input)?)))
            .collect::<Result<_, StepError>>()?,
    };
    let last = job.state.as_deref().and_then(gate::last);
    let checks = match &job.gate {
        Some((spec, figures)) => {
            let checks = spec.judge(figures.as_ref(), &shapes, last.as_ref());
            if let Some(refused) = gate::refusal(&checks, last.as_ref()) {
                return Err(refused);
            }
            Some(checks)
        }
        None => None,
    };
    let sink = job.sink.get();
    sink.healthcheck()?;
    let published = match job.lists.as_slice() {
        [one] => vec![sink.publish(&one.table, &job.version, &one.input)?],
        lists => sink.publish_group(lists, &job.version)?,
    };
    if let Some(state) = &job.state {
        let record = Record {
            run_id: job.version.clone(),
            metric: job
                .gate
                .as_ref()
                .and_then(|(spec, figures)| gate::recorded_metric(spec, figures.as_ref())),
            lists: shapes,
        };
        // The lists are out: failing the step now would misreport them.
        if let Err(e) = gate::keep(state, &record) {
            tracing::warn!(error = %e, "the publish was not recorded for the next gate");
        }
    }
    let mut out = output(published);
    if let Some(checks) = checks {
        out.details["gate"] = json!(checks);
    }
    Ok(out)
}

/// The rows of the list at `path`, once it is checked to be one: the columns of
/// a user→item or item→item list, every rank at least 1, every score finite.
/// Streams the file: a list may not fit in memory at once.
fn check_list(path: &Path) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("not a Parquet list: {e}"))?;
    let schema = builder.schema().clone();
    let has = |c: &str| schema.column_with_name(c).is_some();
    if has("item_id") && has("posterior_mean") {
        return check_estimates(builder);
    }
    if has("term") && has("estimate") {
        return check_coefficients(builder);
    }
    if has("arm_id") && has("weight") {
        return check_allocation(builder);
    }
    let ids = (has("user_id") && has("item_id")) || (has("item_id") && has("similar_item_id"));
    if !(ids && has("rank") && has("score")) {
        return Err(
            "not a list: a list has `user_id, item_id` (or `item_id, similar_item_id`), `rank` and `score`; estimates have `item_id` and `posterior_mean`, coefficients `term` and `estimate`"
                .into(),
        );
    }
    let reader = checked_columns(builder, &["rank", "score"])?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| format!("unreadable: {e}"))?;
        let rank = as_type::<Int64Array>(&batch, "rank", &DataType::Int64)?;
        let score = as_type::<Float64Array>(&batch, "score", &DataType::Float64)?;
        let bad = |what: &str, is_bad: &dyn Fn(usize) -> bool| match (0..batch.num_rows())
            .find(|&i| is_bad(i))
        {
            Some(i) => Err(format!("row {}: {what}", rows + i as u64 + 1)),
            None => Ok(()),
        };
        bad("`rank` must be 1 or more", &|i| {
            rank.is_null(i) || rank.value(i) < 1
        })?;
        bad("`score` must be a finite number", &|i| {
            score.is_null(i) || !score.value(i).is_finite()
        })?;
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// A reader of only the checked `columns`: the rest is never decoded.
fn checked_columns(
    builder: ParquetRecordBatchReaderBuilder<File>,
    columns: &[&str],
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, String> {
    let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    builder
        .with_projection(mask)
        .build()
        .map_err(|e| format!("unreadable: {e}"))
}

/// The rows of an estimates file, once every estimate and interval bound is a
/// rate: a service ordering by `posterior_mean` must never meet a NaN. (The mean
/// of a very skewed posterior may lie outside its central interval.)
fn check_estimates(builder: ParquetRecordBatchReaderBuilder<File>) -> Result<u64, String> {
    let columns = ["posterior_mean", "lower", "upper"];
    let reader = checked_columns(builder, &columns)?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| format!("unreadable: {e}"))?;
        let [mean, lower, upper] =
            columns.map(|c| as_type::<Float64Array>(&batch, c, &DataType::Float64));
        let (mean, lower, upper) = (mean?, lower?, upper?);
        let ok = |i: usize| {
            let (m, l, u) = (mean.value(i), lower.value(i), upper.value(i));
            [m, l, u].iter().all(|v| (0.0..=1.0).contains(v)) && l <= u
        };
        if let Some(i) = (0..batch.num_rows())
            .find(|&i| mean.is_null(i) || lower.is_null(i) || upper.is_null(i) || !ok(i))
        {
            return Err(format!(
                "row {}: `posterior_mean`, `lower` and `upper` must be rates in [0, 1], `lower` ≤ `upper`",
                rows + i as u64 + 1
            ));
        }
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// The rows of a coefficients file, once every estimate is finite and every
/// interval (where there is one) holds it.
fn check_coefficients(builder: ParquetRecordBatchReaderBuilder<File>) -> Result<u64, String> {
    let columns = ["estimate", "lower", "upper"];
    let reader = checked_columns(builder, &columns)?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| format!("unreadable: {e}"))?;
        let [estimate, lower, upper] =
            columns.map(|c| as_type::<Float64Array>(&batch, c, &DataType::Float64));
        let (estimate, lower, upper) = (estimate?, lower?, upper?);
        let ok = |i: usize| {
            let e = estimate.value(i);
            let interval = match (lower.is_null(i), upper.is_null(i)) {
                (true, true) => true,
                (false, false) => lower.value(i) <= e && e <= upper.value(i),
                _ => false,
            };
            !estimate.is_null(i) && e.is_finite() && interval
        };
        if let Some(i) = (0..batch.num_rows()).find(|&i| !ok(i)) {
            return Err(format!(
                "row {}: `estimate` must be a finite number within `lower` and `upper`",
                rows + i as u64 + 1
            ));
        }
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// The rows of an allocation file, once every weight is a share and the
/// weights sum to 1: a service must never be served a broken split.
fn check_allocation(builder: ParquetRecordBatchReaderBuilder<File>) -> Result<u64, String> {
    let reader = checked_columns(builder, &["weight"])?;
    let (mut rows, mut total) = (0u64, 0.0);
    for batch in reader {
        let batch = batch.map_err(|e| format!("unreadable: {e}"))?;
        let weight = as_type::<Float64Array>(&batch, "weight", &DataType::Float64)?;
        if let Some(i) = (0..batch.num_rows())
            .find(|&i| weight.is_null(i) || !(0.0..=1.0).contains(&weight.value(i)))
        {
            return Err(format!(
                "row {}: `weight` must be a share in [0, 1]",
                rows + i as u64 + 1
            ));
        }
        total += weight.values().iter().sum::<f64>();
        rows += batch.num_rows() as u64;
    }
    if (total - 1.0).abs() > 1e-9 {
        return Err(format!("the weights sum to {total}, not 1"));
    }
    Ok(rows)
}

/// Column `name` of `batch` cast to `to`, as the array type `A` of that type.
fn as_type<A: Array + Clone + 'static>(
    batch: &arrow::record_batch::RecordBatch,
    name: &str,
    to: &DataType,
) -> Result<A, String> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| format!("no `{name}` column"))?;
    let cast = cast(column, to).map_err(|e| format!("`{name}`: {e}"))?;
    cast.as_any()
        .downcast_ref::<A>()
        .cloned()
        .ok_or_else(|| format!("`{name}` is not {to}"))
}

/// One list keeps its flat details (`location`, `rows` …); a group lists each
/// table under `tables`. `rows` is the sum of what readers now see.
fn output(published: Vec<Published>) -> StepOutput {
    let rows = published.iter().map(|p| p.rows).sum();
    let details = match published.as_slice() {
        [one] => json!(one),
        all => json!({
            "tables": all,
            "unchanged": all.iter().all(|p| p.unchanged),
        }),
    };
    StepOutput {
        rows,
        details,
        files: Vec::new(),
    }
}
