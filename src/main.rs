//! The `recpipe` command line: validate, plan and run pipelines, run any step
//! alone on files, and generate example data.
//!
//! Exit codes, the same for `run`, `step` and `validate`: 0 success, 2 invalid
//! input (settings, pipeline file, arguments, SQL result, data), 75 transient
//! (connection, I/O, time-out: worth retrying), 1 anything else. No message
//! printed here holds a secret: each goes through `redact` first.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use recpipe::artifact;
use recpipe::config::pipeline::{self, ArtifactKind, ParamValue, Role, StepSpec, TrainSpec};
use recpipe::config::redact::redact;
use recpipe::config::settings::{DataFusionSourceConfig, TableFileConfig};
use recpipe::config::{Diagnostics, Pipeline, Settings};
use recpipe::models::StopFlag;
use recpipe::pipeline::{ErrorClass, Event, Executor, RunDir, RunRecord, RunRequest, RunStatus};
use recpipe::sources::AnySource;
use recpipe::steps::{self, Resources, StepContext, StepOutput};
use recpipe::synth;

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
    Validate {
        paths: Vec<PathBuf>,
        /// Also reach every configured source and sink; exit 75 if one fails.
        #[arg(long)]
        check_connections: bool,
    },
    /// Make the previous published version of a pipeline's tables current again;
    /// a second rollback undoes the first.
    Rollback {
        pipeline: String,
        /// Only the tables written to this sink.
        #[arg(long)]
        sink: Option<String>,
    },
    /// Print a pipeline's steps in run order with what each reads and writes.
    Plan { pipeline: String },
    /// Run a pipeline once, now; rerunning a run id resumes it.
    Run {
        /// A pipeline name or the path of its file.
        pipeline: String,
        #[arg(long)]
        run_id: Option<String>,
        /// The date the run is for (RFC 3339), bound as `$logical_date`; default now.
        #[arg(long)]
        logical_date: Option<DateTime<Utc>>,
    },
    /// Run one step kind alone, file in / file out.
    #[command(subcommand)]
    Step(StepCommand),
    /// Time ALS fit, rec-all and sim-all and score p@10/nDCG@10 on a split written by
    /// the benchmark anchors (`anchors.py --write-split`); prints one JSON line.
    Bench {
        #[arg(long)]
        split: PathBuf,
        /// Positives are rows with rating ≥ this; omit to use every row.
        #[arg(long)]
        positive_min: Option<f32>,
        #[arg(long, default_value_t = 64)]
        factors: usize,
        #[arg(long, default_value_t = 15)]
        iterations: usize,
        #[arg(long, default_value_t = 0.05)]
        regularization: f32,
        #[arg(long, default_value_t = 1.0)]
        alpha: f32,
        /// ALS-WR: scale each row's regularization by its interaction count.
        #[arg(long)]
        scale_regularization: bool,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Write seeded example data: interactions.parquet and items.parquet.
    GenData {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 2_000)]
        users: usize,
        #[arg(long, default_value_t = 500)]
        items: usize,
        #[arg(long, default_value_t = 40_000)]
        events: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum StepCommand {
    /// Run an SQL file and store the checked result as Parquet.
    Extract(ExtractArgs),
    /// Fit a model on an interactions file.
    Train(TrainArgs),
    /// Top-N items per user from a model, seen items and filters removed.
    Recommend(RecommendArgs),
    /// Top-N similar items per item from a factor model, filtered items removed.
    SimilarItems(RecommendArgs),
    /// Merge filter lists into one filter artifact (deny, allow, group caps).
    MergeFilters(MergeFiltersArgs),
    /// Hold out part of an interactions file and score a model against popularity.
    Evaluate(EvaluateArgs),
    /// Publish a list file to a configured sink, atomically.
    Write(WriteArgs),
}

#[derive(Args)]
struct MergeFiltersArgs {
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

#[derive(Args)]
struct EvaluateArgs {
    /// An interactions Parquet file.
    #[arg(long)]
    input: PathBuf,
    /// The model: `popular`, `als` or `item_item`.
    #[arg(long)]
    model: String,
    /// Model parameters as `key=value` in TOML syntax (as in a pipeline file).
    #[arg(long = "set", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// `random` or `time` (each user's latest, by `ts`).
    #[arg(long, default_value = "random")]
    split: String,
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for metrics.json.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
struct ExtractArgs {
    /// A source from the settings; or give tables with `--table`.
    #[arg(long, conflicts_with = "table")]
    source: Option<String>,
    /// `name=path` of a Parquet/CSV file (or glob) to query as table `name`.
    #[arg(long, value_parser = parse_key_value)]
    table: Vec<(String, String)>,
    #[arg(long)]
    sql: PathBuf,
    /// `name=value`, bound as `$name`; numbers and true/false are typed.
    #[arg(long, value_parser = parse_key_value)]
    param: Vec<(String, String)>,
    #[arg(long, value_enum)]
    role: Role,
    #[arg(long)]
    allow_empty: bool,
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
struct TrainArgs {
    /// An interactions Parquet file.
    #[arg(long)]
    input: PathBuf,
    /// The model: `popular`, `als` or `item_item`.
    #[arg(long)]
    model: String,
    /// Model parameters as `key=value` in TOML syntax (as in a pipeline file).
    #[arg(long = "set", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// Folder for the model artifact.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
struct RecommendArgs {
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

#[derive(Args)]
struct WriteArgs {
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
}

/// Failures with their exit code.
enum Failure {
    /// Exit 2: the input cannot work as it is.
    BadInput(anyhow::Error),
    /// Exit 75: a retry later may succeed.
    Transient(anyhow::Error),
    /// Exit 1.
    Failed(anyhow::Error),
}

impl Failure {
    fn of_class(class: ErrorClass, e: anyhow::Error) -> Self {
        match class {
            ErrorClass::InvalidInput => Failure::BadInput(e),
            ErrorClass::Transient => Failure::Transient(e),
            ErrorClass::Failed => Failure::Failed(e),
        }
    }

    /// A step command's error, classed by what went wrong.
    fn step(what: &str, e: steps::StepError) -> Self {
        let class = e.class();
        Failure::of_class(class, anyhow!(e).context(what.to_string()))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

/// glibc raises its mmap threshold after large frees (up to 32 MiB), after which
/// a training run's matrices come from the heap and their pages stay resident
/// once freed: a long-lived process would hold its largest run's memory forever
/// (and a pod's limit counts it). A fixed threshold keeps buffers of 1 MiB and
/// up in their own mappings, returned on free.
fn return_large_frees_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> ExitCode {
    return_large_frees_to_the_os();
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Daemon));
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
        Err(Failure::Failed(e)) => (ErrorClass::Failed.exit_code(), e),
    };
    eprintln!("error: {}", redact(&format!("{e:#}")));
    ExitCode::from(code)
}

/// Lines on a terminal (warnings only, as the CLI prints its own progress), JSON
/// for a log collector otherwise; `RUST_LOG` overrides the level.
fn init_logging(daemon: bool) {
    let terminal = std::io::stderr().is_terminal();
    let default = if terminal && !daemon { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(recpipe::logging::RedactedStderr)
        .with_ansi(terminal);
    if terminal {
        builder.init();
    } else {
        builder.event_format(recpipe::logging::CloudJson).init();
    }
}

/// `recpipe daemon`: the scheduler and the HTTP server until SIGTERM or Ctrl-C,
/// then a drain of the running steps (`daemon.shutdown_grace`); a second signal
/// exits at once.
async fn daemon(settings: Arc<Settings>) -> Result<(), Failure> {
    use recpipe::scheduler::CronSchedulerClock;
    use recpipe::scheduler::daemon::{Daemon, DaemonError};
    use tokio::signal::unix::{SignalKind, signal};

    let clock = CronSchedulerClock::start()
        .await
        .map_err(|e| Failure::Failed(anyhow!("starting the scheduler: {e}")))?;
    let daemon = Daemon::start(settings.clone(), Arc::new(clock))
        .await
        .map_err(|e| match e {
            // The state folder or its database: a disk or mount problem.
            DaemonError::History(_) => Failure::Transient(e.into()),
            e => Failure::Failed(e.into()),
        })?;
    let listener = tokio::net::TcpListener::bind(&settings.server.listen)
        .await
        .map_err(|e| {
            let error = anyhow!("server.listen `{}`: {e}", settings.server.listen);
            match e.kind() {
                // Another process holds the port: it may be gone at the next try.
                std::io::ErrorKind::AddrInUse => Failure::Transient(error),
                _ => Failure::BadInput(error),
            }
        })?;
    tracing::info!(listen = %settings.server.listen, pipelines = daemon.pipelines().len(), "daemon started");
    let poll = {
        let d = daemon.clone();
        // Settings bound it to at least 100 ms.
        let every = settings.daemon.reload_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let d = d.clone();
                // Reads and parses files: off the async threads.
                let _ = tokio::task::spawn_blocking(move || d.reload(false)).await;
            }
        })
    };
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| Failure::Failed(e.into()))?;
    let hup = {
        let d = daemon.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading pipelines");
                let d = d.clone();
                let _ = tokio::task::spawn_blocking(move || d.reload(true)).await;
            }
        })
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::Failed(e.into()))?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, recpipe::server::app(daemon.clone()))
            .with_graceful_shutdown(async {
                let _ = server_stopped.await;
            })
            .into_future(),
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(grace = ?settings.daemon.shutdown_grace, "shutting down: no new runs, draining");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::warn!("second signal: exiting now; interrupted runs resume on the next start");
        std::process::exit(130);
    });
    daemon.shutdown(settings.daemon.shutdown_grace).await;
    poll.abort();
    hup.abort();
    let _ = stop_server.send(());
    // A browser keeping a connection open must not hold the exit either.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!("daemon stopped");
    Ok(())
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
        Command::Daemon => daemon(settings()?).await,
        Command::Validate {
            paths,
            check_connections,
        } => {
            let settings = settings()?;
            let pipelines = validate(&settings, paths)?;
            match check_connections {
                true => check_connections_of(&settings, &pipelines).await,
                false => Ok(()),
            }
        }
        Command::Rollback { pipeline, sink } => {
            let settings = settings()?;
            rollback(&settings, &*find_pipeline(&settings, &pipeline)?, sink).await
        }
        Command::Plan { pipeline } => {
            let settings = settings()?;
            plan(&settings, &*find_pipeline(&settings, &pipeline)?);
            Ok(())
        }
        Command::Run {
            pipeline,
            run_id,
            logical_date,
        } => {
            let settings = settings()?;
            let p = find_pipeline(&settings, &pipeline)?;
            run(settings, p, run_id, logical_date).await
        }
        Command::Step(step) => run_step(&project_dir, step).await,
        Command::Bench {
            split,
            positive_min,
            factors,
            iterations,
            regularization,
            alpha,
            scale_regularization,
            threads,
            repeats,
        } => {
            let split = recpipe::bench::read_split(&split, positive_min)
                .map_err(|e| Failure::BadInput(anyhow!(e)))?;
            let params = recpipe::models::als::AlsParams {
                factors,
                iterations,
                regularization,
                alpha,
                scale_regularization,
                ..Default::default()
            };
            let pool = steps::compute_pool(threads).map_err(|e| Failure::Failed(e.into()))?;
            let result = pool
                .install(|| recpipe::bench::run(&split, &params, repeats))
                .map_err(|e| Failure::BadInput(anyhow!(e)))?;
            println!(
                "{}",
                serde_json::to_string(&result).map_err(|e| Failure::Failed(e.into()))?
            );
            Ok(())
        }
        Command::GenData {
            out,
            users,
            items,
            events,
            seed,
        } => {
            let spec = synth::SynthSpec {
                users,
                items,
                events,
                seed,
                ..Default::default()
            };
            gen_data(&out, &spec).map_err(Failure::Failed)
        }
    }
}

fn validate(settings: &Settings, paths: Vec<PathBuf>) -> Result<Vec<Pipeline>, Failure> {
    let paths = if paths.is_empty() {
        vec![settings.pipelines_dir.clone()]
    } else {
        paths
    };
    let (pipelines, diags) = pipeline::load_all(settings, &paths);
    if !diags.is_empty() {
        return Err(Failure::BadInput(anyhow!(
            "{} problem{} found:\n{diags}",
            diags.len(),
            if diags.len() == 1 { "" } else { "s" }
        )));
    }
    for p in &pipelines {
        println!(
            "ok  {}  {} ({} steps)",
            p.file.display(),
            p.name,
            p.steps.len()
        );
    }
    Ok(pipelines)
}

/// Reaches every configured source and sink and reports each; dry-runs every
/// BigQuery extract of `pipelines` and prints the bytes it would scan.
async fn check_connections_of(settings: &Settings, pipelines: &[Pipeline]) -> Result<(), Failure> {
    let mut failed = 0;
    let mut report = |what: String, result: Result<(), String>| match result {
        Ok(()) => println!("ok    {what}"),
        Err(e) => {
            failed += 1;
            println!("FAIL  {what}: {e}");
        }
    };
    for (name, config) in &settings.sources {
        let source = AnySource::from_config(config);
        let result = source.healthcheck().await.map_err(|e| e.to_string());
        report(format!("source `{name}` ({})", config.kind()), result);
    }
    for p in pipelines {
        for step in &p.steps {
            let StepSpec::Extract(e) = &step.spec else {
                continue;
            };
            let Some(AnySource::BigQuery(bq)) =
                settings.sources.get(&e.source).map(AnySource::from_config)
            else {
                continue;
            };
            let mut params = BTreeMap::from([
                ("run_id".to_string(), ParamValue::Text("dry-run".into())),
                (
                    "logical_date".to_string(),
                    ParamValue::Text(Utc::now().to_rfc3339()),
                ),
            ]);
            params.extend(e.params.clone());
            let result = match std::fs::read_to_string(settings.resolve(&e.sql)) {
                Ok(sql) => bq.dry_run(&sql, &params).await.map_err(|e| e.to_string()),
                Err(err) => Err(format!("cannot read {}: {err}", e.sql.display())),
            };
            let what = format!("dry run `{}` step `{}`", p.name, step.id);
            match result {
                Ok(bytes) => report(format!("{what}: {bytes} bytes processed"), Ok(())),
                Err(e) => report(what, Err(e)),
            }
        }
    }
    for (name, config) in &settings.sinks {
        let sink = recpipe::sinks::AnySink::from_config(name, config);
        let result = tokio::task::spawn_blocking(move || sink.get().healthcheck())
            .await
            .map_err(|e| anyhow!(e))?
            .map_err(|e| e.to_string());
        report(format!("sink `{name}` ({})", config.kind()), result);
    }
    match failed {
        0 => Ok(()),
        // Connections that fail are worth retrying (exit 75), as for a run.
        n => Err(Failure::Transient(anyhow!(
            "{n} connection check(s) failed"
        ))),
    }
}

/// Rolls back every table the pipeline writes (to `only` sink, if given).
async fn rollback(settings: &Settings, p: &Pipeline, only: Option<String>) -> Result<(), Failure> {
    let targets: Vec<_> = p
        .writes
        .iter()
        .filter(|w| only.as_ref().is_none_or(|s| *s == w.sink))
        .collect();
    if targets.is_empty() {
        return Err(Failure::BadInput(anyhow!(
            "pipeline `{}` writes no table{}",
            p.name,
            only.map(|s| format!(" to sink `{s}`")).unwrap_or_default()
        )));
    }
    // The tables one step publishes together are rolled back together (in one
    // transaction where the sink can), in the order the step publishes them.
    let mut groups: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for w in targets {
        match groups.iter_mut().find(|(step, _, _)| *step == w.step) {
            Some((_, _, tables)) => tables.push(w.table.clone()),
            None => groups.push((w.step.as_str(), w.sink.as_str(), vec![w.table.clone()])),
        }
    }
    for (_, sink_name, tables) in groups {
        let config = settings
            .sinks
            .get(sink_name)
            .ok_or_else(|| Failure::BadInput(anyhow!("sink `{sink_name}` is not configured")))?;
        let sink = recpipe::sinks::AnySink::from_config(sink_name, config);
        let names = tables
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let back = tokio::task::spawn_blocking(move || sink.get().rollback_group(&tables))
            .await
            .map_err(|e| anyhow!(e))?
            .with_context(|| format!("rollback of {names} in sink `{sink_name}`"))?;
        for published in back {
            println!(
                "rolled back  sink `{sink_name}` table `{}`: now version {} ({} rows) at {}",
                published.table, published.version, published.rows, published.location
            );
        }
    }
    Ok(())
}

/// A pipeline by file path or by name (searched in the pipelines dir).
fn find_pipeline(settings: &Settings, arg: &str) -> Result<Arc<Pipeline>, Failure> {
    let bad = |d: Diagnostics| Failure::BadInput(anyhow!("invalid pipeline:\n{d}"));
    if arg.ends_with(".toml") || arg.contains('/') {
        return pipeline::load_file(settings, Path::new(arg))
            .map(Arc::new)
            .map_err(bad);
    }
    let (pipelines, diags) =
        pipeline::load_all(settings, std::slice::from_ref(&settings.pipelines_dir));
    if let Some(p) = pipelines.into_iter().find(|p| p.name == arg) {
        return Ok(Arc::new(p));
    }
    if !diags.is_empty() {
        return Err(bad(diags));
    }
    Err(Failure::BadInput(anyhow!(
        "no pipeline named `{arg}` in {}",
        settings.pipelines_dir.display()
    )))
}

fn plan(settings: &Settings, p: &Pipeline) {
    println!("pipeline {} ({})", p.name, p.file.display());
    match &p.schedule {
        Some(s) => println!(
            "schedule {s} ({}), concurrency {:?}",
            p.timezone, p.concurrency
        ),
        None => println!("schedule none (manual runs only)"),
    }
    let run_dir = RunDir::new(&settings.state_dir, &p.name, "<run_id>");
    for (i, step) in p.steps.iter().enumerate() {
        let reads: Vec<String> = step
            .needs
            .iter()
            .filter_map(|n| {
                p.step(n)
                    .map(|s| format!("{n} ({})", s.spec.output().as_str()))
            })
            .collect();
        let detail = match &step.spec {
            StepSpec::Extract(e) => format!(
                "{} on source `{}`, role {}",
                e.sql.display(),
                e.source,
                e.role.as_str()
            ),
            StepSpec::Train(t) => format!("model {}", t.model()),
            StepSpec::SimilarItems(r) => format!("top {} similar items per item", r.top_n),
            StepSpec::Evaluate(e) => format!(
                "model {} against popularity, {:?} hold-out {}",
                e.model.model(),
                e.split,
                e.test_fraction
            ),
            StepSpec::MergeFilters(m) => match &m.groups {
                Some(g) => format!("at most {} items per `{}` of `{}`", g.cap, g.column, g.from),
                None => "deny and allow lists".to_string(),
            },
            StepSpec::Recommend(r) => format!("top {} per user", r.top_n),
            StepSpec::Write(w) => match &w.table {
                Some(table) => format!("to sink `{}` table `{table}`", w.sink),
                None => format!(
                    "to sink `{}` tables {} (published together)",
                    w.sink,
                    w.tables
                        .iter()
                        .map(|(step, table)| format!("`{table}` ← {step}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        };
        println!("{:>2}. {} [{}] {detail}", i + 1, step.id, step.spec.kind());
        println!(
            "      reads:  {}",
            if reads.is_empty() {
                "-".to_string()
            } else {
                reads.join(", ")
            }
        );
        let writes = match step.spec.output() {
            ArtifactKind::Published => "the sink's table (staged, then swapped in)".to_string(),
            kind => format!(
                "{} ({})",
                run_dir.step_dir(&step.id).display(),
                kind.as_str()
            ),
        };
        println!("      writes: {writes}");
    }
}

async fn run(
    settings: Arc<Settings>,
    pipeline: Arc<Pipeline>,
    run_id: Option<String>,
    logical_date: Option<DateTime<Utc>>,
) -> Result<(), Failure> {
    let now = Utc::now();
    let run_id = run_id.unwrap_or_else(|| format!("manual-{}", now.format("%Y%m%dT%H%M%SZ")));
    let pool = steps::compute_pool(settings.runtime.compute_threads)
        .map_err(|e| Failure::Failed(e.into()))?;
    let executor = Executor::new(Arc::new(Resources::new(settings.clone())), Arc::new(pool));
    let pipeline_name = pipeline.name.clone();
    let stop = StopFlag::default();
    let ctrl_c_stop = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping; rerun with the same --run-id to resume");
            ctrl_c_stop.stop();
        }
    });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = tokio::spawn(show_progress(rx, pipeline.steps.len() as u64));
    let request = RunRequest {
        pipeline: pipeline.clone(),
        run_id,
        logical_date: logical_date.unwrap_or(now),
        stop,
    };
    let record = executor.run(request, Some(tx)).await.map_err(|e| match e {
        recpipe::pipeline::executor::ExecutorError::RunId(_) => Failure::BadInput(e.into()),
        // The run directory could not be written: the disk, worth a retry.
        e => Failure::Transient(e.into()),
    })?;
    let _ = progress.await;
    recpipe::pipeline::retention::after_run(&settings, &pipeline_name, &|_| false);
    report(&settings, &record)
}

/// A progress bar on a terminal; elsewhere the executor's log lines say the same.
async fn show_progress(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>, steps: u64) {
    if !std::io::stderr().is_terminal() {
        while rx.recv().await.is_some() {}
        return;
    }
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    while let Some(event) = rx.recv().await {
        match event {
            Event::Started { step, attempt } if attempt > 1 => {
                bar.set_message(format!("running {step} (attempt {attempt})"))
            }
            Event::Started { step, .. } => bar.set_message(format!("running {step}")),
            Event::Retrying {
                step,
                attempt,
                delay,
                error,
            } => bar.println(format!(
                "step {step}: attempt {attempt} failed, retrying in {delay:.1?}: {error}"
            )),
            Event::Succeeded {
                step,
                rows,
                duration,
            } => {
                bar.println(format!("step {step}: done, {rows} rows in {duration:.2?}"));
                bar.inc(1);
            }
            Event::Reused { step } => {
                bar.println(format!("step {step}: already done in this run, reused"));
                bar.inc(1);
            }
            Event::Failed { step, error } => bar.println(format!("step {step}: FAILED: {error}")),
            Event::Skipped { step, reason } => {
                bar.println(format!("step {step}: skipped, {reason}"))
            }
        }
    }
    bar.finish_and_clear();
}

/// Prints the outcome, where each published list is and its first rows.
fn report(settings: &Settings, record: &RunRecord) -> Result<(), Failure> {
    let dir = RunDir::new(&settings.state_dir, &record.pipeline, &record.run_id);
    println!(
        "run {} of {}: {:?}",
        record.run_id, record.pipeline, record.status
    );
    println!("run directory: {}", dir.root.display());
    for step in &record.steps {
        let Some(manifest) = dir.manifest(&step.id) else {
            continue;
        };
        if manifest.output != ArtifactKind::Published {
            continue;
        }
        // One list has flat details; a group lists its tables.
        let tables: Vec<&serde_json::Value> = match manifest.details.get("tables") {
            Some(serde_json::Value::Array(all)) => all.iter().collect(),
            _ => vec![&manifest.details],
        };
        for published in tables {
            let Some(location) = published.get("location").and_then(|l| l.as_str()) else {
                continue;
            };
            let rows = published.get("rows").and_then(|r| r.as_u64()).unwrap_or(0);
            let verb = match published.get("unchanged").and_then(|u| u.as_bool()) {
                Some(true) => "unchanged",
                _ => "published",
            };
            println!("{verb} `{}` ({rows} rows): {location}", step.id);
            if let Ok((_, batches)) = artifact::read_parquet(Path::new(location)) {
                let head: Vec<_> = batches
                    .first()
                    .map(|b| b.slice(0, b.num_rows().min(5)))
                    .into_iter()
                    .collect();
                if let Ok(table) = arrow::util::pretty::pretty_format_batches(&head) {
                    println!("{table}");
                }
            }
        }
    }
    match record.status {
        RunStatus::Succeeded => Ok(()),
        status => {
            let failed: Vec<String> = record
                .steps
                .iter()
                .filter_map(|s| s.error.as_ref().map(|e| format!("step `{}`: {e}", s.id)))
                .collect();
            let error = anyhow!("run {}\n{}", status.as_str(), failed.join("\n"));
            // A cancelled run failed whatever its steps saw; otherwise the
            // steps' classes decide (invalid input wins over a transient error).
            let class = match status {
                RunStatus::Cancelled => ErrorClass::Failed,
                _ => ErrorClass::of_run(record.steps.iter().filter_map(|s| s.error_class.as_ref()))
                    .unwrap_or(ErrorClass::Failed),
            };
            Err(Failure::of_class(class, error))
        }
    }
}

async fn run_step(project_dir: &Path, command: StepCommand) -> Result<(), Failure> {
    let pool = Arc::new(steps::compute_pool(0).map_err(|e| Failure::Failed(e.into()))?);
    let cx = StepContext {
        pipeline: "cli".into(),
        run_id: "cli".into(),
        logical_date: Utc::now(),
        stop: StopFlag::default(),
        pool: pool.clone(),
    };
    let output: StepOutput = match command {
        StepCommand::Extract(a) => {
            let source = if a.table.is_empty() {
                let settings =
                    Settings::load(project_dir).map_err(|e| Failure::BadInput(e.into()))?;
                let name = a.source.ok_or_else(|| {
                    Failure::BadInput(anyhow!("give --source NAME or --table name=path"))
                })?;
                let config = settings
                    .sources
                    .get(&name)
                    .ok_or_else(|| Failure::BadInput(anyhow!("unknown source `{name}`")))?;
                AnySource::from_config(config)
            } else {
                let tables = a
                    .table
                    .into_iter()
                    .map(|(name, path)| {
                        (
                            name,
                            TableFileConfig {
                                path: path.into(),
                                format: None,
                            },
                        )
                    })
                    .collect();
                AnySource::DataFusion(recpipe::sources::datafusion::DataFusionSource::new(
                    DataFusionSourceConfig { tables },
                ))
            };
            let params: BTreeMap<String, ParamValue> = a
                .param
                .into_iter()
                .map(|(k, v)| (k, typed_param(&v)))
                .collect();
            // As in a pipeline: an empty filter list is normal, other empty tables are errors.
            let allow_empty = a.allow_empty || a.role == Role::Filter;
            let job = steps::extract::ExtractJob {
                source,
                sql_path: a.sql,
                params,
                role: a.role,
                allow_empty,
            };
            steps::extract::run(job, a.output, &cx)
                .await
                .map_err(|e| Failure::step("extract", e))?
        }
        StepCommand::Train(a) => {
            let spec = train_spec(&a.model, &a.set)?;
            std::fs::create_dir_all(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))?;
            let (input, out) = (a.input, a.output);
            steps::compute(&pool, move || {
                steps::train::run(&spec, &input, &out, &StopFlag::default())
            })
            .await
            .map_err(|e| Failure::step("train", e))?
        }
        StepCommand::MergeFilters(a) => {
            let inputs: Vec<steps::filters::FilterInput> = a
                .input
                .into_iter()
                .map(|(step, file)| steps::filters::FilterInput {
                    step,
                    file: file.into(),
                })
                .collect();
            let groups = match (a.groups_from, a.group_column, a.group_cap) {
                (Some(from), Some(column), Some(cap)) if cap > 0 => {
                    Some(recpipe::config::pipeline::GroupsSpec { from, column, cap })
                }
                (Some(_), _, _) => {
                    return Err(Failure::BadInput(anyhow!("--group-cap must be at least 1")));
                }
                _ => None,
            };
            std::fs::create_dir_all(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))?;
            let (allow, out) = (a.allow, a.output);
            tokio::task::spawn_blocking(move || {
                steps::filters::merge(&inputs, &allow, groups.as_ref(), &out)
            })
            .await
            .map_err(|e| anyhow!(e))?
            .map_err(|e| Failure::step("merge-filters", e))?
        }
        StepCommand::Evaluate(a) => {
            let mut spec: recpipe::config::pipeline::EvaluateSpec = toml::from_str(&format!(
                "split = {}\ntest_fraction = {}\nk = {}\nseed = {}\n",
                toml_string(&a.split),
                a.test_fraction,
                a.k,
                a.seed
            ))
            .map_err(|e| Failure::BadInput(anyhow!("evaluate: {}", e.message())))?;
            spec.model = train_spec(&a.model, &a.set)?;
            std::fs::create_dir_all(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))?;
            let (input, out) = (a.input, a.output);
            steps::compute(&pool, move || {
                steps::evaluate::run(&spec, &input, &out, &StopFlag::default())
            })
            .await
            .map_err(|e| Failure::step("evaluate", e))?
        }
        StepCommand::Recommend(a) => {
            let (job, out) = list_job(a)?;
            steps::compute(&pool, move || {
                steps::recommend::run(&job, &out, &StopFlag::default())
            })
            .await
            .map_err(|e| Failure::step("recommend", e))?
        }
        StepCommand::SimilarItems(a) => {
            let (job, out) = list_job(a)?;
            steps::compute(&pool, move || {
                steps::recommend::similar(&job, &out, &StopFlag::default())
            })
            .await
            .map_err(|e| Failure::step("similar-items", e))?
        }
        StepCommand::Write(a) => {
            let settings = Settings::load(project_dir).map_err(|e| Failure::BadInput(e.into()))?;
            let config = settings
                .sinks
                .get(&a.sink)
                .ok_or_else(|| Failure::BadInput(anyhow!("unknown sink `{}`", a.sink)))?;
            if !pipeline::is_table_name(&a.table) {
                return Err(Failure::BadInput(anyhow!(
                    "`{}` is not a valid table name",
                    a.table
                )));
            }
            let sink = recpipe::sinks::AnySink::from_config(&a.sink, config);
            let version = a.version.unwrap_or_else(|| {
                format!("cli-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ")).replace('.', "-")
            });
            if !recpipe::pipeline::rundir::is_valid_run_id(&version) {
                return Err(Failure::BadInput(anyhow!(
                    "`{version}` is not a valid version name"
                )));
            }
            let job = steps::write::WriteJob {
                sink,
                lists: vec![recpipe::sinks::ListFile {
                    table: a.table,
                    input: a.input,
                }],
                version,
                allow_empty: a.allow_empty,
            };
            tokio::task::spawn_blocking(move || steps::write::run(&job))
                .await
                .map_err(|e| anyhow!(e))?
                .map_err(|e| Failure::step("write", e))?
        }
    };
    let summary = serde_json::to_string_pretty(&output).map_err(|e| Failure::Failed(e.into()))?;
    println!("{summary}");
    Ok(())
}

/// A model spec from `--model` and `--set key=value` pairs, read exactly as the same
/// keys in a pipeline file would be.
fn train_spec(model: &str, set: &[(String, String)]) -> Result<TrainSpec, Failure> {
    let mut text = format!("model = {}\n", toml_string(model));
    for (k, v) in set {
        text.push_str(&format!("{k} = {v}\n"));
    }
    let spec: TrainSpec = toml::from_str(&text)
        .map_err(|e| Failure::BadInput(anyhow!("model parameters: {}", e.message())))?;
    let problems = pipeline::model_problems(&spec);
    refuse(problems.into_iter().map(|(k, m)| format!("--set {k}: {m}")))?;
    Ok(spec)
}

/// Every out-of-bounds argument at once, as bad input.
fn refuse(problems: impl Iterator<Item = String>) -> Result<(), Failure> {
    let lines: Vec<String> = problems.collect();
    match lines.is_empty() {
        true => Ok(()),
        false => Err(Failure::BadInput(anyhow!(lines.join("\n")))),
    }
}

fn list_job(a: RecommendArgs) -> Result<(steps::recommend::RecommendJob, PathBuf), Failure> {
    let problems = pipeline::list_problems(a.min_score, a.min_coverage);
    refuse(
        problems
            .into_iter()
            .map(|(k, m)| format!("--{}: {m}", k.replace('_', "-"))),
    )?;
    let job = steps::recommend::RecommendJob {
        model_dir: a.model,
        interactions: a.interactions,
        filters: a.filter,
        top_n: a.top_n,
        exclude_seen: !a.keep_seen,
        min_score: a.min_score,
        min_coverage: a.min_coverage,
        allow_empty: a.allow_empty,
        run_id: a.run_id,
        generated_at: Utc::now(),
    };
    Ok((job, a.output))
}

fn gen_data(out: &Path, spec: &synth::SynthSpec) -> anyhow::Result<()> {
    if spec.users == 0 || spec.items == 0 {
        bail!("--users and --items must be at least 1");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let data = synth::generate(spec);
    for (name, batch) in [
        ("interactions.parquet", &data.interactions),
        ("items.parquet", &data.items),
    ] {
        let entry =
            artifact::write_parquet(&out.join(name), batch.schema(), std::slice::from_ref(batch))?;
        println!("{}: {} rows", out.join(name).display(), entry.rows);
    }
    Ok(())
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not `key=value`"))
}

/// Command-line params are text unless they read as a number or boolean.
fn typed_param(v: &str) -> ParamValue {
    if let Ok(i) = v.parse::<i64>() {
        ParamValue::Int(i)
    } else if let Ok(f) = v.parse::<f64>() {
        ParamValue::Float(f)
    } else if let Ok(b) = v.parse::<bool>() {
        ParamValue::Bool(b)
    } else {
        ParamValue::Text(v.to_string())
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
