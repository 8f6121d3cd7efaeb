//! recpipe: a batch recommendation pipeline daemon.
//!
//! Data flow of one run, each arrow a Parquet artifact in the run directory:
//!
//! ```text
//! SQL (sources) ──extract──▶ interactions / items / filters
//!        interactions ──train──▶ model (ids + parameters)
//!        model + filters ──recommend──▶ user→item top-N list
//!        list ──write──▶ sink (staged, then swapped in atomically)
//! ```
//!
//! Modules, from the bottom up:
//! - [`config`]: daemon settings, validated with file:line errors, and the
//!   diagnostics and TOML span mechanics pipeline loading uses too
//! - [`models`], [`topn`]: pure compute on CSR and dense arrays (rayon, no I/O);
//!   [`stats`]: estimators of rates, pure compute too;
//!   [`eval`]: offline metrics and splits, above both
//! - [`artifact`]: Parquet and JSON files written atomically, artifact kinds and
//!   the column contracts of extracted tables
//! - [`sources`], [`sinks`]: where SQL runs and where lists are published;
//!   [`pgconn`], [`bqconn`]: the PostgreSQL and BigQuery access both use;
//!   [`store`]: S3 and GCS, for run directories and the Parquet sink
//! - [`steps`]: one module per step kind (its spec, checks, inputs, output, run
//!   and `recpipe step` arguments), listed once in `steps/mod.rs`
//! - [`pipeline`]: pipeline files loaded into a DAG, the executor, run directories
//! - [`scheduler`]: cron triggers in each pipeline's time zone, catch-up
//! - [`daemon`]: the long-running process: runs on schedules and requests,
//!   reloads, the drain, metrics
//! - [`server`]: the daemon's HTTP probes, metrics, JSON API and web UI
//! - [`synth`]: seeded example data; [`failpoint`]: named crash points for tests

pub mod artifact;
pub mod bqconn;
pub mod config;
pub mod daemon;
pub mod eval;
pub mod failpoint;
pub mod logging;
pub mod models;
pub mod pgconn;
pub mod pipeline;
pub mod scheduler;
pub mod server;
pub mod sinks;
pub mod sources;
pub mod stats;
pub mod steps;
pub mod store;
pub mod synth;
pub mod topn;
