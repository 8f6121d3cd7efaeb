//! The long-running process's state: the loaded pipelines and their triggers, the
//! runs in progress and the run history. Scheduled fires, API requests and resumed
//! runs all start through [`Daemon::start_run`], which applies the pipeline's
//! `concurrency` and records the run, so no path skips the policy.
//!
//! Invariants: a run id is started at most once (the history refuses a second
//! `begin`); a reload that does not validate changes nothing (the previous
//! pipelines keep their schedules, the diagnostics are kept for the API); runs in
//! progress are never touched by a reload.
//!
//! A run is never left `running` in the history by this process: a drain records
//! the runs it cancelled as `interrupted` (resumed at the next start), and a run
//! found `running` at startup counts a crash; after [`MAX_CRASHES`] it is failed
//! with the reason instead of resumed, so one run cannot crash-loop the daemon.

pub mod experiments;
pub mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::config::redact::redact;
use crate::models::StopFlag;
use crate::pipeline::history::{History, HistoryError, RunFilter};
use crate::pipeline::load::{CatchUp, Concurrency, Pipeline, load_all};
use crate::pipeline::retention;
use crate::pipeline::{Event, Executor, RunDir, RunRecord, RunRequest, RunStatus};
use crate::scheduler::cron::Schedule;
use crate::scheduler::{Clock, Fire};
use crate::steps::{self, ErrorClass, Resources};
use metrics::{Metrics, PipelineLabels, RunLabels, SinkLabels, StepLabels};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("no pipeline named `{0}`")]
    UnknownPipeline(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("compute pool: {0}")]
    Pool(String),
}

/// Crashes of the process during one run after which the run is no longer
/// resumed automatically (a run that exhausts memory would otherwise take the
/// daemon, and every other pipeline, down at each restart).
pub const MAX_CRASHES: u32 = 2;

/// After the grace period and the cancel, how long runs get to notice the flag
/// and record themselves before the process exits anyway: the executor's own
/// wind-down (after which it drops a step that does not stop) and a margin to
/// write the record.
pub const WIND_DOWN: Duration =
    crate::pipeline::executor::WIND_DOWN.saturating_add(Duration::from_secs(2));

/// What became of a request to start a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    Started {
        run_id: String,
    },
    /// The run id is already recorded: nothing was done.
    Duplicate {
        run_id: String,
    },
    /// `concurrency = "forbid"` and a run is in progress: recorded as skipped.
    Skipped {
        run_id: String,
        running: String,
    },
}

/// The outcome of the last look at `pipelines/`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub loaded_at: Option<DateTime<Utc>>,
    /// Problems of the folder as it is now; empty when it loaded.
    pub diagnostics: Vec<String>,
    fingerprint: u64,
}

/// Step id → state, for one run in progress.
pub type StepStates = BTreeMap<String, &'static str>;

struct Active {
    run_id: String,
    stop: StopFlag,
}

pub struct Daemon {
    pub settings: Arc<Settings>,
    pub history: Arc<History>,
    pub metrics: Metrics,
    clock: Arc<dyn Clock>,
    executor: Executor,
    pipelines: RwLock<Arc<BTreeMap<String, Arc<Pipeline>>>>,
    reload: Mutex<ReloadStatus>,
    triggers: Mutex<HashMap<String, (String, JoinHandle<()>)>>,
    active: Mutex<HashMap<String, Vec<Active>>>,
    /// Step states of the runs in progress, by (pipeline, run id): the history
    /// records a run's steps when it ends.
    live: Mutex<HashMap<(String, String), StepStates>>,
    fires: mpsc::Sender<Fire>,
    shutting_down: AtomicBool,
    /// Set when the grace period is over and the drain cancels runs: a run
    /// cancelled from then on was interrupted, not cancelled by a person.
    draining: AtomicBool,
    /// Interrupted runs whose pipeline is not loaded (its file is missing or
    /// invalid): resumed by the reload that brings the pipeline back.
    pending: Mutex<Vec<RunRecord>>,
    /// Counts runs in progress; shutdown waits for zero.
    running: watch::Sender<usize>,
    /// The allocations the assignment API serves.
    experiments: experiments::Experiments,
}

impl Daemon {
    /// Opens the history, loads `pipelines/`, arms the triggers and resumes the
    /// runs the previous process left running.
    pub async fn start(
        settings: Arc<Settings>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, DaemonError> {
        let history = Arc::new(History::open(&settings.state_dir)?);
        history.interrupt_running()?;
        // Runs this process found running and those a drain interrupted alike.
        let interrupted = history.runs(&RunFilter {
            status: Some(RunStatus::Interrupted),
            limit: usize::MAX >> 1,
            ..RunFilter::default()
        })?;
        let pool = steps::compute_pool(settings.runtime.compute_threads)
            .map_err(|e| DaemonError::Pool(e.to_string()))?;
        let executor = Executor::new(Arc::new(Resources::new(settings.clone())), Arc::new(pool));
        let (fires, mut fire_rx) = mpsc::channel(64);
        let daemon = Arc::new(Self {
            settings,
            history,
            metrics: Metrics::default(),
            clock,
            executor,
            pipelines: RwLock::new(Arc::new(BTreeMap::new())),
            reload: Mutex::new(ReloadStatus::default()),
            triggers: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            fires,
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            running: watch::channel(0).0,
            experiments: Default::default(),
        });
        daemon.reload(true);
        let d = Arc::downgrade(&daemon);
        tokio::spawn(async move {
            while let Some(fire) = fire_rx.recv().await {
                let Some(d) = d.upgrade() else { return };
                d.on_fire(fire);
            }
        });
        // Oldest first: they were started first.
        for mut run in interrupted.into_iter().rev() {
            if run.crashes >= MAX_CRASHES {
                run.status = RunStatus::Failed;
                run.finished_at = Some(Utc::now());
                run.reason = Some(format!(
                    "the process died {} times while this run was in progress (out of memory or a crash); \
                     it is not resumed again automatically: fix the cause, then rerun it with \
                     `recpipe run {} --run-id {}`",
                    run.crashes, run.pipeline, run.run_id
                ));
                error!(pipeline = %run.pipeline, run_id = %run.run_id, crashes = run.crashes, "run took the process down repeatedly: not resumed, left for an operator");
                daemon.history.update(&run)?;
                daemon.write_run_json(&run);
                daemon.count_run(&run.pipeline, RunStatus::Failed);
            } else if daemon.settings.daemon.resume_interrupted {
                info!(pipeline = %run.pipeline, run_id = %run.run_id, "resuming an interrupted run");
                daemon.resume_or_wait(run);
            } else {
                warn!(pipeline = %run.pipeline, run_id = %run.run_id, "run was interrupted by a restart");
            }
        }
        Ok(daemon)
    }

    /// Resumes `run`, or keeps it for the reload that loads its pipeline.
    fn resume_or_wait(self: &Arc<Self>, mut run: RunRecord) {
        match self.resume(&run) {
            Ok(()) => {}
            Err(DaemonError::UnknownPipeline(name)) => {
                warn!(pipeline = %run.pipeline, run_id = %run.run_id, "pipeline not loaded: the run resumes once its file loads");
                run.reason = Some(format!(
                    "waiting for pipeline `{name}` to load (its file is missing or invalid); it resumes after a reload that loads it"
                ));
                if let Err(e) = self.history.update(&run) {
                    warn!(pipeline = %run.pipeline, run_id = %run.run_id, error = %e, "cannot record the run");
                }
                self.pending.locked().push(run);
            }
            Err(e) => {
                warn!(pipeline = %run.pipeline, run_id = %run.run_id, error = %e, "cannot resume");
            }
        }
    }

    /// Resumes the waiting runs whose pipeline is now loaded.
    fn resume_pending(self: &Arc<Self>) {
        if self.is_shutting_down() {
            return;
        }
        let loaded = self.pipelines();
        let ready: Vec<RunRecord> = {
            let mut pending = self.pending.locked();
            let (ready, waiting) = pending
                .drain(..)
                .partition(|r| loaded.contains_key(&r.pipeline));
            *pending = waiting;
            ready
        };
        for run in ready {
            info!(pipeline = %run.pipeline, run_id = %run.run_id, "pipeline loaded: resuming the interrupted run");
            self.resume_or_wait(run);
        }
    }

    /// Interrupted runs waiting for their pipeline to load.
    pub fn pending_resumes(&self) -> Vec<(String, String)> {
        self.pending
            .locked()
            .iter()
            .map(|r| (r.pipeline.clone(), r.run_id.clone()))
            .collect()
    }

    pub fn pipelines(&self) -> Arc<BTreeMap<String, Arc<Pipeline>>> {
        self.pipelines
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.reload.locked().clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The next fire time of a scheduled pipeline.
    pub fn next_fire(&self, pipeline: &Pipeline) -> Option<DateTime<Utc>> {
        let schedule = Schedule::parse(pipeline.schedule.as_deref()?, pipeline.timezone).ok()?;
        schedule.next_after(self.clock.now())
    }

    /// Looks at `pipelines/` and swaps in what changed if it all validates.
    /// `force` reloads even when the files look unchanged (startup, SIGHUP).
    pub fn reload(self: &Arc<Self>, force: bool) {
        let dir = self.settings.pipelines_dir.clone();
        let fingerprint = fingerprint(&dir);
        {
            let status = self.reload.locked();
            if !force && status.loaded_at.is_some() && status.fingerprint == fingerprint {
                return;
            }
        }
        let (loaded, diags) = load_all(&self.settings, &[dir]);
        let mut status = self.reload.locked();
        status.fingerprint = fingerprint;
        if !diags.is_empty() {
            status.diagnostics = diags.0.iter().map(ToString::to_string).collect();
            self.metrics.reload_errors.inc();
            self.metrics.config_valid.set(0);
            error!(
                problems = status.diagnostics.len(),
                "pipelines/ does not validate; the previous pipelines stay in force:\n{diags}"
            );
            // At startup there is nothing previous: run the files that are valid.
            if status.loaded_at.is_some() {
                return;
            }
        } else {
            status.diagnostics.clear();
            self.metrics.config_valid.set(1);
        }
        let first_load = status.loaded_at.is_none();
        status.loaded_at = Some(self.clock.now());
        drop(status);
        let map: BTreeMap<String, Arc<Pipeline>> = loaded
            .into_iter()
            .map(|p| (p.name.clone(), Arc::new(p)))
            .collect();
        info!(pipelines = map.len(), "pipelines loaded");
        *self
            .pipelines
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(map.clone());
        self.arm_triggers(&map, first_load);
        self.resume_pending();
    }

    /// Replaces the trigger of each pipeline whose schedule changed; stops the
    /// triggers of pipelines that are gone. Catch-up applies only to the first
    /// load (after downtime): a schedule edited later did not miss its past times.
    fn arm_triggers(
        self: &Arc<Self>,
        pipelines: &BTreeMap<String, Arc<Pipeline>>,
        first_load: bool,
    ) {
        let mut triggers = self.triggers.locked();
        triggers.retain(|name, (key, handle)| {
            let keep = pipelines.get(name).is_some_and(|p| trigger_key(p) == *key);
            if !keep {
                handle.abort();
            }
            keep
        });
        if self.is_shutting_down() {
            return;
        }
        for (name, p) in pipelines {
            if triggers.contains_key(name) {
                continue;
            }
            let Some(expr) = &p.schedule else { continue };
            let schedule = match Schedule::parse(expr, p.timezone) {
                Ok(s) => s,
                Err(e) => {
                    error!(pipeline = %name, error = %e, "schedule does not parse");
                    continue;
                }
            };
            let last = self.history.last_scheduled(name).unwrap_or_else(|e| {
                warn!(pipeline = %name, error = %e, "no last scheduled time: no catch-up");
                None
            });
            let handle = crate::scheduler::spawn(
                name.clone(),
                schedule,
                if first_load {
                    p.catch_up
                } else {
                    CatchUp::None
                },
                last,
                self.clock.clone(),
                self.fires.clone(),
            );
            triggers.insert(name.clone(), (trigger_key(p), handle));
        }
    }

    fn on_fire(self: &Arc<Self>, fire: Fire) {
        if let Err(e) = self
            .history
            .set_last_scheduled(&fire.pipeline, fire.scheduled)
        {
            warn!(pipeline = %fire.pipeline, error = %e, "cannot record the scheduled time");
        }
        match self.start_run(&fire.pipeline, Some(fire.run_id()), fire.scheduled) {
            Ok(Started::Started { run_id }) => {
                info!(pipeline = %fire.pipeline, run_id = %run_id, catch_up = fire.catch_up, "scheduled run started")
            }
            Ok(other) => info!(pipeline = %fire.pipeline, outcome = ?other, "scheduled fire"),
            Err(e) => warn!(pipeline = %fire.pipeline, error = %e, "scheduled fire not started"),
        }
    }

    /// Starts a run of `pipeline` (a manual run when `run_id` is `None`),
    /// applying the pipeline's concurrency policy.
    pub fn start_run(
        self: &Arc<Self>,
        pipeline: &str,
        run_id: Option<String>,
        logical_date: DateTime<Utc>,
    ) -> Result<Started, DaemonError> {
        if self.is_shutting_down() {
            return Err(DaemonError::ShuttingDown);
        }
        let p = self
            .pipelines()
            .get(pipeline)
            .cloned()
            .ok_or_else(|| DaemonError::UnknownPipeline(pipeline.to_string()))?;
        let now = self.clock.now();
        let run_id =
            run_id.unwrap_or_else(|| format!("manual-{}", now.format("%Y%m%dT%H%M%S%3fZ")));
        let mut active = self.active.locked();
        let running = active.entry(p.name.clone()).or_default();
        let mut record = RunRecord::started(&p.name, &run_id, logical_date, now);
        if let Some(current) = running.first()
            && p.concurrency == Concurrency::Forbid
        {
            record.status = RunStatus::Skipped;
            record.finished_at = Some(now);
            if !self.history.begin(&record)? {
                return Ok(Started::Duplicate { run_id });
            }
            self.count_run(&p.name, RunStatus::Skipped);
            return Ok(Started::Skipped {
                run_id,
                running: current.run_id.clone(),
            });
        }
        if !self.history.begin(&record)? {
            return Ok(Started::Duplicate { run_id });
        }
        if p.concurrency == Concurrency::Replace {
            for old in running.iter() {
                info!(pipeline = %p.name, run_id = %old.run_id, replaced_by = %run_id, "cancelling the run being replaced");
                old.stop.stop();
            }
        }
        let stop = StopFlag::default();
        running.push(Active {
            run_id: run_id.clone(),
            stop: stop.clone(),
        });
        drop(active);
        self.launch(p, run_id.clone(), logical_date, stop);
        Ok(Started::Started { run_id })
    }

    /// Reruns an interrupted run under its own id: finished steps are reused.
    fn resume(self: &Arc<Self>, run: &RunRecord) -> Result<(), DaemonError> {
        let p = self
            .pipelines()
            .get(&run.pipeline)
            .cloned()
            .ok_or_else(|| DaemonError::UnknownPipeline(run.pipeline.clone()))?;
        let mut record = run.clone();
        record.status = RunStatus::Running;
        record.finished_at = None;
        record.reason = None;
        self.history.update(&record)?;
        let stop = StopFlag::default();
        self.active
            .locked()
            .entry(p.name.clone())
            .or_default()
            .push(Active {
                run_id: run.run_id.clone(),
                stop: stop.clone(),
            });
        self.launch(p, run.run_id.clone(), run.logical_date, stop);
        Ok(())
    }

    fn launch(
        self: &Arc<Self>,
        p: Arc<Pipeline>,
        run_id: String,
        logical_date: DateTime<Utc>,
        stop: StopFlag,
    ) {
        let daemon = self.clone();
        self.running.send_modify(|n| *n += 1);
        self.metrics
            .active_runs
            .get_or_create(&PipelineLabels {
                pipeline: p.name.clone(),
            })
            .inc();
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let observer = {
                let d = daemon.clone();
                let p = p.clone();
                let run_id = run_id.clone();
                tokio::spawn(async move {
                    while let Some(event) = rx.recv().await {
                        d.observe(&p, &run_id, event);
                    }
                })
            };
            let request = RunRequest {
                pipeline: p.clone(),
                run_id: run_id.clone(),
                logical_date,
                stop,
            };
            let outcome = daemon.executor.run(request, Some(tx)).await;
            let _ = observer.await;
            daemon
                .live
                .locked()
                .remove(&(p.name.clone(), run_id.clone()));
            let record = match outcome {
                Ok(record) => record,
                Err(e) => {
                    error!(pipeline = %p.name, run_id = %run_id, error = %e, "run could not start");
                    let mut r = daemon
                        .history
                        .run(&p.name, &run_id)
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| {
                            RunRecord::started(&p.name, &run_id, logical_date, Utc::now())
                        });
                    r.status = RunStatus::Failed;
                    r.finished_at = Some(Utc::now());
                    r
                }
            };
            let mut record = record;
            // The history keeps the crash count; the executor's record starts at 0.
            if let Ok(Some(before)) = daemon.history.run(&p.name, &run_id) {
                record.crashes = before.crashes;
            }
            let drained =
                record.status == RunStatus::Cancelled && daemon.draining.load(Ordering::Relaxed);
            if drained {
                record.status = RunStatus::Interrupted;
                record.reason = Some(
                    "the daemon shut down before the run finished (cancelled after \
                     `daemon.shutdown_grace`); the next start resumes it"
                        .into(),
                );
            }
            // Metrics first: whoever sees the run finished in the history sees it counted.
            daemon.count_run(&p.name, record.status);
            if record.status == RunStatus::Succeeded {
                daemon
                    .metrics
                    .last_success
                    .get_or_create(&PipelineLabels {
                        pipeline: p.name.clone(),
                    })
                    .set(Utc::now().timestamp());
            }
            daemon
                .metrics
                .active_runs
                .get_or_create(&PipelineLabels {
                    pipeline: p.name.clone(),
                })
                .dec();
            if let Err(e) = daemon.history.update(&record) {
                error!(pipeline = %p.name, run_id = %run_id, error = %e, "cannot record the run");
            }
            if drained {
                daemon.write_run_json(&record);
            }
            {
                // Removing run directories is file I/O: off the async threads.
                let (d, name) = (daemon.clone(), p.name.clone());
                let _ = tokio::task::spawn_blocking(move || d.prune(&name)).await;
            }
            if let Some(list) = daemon.active.locked().get_mut(&p.name) {
                list.retain(|a| a.run_id != run_id);
            }
            daemon.running.send_modify(|n| *n -= 1);
        });
    }

    fn observe(&self, p: &Pipeline, run_id: &str, event: Event) {
        RunDir::new(&self.settings.state_dir, &p.name, run_id).append_log(&format!(
            "{} {}",
            Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            redact(&event.to_string())
        ));
        let (step, state) = match &event {
            Event::Started { step, .. } => (step, "running"),
            Event::Retrying { step, .. } => (step, "retrying"),
            Event::Succeeded { step, .. } => (step, "succeeded"),
            Event::Reused { step } => (step, "reused"),
            Event::Failed { step, .. } => (step, "failed"),
            Event::Skipped { step, .. } => (step, "skipped"),
        };
        self.live
            .locked()
            .entry((p.name.clone(), run_id.to_string()))
            .or_default()
            .insert(step.clone(), state);
        if let Event::Failed {
            step,
            class: ErrorClass::Blocked,
            ..
        } = &event
        {
            self.metrics
                .publish_blocked
                .get_or_create(&StepLabels {
                    pipeline: p.name.clone(),
                    step: step.clone(),
                })
                .inc();
        }
        if let Event::Succeeded {
            step,
            rows,
            duration,
        } = event
        {
            self.metrics
                .step_seconds
                .get_or_create(&StepLabels {
                    pipeline: p.name.clone(),
                    step: step.clone(),
                })
                .observe(duration.as_secs_f64());
            if let Some(w) = p.writes.iter().find(|w| w.step == step) {
                self.metrics
                    .rows_written
                    .get_or_create(&SinkLabels {
                        pipeline: p.name.clone(),
                        sink: w.sink.clone(),
                    })
                    .inc_by(rows);
            }
        }
    }

    fn count_run(&self, pipeline: &str, status: RunStatus) {
        self.metrics
            .runs
            .get_or_create(&RunLabels {
                pipeline: pipeline.to_string(),
                status: status.as_str().to_string(),
            })
            .inc();
    }

    /// The state of each started step of a run in progress: `running`,
    /// `retrying`, `succeeded`, `reused`, `failed` or `skipped`.
    pub fn live_steps(
        &self,
        pipeline: &str,
        run_id: &str,
    ) -> Option<BTreeMap<String, &'static str>> {
        self.live
            .locked()
            .get(&(pipeline.to_string(), run_id.to_string()))
            .cloned()
    }

    /// Asks a run in progress to stop; `false` if no such run is in progress.
    pub fn cancel(&self, run_id: &str) -> bool {
        let active = self.active.locked();
        let found = active.values().flatten().find(|a| a.run_id == run_id);
        if let Some(a) = found {
            a.stop.stop();
        }
        found.is_some()
    }

    /// The run ids in progress, by pipeline.
    pub fn running(&self, pipeline: &str) -> Vec<String> {
        self.active
            .locked()
            .get(pipeline)
            .map(|l| l.iter().map(|a| a.run_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Removes the finished run directories of `pipeline` beyond the retention
    /// settings and stale temporary files (never a run in progress).
    fn prune(&self, pipeline: &str) {
        let in_progress = self.running(pipeline);
        retention::after_run(&self.settings, pipeline, &|run_id| {
            in_progress.iter().any(|r| r == run_id)
        });
    }

    /// Stops firing, lets running runs go on for `grace`, then cancels them and
    /// gives them [`WIND_DOWN`] to record themselves as interrupted (their run
    /// dirs stay resumable); a run that does not stop by then is recorded as
    /// interrupted here, so the history never shows it running.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::Relaxed);
        for (_, (_, handle)) in self.triggers.locked().drain() {
            handle.abort();
        }
        let mut running = self.running.subscribe();
        if tokio::time::timeout(grace, running.wait_for(|n| *n == 0))
            .await
            .is_ok()
        {
            return;
        }
        warn!("grace period over: cancelling the runs in progress");
        self.draining.store(true, Ordering::Relaxed);
        for a in self.active.locked().values().flatten() {
            a.stop.stop();
        }
        // Steps see the flag between blocks and iterations.
        if tokio::time::timeout(WIND_DOWN, running.wait_for(|n| *n == 0))
            .await
            .is_ok()
        {
            return;
        }
        let stuck: Vec<(String, String)> = self
            .active
            .locked()
            .iter()
            .flat_map(|(p, runs)| runs.iter().map(|a| (p.clone(), a.run_id.clone())))
            .collect();
        for (pipeline, run_id) in stuck {
            warn!(pipeline = %pipeline, run_id = %run_id, "run did not stop in time: recorded as interrupted");
            if let Ok(Some(mut record)) = self.history.run(&pipeline, &run_id) {
                record.status = RunStatus::Interrupted;
                record.finished_at = Some(Utc::now());
                record.reason = Some(format!(
                    "the daemon shut down and the run did not stop within {} of the cancel; \
                     the next start resumes it",
                    humantime::format_duration(WIND_DOWN)
                ));
                if let Err(e) = self.history.update(&record) {
                    error!(pipeline = %pipeline, run_id = %run_id, error = %e, "cannot record the run");
                }
            }
        }
    }

    /// Writes the `run.json` of a run whose status this process changed after its
    /// executor let go (drained, given up), so retention reads what the history
    /// says; a run another process holds now is left to it.
    fn write_run_json(&self, run: &RunRecord) {
        let rundir = RunDir::new(&self.settings.state_dir, &run.pipeline, &run.run_id);
        let written = match rundir.try_lock() {
            Ok(Some(_lock)) => rundir.write_record(run).map_err(|e| e.to_string()),
            Ok(None) => Err("another process is running it".to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            warn!(pipeline = %run.pipeline, run_id = %run.run_id, error = %e, "run.json not updated");
        }
    }
}

/// Locking that survives a panic in another holder: the daemon's maps stay
/// usable (each update is a single insert or removal), so one failed request
/// does not take the scheduler down.
trait Locked<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What identifies a trigger: a reload re-arms it only when this changes.
fn trigger_key(p: &Pipeline) -> String {
    format!("{:?}|{}|{:?}", p.schedule, p.timezone, p.catch_up)
}

/// A cheap summary of the pipeline files (names, sizes, contents): a change in
/// any of them triggers a reload.
fn fingerprint(dir: &std::path::Path) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    if let Ok(files) = crate::pipeline::load::toml_files_in(dir) {
        for f in files {
            f.hash(&mut h);
            std::fs::read(&f).unwrap_or_default().hash(&mut h);
        }
    }
    h.finish()
}
