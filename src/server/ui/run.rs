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
use crate::steps::ErrorClass;

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
    let rundir = RunDir::new(&d.settings.state_dir, &r.pipeline, &r.run_id);
    let mut notes = String::new();
    for s in &r.steps {
        // A gate's refusal is not a breakage: it reads as what it is.
        let blocked = s.error_class == Some(ErrorClass::Blocked);
        let st = if blocked {
            "blocked"
        } else {
            s.status.as_str()
        };
        if blocked {
            let _ = write!(
                notes,
                "<p id=\"gate-blocked\" class=\"blocked\">The publish gate of <b>{}</b> held the lists back; \
                 the previous lists stay current. {}</p>",
                esc(&s.id),
                esc(&redact(s.error.as_deref().unwrap_or("")))
            );
        }
        if let Some(tune) = rundir.manifest(&s.id).map(|m| m.details["tune"].clone()) {
            tune_table(&mut notes, &s.id, &tune);
        }
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
    body.push_str("</table>");
    body.push_str(&notes);
    body.push_str("<h2>Log</h2><pre>");
    body.push_str(&esc(&rundir
        .log_tail(50)
        .iter()
        .map(|l| redact(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")));
    body.push_str("</pre>");
    page(&r.run_id, &body).into_response()
}

/// A tuned step's search: every trial, best first, the choice marked.
fn tune_table(out: &mut String, step: &str, tune: &serde_json::Value) {
    let Some(trials) = tune["trials"].as_array() else {
        return;
    };
    let metric = tune["metric"].as_str().unwrap_or("ndcg");
    let value = |t: &serde_json::Value| t["metrics"][metric].as_f64().unwrap_or(f64::NEG_INFINITY);
    let mut sorted: Vec<&serde_json::Value> = trials.iter().collect();
    sorted.sort_by(|a, b| value(b).total_cmp(&value(a)));
    let _ = write!(
        out,
        "<h2>Tuning of {step}</h2><p>{} trials in {:.1} s by {metric} on a validation split{}{}.</p>\
         <table id=\"tune-{step}\"><tr><th>setting</th><th>{metric}</th><th>precision</th><th>recall</th><th>seconds</th><th></th></tr>",
        trials.len(),
        tune["seconds"].as_f64().unwrap_or(0.0),
        match tune["untried"].as_u64() {
            Some(n) if n > 0 => format!("; {n} settings left untried by the bounds"),
            _ => String::new(),
        },
        match tune["started_from_previous"].as_bool() {
            Some(true) => "; started from the last run's choice",
            _ => "",
        },
        step = esc(step),
    );
    for t in sorted {
        let chosen = t["setting"] == tune["chosen"];
        let setting = t["setting"].as_object().map_or(String::new(), |m| {
            m.iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let figure = |name: &str| {
            t["metrics"][name]
                .as_f64()
                .map_or_else(|| "—".to_string(), |v| format!("{v:.4}"))
        };
        let _ = write!(
            out,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
            if chosen { " class=\"chosen\"" } else { "" },
            esc(&setting),
            figure(metric),
            figure("precision"),
            figure("recall"),
            t["seconds"].as_f64().unwrap_or(0.0),
            match (chosen, t["error"].as_str()) {
                (true, _) => "chosen".to_string(),
                (false, Some(e)) => esc(e),
                _ => String::new(),
            }
        );
    }
    out.push_str("</table>");
}
