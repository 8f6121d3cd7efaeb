//! Pipeline runs: the executor that walks a validated DAG, the run directory
//! where each step leaves its artifact and manifest, and the run history.

pub mod executor;
pub mod history;
pub mod rundir;

pub use executor::{Event, Executor, RunRequest};
pub use rundir::{ErrorClass, RunDir, RunRecord, RunStatus, StepStatus};
