//! Pipeline runs: the executor that walks a validated DAG, the run directory
//! where each step leaves its artifact and manifest, the run history, and the
//! retention that prunes old run directories.

pub mod executor;
pub mod history;
pub mod retention;
pub mod rundir;

pub use executor::{Event, Executor, RunRequest};
pub use rundir::{ErrorClass, RunDir, RunRecord, RunStatus, StepStatus};
