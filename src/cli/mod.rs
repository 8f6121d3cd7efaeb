//! The `recpipe` command line, one file per command. Each command parses its
//! arguments, calls the library and prints; errors carry their exit code
//! ([`Failure`]): 0 success, 2 invalid input, 75 transient, 1 anything else.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use anyhow::anyhow;
use recpipe::config::{Diagnostics, Settings};
use recpipe::pipeline::load;
use recpipe::pipeline::load::Pipeline;
use recpipe::steps;
use recpipe::steps::ErrorClass;

pub mod bench;
pub mod daemon;
pub mod export;
pub mod gen_data;
pub mod plan;
pub mod rollback;
pub mod run;
pub mod step;
pub mod validate;

/// Failures with their exit code.
pub enum Failure {
    /// Exit 2: the input cannot work as it is.
    BadInput(anyhow::Error),
    /// Exit 75: a retry later may succeed.
    Transient(anyhow::Error),
    /// Exit 3: a publish gate held the lists back.
    Blocked(anyhow::Error),
    /// Exit 1.
    Failed(anyhow::Error),
}

impl Failure {
    pub fn of_class(class: ErrorClass, e: anyhow::Error) -> Self {
        match class {
            ErrorClass::InvalidInput => Failure::BadInput(e),
            ErrorClass::Transient => Failure::Transient(e),
            ErrorClass::Blocked => Failure::Blocked(e),
            ErrorClass::Failed => Failure::Failed(e),
        }
    }

    /// A step command's error, classed by what went wrong.
    pub fn step(what: &str, e: steps::StepError) -> Self {
        let class = e.class();
        Failure::of_class(class, anyhow!(e).context(what.to_string()))
    }
}

/// Raises `stop` on Ctrl-C or SIGTERM (a Kubernetes pod's deadline, `timeout`),
/// after printing `message`.
pub fn stop_on_signal(
    stop: &recpipe::models::StopFlag,
    message: &'static str,
) -> Result<(), Failure> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::Failed(e.into()))?;
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("{message}");
        stop.stop();
    });
    Ok(())
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
pub fn return_large_frees_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Lines on a terminal (warnings only, as the CLI prints its own progress), JSON
/// for a log collector otherwise; `RUST_LOG` overrides the level.
pub fn init_logging(daemon: bool) {
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

/// A pipeline by file path or by name (searched in the pipelines dir).
pub fn find_pipeline(settings: &Settings, arg: &str) -> Result<Arc<Pipeline>, Failure> {
    let bad = |d: Diagnostics| Failure::BadInput(anyhow!("invalid pipeline:\n{d}"));
    if arg.ends_with(".toml") || arg.contains('/') {
        return load::load_file(settings, Path::new(arg))
            .map(Arc::new)
            .map_err(bad);
    }
    let (pipelines, diags) =
        load::load_all(settings, std::slice::from_ref(&settings.pipelines_dir));
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
