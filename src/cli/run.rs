//! `recpipe run`: one run of a pipeline, now, with progress and a report of
//! what was published.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use recpipe::artifact;
use recpipe::artifact::ArtifactKind;
use recpipe::config::Settings;
use recpipe::models::StopFlag;
use recpipe::pipeline::load::Pipeline;
use recpipe::pipeline::{Event, Executor, RunDir, RunRecord, RunRequest, RunStatus};
use recpipe::steps::{self, ErrorClass, Resources};

use super::Failure;

#[derive(Args)]
pub struct RunArgs {
    /// A pipeline name or the path of its file.
    pub pipeline: String,
    #[arg(long)]
    pub run_id: Option<String>,
    /// The date the run is for (RFC 3339), bound as `$logical_date`; default now.
    #[arg(long)]
    pub logical_date: Option<DateTime<Utc>>,
}

pub async fn run(
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
    // Ctrl-C, or SIGTERM from a supervisor (a Kubernetes Job, `timeout`): the run
    // stops, is recorded as cancelled and can be resumed.
    super::stop_on_signal(
        &stop,
        "interrupted: stopping; rerun with the same --run-id to resume",
    )?;
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
        match &event {
            Event::Started { step, attempt } if *attempt > 1 => {
                bar.set_message(format!("running {step} (attempt {attempt})"))
            }
            Event::Started { step, .. } => bar.set_message(format!("running {step}")),
            Event::Succeeded { .. } | Event::Reused { .. } => {
                bar.println(format!("step {event}"));
                bar.inc(1);
            }
            Event::Retrying { .. } | Event::Failed { .. } | Event::Skipped { .. } => {
                bar.println(format!("step {event}"))
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
