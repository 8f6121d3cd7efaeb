//! `/ui/runs/{pipeline}/{run_id}`: one run, its steps and its log.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::pipeline::dag_svg;
use super::{esc, page};
use crate::config::redact::redact;
use crate::daemon::Daemon;
use crate::pipeline::{RunDir, RunStatus};

pub async fn run(
    State(d): State<Arc<Daemon>>,
    Path((pipeline, run_id)): Path<(String, String)>,
) -> Response {
    let (Some(p), Ok(Some(r))) = (
        d.pipelines().get(&pipeline).cloned(),
        d.history.run(&pipeline, &run_id),
    ) else {
        return (
            StatusCode::NOT_FOUND,
            page("not found", "<p>no such run</p>"),
        )
            .into_response();
    };
    let mut status: BTreeMap<String, &'static str> = r
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.status.as_str()))
        .collect();
    if r.status == RunStatus::Running {
        status.extend(d.live_steps(&r.pipeline, &r.run_id).unwrap_or_default());
    }
    let st = r.status.as_str();
    let mut body = format!(
        "<h1>{} · {}</h1><p>status <b class=\"{st}\" id=\"run-status\">{st}</b>, started {}</p>",
        esc(&p.name),
        esc(&r.run_id),
        r.started_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if let Some(reason) = &r.reason {
        let _ = write!(body, "<p id=\"run-reason\">{}</p>", esc(&redact(reason)));
    }
    body.push_str(&dag_svg(&p, &status));
    body.push_str("<table id=\"steps\"><tr><th>step</th><th>status</th><th>duration</th><th>attempts</th><th>rows</th><th>error</th></tr>");
    for s in &r.steps {
        let st = s.status.as_str();
        // An estimate that succeeded links to its viewer.
        let name = match s.kind == "estimate" && matches!(st, "succeeded" | "reused") {
            true => format!(
                "<a href=\"/ui/estimates/{}/{id}?run={}\">{id}</a>",
                esc(&r.pipeline),
                esc(&r.run_id),
                id = esc(&s.id)
            ),
            false => esc(&s.id),
        };
        let _ = write!(
            body,
            "<tr><td>{name}</td><td class=\"{st}\">{st}</td><td>{:.2} s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.duration_ms as f64 / 1000.0,
            s.attempts,
            s.rows,
            // Before escaping: `&#39;` would split a quoted password's mask.
            esc(&redact(s.error.as_deref().unwrap_or("")))
        );
    }
    body.push_str("</table><h2>Log</h2><pre>");
    body.push_str(&esc(&RunDir::new(
        &d.settings.state_dir,
        &r.pipeline,
        &r.run_id,
    )
    .log_tail(50)
    .iter()
    .map(|l| redact(l).into_owned())
    .collect::<Vec<_>>()
    .join("\n")));
    body.push_str("</pre>");
    page(&r.run_id, &body).into_response()
}
