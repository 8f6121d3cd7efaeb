//! The `recpipe` command line: validate, plan and run pipelines, run any step
//! alone on files, and generate example data. This file parses and dispatches;
//! each command is a module of [`cli`].
//!
//! Exit codes, the same for `run`, `step` and `validate`: 0 success, 2 invalid
//! input (settings, pipeline file, arguments, SQL result, data), 75 transient
//! (connection, I/O, time-out: worth retrying), 1 anything else. No message
//! printed here holds a secret: each goes through `redact` first.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Parser, Subcommand};
use recpipe::config::Settings;
use recpipe::config::redact::redact;
use recpipe::steps::ErrorClass;

use cli::Failure;

#[derive(Parser)]
#[command(
    name = "recpipe",
    version,
    about = "Batch recommendation pipelines: SQL extract, train, top-N, atomic publish"
)]
struct Cli {
    /// Folder holding `config/`, `pipelines/` and `sql/`; relative paths resolve here.
    #[arg(long, global = true, env = "RECPIPE_PROJECT_DIR", default_value = ".")]
    project_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every pipeline on its schedule, with the HTTP API and web UI, until
    /// SIGTERM (`server.listen`, `api.token`; SIGHUP reloads the pipelines).
    Daemon,
    /// Check pipeline files (default: every file in the pipelines dir); exit 2 on errors.
    Validate(cli::validate::ValidateArgs),
    /// Make the previous published version of a pipeline's tables current again;
    /// a second rollback undoes the first.
    Rollback(cli::rollback::RollbackArgs),
    /// Print a pipeline's steps in run order with what each reads and writes.
    Plan { pipeline: String },
    /// Run a pipeline once, now; rerunning a run id resumes it.
    Run(cli::run::RunArgs),
    /// Run one step kind alone, file in / file out; or (`step run`) one step of a
    /// pipeline in a run directory.
    #[command(subcommand)]
    Step(cli::step::StepCli),
    /// Write a pipeline as manifests for another engine (Argo Workflows).
    #[command(subcommand)]
    Export(cli::export::ExportCommand),
    /// Time ALS fit, rec-all and sim-all and score p@10/nDCG@10 on a split written by
    /// the benchmark anchors (`anchors.py --write-split`); prints one JSON line.
    Bench(cli::bench::BenchArgs),
    /// Write seeded example data: interactions, items, per-item outcome counts
    /// and impressions (Parquet).
    GenData(cli::gen_data::GenDataArgs),
}

fn main() -> ExitCode {
    cli::return_large_frees_to_the_os();
    let cli = Cli::parse();
    cli::init_logging(matches!(cli.command, Command::Daemon));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(dispatch(cli));
    // A step blocked in I/O past the drain must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let (code, e) = match outcome {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::BadInput(e)) => (ErrorClass::InvalidInput.exit_code(), e),
        Err(Failure::Transient(e)) => (ErrorClass::Transient.exit_code(), e),
        Err(Failure::Blocked(e)) => (ErrorClass::Blocked.exit_code(), e),
        Err(Failure::Failed(e)) => (ErrorClass::Failed.exit_code(), e),
    };
    eprintln!("error: {}", redact(&format!("{e:#}")));
    ExitCode::from(code)
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let project_dir = std::path::absolute(&cli.project_dir)
        .map_err(|e| Failure::BadInput(anyhow!("--project-dir: {e}")))?;
    let settings = || {
        Settings::load(&project_dir)
            .map(Arc::new)
            .map_err(|e| Failure::BadInput(e.into()))
    };
    match cli.command {
        Command::Daemon => cli::daemon::daemon(settings()?).await,
        Command::Validate(args) => cli::validate::run(&*settings()?, args).await,
        Command::Rollback(args) => {
            let settings = settings()?;
            let p = cli::find_pipeline(&settings, &args.pipeline)?;
            cli::rollback::rollback(&settings, &p, args.sink, args.store).await
        }
        Command::Plan { pipeline } => {
            let settings = settings()?;
            cli::plan::plan(&settings, &*cli::find_pipeline(&settings, &pipeline)?);
            Ok(())
        }
        Command::Run(args) => {
            let settings = settings()?;
            let p = cli::find_pipeline(&settings, &args.pipeline)?;
            cli::run::run(settings, p, args.run_id, args.logical_date).await
        }
        Command::Step(step) => cli::step::dispatch(&project_dir, step).await,
        Command::Export(command) => cli::export::run(&*settings()?, command),
        Command::Bench(args) => cli::bench::run(args),
        Command::GenData(args) => cli::gen_data::run(&args),
    }
}
