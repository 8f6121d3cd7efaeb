//! Pipeline files and runs: loading and validating a pipeline file into a DAG,
//! the executor that walks it, the run directory where each step leaves its
//! artifact and manifest, the run history, and the retention that prunes old run
//! directories.

pub mod dag;
pub mod executor;
pub mod history;
pub mod load;
pub mod retention;
pub mod rundir;

pub use executor::{Event, Executor, RunRequest};
pub use load::{CatchUp, Concurrency, Pipeline, Step};
pub use rundir::{RunDir, RunRecord, RunStatus, StepStatus};
