//! `merge_filters`: combines deny lists, allow lists and an item→group map into
//! one filter artifact (its format is in [`crate::artifact::filters`]), which `recommend`
//! and `similar_items` then apply.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, StringArray};
use arrow::compute::{cast, concat_batches, filter_record_batch, is_not_null};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kind::{CheckContext, Inputs, Problem, StepKind, create_output, parse_key_value};
use super::{DATA_FILE, StepContext, StepError, StepOutput, StepResult, StepRun, blocking};
use crate::artifact::filters::{MERGED_FILE, MergedMeta, err};
use crate::artifact::{self, ArtifactKind, read_parquet};

/// Merges filter lists into one filter artifact: every `filter` input is a deny
/// list (items, or user–item pairs where `user_id` is set) unless named in `allow`;
/// `groups` caps how many items of one group (company, category …) a list holds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MergeFiltersSpec {
    /// Inputs that are allow lists: only their items may be recommended.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub groups: Option<GroupsSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsSpec {
    /// The input (an `items` or `filter` extract) that maps `item_id` to a group.
    pub from: String,
    /// Its column holding the group.
    pub column: String,
    /// At most this many items of one group per list.
    pub cap: usize,
}

#[derive(clap::Args)]
pub struct MergeFiltersArgs {
    /// `name=path` of a filter (or items) Parquet file; deny lists unless `--allow`.
    #[arg(long, value_parser = parse_key_value, required = true)]
    input: Vec<(String, String)>,
    /// Names of inputs that are allow lists.
    #[arg(long)]
    allow: Vec<String>,
    /// The input mapping `item_id` to a group, with `--group-column` and `--group-cap`.
    #[arg(long, requires_all = ["group_column", "group_cap"])]
    groups_from: Option<String>,
    #[arg(long)]
    group_column: Option<String>,
    #[arg(long)]
    group_cap: Option<usize>,
    /// Folder for the merged filter artifact.
    #[arg(long)]
    output: PathBuf,
}

impl StepKind for MergeFiltersSpec {
    const NAME: &'static str = "merge_filters";
    const INPUTS: Inputs = Some(&[
        (ArtifactKind::Filter, 0, usize::MAX),
        (ArtifactKind::Items, 0, 1),
    ]);
    type Args = MergeFiltersArgs;

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Filter
    }

    fn check(&self, cx: &CheckContext) -> Vec<Problem> {
        let named = self
            .allow
            .iter()
            .map(|a| ("allow", a))
            .chain(self.groups.iter().map(|g| ("groups", &g.from)));
        let mut problems: Vec<Problem> = named
            .filter(|(_, name)| !cx.needs.contains(name))
            .map(|(key, name)| {
                Problem::new(
                    key,
                    format!("`{name}` is not in this step's `needs`; name one of its inputs"),
                )
            })
            .collect();
        if let Some(g) = &self.groups
            && g.cap == 0
        {
            problems.push(Problem::new("groups.cap", "must be at least 1"));
        }
        problems
    }

    fn describe(&self) -> String {
        match &self.groups {
            Some(g) => format!("at most {} items per `{}` of `{}`", g.cap, g.column, g.from),
            None => "deny and allow lists".to_string(),
        }
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        let sources: Vec<FilterInput> = step
            .inputs
            .iter()
            .map(|i| FilterInput {
                step: i.step.clone(),
                file: i.dir.join(DATA_FILE),
            })
            .collect();
        let (spec, out) = (self.clone(), step.out_dir.to_path_buf());
        blocking(move || merge(&sources, &spec.allow, spec.groups.as_ref(), &out)).await
    }

    async fn run_alone(a: MergeFiltersArgs, _project_dir: &Path, _cx: &StepContext) -> StepResult {
        let inputs: Vec<FilterInput> = a
            .input
            .into_iter()
            .map(|(step, file)| FilterInput {
                step,
                file: file.into(),
            })
            .collect();
        let groups = match (a.groups_from, a.group_column, a.group_cap) {
            (Some(from), Some(column), Some(cap)) if cap > 0 => {
                Some(GroupsSpec { from, column, cap })
            }
            (Some(_), _, _) => {
                return Err(StepError::Data("--group-cap must be at least 1".into()));
            }
            _ => None,
        };
        create_output(&a.output)?;
        let (allow, out) = (a.allow, a.output);
        blocking(move || merge(&inputs, &allow, groups.as_ref(), &out)).await
    }
}

/// One input of a merge: the step (or name) it came from and its Parquet file.
#[derive(Debug, Clone)]
pub struct FilterInput {
    pub step: String,
    pub file: PathBuf,
}

fn with_source(
    batch: &RecordBatch,
    columns: &[&str],
    source: &str,
    path: &Path,
) -> Result<RecordBatch, StepError> {
    let mut cols: Vec<(&str, ArrayRef)> = Vec::new();
    for c in columns {
        let col = batch
            .column_by_name(c)
            .ok_or_else(|| err(path, format!("no column `{c}`")))?;
        cols.push((c, col.clone()));
    }
    cols.push((
        "source",
        Arc::new(StringArray::from(vec![source; batch.num_rows()])),
    ));
    Ok(RecordBatch::try_from_iter(cols).map_err(|e| err(path, e))?)
}

fn concat(parts: &[RecordBatch], what: &str) -> Result<Option<RecordBatch>, StepError> {
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    concat_batches(&first.schema(), parts)
        .map(Some)
        .map_err(|e| {
            StepError::Data(format!(
                "{what}: inputs disagree on id types ({e}); cast ids alike in the SQL"
            ))
        })
}

/// Merges `inputs` into `out_dir`. Blocking.
pub fn merge(
    inputs: &[FilterInput],
    allow: &[String],
    groups: Option<&GroupsSpec>,
    out_dir: &Path,
) -> Result<StepOutput, StepError> {
    let (mut deny_items, mut deny_pairs, mut allow_items, mut group_rows) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sources = Vec::new();
    for input in inputs {
        let path = input.file.clone();
        let (_, batches) = read_parquet(&path)?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if let Some(g) = groups.filter(|g| g.from == input.step) {
            for b in &batches {
                let group = b
                    .column_by_name(&g.column)
                    .ok_or_else(|| err(&path, format!("no group column `{}`", g.column)))?;
                let group = cast(group, &DataType::Utf8).map_err(|e| err(&path, e))?;
                let item = b
                    .column_by_name("item_id")
                    .ok_or_else(|| err(&path, "no column `item_id`"))?;
                let batch =
                    RecordBatch::try_from_iter([("item_id", item.clone()), ("group", group)])
                        .map_err(|e| err(&path, e))?;
                let valid = is_not_null(batch.column(1)).map_err(|e| err(&path, e))?;
                group_rows.push(filter_record_batch(&batch, &valid).map_err(|e| err(&path, e))?);
            }
            sources.push(json!({ "step": input.step, "role": "groups", "rows": rows }));
        } else if allow.contains(&input.step) {
            for b in &batches {
                allow_items.push(with_source(b, &["item_id"], &input.step, &path)?);
            }
            sources.push(json!({ "step": input.step, "role": "allow", "rows": rows }));
        } else {
            let (mut items, mut pairs) = (0usize, 0usize);
            for b in &batches {
                let is_pair: BooleanArray = match b.column_by_name("user_id") {
                    Some(u) => is_not_null(u).map_err(|e| err(&path, e))?,
                    None => BooleanArray::from(vec![false; b.num_rows()]),
                };
                let is_item = arrow::compute::not(&is_pair).map_err(|e| err(&path, e))?;
                let item_rows = filter_record_batch(b, &is_item).map_err(|e| err(&path, e))?;
                let pair_rows = filter_record_batch(b, &is_pair).map_err(|e| err(&path, e))?;
                items += item_rows.num_rows();
                pairs += pair_rows.num_rows();
                if item_rows.num_rows() > 0 {
                    deny_items.push(with_source(&item_rows, &["item_id"], &input.step, &path)?);
                }
                if pair_rows.num_rows() > 0 {
                    deny_pairs.push(with_source(
                        &pair_rows,
                        &["user_id", "item_id"],
                        &input.step,
                        &path,
                    )?);
                }
            }
            sources.push(json!({ "step": input.step, "role": "deny", "rows": rows, "items": items, "pairs": pairs }));
        }
    }
    let mut files = Vec::new();
    let mut parts_written = Vec::new();
    let mut total = 0u64;
    for (name, parts) in [
        ("deny_items.parquet", deny_items),
        ("deny_pairs.parquet", deny_pairs),
        ("allow_items.parquet", allow_items),
        ("groups.parquet", group_rows),
    ] {
        if let Some(batch) = concat(&parts, name)? {
            total += batch.num_rows() as u64;
            parts_written.push(name.to_string());
            files.push(artifact::write_parquet(
                &out_dir.join(name),
                batch.schema(),
                &[batch],
            )?);
        }
    }
    let meta = MergedMeta {
        group_cap: groups.map(|g| g.cap),
        allow: !allow.is_empty(),
        parts: parts_written,
        sources: sources.clone(),
    };
    files.push(artifact::write_json(&out_dir.join(MERGED_FILE), &meta)?);
    Ok(StepOutput {
        files,
        rows: total,
        details: json!({ "sources": sources, "group_cap": meta.group_cap }),
    })
}
