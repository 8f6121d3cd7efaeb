//! `recpipe step <kind>`: one step kind alone, file in / file out, running the
//! same code a pipeline runs. Each kind's arguments and run live with the kind
//! (`steps/<kind>.rs`).

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use recpipe::models::StopFlag;
use recpipe::steps::{self, StepCommand, StepContext};

use super::Failure;

pub async fn run_step(project_dir: &Path, command: StepCommand) -> Result<(), Failure> {
    let pool = Arc::new(steps::compute_pool(0).map_err(|e| Failure::Failed(e.into()))?);
    let cx = StepContext {
        pipeline: "cli".into(),
        run_id: "cli".into(),
        logical_date: Utc::now(),
        stop: StopFlag::default(),
        pool,
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
