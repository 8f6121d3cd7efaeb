//! Integration tests, one binary (ripgrep's layout): modules by topic.

mod allocate;
mod argo;
mod bigquery;
mod common;
mod content;
mod daemon;
mod estimate;
mod extract;
mod gate;
mod history;
mod hostile;
mod lists;
mod objstore;
mod postgres;
mod retention;
mod run;
mod scheduler;
mod settings;
mod validate;
