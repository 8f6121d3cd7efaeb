//! `recommend`: the top-N items of every user from a model artifact, with every
//! filter list and their seen items removed (the list format is in
//! [`crate::artifact::lists`]). The scoring loop here serves `similar_items` too.
//!
//! Rows are scored in blocks that stream to the Parquet writer, so memory is
//! bounded by one block of lists, never users × items.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kind::{CheckContext, Inputs, Problem, StepKind, refuse_flags};
use super::{DATA_FILE, StepContext, StepError, StepOutput, StepResult, StepRun, input_of, model};
use crate::artifact::lists::{self, ListShape, MAX_SHARDS, Shard, USER_LIST};
use crate::artifact::{ArtifactKind, ParquetWriter, filters, interactions};
use crate::models::{Csr, IdMap, Recommender, StopFlag};
use crate::topn::{self, Selection};

/// Rows handed to `topn::select_block` per call, then streamed to Parquet. It
/// splits them into GEMM blocks of `rows / (4 · threads)` capped at 2048; with
/// 4096 here those blocks were only 512 rows on two cores, below the measured
/// best. 16 384 rows of top-10 lists are still only a few MB.
const USER_BLOCK: usize = 16_384;

/// List entries (rows × top-N) held at once: a block of [`USER_BLOCK`] rows of
/// lists up to 16 long. A longer top-N gets fewer rows per block, so memory stays
/// bounded (about 40 bytes an entry, scored and as Arrow) whatever `top_n` is.
const BLOCK_ENTRIES: usize = USER_BLOCK * 16;

/// List entries a symmetric model may compute at once (all items in one pass, at
/// half the cost): about 170 MB; more items than that go through blocks.
const SYMMETRIC_MAX_ENTRIES: usize = 16 * BLOCK_ENTRIES;

/// Top-N items per user from a trained model.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendSpec {
    #[serde(default = "default_top_n")]
    pub top_n: usize,
    /// Leave out the items each user already interacted with.
    #[serde(default = "yes")]
    pub exclude_seen: bool,
    /// Leave out items scoring below this.
    #[serde(default)]
    pub min_score: Option<f32>,
    /// The step fails when fewer than this share of users get a list, so a
    /// degenerate model never replaces a good list.
    #[serde(default = "default_min_coverage")]
    pub min_coverage: f64,
    /// An empty list is a failure unless this is set.
    #[serde(default)]
    pub allow_empty: bool,
    /// Which items may be recommended: `all`, or `no_interactions` (items no
    /// one has interacted with yet, such as today's new postings; an `fm` model
    /// scores them from their features).
    #[serde(default)]
    pub candidates: Candidates,
    /// Parts the scoring may be split into, each run by its own process (an
    /// Argo pod, `recpipe step run --shard k/N`); run in one process, the
    /// step makes the whole list as usual.
    #[serde(default = "one")]
    pub shards: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Candidates {
    #[default]
    All,
    NoInteractions,
}

pub(crate) fn default_min_coverage() -> f64 {
    0.5
}

pub(crate) fn default_top_n() -> usize {
    10
}

fn yes() -> bool {
    true
}

pub(crate) fn one() -> usize {
    1
}

/// `shards` must be from 1 to [`MAX_SHARDS`].
pub(crate) fn shard_problem(shards: usize) -> Option<Problem> {
    (!(1..=MAX_SHARDS).contains(&shards)).then(|| {
        Problem::new(
            "shards",
            format!("must be between 1 and {MAX_SHARDS}, not {shards}"),
        )
    })
}

/// Where a list step writes: its `data.parquet`, or its part's file when it
/// makes one part of a split list.
pub(crate) fn list_output(step: &StepRun<'_>) -> PathBuf {
    match step.cx.shard {
        Some(shard) => step.out_dir.join(format!("{}.parquet", shard.stem())),
        None => step.out_dir.join(DATA_FILE),
    }
}

/// The longest list a list step makes.
pub const MAX_TOP_N: usize = 10_000;
/// Bounds of a list step's `top_n`, `min_score` and `min_coverage` (pipeline
/// files and `recpipe step recommend|similar-items` check the same).
pub fn list_problems(top_n: usize, min_score: Option<f32>, min_coverage: f64) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !(1..=MAX_TOP_N).contains(&top_n) {
        problems.push(Problem::new(
            "top_n",
            format!("must be between 1 and {MAX_TOP_N}, not {top_n}"),
        ));
    }
    if let Some(m) = min_score.filter(|m| !m.is_finite()) {
        problems.push(Problem::new(
            "min_score",
            format!("must be a finite number, not {m}"),
        ));
    }
    if !(0.0..=1.0).contains(&min_coverage) {
        problems.push(Problem::new(
            "min_coverage",
            format!("must be between 0 and 1, not {min_coverage}"),
        ));
    }
    problems
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// A model folder written by `step train`.
    #[arg(long)]
    model: PathBuf,
    /// Whose seen items to exclude (default: the model's training data).
    #[arg(long)]
    interactions: Option<PathBuf>,
    /// Filter lists to apply: `item_id` [, `user_id`] files, or filter artifact folders
    /// (a `merge_filters` output carries allow lists and group caps too).
    #[arg(long)]
    filter: Vec<PathBuf>,
    #[arg(long, default_value_t = 10)]
    top_n: usize,
    /// Leave out items scoring below this.
    #[arg(long)]
    min_score: Option<f32>,
    /// Keep items the user already interacted with (`recommend` only).
    #[arg(long)]
    keep_seen: bool,
    /// Which items to rank (`recommend` only): `no-interactions` ranks only
    /// items without a row in the interactions (the model's, or `--interactions`).
    #[arg(long, value_enum, default_value_t = Candidates::All)]
    candidates: Candidates,
    /// Fail when fewer than this share of users (items) get a list.
    #[arg(long, default_value_t = 0.5)]
    min_coverage: f64,
    /// Write an empty list instead of failing.
    #[arg(long)]
    allow_empty: bool,
    #[arg(long, default_value = "cli")]
    run_id: String,
    #[arg(long)]
    output: PathBuf,
}

impl RecommendJob {
    /// A list step's job in a pipeline: the model and filters among its inputs.
    pub fn of_step(
        step: &StepRun<'_>,
        top_n: usize,
        min_score: Option<f32>,
        min_coverage: f64,
        allow_empty: bool,
    ) -> Result<Self, StepError> {
        Ok(RecommendJob {
            model_dir: input_of(step.inputs, ArtifactKind::Model)?.dir.clone(),
            interactions: None,
            filters: step
                .inputs
                .iter()
                .filter(|i| i.kind == ArtifactKind::Filter)
                .map(|i| i.dir.clone())
                .collect(),
            top_n,
            exclude_seen: false,
            candidates: Candidates::All,
            min_score,
            min_coverage,
            allow_empty,
            run_id: step.cx.run_id.clone(),
            generated_at: Utc::now(),
            shard: step.cx.shard,
        })
    }

    /// A list command's job, its arguments checked as a pipeline's keys are.
    pub fn of_args(a: ListArgs) -> Result<(Self, PathBuf), StepError> {
        refuse_flags(list_problems(a.top_n, a.min_score, a.min_coverage))?;
        let job = RecommendJob {
            model_dir: a.model,
            interactions: a.interactions,
            filters: a.filter,
            top_n: a.top_n,
            exclude_seen: !a.keep_seen,
            candidates: a.candidates,
            min_score: a.min_score,
            min_coverage: a.min_coverage,
            allow_empty: a.allow_empty,
            run_id: a.run_id,
            generated_at: Utc::now(),
            shard: None,
        };
        Ok((job, a.output))
    }
}

impl StepKind for RecommendSpec {
    const NAME: &'static str = "recommend";
    const INPUTS: Inputs = Some(&[
        (ArtifactKind::Model, 1, 1),
        (ArtifactKind::Interactions, 0, 1),
        (ArtifactKind::Filter, 0, usize::MAX),
    ]);
    type Args = ListArgs;

    fn output(&self) -> ArtifactKind {
        ArtifactKind::UserRecs
    }

    fn check(&self, _: &CheckContext) -> Vec<Problem> {
        let mut problems = list_problems(self.top_n, self.min_score, self.min_coverage);
        problems.extend(shard_problem(self.shards));
        problems
    }

    fn describe(&self) -> String {
        format!("top {} per user", self.top_n)
    }

    fn shards(&self) -> usize {
        self.shards
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        let mut job = RecommendJob::of_step(
            step,
            self.top_n,
            self.min_score,
            self.min_coverage,
            self.allow_empty,
        )?;
        job.exclude_seen = self.exclude_seen;
        job.candidates = self.candidates;
        job.interactions = step.data_of(ArtifactKind::Interactions).ok();
        let out = list_output(step);
        step.cx.compute(move |stop| run(&job, &out, stop)).await
    }

    async fn run_alone(a: ListArgs, _project_dir: &Path, cx: &StepContext) -> StepResult {
        let (job, out) = RecommendJob::of_args(a)?;
        cx.compute(move |stop| run(&job, &out, stop)).await
    }
}

#[derive(Debug, Clone)]
pub struct RecommendJob {
    pub model_dir: PathBuf,
    /// Whose seen items to exclude; `None` uses the model's training interactions.
    pub interactions: Option<PathBuf>,
    /// Filter artifacts: folders (merged or plain) or plain filter files.
    pub filters: Vec<PathBuf>,
    pub top_n: usize,
    pub exclude_seen: bool,
    pub candidates: Candidates,
    pub min_score: Option<f32>,
    /// Fail when fewer than this share of rows (users, or items) get a list.
    pub min_coverage: f64,
    /// Whether an empty list is a success.
    pub allow_empty: bool,
    pub run_id: String,
    pub generated_at: DateTime<Utc>,
    /// The part of the query rows to score; `None` scores them all.
    pub shard: Option<Shard>,
}

/// What [`write_lists`] wrote.
pub(crate) struct Written {
    pub(crate) rows: u64,
    /// Query rows (users or items) that got a list of at least one item.
    pub(crate) covered: usize,
    pub(crate) file: crate::artifact::FileEntry,
}

impl Written {
    /// Refuses a list that is empty, or that covers far fewer of its `of` query
    /// rows than `job` asks for: such a list comes from a degenerate model or
    /// filter (NaN factors, a `min_score` nothing reaches) and would replace a
    /// good list. The step fails, so the previous list stays published.
    fn check(&self, job: &RecommendJob, of: usize, what: &str) -> Result<(), StepError> {
        if job.allow_empty {
            return Ok(());
        }
        let share = self.covered as f64 / of.max(1) as f64;
        if self.rows == 0 || share < job.min_coverage {
            return Err(StepError::Data(format!(
                "only {} of {of} {what} got a list ({:.1}%, `min_coverage` is {}%): the list \
                 is not written and the previous one stays published; check `min_score`, the \
                 filters and the model, or set `allow_empty = true` / a lower `min_coverage`",
                self.covered,
                share * 100.0,
                job.min_coverage * 100.0
            )));
        }
        Ok(())
    }
}

/// Scores every row of `row_ids` and streams the lists to `output`, then checks
/// that enough rows got one ([`Written::check`]).
pub(crate) fn write_lists(
    job: &RecommendJob,
    model: &dyn Recommender,
    (shape, row_ids, item_ids): (&ListShape, &IdMap, &IdMap),
    selection: &Selection<'_>,
    output: &Path,
    stop: &StopFlag,
) -> Result<Written, StepError> {
    let stamp = (job.run_id.as_str(), job.generated_at);
    let schema = lists::schema(shape, row_ids, item_ids);
    let mut sink = ParquetWriter::create(output, schema.clone())?;
    let range = job
        .shard
        .map_or(0..row_ids.len(), |s| s.rows(row_ids.len()));
    let rows: Vec<u32> = (range.start as u32..range.end as u32).collect();
    // A symmetric model computes every item's list at once at half the cost, up
    // to SYMMETRIC_MAX_ENTRIES; the rest stream blocks of rows.
    let k = selection.k.max(1);
    let block_rows = match model.symmetric_vectors() {
        Some(_) if rows.len().saturating_mul(k) <= SYMMETRIC_MAX_ENTRIES => rows.len().max(1),
        _ => (BLOCK_ENTRIES / k).clamp(1, USER_BLOCK),
    };
    let (mut written, mut covered) = (0u64, 0usize);
    for block in rows.chunks(block_rows) {
        let lists = topn::select_block(model, block, selection, stop)?;
        covered += lists.iter().filter(|l| !l.is_empty()).count();
        let batch = lists::to_batch(&schema, block, &lists, row_ids, item_ids, stamp)?;
        written += batch.num_rows() as u64;
        sink.write(&batch)?;
    }
    let written = Written {
        rows: written,
        covered,
        file: sink.finish()?,
    };
    let what = if shape.row_column == "user_id" {
        "users"
    } else {
        "items"
    };
    // A part with no rows (more parts than rows) has nothing to check; the
    // other parts check theirs.
    if !rows.is_empty() || job.shard.is_none() {
        written.check(job, rows.len(), what)?;
    }
    Ok(written)
}

/// User→item lists. Blocking: call through [`super::compute`] so scoring runs on
/// the compute pool.
pub fn run(job: &RecommendJob, output: &Path, stop: &StopFlag) -> Result<StepOutput, StepError> {
    let loaded = model::load(&job.model_dir)?;
    let new_only = job.candidates == Candidates::NoInteractions;
    let history = if job.exclude_seen || new_only {
        let path = job
            .interactions
            .clone()
            .unwrap_or_else(|| loaded.meta.trained_on.clone());
        Some(interactions::load_with(
            &path,
            &loaded.users,
            &loaded.items,
        )?)
    } else {
        None
    };
    let seen = history.as_ref().filter(|_| job.exclude_seen);
    let filters = filters::load(&job.filters, &loaded.users, &loaded.items)?;
    let mut blocked = filters.blocked_items.clone();
    if let Some(history) = history.as_ref().filter(|_| new_only) {
        blocked.extend(&history.indices);
        blocked.sort_unstable();
        blocked.dedup();
    }
    let selection = Selection {
        k: job.top_n,
        seen,
        blocked_items: &blocked,
        denied_pairs: (filters.pairs.nnz() > 0).then_some(&filters.pairs),
        min_score: job.min_score,
        groups: filters.groups.as_ref(),
        ..Selection::default()
    };
    let lists = (&USER_LIST, &loaded.users, &loaded.items);
    let written = write_lists(job, loaded.fitted.as_ref(), lists, &selection, output, stop)?;
    Ok(StepOutput {
        rows: written.rows,
        details: json!({
            "users": loaded.users.len(),
            "users_covered": written.covered,
            "items": loaded.items.len(),
            "top_n": job.top_n,
            "excluded_seen": seen.map_or(0, Csr::nnz),
            "candidates": loaded.items.len() - blocked.len(),
            "denied_items": filters.blocked_items.len(),
            "denied_pairs": filters.pairs.nnz(),
            "filters": filters.provenance,
        }),
        files: vec![written.file],
    })
}
