//! Pipelines written for an engine that runs them elsewhere: Argo Workflows
//! ([`argo`]), as YAML ([`yaml`]).

pub mod argo;
pub mod yaml;
