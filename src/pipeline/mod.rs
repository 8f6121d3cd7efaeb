//! Pipeline files and runs: loading and validating a pipeline file into a DAG,
//! the executor that walks it, the run directory where each step leaves its
//! artifact and manifest (on local disk, or copied to object storage), the run history, the retention that prunes old run
//! directories, and the export of a pipeline to Argo Workflows.

pub mod dag;
pub mod executor;
pub mod export;
pub mod history;
pub mod load;
pub mod remote;
pub mod retention;
pub mod rundir;

pub use executor::{Event, Executor, RunRequest};
pub use load::{CatchUp, Concurrency, Pipeline, Step};
pub use rundir::{RunDir, RunRecord, RunStatus, StepStatus};
