//! `recpipe step <kind>`: one step kind alone, file in / file out, running the
//! same code a pipeline runs. Each kind's arguments and run live with the kind
//! (`steps/<kind>.rs`). `recpipe step run`: one step of a pipeline in its run
//! directory, as one pod of an Argo Workflow runs it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use recpipe::artifact::lists::Shard;
use recpipe::config::Settings;
use recpipe::models::StopFlag;
use recpipe::pipeline::executor::{ExecutorError, StepOutcome};
use recpipe::pipeline::remote::{RemoteRun, RemoteState};
use recpipe::pipeline::rundir::is_valid_run_id;
use recpipe::pipeline::{Executor, RunRequest};
use recpipe::steps::{self, Resources, StepCommand, StepContext};
use recpipe::store::{Remote, StorageError};
use serde_json::json;

use super::Failure;

#[derive(Subcommand)]
pub enum StepCli {
    /// Run one step of a pipeline in a run's directory, with the inputs its needs
    /// left there: what one Argo pod does. Idempotent: a step that already
    /// finished in the run is not run again. One attempt; exit 75 asks for a retry.
    Run(StepRunArgs),
    #[command(flatten)]
    Kind(StepCommand),
}

#[derive(Args)]
pub struct StepRunArgs {
    /// A pipeline name or the path of its file.
    #[arg(long)]
    pub pipeline: String,
    /// The step's id (its `[steps.<id>]` table).
    #[arg(long)]
    pub step: String,
    #[arg(long)]
    pub run_id: String,
    /// The date the run is for (RFC 3339), bound as `$logical_date`. Every step
    /// of a run must get the same one; default now.
    #[arg(long)]
    pub logical_date: Option<DateTime<Utc>>,
    /// Where run directories live, instead of the settings' `state_dir`: a
    /// directory, or object storage (`s3://bucket/prefix`, `gs://bucket/prefix`),
    /// where the step's inputs are copied from and its output to.
    #[arg(long)]
    pub store: Option<String>,
    /// Make part `k` of a list step split into `N` (`shards = N`): `k/N`.
    #[arg(long, value_parser = Shard::parse)]
    pub shard: Option<Shard>,
}

pub async fn dispatch(project_dir: &Path, command: StepCli) -> Result<(), Failure> {
    match command {
        StepCli::Run(args) => {
            let mut settings =
                Settings::load(project_dir).map_err(|e| Failure::BadInput(e.into()))?;
            match args.store.clone() {
                // `gcs://…` too, to be refused by name rather than made a folder.
                Some(url) if url.contains("://") => {
                    let remote = Remote::open(&url).map_err(|e| Failure::BadInput(e.into()))?;
                    // The step runs in a local copy of the run directory.
                    let copy = LocalCopy::new().map_err(|e| Failure::Transient(e.into()))?;
                    settings.state_dir = copy.0.clone();
                    run_pipeline_step(Arc::new(settings), args, Some(remote)).await
                }
                Some(dir) => {
                    settings.state_dir = settings.resolve(Path::new(&dir));
                    run_pipeline_step(Arc::new(settings), args, None).await
                }
                None => run_pipeline_step(Arc::new(settings), args, None).await,
            }
        }
        StepCli::Kind(kind) => run_step(project_dir, kind).await,
    }
}

/// A fresh folder under the temp dir for a local copy of what lives in a
/// store (a step's run directory), removed when dropped.
pub struct LocalCopy(pub PathBuf);

impl LocalCopy {
    pub fn new() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "recpipe-step-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for LocalCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A storage failure as an exit: 75 when another attempt could succeed.
fn storage_failure(e: StorageError, what: &str) -> Failure {
    let retryable = e.is_retryable();
    let e = anyhow!(e).context(what.to_string());
    match retryable {
        true => Failure::Transient(e),
        false => Failure::Failed(e),
    }
}

async fn run_pipeline_step(
    settings: Arc<Settings>,
    args: StepRunArgs,
    remote: Option<Remote>,
) -> Result<(), Failure> {
    let pipeline = super::find_pipeline(&settings, &args.pipeline)?;
    let pool = steps::compute_pool(settings.runtime.compute_threads)
        .map_err(|e| Failure::Failed(e.into()))?;
    let executor = Executor::new(Arc::new(Resources::new(settings.clone())), Arc::new(pool));
    let stop = StopFlag::default();
    super::stop_on_signal(
        &stop,
        "interrupted: stopping the step; run it again to retry",
    )?;
    let request = RunRequest {
        pipeline,
        run_id: args.run_id.clone(),
        logical_date: args.logical_date.unwrap_or_else(Utc::now),
        stop: stop.clone(),
    };
    let what = format!("step {} of run {}", args.step, args.run_id);
    // A bad run id or step is refused by `run_step` below, before anything is read.
    let step = request.pipeline.step(&args.step);
    let remote = remote
        .filter(|_| is_valid_run_id(&args.run_id) && step.is_some())
        .map(|r| {
            let name = &request.pipeline.name;
            let run = RemoteRun::new(&r, &settings.state_dir, name, &args.run_id);
            let state = RemoteState::new(&r, &settings.state_dir, name, &args.step);
            (run, state)
        });
    if let (Some((run, state)), Some(step)) = (&remote, step) {
        run.pull(&request.pipeline, step, args.shard)
            .await
            .map_err(|e| storage_failure(e, &format!("{what}: cannot copy its inputs")))?;
        state
            .pull()
            .await
            .map_err(|e| storage_failure(e, &format!("{what}: cannot copy its state")))?;
    }
    let outcome = executor
        .run_step(request, &args.step, args.shard)
        .await
        .map_err(|e| match e {
            ExecutorError::RunDir(_)
            | ExecutorError::StepBusy { .. }
            | ExecutorError::Busy { .. } => Failure::Transient(anyhow!(e).context(what.clone())),
            ExecutorError::RunId(_)
            | ExecutorError::UnknownStep { .. }
            | ExecutorError::NeedNotDone { .. }
            | ExecutorError::NoSuchShard { .. } => {
                Failure::BadInput(anyhow!(e).context(what.clone()))
            }
        })?;
    let (status, manifest) = match outcome {
        StepOutcome::Reused(m) => ("reused", m),
        StepOutcome::Succeeded(m) => {
            // The state first: the step is done in the store only once both are.
            if let Some((run, state)) = &remote {
                state
                    .push()
                    .await
                    .map_err(|e| storage_failure(e, &format!("{what}: cannot store its state")))?;
                run.push(&m, args.shard)
                    .await
                    .map_err(|e| storage_failure(e, &format!("{what}: cannot store its output")))?;
            }
            ("succeeded", m)
        }
        // SIGTERM to a pod is its node draining: another attempt elsewhere may finish.
        StepOutcome::Failed(e) if stop.is_stopped() => {
            return Err(Failure::Transient(
                anyhow!(e).context(format!("{what} (stopped by a signal)")),
            ));
        }
        StepOutcome::Failed(e) => return Err(Failure::step(&what, e)),
    };
    let summary = json!({"step": manifest.step, "status": status, "rows": manifest.rows});
    println!("{summary}");
    Ok(())
}

pub async fn run_step(project_dir: &Path, command: StepCommand) -> Result<(), Failure> {
    let pool = Arc::new(steps::compute_pool(0).map_err(|e| Failure::Failed(e.into()))?);
    let cx = StepContext {
        pipeline: "cli".into(),
        run_id: "cli".into(),
        logical_date: Utc::now(),
        stop: StopFlag::default(),
        pool,
        shard: None,
        step_state: None,
    };
    let name = command.name();
    let output = command
        .run(project_dir, &cx)
        .await
        .map_err(|e| Failure::step(&name, e))?;
    let summary = serde_json::to_string_pretty(&output).map_err(|e| Failure::Failed(e.into()))?;
    println!("{summary}");
    Ok(())
}
