//! Configuration: the daemon settings (`config/*.toml` + `RECPIPE__*` environment
//! variables) and the pipeline files, both validated before anything runs.
//!
//! Invariant: a value that leaves this module has been checked; bad input becomes
//! [`Diagnostics`] naming the file, line and key, never a panic or a half-run.

pub mod diagnostic;
mod introspect;
mod layers;
pub mod pipeline;
pub mod redact;
pub mod settings;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use pipeline::{CatchUp, Concurrency, Pipeline, Step, StepSpec};
pub use settings::Settings;
