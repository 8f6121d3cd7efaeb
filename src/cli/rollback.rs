//! `recpipe rollback`: makes the previous published version current again.

use std::path::Path;

use anyhow::{Context, anyhow};
use clap::Args;
use recpipe::config::Settings;
use recpipe::pipeline::load::Pipeline;
use recpipe::pipeline::remote::RemoteState;
use recpipe::steps;
use recpipe::store::Remote;

use super::Failure;
use super::step::LocalCopy;

#[derive(Args)]
pub struct RollbackArgs {
    pub pipeline: String,
    /// Only the tables written to this sink.
    #[arg(long)]
    pub sink: Option<String>,
    /// Where the pipeline's pods keep their runs (`recpipe step run --store`):
    /// the publish gate's record is rolled back there, not in `state_dir`.
    #[arg(long)]
    pub store: Option<String>,
}

/// Rolls back every table the pipeline writes (to `only` sink, if given).
pub async fn rollback(
    settings: &Settings,
    p: &Pipeline,
    only: Option<String>,
    store: Option<String>,
) -> Result<(), Failure> {
    // A bad store is refused before any table moves.
    let remote = match &store {
        Some(url) if url.contains("://") => {
            Some(Remote::open(url).map_err(|e| Failure::BadInput(e.into()))?)
        }
        _ => None,
    };
    let state_dir = match &store {
        Some(dir) if remote.is_none() => settings.resolve(Path::new(dir)),
        _ => settings.state_dir.clone(),
    };
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
    for (step, sink_name, tables) in groups {
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
        for published in &back {
            println!(
                "rolled back  sink `{sink_name}` table `{}`: now version {} ({} rows) at {}",
                published.table, published.version, published.rows, published.location
            );
        }
        // The step's publish gate compares the next run with the lists now
        // current. The tables are back already: failing here would invite a
        // second rollback, so a record left behind is only reported.
        if let Some(current) = back.first() {
            let forgot =
                forget_undone(&state_dir, remote.as_ref(), &p.name, step, &current.version);
            if let Err(e) = forgot.await {
                eprintln!("warning: step `{step}`'s publish record was not rolled back: {e:#}");
            }
        }
    }
    Ok(())
}

/// Rolls back the publish record of `step` to `version`, in `state_dir` or, for
/// pods, in the store (through a local copy).
async fn forget_undone(
    state_dir: &Path,
    remote: Option<&Remote>,
    pipeline: &str,
    step: &str,
    version: &str,
) -> anyhow::Result<()> {
    let Some(remote) = remote else {
        let folder = steps::state_folder(state_dir, pipeline, step);
        return Ok(steps::gate::rolled_back(&folder, version)?);
    };
    let copy = LocalCopy::new()?;
    let state = RemoteState::new(remote, &copy.0, pipeline, step);
    state.pull().await?;
    steps::gate::rolled_back(&steps::state_folder(&copy.0, pipeline, step), version)?;
    state.push().await?;
    Ok(())
}
