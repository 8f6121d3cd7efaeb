//! Step kinds: the glue between artifact files and the pure code in `models/`,
//! `topn/`, `sources/` and `sinks/`. Each kind is one module implementing
//! [`StepKind`], listed once below in `step_kinds!`; the daemon and `recpipe
//! step <kind>` run the same code, so a step run alone behaves as it does in a
//! pipeline.
//!
//! Invariant: CPU-heavy work goes through [`compute`] onto the rayon pool and
//! blocking file I/O through `spawn_blocking`; no step blocks a tokio worker.

pub mod allocate;
pub mod estimate;
pub mod evaluate;
pub mod extract;
pub mod gate;
pub mod kind;
pub mod memory;
pub mod merge_filters;
pub mod model;
pub mod off_policy;
pub mod recommend;
pub mod similar_items;
pub mod spec;
pub mod train;
pub mod tune;
pub mod vectorize;
pub mod write;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::artifact::{ArtifactError, ArtifactKind, FileEntry};
use crate::config::Settings;
use crate::models::{StopFlag, Stopped};
use crate::sinks::{AnySink, SinkError};
use crate::sources::{AnySource, SourceError};
use kind::{CheckContext, Inputs, Problem, SpecReader, StepKind, Target, step_kinds};

step_kinds! {
    /// Run an SQL file and store the checked result as Parquet.
    Extract(extract::ExtractSpec),
    /// Turn item text and categories into weighted features (Japanese too).
    Vectorize(vectorize::VectorizeSpec),
    /// Fit a model on an interactions file.
    Train(train::TrainSpec),
    /// Top-N items per user from a model, seen items and filters removed.
    Recommend(recommend::RecommendSpec),
    /// Top-N similar items per item from a factor model, filtered items removed.
    SimilarItems(similar_items::SimilarItemsSpec),
    /// Merge filter lists into one filter artifact (deny, allow, group caps).
    MergeFilters(merge_filters::MergeFiltersSpec),
    /// Hold out part of an interactions file and score a model against popularity.
    Evaluate(evaluate::EvaluateSpec),
    /// Per-item conversion rates with credible intervals (empirical Bayes), or
    /// the effects of attributes on them (logistic regression).
    Estimate(estimate::EstimateSpec),
    /// An A/B experiment's arm weights by Thompson sampling, from its logs.
    Allocate(allocate::AllocateSpec),
    /// IPW and self-normalised IPW of an allocation on logged propensities.
    OffPolicy(off_policy::OffPolicySpec),
    /// Publish a list file to a configured sink, atomically.
    Write(write::WriteSpec),
}

pub use crate::artifact::DATA_FILE;

/// The configured sources and sinks, built once from the settings.
pub struct Resources {
    pub settings: Arc<Settings>,
    pub sources: BTreeMap<String, AnySource>,
    pub sinks: BTreeMap<String, AnySink>,
}

impl Resources {
    pub fn new(settings: Arc<Settings>) -> Self {
        let sources = settings
            .sources
            .iter()
            .map(|(name, c)| (name.clone(), AnySource::from_config(c)))
            .collect();
        let sinks = settings
            .sinks
            .iter()
            .map(|(name, c)| (name.clone(), AnySink::from_config(name, c)))
            .collect();
        Self {
            settings,
            sources,
            sinks,
        }
    }
}

/// What a step's run ends with.
pub type StepResult = Result<StepOutput, StepError>;

/// One step's run in a pipeline: what it reads, where it writes, its run and
/// the configured stores.
pub struct StepRun<'a> {
    pub inputs: &'a [Input],
    pub out_dir: &'a Path,
    pub cx: &'a StepContext,
    pub resources: &'a Resources,
}

impl StepRun<'_> {
    /// The data file of the single input of `kind`.
    pub fn data_of(&self, kind: ArtifactKind) -> Result<PathBuf, StepError> {
        Ok(input_of(self.inputs, kind)?.dir.join(DATA_FILE))
    }

    /// Runs `job(spec, interactions, out_dir, stop)` on the compute pool: the
    /// shape of the steps that fit on the interactions (train, evaluate).
    pub async fn from_interactions<S>(
        &self,
        spec: &S,
        job: fn(&S, &Path, &Path, &StopFlag) -> StepResult,
    ) -> StepResult
    where
        S: Clone + Send + 'static,
    {
        let input = self.data_of(ArtifactKind::Interactions)?;
        let (spec, out) = (spec.clone(), self.out_dir.to_path_buf());
        self.cx
            .compute(move |stop| job(&spec, &input, &out, stop))
            .await
    }

    /// A configured source: validation guarantees the name, so a missing one is a bug.
    pub fn source(&self, name: &str) -> Result<AnySource, StepError> {
        let missing = || StepError::Internal(format!("source `{name}` is not configured"));
        self.resources
            .sources
            .get(name)
            .cloned()
            .ok_or_else(missing)
    }

    /// A configured sink, as [`Self::source`].
    pub fn sink(&self, name: &str) -> Result<AnySink, StepError> {
        let missing = || StepError::Internal(format!("sink `{name}` is not configured"));
        self.resources.sinks.get(name).cloned().ok_or_else(missing)
    }
}

/// What a step knows about the run it belongs to.
#[derive(Clone)]
pub struct StepContext {
    pub pipeline: String,
    pub run_id: String,
    /// The scheduled time of the run (or when a manual run started).
    pub logical_date: DateTime<Utc>,
    pub stop: StopFlag,
    pub pool: Arc<rayon::ThreadPool>,
    /// The part of a split list step this run makes (`recpipe step run
    /// --shard`); `None` makes the whole.
    pub shard: Option<crate::artifact::lists::Shard>,
    /// A folder of this pipeline's step that outlives its runs (`<state_dir>/
    /// steps/<pipeline>/<step>`): what a tuned train chose, what a gated write
    /// last published. `None` for a step run alone.
    pub step_state: Option<PathBuf>,
}

impl StepContext {
    /// Runs `f` on the compute pool with this step's stop flag.
    pub async fn compute<T, F>(&self, f: F) -> Result<T, StepError>
    where
        T: Send + 'static,
        F: FnOnce(&StopFlag) -> Result<T, StepError> + Send + 'static,
    {
        let stop = self.stop.clone();
        compute(&self.pool, move || f(&stop)).await
    }
}

/// An artifact a step reads: the folder another step wrote.
#[derive(Debug, Clone)]
pub struct Input {
    pub step: String,
    pub kind: ArtifactKind,
    pub dir: PathBuf,
}

/// What a step leaves behind, recorded in its manifest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepOutput {
    pub files: Vec<FileEntry>,
    pub rows: u64,
    /// Step-specific facts: what was filtered, where a list was published …
    pub details: serde_json::Value,
}

/// What kind of failure ended a step or a command; each has its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Configuration, pipeline, SQL result or data that cannot work as they are.
    InvalidInput,
    /// Connection, I/O or time-out: worth retrying later.
    Transient,
    /// A write step's gate held the lists back: the run's figures or list
    /// shapes fell against the last publish (the previous lists stay current).
    Blocked,
    /// Anything else (a store refused the write, a bug, a cancelled run).
    Failed,
}

impl ErrorClass {
    /// The process exit code documented for this class: 2, 75, 3 or 1.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::InvalidInput => 2,
            ErrorClass::Blocked => 3,
            ErrorClass::Transient => 75,
            ErrorClass::Failed => 1,
        }
    }

    /// The class of a whole run from its steps' classes: invalid input wins (a
    /// retry cannot fix it), then a blocked publish, a plain failure, transient.
    pub fn of_run<'a>(classes: impl IntoIterator<Item = &'a ErrorClass>) -> Option<ErrorClass> {
        classes.into_iter().copied().min_by_key(|c| match c {
            ErrorClass::InvalidInput => 0,
            ErrorClass::Blocked => 1,
            ErrorClass::Failed => 2,
            ErrorClass::Transient => 3,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The data does not meet its contract (missing column, null id, NaN …).
    #[error("{0}")]
    Data(String),
    /// The step would need more memory than the process can get now; another
    /// attempt may find it once other work has finished.
    #[error("{0}")]
    Memory(String),
    #[error("{0}")]
    Stopped(#[from] Stopped),
    #[error("panicked: {0}")]
    Panic(String),
    /// A bug: something validation guarantees was not so.
    #[error("internal error: {0}")]
    Internal(String),
    /// Stopped waiting for an attempt that did not end: not retried.
    #[error("{0}")]
    Abandoned(String),
    /// The limit and which setting set it.
    #[error("timed out after {} ({})", humantime::format_duration(*.0), .1)]
    Timeout(std::time::Duration, &'static str),
    /// A write step's gate refused to publish, and why.
    #[error("publish gate: {0}")]
    Blocked(String),
}

impl StepError {
    /// Whether another attempt could succeed: transient I/O, not bad data or SQL.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Source(e) => e.is_retryable(),
            StepError::Sink(e) => e.is_retryable(),
            // A file that is not there will not appear by retrying.
            StepError::Artifact(ArtifactError::Io { error, .. }) => {
                error.kind() != std::io::ErrorKind::NotFound
            }
            StepError::Memory(_) | StepError::Timeout(..) => true,
            StepError::Artifact(_)
            | StepError::Data(_)
            | StepError::Stopped(_)
            | StepError::Panic(_)
            | StepError::Internal(_)
            | StepError::Abandoned(_)
            | StepError::Blocked(_) => false,
        }
    }

    /// Bad data, SQL or contracts are invalid input; what a retry could fix is
    /// transient; the rest (a refused write, a panic, a cancel) failed.
    pub fn class(&self) -> ErrorClass {
        match self {
            e if e.is_retryable() => ErrorClass::Transient,
            StepError::Blocked(_) => ErrorClass::Blocked,
            StepError::Source(_) | StepError::Data(_) | StepError::Artifact(_) => {
                ErrorClass::InvalidInput
            }
            _ => ErrorClass::Failed,
        }
    }
}

/// A step's state folder: what it keeps from one run to the next.
pub fn state_folder(state_dir: &Path, pipeline: &str, step: &str) -> PathBuf {
    state_dir.join("steps").join(pipeline).join(step)
}

/// What a step kept in its state folder ([`StepContext::step_state`]) under
/// `file`, if it is there and reads: a missing or damaged file is a first run.
pub fn read_state<T: serde::de::DeserializeOwned>(state: &Path, file: &str) -> Option<T> {
    crate::artifact::read_json(&state.join(file)).ok()
}

/// Keeps `value` in a step's state folder under `file`, atomically.
pub fn keep_state<T: Serialize>(state: &Path, file: &str, value: &T) -> Result<(), StepError> {
    std::fs::create_dir_all(state)
        .map_err(|e| StepError::Data(format!("{}: {e}", state.display())))?;
    crate::artifact::write_json(&state.join(file), value)?;
    Ok(())
}

/// Runs `f` on the compute pool and waits for it without blocking the runtime; a
/// panic becomes [`StepError::Panic`] instead of taking the process down.
pub async fn compute<T, F>(pool: &rayon::ThreadPool, f: F) -> Result<T, StepError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StepError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.spawn(move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(result);
    });
    match rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(StepError::Panic(panic_message(&panic))),
        Err(_) => Err(StepError::Internal("compute task vanished".into())),
    }
}

/// Runs blocking file or network I/O on tokio's blocking pool; a panic becomes
/// [`StepError::Panic`].
pub async fn blocking<T, F>(f: F) -> Result<T, StepError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StepError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StepError::Panic(e.to_string()))?
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Builds the compute pool; `threads == 0` means one per core.
pub fn compute_pool(threads: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("recpipe-compute-{i}"))
        .build()
}

/// The single input of `kind` among `inputs`, or a clear error.
pub fn input_of(inputs: &[Input], kind: ArtifactKind) -> Result<&Input, StepError> {
    let mut found = inputs.iter().filter(|i| i.kind == kind);
    match (found.next(), found.next()) {
        (Some(i), None) => Ok(i),
        (None, _) => Err(StepError::Data(format!("no `{}` input", kind.as_str()))),
        (Some(_), Some(_)) => Err(StepError::Data(format!(
            "more than one `{}` input",
            kind.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The variant name gives the serde tag and the subcommand; `NAME` gives the
    /// key the loader matches. The three must agree.
    #[test]
    fn each_kind_has_one_name() {
        let cmd =
            <StepCommand as clap::Subcommand>::augment_subcommands(clap::Command::new("step"));
        let commands: Vec<String> = cmd
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        let kinds: Vec<String> = StepSpec::KINDS
            .iter()
            .map(|k| k.replace('_', "-"))
            .collect();
        assert_eq!(commands, kinds);
        let spec = StepSpec::read("merge_filters", &mut Empty).unwrap();
        let tag = serde_json::to_value(&spec).unwrap()["kind"].clone();
        assert_eq!(tag, spec.kind());
    }

    /// A table with no keys.
    struct Empty;

    impl kind::ReadTable for Empty {
        fn own<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
            serde_json::from_value(serde_json::json!({})).ok()
        }
    }

    impl SpecReader for Empty {
        fn model(&mut self) -> Option<model::ModelSpec> {
            None
        }
    }

    #[tokio::test]
    async fn compute_turns_panic_into_error() {
        let pool = compute_pool(1).unwrap();
        let r: Result<(), _> = compute(&pool, || panic!("boom")).await;
        assert!(matches!(r, Err(StepError::Panic(m)) if m == "boom"));
        let ok = compute(&pool, || Ok(41 + 1)).await.unwrap();
        assert_eq!(ok, 42);
    }
}
