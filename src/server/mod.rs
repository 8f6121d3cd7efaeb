//! The daemon's HTTP side (axum): liveness and readiness probes, Prometheus
//! metrics, the JSON API and the web UI.
//!
//! Invariant: the two endpoints that act (run now, cancel) require the bearer
//! token from `api.token`, compared in constant time; without a configured token
//! they refuse every request. Reads are open, as the probes and the UI need them.
//! Every answer passes through [`redact`] on its way out: no page or JSON holds a
//! secret, even one stored by an older version in the run history.

mod ui;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::redact::redact;
use crate::daemon::{Daemon, Started};
use crate::pipeline::Pipeline;
use crate::pipeline::RunStatus;
use crate::pipeline::history::RunFilter;

/// The routes over a running daemon.
pub fn app(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/pipelines/{name}", get(ui::pipeline))
        .route("/ui/runs/{pipeline}/{run_id}", get(ui::run))
        .route("/ui/estimates/{pipeline}/{step}", get(ui::estimates))
        .route("/ui/experiments/{name}", get(ui::experiment))
        .route(
            "/ui/estimates/{pipeline}/{step}/csv",
            get(ui::estimates_csv),
        )
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/pipelines", get(list_pipelines))
        .route("/api/v1/pipelines/{name}", get(show_pipeline))
        .route("/api/v1/pipelines/{name}/runs", post(trigger))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{id}", get(show_run))
        .route("/api/v1/runs/{id}/cancel", post(cancel))
        .route("/api/v1/experiments/{name}/assign", get(assign))
        .layer(axum::middleware::map_response(redact_body))
        .with_state(daemon)
}

/// The answer with every secret masked (bodies here are pages and JSON of a few
/// kB, so buffering one costs nothing that matters).
async fn redact_body(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let body = match std::str::from_utf8(&bytes) {
        Ok(text) => match redact(text) {
            std::borrow::Cow::Borrowed(_) => axum::body::Body::from(bytes),
            std::borrow::Cow::Owned(masked) => axum::body::Body::from(masked),
        },
        Err(_) => axum::body::Body::from(bytes),
    };
    let mut response = Response::from_parts(parts, body);
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}

/// An API error as `{"error": "…"}` with its status.
pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// Ready when the pipelines loaded, every file among them is valid and the run
/// history answers. A file that does not load is a pipeline not running on its
/// schedule: an operator must see it, so the probe says which and why.
async fn readyz(State(d): State<Arc<Daemon>>) -> Response {
    let reload = d.reload_status();
    let loaded = reload.loaded_at.is_some();
    let store = d
        .history
        .runs(&RunFilter {
            limit: 1,
            ..RunFilter::default()
        })
        .is_ok();
    if d.is_shutting_down() {
        error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if !loaded || !store {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "pipelines not loaded or run history unavailable",
        )
    } else if !reload.diagnostics.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": format!(
                    "{} problem{} in the pipeline files: the pipelines concerned do not run on their schedule",
                    reload.diagnostics.len(),
                    if reload.diagnostics.len() == 1 { "" } else { "s" }
                ),
                "diagnostics": reload.diagnostics,
                "waiting_to_resume": d
                    .pending_resumes()
                    .into_iter()
                    .map(|(pipeline, run_id)| json!({ "pipeline": pipeline, "run_id": run_id }))
                    .collect::<Vec<_>>(),
            })),
        )
            .into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.encode(),
    )
        .into_response()
}

fn pipeline_json(d: &Daemon, p: &Pipeline) -> Value {
    let last = d.history.last_run(&p.name).ok().flatten();
    json!({
        "name": p.name,
        "description": p.description,
        "file": p.file,
        "schedule": p.schedule,
        "timezone": p.timezone.name(),
        "concurrency": p.concurrency,
        "catch_up": p.catch_up,
        "next_fire": d.next_fire(p),
        "running": d.running(&p.name),
        "last_run": last,
    })
}

async fn list_pipelines(State(d): State<Arc<Daemon>>) -> Json<Value> {
    let pipelines: Vec<Value> = d
        .pipelines()
        .values()
        .map(|p| pipeline_json(&d, p))
        .collect();
    let reload = d.reload_status();
    Json(json!({
        "pipelines": pipelines,
        "reload": { "loaded_at": reload.loaded_at, "diagnostics": reload.diagnostics },
    }))
}

async fn show_pipeline(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> Response {
    let Some(p) = d.pipelines().get(&name).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`"));
    };
    let mut body = pipeline_json(&d, &p);
    body["steps"] = p
        .steps
        .iter()
        .map(|s| json!({ "id": s.id, "kind": s.spec.kind(), "needs": s.needs }))
        .collect();
    body["runs"] = json!(
        d.history
            .runs(&RunFilter {
                pipeline: Some(name),
                limit: 50,
                ..RunFilter::default()
            })
            .unwrap_or_default()
    );
    Json(body).into_response()
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
    status: Option<RunStatus>,
    limit: Option<usize>,
}

async fn list_runs(State(d): State<Arc<Daemon>>, Query(q): Query<RunsQuery>) -> Response {
    let filter = RunFilter {
        pipeline: q.pipeline,
        status: q.status,
        limit: q.limit.unwrap_or(100).min(1000),
    };
    match d.history.runs(&filter) {
        Ok(runs) => Json(json!({ "runs": runs })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Debug, Deserialize)]
struct RunQuery {
    pipeline: Option<String>,
}

async fn show_run(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<RunQuery>,
) -> Response {
    // From the history, not the loaded pipelines: a run outlives its file.
    let found = match d.history.find(&id, q.pipeline.as_deref()) {
        Ok(found) => found,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    match found.as_slice() {
        [] => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        [run] => {
            let log =
                crate::pipeline::RunDir::new(&d.settings.state_dir, &run.pipeline, &run.run_id)
                    .log_tail(50);
            let live = d.live_steps(&run.pipeline, &run.run_id);
            Json(json!({ "run": run, "live_steps": live, "log_tail": log })).into_response()
        }
        many => error(
            StatusCode::CONFLICT,
            format!(
                "run id `{id}` exists in {} pipelines; add ?pipeline=NAME",
                many.len()
            ),
        ),
    }
}

/// Whether the request carries the configured bearer token. An empty token is no
/// token: `RECPIPE__API__TOKEN=` would otherwise match a request without a header.
fn authorized(d: &Daemon, headers: &HeaderMap) -> bool {
    let Some(token) = d
        .settings
        .api
        .token
        .as_ref()
        .filter(|t| !t.expose().is_empty())
    else {
        return false;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    constant_time_eq(given.as_bytes(), token.expose().as_bytes())
}

/// Equality whose time depends neither on where the inputs differ nor on how
/// long the common prefix is: both sides are hashed first, so the comparison
/// always runs over 32 bytes and a length mismatch is not an early exit either.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    let diff = x
        .iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q));
    // black_box: the optimiser may not turn the fold back into an early exit.
    std::hint::black_box(diff) == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": "a valid bearer token (api.token) is required" })),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    logical_date: Option<DateTime<Utc>>,
}

async fn trigger(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&d, &headers) {
        return unauthorized();
    }
    let body: TriggerBody = if body.is_empty() {
        TriggerBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let logical_date = body.logical_date.unwrap_or_else(Utc::now);
    match d.start_run(&name, None, logical_date) {
        Ok(Started::Started { run_id }) => (
            StatusCode::ACCEPTED,
            Json(json!({ "run_id": run_id, "pipeline": name, "status": "running" })),
        )
            .into_response(),
        Ok(Started::Skipped { run_id, running }) => (
            StatusCode::CONFLICT,
            Json(json!({
                "run_id": run_id,
                "status": "skipped",
                "error": format!("`{running}` is still running and the pipeline forbids overlap"),
            })),
        )
            .into_response(),
        Ok(Started::Duplicate { run_id }) => (
            StatusCode::OK,
            Json(json!({ "run_id": run_id, "status": "duplicate" })),
        )
            .into_response(),
        Err(e @ crate::daemon::DaemonError::UnknownPipeline(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ crate::daemon::DaemonError::ShuttingDown) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn cancel(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&d, &headers) {
        return unauthorized();
    }
    if d.cancel(&id) {
        (
            StatusCode::ACCEPTED,
            Json(json!({ "run_id": id, "status": "cancelling" })),
        )
            .into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no run `{id}` in progress"))
    }
}

#[derive(Deserialize)]
struct AssignQuery {
    unit: Option<String>,
}

/// `GET /api/v1/experiments/{name}/assign?unit=ID`: the arm for a unit from
/// the latest published allocation, and the probability it was chosen with.
/// Read-only and answered from memory: no token, no disk, no compute.
async fn assign(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(q): Query<AssignQuery>,
) -> Response {
    use crate::daemon::experiments::ServeError;
    let Some(unit) = q.unit.filter(|u| !u.is_empty() && u.len() <= 256) else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the unit to assign: `?unit=<id>` (1 to 256 bytes)",
        );
    };
    match d.allocation(&name).await {
        Ok(s) => {
            let a = s.assign(&unit);
            Json(json!({
                "experiment": s.experiment,
                "unit": unit,
                "arm": a.arm,
                "probability": a.probability,
                "state": s.state,
                "version": s.version,
                "run_id": s.run_id,
            }))
            .into_response()
        }
        Err(e @ ServeError::Unknown(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ ServeError::NotYet(..)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e @ ServeError::Unreadable(..)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
