//! Runs one pipeline run: the DAG of steps, each started when every step it needs
//! has succeeded, at most `runtime.max_parallel_steps` at a time.
//!
//! Per step: retries with exponential backoff and full jitter for retryable errors
//! only, a time limit (the step's `timeout`, else `runtime.step_timeout`), and
//! cancellation through a [`StopFlag`]. A failed step fails the run; the steps
//! that need it are reported as skipped. A step whose manifest exists with the
//! same fingerprint is reused, so rerunning a run id resumes after its last
//! completed step and is idempotent. One process at a time runs a given run:
//! the run directory's lock makes a second runner wait.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::rundir::{
    InputRef, RunDir, RunLock, RunRecord, RunStatus, StepManifest, StepRecord, StepStatus,
    is_valid_run_id,
};
use crate::artifact::ArtifactError;
use crate::artifact::lists::Shard;
use crate::config::Settings;
use crate::config::redact::redact;
use crate::models::StopFlag;
use crate::pipeline::load::{Pipeline, Step};
use crate::steps::{self, ErrorClass, Input, Resources, StepContext, StepError};

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("invalid run id `{0}`: use letters, digits, `_` and `-` (at most 64)")]
    RunId(String),
    #[error("run directory: {0}")]
    RunDir(#[from] ArtifactError),
    #[error("run `{run_id}` is being run by {holder}; stopped while waiting for it")]
    Busy { run_id: String, holder: String },
    #[error("pipeline `{pipeline}` has no step `{step}` (its steps: {known})")]
    UnknownStep {
        pipeline: String,
        step: String,
        known: String,
    },
    #[error(
        "step `{step}` needs `{need}`, which has not finished in run `{run_id}` (or was \
         defined differently when it did): run `{need}` first"
    )]
    NeedNotDone {
        step: String,
        need: String,
        run_id: String,
    },
    #[error("step `{step}` of run `{run_id}` is running in another process")]
    StepBusy { step: String, run_id: String },
    #[error(
        "step `{step}` is split into {shards} part(s) (`shards`), so `--shard {shard}` names none of them"
    )]
    NoSuchShard {
        step: String,
        shards: usize,
        shard: Shard,
    },
}

/// How `recpipe step run` ended.
pub enum StepOutcome {
    /// The step had finished in this run, with the same definition and after
    /// its inputs: nothing to do.
    Reused(StepManifest),
    Succeeded(StepManifest),
    Failed(StepError),
}

/// Progress of a run, for the CLI's progress display and the daemon's logs.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        step: String,
        attempt: u32,
    },
    Retrying {
        step: String,
        attempt: u32,
        delay: Duration,
        error: String,
    },
    Succeeded {
        step: String,
        rows: u64,
        duration: Duration,
    },
    Reused {
        step: String,
    },
    Failed {
        step: String,
        error: String,
        class: ErrorClass,
    },
    Skipped {
        step: String,
        reason: String,
    },
}

/// One line per event, as the CLI's progress and the run log print it.
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Started { step, attempt } => write!(f, "{step}: started (attempt {attempt})"),
            Event::Retrying {
                step,
                attempt,
                delay,
                error,
            } => write!(
                f,
                "{step}: attempt {attempt} failed, retrying in {delay:.1?}: {error}"
            ),
            Event::Succeeded {
                step,
                rows,
                duration,
            } => write!(f, "{step}: succeeded, {rows} rows in {duration:.2?}"),
            Event::Reused { step } => {
                write!(f, "{step}: reused from an earlier attempt of this run")
            }
            Event::Failed { step, error, .. } => write!(f, "{step}: FAILED: {error}"),
            Event::Skipped { step, reason } => write!(f, "{step}: skipped, {reason}"),
        }
    }
}

/// One run to execute.
pub struct RunRequest {
    pub pipeline: Arc<Pipeline>,
    pub run_id: String,
    pub logical_date: DateTime<Utc>,
    pub stop: StopFlag,
}

#[derive(Clone)]
pub struct Executor {
    resources: Arc<Resources>,
    pool: Arc<rayon::ThreadPool>,
}

enum State {
    Pending,
    Running,
    /// `fresh`: ran in this invocation (so its dependents must run too).
    Done {
        manifest: Box<StepManifest>,
        fresh: bool,
    },
    Failed,
    Skipped,
}

struct Finished {
    id: String,
    attempts: u32,
    duration: Duration,
    result: Result<StepManifest, StepError>,
}

impl Executor {
    pub fn new(resources: Arc<Resources>, pool: Arc<rayon::ThreadPool>) -> Self {
        Self { resources, pool }
    }

    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Executes `req` to the end and returns its record (also written as `run.json`).
    pub async fn run(
        &self,
        req: RunRequest,
        events: Option<UnboundedSender<Event>>,
    ) -> Result<RunRecord, ExecutorError> {
        if !is_valid_run_id(&req.run_id) {
            return Err(ExecutorError::RunId(req.run_id));
        }
        let settings = &self.resources.settings;
        let rundir = RunDir::new(&settings.state_dir, &req.pipeline.name, &req.run_id);
        let _lock = lock(&rundir, &req).await?;
        let mut record = RunRecord::started(
            &req.pipeline.name,
            &req.run_id,
            req.logical_date,
            Utc::now(),
        );
        rundir.write_record(&record)?;
        info!(pipeline = %req.pipeline.name, run_id = %req.run_id, "run started");
        let emit = |e: Event| {
            if let Some(tx) = &events {
                let _ = tx.send(e);
            }
        };
        let hashes: BTreeMap<&str, String> = req
            .pipeline
            .steps
            .iter()
            .map(|s| (s.id.as_str(), spec_hash(s, settings)))
            .collect();
        let mut states: BTreeMap<&str, State> = req
            .pipeline
            .steps
            .iter()
            .map(|s| (s.id.as_str(), State::Pending))
            .collect();
        let mut errors: BTreeMap<String, StepFailure> = BTreeMap::new();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let max_parallel = settings.runtime.max_parallel_steps;
        let mut failed = false;
        loop {
            // Start (or reuse) every step whose needs are done, in plan order.
            let mut progressed = true;
            while progressed && !failed && !req.stop.is_stopped() {
                progressed = false;
                for step in &req.pipeline.steps {
                    if running.len() >= max_parallel {
                        break;
                    }
                    if !matches!(states[step.id.as_str()], State::Pending) {
                        continue;
                    }
                    let needs_done: Option<Vec<bool>> = step
                        .needs
                        .iter()
                        .map(|n| match &states[n.as_str()] {
                            State::Done { fresh, .. } => Some(*fresh),
                            _ => None,
                        })
                        .collect();
                    let Some(needs_fresh) = needs_done else {
                        continue;
                    };
                    let hash = &hashes[step.id.as_str()];
                    if !needs_fresh.iter().any(|f| *f)
                        && let Some(m) = rundir.manifest(&step.id).filter(|m| &m.spec_hash == hash)
                    {
                        emit(Event::Reused {
                            step: step.id.clone(),
                        });
                        info!(pipeline = %req.pipeline.name, run_id = %req.run_id, step = %step.id, "step reused from an earlier attempt of this run");
                        states.insert(
                            &step.id,
                            State::Done {
                                manifest: Box::new(m),
                                fresh: false,
                            },
                        );
                        progressed = true;
                        continue;
                    }
                    let inputs: Vec<Input> = step
                        .needs
                        .iter()
                        .map(|n| match &states[n.as_str()] {
                            State::Done { manifest, .. } => Input {
                                step: n.clone(),
                                kind: manifest.output,
                                dir: rundir.step_dir(n),
                            },
                            _ => unreachable!("needs checked done above"),
                        })
                        .collect();
                    let cx = self.step_context(&req, &step.id, None);
                    let task = StepTask {
                        executor: self.clone(),
                        step: step.clone(),
                        inputs,
                        rundir: rundir.clone(),
                        cx,
                        hash: hash.clone(),
                        events: events.clone(),
                    };
                    running.spawn(task.run());
                    states.insert(&step.id, State::Running);
                    progressed = true;
                }
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let finished = match joined {
                Ok(f) => f,
                Err(e) => {
                    // A panic outside the compute pool is a bug; fail the run, keep going.
                    warn!(error = %e, "step task ended abnormally");
                    failed = true;
                    continue;
                }
            };
            let id = req
                .pipeline
                .step(&finished.id)
                .map(|s| s.id.as_str())
                .unwrap_or_default();
            match finished.result {
                Ok(manifest) => {
                    states.insert(
                        id,
                        State::Done {
                            manifest: Box::new(manifest),
                            fresh: true,
                        },
                    );
                }
                Err(e) => {
                    failed = true;
                    states.insert(id, State::Failed);
                    errors.insert(
                        id.to_string(),
                        StepFailure {
                            // Errors come from drivers and parsers that may
                            // quote a DSN; `run.json` is as readable as the history.
                            message: redact(&e.to_string()).into_owned(),
                            class: e.class(),
                            attempts: finished.attempts,
                            duration: finished.duration,
                        },
                    );
                }
            }
        }
        for step in &req.pipeline.steps {
            if matches!(states[step.id.as_str()], State::Pending) {
                let reason = if req.stop.is_stopped() {
                    "the run was cancelled".to_string()
                } else {
                    let failed_needs: Vec<&str> = step
                        .needs
                        .iter()
                        .filter(|n| matches!(states[n.as_str()], State::Failed | State::Skipped))
                        .map(String::as_str)
                        .collect();
                    if failed_needs.is_empty() {
                        "another step of the run failed".to_string()
                    } else {
                        format!("needs {}, which did not succeed", failed_needs.join(", "))
                    }
                };
                emit(Event::Skipped {
                    step: step.id.clone(),
                    reason,
                });
                states.insert(&step.id, State::Skipped);
            }
        }
        let cancelled = req.stop.is_stopped();
        record.steps = req
            .pipeline
            .steps
            .iter()
            .map(|s| step_record(s, &states[s.id.as_str()], errors.get(&s.id), cancelled))
            .collect();
        record.status = if record
            .steps
            .iter()
            .all(|s| matches!(s.status, StepStatus::Succeeded | StepStatus::Reused))
        {
            RunStatus::Succeeded
        } else if cancelled {
            RunStatus::Cancelled
        } else {
            RunStatus::Failed
        };
        record.finished_at = Some(Utc::now());
        rundir.write_record(&record)?;
        info!(pipeline = %req.pipeline.name, run_id = %req.run_id, status = ?record.status, "run finished");
        Ok(record)
    }
}

impl Executor {
    /// Runs one step of a run, alone: its inputs are the manifests its needs
    /// left in the run directory, written by earlier invocations (one Argo pod
    /// per step). One attempt: the caller (Argo's `retryStrategy`) retries on
    /// exit 75. A step that already finished with the same definition, after
    /// every input it read, is not run again.
    /// With a `shard`, runs that part of a split list step alone.
    pub async fn run_step(
        &self,
        req: RunRequest,
        step_id: &str,
        shard: Option<Shard>,
    ) -> Result<StepOutcome, ExecutorError> {
        if !is_valid_run_id(&req.run_id) {
            return Err(ExecutorError::RunId(req.run_id));
        }
        let pipeline = &req.pipeline;
        let settings = &self.resources.settings;
        let step = pipeline
            .step(step_id)
            .ok_or_else(|| ExecutorError::UnknownStep {
                pipeline: pipeline.name.clone(),
                step: step_id.to_string(),
                known: pipeline
                    .steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if let Some(shard) = shard.filter(|s| s.count != step.spec.shards()) {
            return Err(ExecutorError::NoSuchShard {
                step: step.id.clone(),
                shards: step.spec.shards(),
                shard,
            });
        }
        let rundir = RunDir::new(&settings.state_dir, &pipeline.name, &req.run_id);
        let mut inputs = Vec::with_capacity(step.needs.len());
        let mut newest_input = None;
        for need in &step.needs {
            let need_step = pipeline.step(need);
            let hash = need_step.map(|n| spec_hash(n, settings));
            let shards = need_step.map_or(1, |n| n.spec.shards());
            let manifest = rundir
                .finished(need, shards)
                .filter(|m| Some(&m.spec_hash) == hash.as_ref())
                .ok_or_else(|| ExecutorError::NeedNotDone {
                    step: step.id.clone(),
                    need: need.clone(),
                    run_id: req.run_id.clone(),
                })?;
            newest_input = newest_input.max(Some(manifest.finished_at));
            inputs.push(Input {
                step: need.clone(),
                kind: manifest.output,
                dir: rundir.step_dir(need),
            });
        }
        let lock_name = match shard {
            Some(s) => format!("{}.{}", step.id, s.stem()),
            None => step.id.clone(),
        };
        let _lock = rundir
            .try_lock_step(&lock_name)?
            .ok_or_else(|| ExecutorError::StepBusy {
                step: step.id.clone(),
                run_id: req.run_id.clone(),
            })?;
        let hash = spec_hash(step, settings);
        let done = match shard {
            Some(s) => rundir.shard_manifest(&step.id, s),
            None => rundir.manifest(&step.id),
        };
        if let Some(m) =
            done.filter(|m| m.spec_hash == hash && newest_input.is_none_or(|t| t <= m.started_at))
        {
            info!(pipeline = %pipeline.name, run_id = %req.run_id, step = %step.id, "step already finished in this run");
            return Ok(StepOutcome::Reused(m));
        }
        let task = StepTask {
            executor: self.clone(),
            step: Step {
                retries: 0,
                ..step.clone()
            },
            inputs,
            rundir,
            cx: self.step_context(&req, &step.id, shard),
            hash,
            events: None,
        };
        Ok(match task.run().await.result {
            Ok(m) => StepOutcome::Succeeded(m),
            Err(e) => StepOutcome::Failed(e),
        })
    }

    /// What a step of `req` runs with (a part of it, with a `shard`).
    fn step_context(&self, req: &RunRequest, step: &str, shard: Option<Shard>) -> StepContext {
        let state_dir = &self.resources.settings.state_dir;
        StepContext {
            step_state: Some(crate::steps::state_folder(
                state_dir,
                &req.pipeline.name,
                step,
            )),
            pipeline: req.pipeline.name.clone(),
            run_id: req.run_id.clone(),
            logical_date: req.logical_date,
            stop: req.stop.child(),
            pool: self.pool.clone(),
            shard,
        }
    }
}

/// How a step failed, for its record.
#[derive(Clone)]
struct StepFailure {
    message: String,
    class: ErrorClass,
    attempts: u32,
    duration: Duration,
}

fn step_record(
    step: &Step,
    state: &State,
    error: Option<&StepFailure>,
    cancelled: bool,
) -> StepRecord {
    let (status, attempts, duration_ms, rows) = match state {
        State::Done { manifest, fresh } => (
            if *fresh {
                StepStatus::Succeeded
            } else {
                StepStatus::Reused
            },
            manifest.attempts,
            manifest.duration_ms,
            manifest.rows,
        ),
        State::Failed => {
            let status = match cancelled {
                true => StepStatus::Cancelled,
                false => StepStatus::Failed,
            };
            let (a, d) = error.map_or((0, 0), |e| (e.attempts, e.duration.as_millis() as u64));
            (status, a, d, 0)
        }
        State::Pending | State::Running | State::Skipped => (StepStatus::Skipped, 0, 0, 0),
    };
    StepRecord {
        id: step.id.clone(),
        kind: step.spec.kind().to_string(),
        status,
        attempts,
        duration_ms,
        rows,
        error: error.map(|e| e.message.clone()),
        error_class: error.map(|e| e.class),
    }
}

/// One step with its retries, run as its own task (or one part of a split
/// list step: `cx.shard`).
struct StepTask {
    executor: Executor,
    step: Step,
    inputs: Vec<Input>,
    rundir: RunDir,
    cx: StepContext,
    hash: String,
    events: Option<UnboundedSender<Event>>,
}

impl StepTask {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    async fn run(self) -> Finished {
        let started = Instant::now();
        let started_at = Utc::now();
        let settings = &self.executor.resources.settings;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.emit(Event::Started {
                step: self.step.id.clone(),
                attempt,
            });
            info!(pipeline = %self.cx.pipeline, run_id = %self.cx.run_id, step = %self.step.id, attempt, "step started");
            let result = self.attempt().await;
            let result = match result {
                Ok(output) => {
                    let manifest = StepManifest {
                        step: self.step.id.clone(),
                        kind: self.step.spec.kind().to_string(),
                        output: self.step.spec.output(),
                        spec_hash: self.hash.clone(),
                        inputs: self
                            .inputs
                            .iter()
                            .map(|i| InputRef {
                                step: i.step.clone(),
                                kind: i.kind,
                                dir: i.dir.clone(),
                            })
                            .collect(),
                        files: output.files,
                        rows: output.rows,
                        attempts: attempt,
                        started_at,
                        finished_at: Utc::now(),
                        duration_ms: started.elapsed().as_millis() as u64,
                        details: output.details,
                    };
                    self.rundir
                        .write_manifest(&manifest, self.cx.shard)
                        .map(|()| manifest)
                        .map_err(StepError::from)
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(manifest) => {
                    self.emit(Event::Succeeded {
                        step: self.step.id.clone(),
                        rows: manifest.rows,
                        duration: started.elapsed(),
                    });
                    info!(pipeline = %self.cx.pipeline, run_id = %self.cx.run_id, step = %self.step.id, rows = manifest.rows, "step succeeded");
                    return self.finished(attempt, started, Ok(manifest));
                }
                Err(e)
                    if e.is_retryable()
                        && attempt <= self.step.retries
                        && !self.cx.stop.is_stopped() =>
                {
                    let delay = backoff(
                        settings.runtime.retry_base_delay,
                        settings.runtime.retry_max_delay,
                        attempt,
                    );
                    warn!(pipeline = %self.cx.pipeline, run_id = %self.cx.run_id, step = %self.step.id, attempt, error = %e, delay_ms = delay.as_millis() as u64, "step failed, retrying");
                    self.emit(Event::Retrying {
                        step: self.step.id.clone(),
                        attempt,
                        delay,
                        error: redact(&e.to_string()).into_owned(),
                    });
                    if !sleep_unless_stopped(delay, &self.cx.stop).await {
                        return self.finished(attempt, started, Err(e));
                    }
                }
                Err(e) => {
                    warn!(pipeline = %self.cx.pipeline, run_id = %self.cx.run_id, step = %self.step.id, attempt, error = %e, "step failed");
                    self.emit(Event::Failed {
                        step: self.step.id.clone(),
                        error: redact(&e.to_string()).into_owned(),
                        class: e.class(),
                    });
                    return self.finished(attempt, started, Err(e));
                }
            }
        }
    }

    fn finished(
        &self,
        attempts: u32,
        started: Instant,
        result: Result<StepManifest, StepError>,
    ) -> Finished {
        Finished {
            id: self.step.id.clone(),
            attempts,
            duration: started.elapsed(),
            result,
        }
    }

    /// One attempt in a clean folder. On timeout or cancellation the step's flag is
    /// raised and the attempt is given [`WIND_DOWN`] to end before it is dropped;
    /// a timed-out attempt that did not end is not retried, so two attempts of a
    /// step never run at once.
    async fn attempt(&self) -> Result<steps::StepOutput, StepError> {
        let dir = match self.cx.shard {
            Some(shard) => self.rundir.reset_shard(&self.step.id, shard)?,
            None => self.rundir.reset_step(&self.step.id)?,
        };
        let cx = StepContext {
            stop: self.cx.stop.child(),
            ..self.cx.clone()
        };
        let work = self
            .step
            .spec
            .run(&self.inputs, &dir, &cx, &self.executor.resources);
        tokio::pin!(work);
        // A step without its own timeout gets the settings' bound, so no step
        // can run unbounded.
        let (deadline, limit) = match self.step.timeout {
            Some(t) => (t, "the step's `timeout`"),
            None => (
                self.executor.resources.settings.runtime.step_timeout,
                "`runtime.step_timeout`",
            ),
        };
        // Compute checks the flag between rows and blocks and ends within
        // moments; a query waiting on a server is dropped (aborted) after a short
        // wind-down instead of holding the stop until it answers.
        tokio::select! {
            r = &mut work => r,
            () = tokio::time::sleep(deadline) => {
                cx.stop.stop();
                match tokio::time::timeout(WIND_DOWN, &mut work).await {
                    Ok(_) => Err(StepError::Timeout(deadline, limit)),
                    // Blocking work (a write, a save) may still be running: no
                    // retry may start beside it.
                    Err(_) => Err(StepError::Abandoned(format!(
                        "timed out after {} ({limit}) and did not stop within {}; not retried, \
                         so that two attempts never run at once",
                        humantime::format_duration(deadline),
                        humantime::format_duration(WIND_DOWN)
                    ))),
                }
            }
            () = wait_stopped(&cx.stop) => {
                match tokio::time::timeout(WIND_DOWN, &mut work).await {
                    Ok(Err(e)) => Err(e),
                    _ => Err(StepError::Stopped(crate::models::Stopped)),
                }
            }
        }
    }
}

/// A fingerprint of what a step does: its definition, its needs and the files
/// it names (an extract's SQL). A finished step whose fingerprint changed is run again on resume.
pub fn spec_hash(step: &Step, settings: &Settings) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&step.spec).unwrap_or_default());
    hasher.update(step.needs.join("\0").as_bytes());
    for file in step.spec.hashed_files() {
        // An unreadable file hashes as empty; the step itself reports the error.
        hasher.update(std::fs::read(settings.resolve(file)).unwrap_or_default());
    }
    format!("{:x}", hasher.finalize())
}

/// The run directory's lock. While another process runs the same run, waits for
/// it (then this runner resumes what it left, reusing its finished steps), so two
/// runners never write one run directory and their records agree.
async fn lock(rundir: &RunDir, req: &RunRequest) -> Result<RunLock, ExecutorError> {
    let mut told = false;
    loop {
        if let Some(lock) = rundir.try_lock()? {
            return Ok(lock);
        }
        if !told {
            warn!(pipeline = %req.pipeline.name, run_id = %req.run_id, holder = %rundir.lock_holder(),
                "another process is running this run; waiting for it to finish");
            told = true;
        }
        if !sleep_unless_stopped(Duration::from_millis(200), &req.stop).await {
            return Err(ExecutorError::Busy {
                run_id: req.run_id.clone(),
                holder: rundir.lock_holder(),
            });
        }
    }
}

/// How long a cancelled step may take to notice its flag before it is dropped.
pub const WIND_DOWN: Duration = Duration::from_secs(5);

/// Returns once `stop` is raised.
async fn wait_stopped(stop: &StopFlag) {
    while !stop.is_stopped() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `base · 2^(attempt−1)`, capped at `max`, then a uniform pick from its upper half
/// so that retries of many runs do not line up.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(
        1u32.checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX),
    );
    let capped = exp.min(max);
    let half = capped / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

/// Sleeps `d`; returns false early if `stop` is raised.
async fn sleep_unless_stopped(d: Duration, stop: &StopFlag) -> bool {
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        if stop.is_stopped() {
            return false;
        }
        let left = end - tokio::time::Instant::now();
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
    !stop.is_stopped()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 1..10 {
            let d = backoff(base, max, attempt);
            let full = (base * 2u32.pow(attempt - 1)).min(max);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(base, max, 100) <= max);
    }
}
