//! Pipeline runs: the executor that walks a validated DAG and the run directory
//! where each step leaves its artifact and manifest.

pub mod executor;
pub mod rundir;

pub use executor::{Event, Executor, RunRequest};
pub use rundir::{RunDir, RunRecord, RunStatus, StepStatus};
