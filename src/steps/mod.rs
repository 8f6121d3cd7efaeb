//! Step kinds: the glue between artifact files and the pure code in `models/`,
//! `topn/`, `sources/` and `sinks/`. The daemon and `recpipe step <kind>` call the
//! same functions here, so a step run alone behaves as it does in a pipeline.
//!
//! Invariant: CPU-heavy work goes through [`compute`] onto the rayon pool and
//! blocking file I/O through `spawn_blocking`; no step blocks a tokio worker.

pub mod evaluate;
pub mod extract;
pub mod filters;
pub mod interactions;
pub mod memory;
pub mod model_io;
pub mod recommend;
pub mod spec;
pub mod train;
pub mod write;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::artifact::{ArtifactError, ArtifactKind, FileEntry, Role};
use crate::config::Settings;
use crate::models::{StopFlag, Stopped};
use crate::sinks::{AnySink, ListFile, SinkError};
use crate::sources::{AnySource, SourceError};
use crate::steps::spec::StepSpec;

/// The file name of table artifacts (extracts and lists).
pub const DATA_FILE: &str = "data.parquet";

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

/// Runs one pipeline step: reads `inputs`, writes its artifact into `out_dir`.
pub async fn run(
    spec: &StepSpec,
    inputs: &[Input],
    out_dir: &Path,
    cx: &StepContext,
    resources: &Resources,
) -> Result<StepOutput, StepError> {
    let data = |i: &Input| i.dir.join(DATA_FILE);
    match spec {
        StepSpec::Extract(e) => {
            // Validation guarantees the name; a stale settings object is a bug, not input.
            let source = resources.sources.get(&e.source).cloned().ok_or_else(|| {
                StepError::Data(format!("source `{}` is not configured", e.source))
            })?;
            let sql_path = crate::steps::spec::sql_path(&resources.settings, &e.sql)
                .map_err(StepError::Data)?;
            let job = extract::ExtractJob {
                source,
                sql_path,
                params: e.params.clone(),
                role: e.role,
                allow_empty: e.allow_empty.unwrap_or(e.role == Role::Filter),
            };
            extract::run(job, out_dir.join(DATA_FILE), cx).await
        }
        StepSpec::Train(t) => {
            let input = data(input_of(inputs, ArtifactKind::Interactions)?);
            let (t, out, stop) = (t.clone(), out_dir.to_path_buf(), cx.stop.clone());
            compute(&cx.pool, move || train::run(&t, &input, &out, &stop)).await
        }
        StepSpec::Recommend(r) => {
            let mut job = list_job(inputs, cx, r.top_n, r.min_score)?;
            (job.min_coverage, job.allow_empty) = (r.min_coverage, r.allow_empty);
            job.exclude_seen = r.exclude_seen;
            job.interactions = inputs
                .iter()
                .find(|i| i.kind == ArtifactKind::Interactions)
                .map(data);
            let (out, stop) = (out_dir.join(DATA_FILE), cx.stop.clone());
            compute(&cx.pool, move || recommend::run(&job, &out, &stop)).await
        }
        StepSpec::Evaluate(e) => {
            let input = data(input_of(inputs, ArtifactKind::Interactions)?);
            let (e, out, stop) = (e.clone(), out_dir.to_path_buf(), cx.stop.clone());
            compute(&cx.pool, move || evaluate::run(&e, &input, &out, &stop)).await
        }
        StepSpec::MergeFilters(m) => {
            let sources: Vec<filters::FilterInput> = inputs
                .iter()
                .map(|i| filters::FilterInput {
                    step: i.step.clone(),
                    file: data(i),
                })
                .collect();
            let (m, out) = (m.clone(), out_dir.to_path_buf());
            tokio::task::spawn_blocking(move || {
                filters::merge(&sources, &m.allow, m.groups.as_ref(), &out)
            })
            .await
            .map_err(|e| StepError::Panic(e.to_string()))?
        }
        StepSpec::SimilarItems(r) => {
            let mut job = list_job(inputs, cx, r.top_n, r.min_score)?;
            (job.min_coverage, job.allow_empty) = (r.min_coverage, r.allow_empty);
            let (out, stop) = (out_dir.join(DATA_FILE), cx.stop.clone());
            compute(&cx.pool, move || recommend::similar(&job, &out, &stop)).await
        }
        StepSpec::Write(w) => {
            let sink =
                resources.sinks.get(&w.sink).cloned().ok_or_else(|| {
                    StepError::Data(format!("sink `{}` is not configured", w.sink))
                })?;
            // Validation guarantees a table for every list among the inputs.
            let list_steps: Vec<&str> = inputs
                .iter()
                .filter(|i| matches!(i.kind, ArtifactKind::UserRecs | ArtifactKind::ItemRecs))
                .map(|i| i.step.as_str())
                .collect();
            let lists = w
                .targets(&list_steps)
                .into_iter()
                .map(|(step, table)| {
                    let input = inputs.iter().find(|i| i.step == step).ok_or_else(|| {
                        StepError::Data(format!("`tables` names `{step}`, which is not an input"))
                    })?;
                    Ok(ListFile {
                        table: table.to_string(),
                        input: data(input),
                    })
                })
                .collect::<Result<Vec<_>, StepError>>()?;
            if lists.is_empty() {
                return Err(StepError::Data("no list to write".into()));
            }
            let job = write::WriteJob {
                sink,
                lists,
                version: cx.run_id.clone(),
                allow_empty: w.allow_empty,
            };
            tokio::task::spawn_blocking(move || write::run(&job))
                .await
                .map_err(|e| StepError::Panic(e.to_string()))?
        }
    }
}

/// The model and filters a list step reads from its inputs.
fn list_job(
    inputs: &[Input],
    cx: &StepContext,
    top_n: usize,
    min_score: Option<f32>,
) -> Result<recommend::RecommendJob, StepError> {
    Ok(recommend::RecommendJob {
        model_dir: input_of(inputs, ArtifactKind::Model)?.dir.clone(),
        interactions: None,
        filters: inputs
            .iter()
            .filter(|i| i.kind == ArtifactKind::Filter)
            .map(|i| i.dir.clone())
            .collect(),
        top_n,
        exclude_seen: false,
        min_score,
        min_coverage: 0.0,
        allow_empty: true,
        run_id: cx.run_id.clone(),
        generated_at: Utc::now(),
    })
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
    /// Anything else (a store refused the write, a bug, a cancelled run).
    Failed,
}

impl ErrorClass {
    /// The process exit code documented for this class: 2, 75 or 1.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::InvalidInput => 2,
            ErrorClass::Transient => 75,
            ErrorClass::Failed => 1,
        }
    }

    /// The class of a whole run from its steps' classes: invalid input wins (a
    /// retry cannot fix it), then a plain failure, then transient.
    pub fn of_run<'a>(classes: impl IntoIterator<Item = &'a ErrorClass>) -> Option<ErrorClass> {
        classes.into_iter().copied().min_by_key(|c| match c {
            ErrorClass::InvalidInput => 0,
            ErrorClass::Failed => 1,
            ErrorClass::Transient => 2,
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
    /// Stopped waiting for an attempt that did not end: not retried.
    #[error("{0}")]
    Abandoned(String),
    /// The limit and which setting set it.
    #[error("timed out after {} ({})", humantime::format_duration(*.0), .1)]
    Timeout(std::time::Duration, &'static str),
}

impl StepError {
    /// Whether another attempt could succeed: transient I/O, not bad data or SQL.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Source(e) => e.is_retryable(),
            StepError::Sink(e) => e.is_retryable(),
            // A file that is not there will not appear by retrying.
            StepError::Artifact(ArtifactError::Io { source, .. }) => {
                source.kind() != std::io::ErrorKind::NotFound
            }
            StepError::Memory(_) | StepError::Timeout(..) => true,
            StepError::Artifact(_)
            | StepError::Data(_)
            | StepError::Stopped(_)
            | StepError::Panic(_)
            | StepError::Abandoned(_) => false,
        }
    }

    /// Bad data, SQL or contracts are invalid input; what a retry could fix is
    /// transient; the rest (a refused write, a panic, a cancel) failed.
    pub fn class(&self) -> ErrorClass {
        match self {
            e if e.is_retryable() => ErrorClass::Transient,
            StepError::Source(_) | StepError::Data(_) | StepError::Artifact(_) => {
                ErrorClass::InvalidInput
            }
            _ => ErrorClass::Failed,
        }
    }
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
        Err(_) => Err(StepError::Panic("compute task vanished".into())),
    }
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

    #[tokio::test]
    async fn compute_turns_panic_into_error() {
        let pool = compute_pool(1).unwrap();
        let r: Result<(), _> = compute(&pool, || panic!("boom")).await;
        assert!(matches!(r, Err(StepError::Panic(m)) if m == "boom"));
        let ok = compute(&pool, || Ok(41 + 1)).await.unwrap();
        assert_eq!(ok, 42);
    }
}
