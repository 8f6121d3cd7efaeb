//! Configuration: the daemon settings (`config/*.toml` + `RECPIPE__*` environment
//! variables), diagnostics with file:line:col, and the TOML span mechanics that
//! pipeline loading (`crate::pipeline::load`) uses too.
//!
//! Invariant: a value that leaves this module has been checked; bad input becomes
//! [`Diagnostics`] naming the file, line and key, never a panic or a half-run.

mod check;
pub mod diagnostic;
pub mod introspect;
mod layers;
pub mod redact;
pub mod settings;
pub mod stores;
pub mod values;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use settings::Settings;
