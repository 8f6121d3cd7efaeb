//! `write`: publishes a list artifact to a named sink, staged then swapped in, so
//! the service reading the table sees the old list or the new one.

use std::path::PathBuf;

use serde_json::json;

use super::{StepError, StepOutput};
use crate::sinks::AnySink;

/// Blocking file or network I/O: call through `spawn_blocking`.
pub fn run(
    sink: &AnySink,
    table: &str,
    version: &str,
    input: PathBuf,
) -> Result<StepOutput, StepError> {
    let sink = sink.get();
    sink.healthcheck()?;
    let published = sink.publish(table, version, &input)?;
    Ok(StepOutput {
        rows: published.rows,
        details: json!(published),
        files: Vec::new(),
    })
}
