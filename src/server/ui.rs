//! The web UI: server-rendered HTML and inline SVG, no scripts and no build step.
//! Pages refresh themselves every few seconds. Every value from configuration or
//! history is HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::config::redact::redact;
use crate::daemon::Daemon;
use crate::pipeline::Pipeline;
use crate::pipeline::history::RunFilter;
use crate::pipeline::{RunDir, RunRecord, RunStatus};
use crate::scheduler::cron::Schedule;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}\
.succeeded,.reused{color:#17803d}.failed,.interrupted{color:#c0262d}.running{color:#1f5fbf}\
.skipped,.cancelled{color:#777}.problems{background:#fde8e8;padding:.5em 1em;white-space:pre-wrap}\
pre{background:#f4f4f4;padding:1em;overflow:auto}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\"><link rel=\"icon\" href=\"data:,\"><title>{} · recpipe</title>\
         <style>{STYLE}</style></head><body><p><a href=\"/\">recpipe</a></p>{body}</body></html>",
        esc(title)
    ))
}

fn duration_s(r: &RunRecord) -> Option<f64> {
    r.finished_at
        .map(|f| (f - r.started_at).num_milliseconds() as f64 / 1000.0)
}

pub async fn index(State(d): State<Arc<Daemon>>) -> Html<String> {
    let mut body = String::from("<h1>Pipelines</h1>");
    let reload = d.reload_status();
    if !reload.diagnostics.is_empty() {
        let _ = write!(
            body,
            "<div class=\"problems\" id=\"reload-problems\"><b>pipelines/ does not validate; \
             the previous pipelines stay in force:</b>\n{}</div>",
            esc(&reload.diagnostics.join("\n"))
        );
    }
    body.push_str(
        "<table id=\"pipelines\"><tr><th>pipeline</th><th>schedule</th><th>next fire (UTC)</th>\
         <th>last run</th><th>status</th></tr>",
    );
    for p in d.pipelines().values() {
        let schedule = match &p.schedule {
            Some(s) => {
                let words = Schedule::parse(s, p.timezone)
                    .map(|s| s.describe())
                    .unwrap_or_default();
                format!(
                    "<code>{}</code> {} ({})",
                    esc(s),
                    esc(&words),
                    esc(p.timezone.name())
                )
            }
            None => "manual".into(),
        };
        let next = d
            .next_fire(p)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "–".into());
        let last = d.history.last_run(&p.name).ok().flatten();
        let (last_cell, status) = match &last {
            Some(r) => (
                format!(
                    "<a href=\"/ui/runs/{}/{}\">{}</a>",
                    esc(&r.pipeline),
                    esc(&r.run_id),
                    esc(&r.run_id)
                ),
                r.status.as_str(),
            ),
            None => ("–".into(), ""),
        };
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/pipelines/{n}\">{n}</a></td><td>{schedule}</td><td>{next}</td>\
             <td>{last_cell}</td><td class=\"{status}\">{status}</td></tr>",
            n = esc(&p.name)
        );
    }
    body.push_str("</table>");
    page("pipelines", &body)
}

/// Column of each step: one more than the deepest step it needs.
fn layers(p: &Pipeline) -> BTreeMap<&str, usize> {
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    // Steps are in an order where needs come first.
    for s in &p.steps {
        let d = s
            .needs
            .iter()
            .filter_map(|n| depth.get(n.as_str()))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(&s.id, d);
    }
    depth
}

/// The DAG as SVG; `status` colours each step.
fn dag_svg(p: &Pipeline, status: &BTreeMap<String, &'static str>) -> String {
    const W: usize = 150;
    const H: usize = 44;
    let depth = layers(p);
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pos: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for s in &p.steps {
        let col = depth[s.id.as_str()];
        let row = rows.entry(col).or_insert(0);
        pos.insert(&s.id, (20 + col * (W + 50), 20 + *row * (H + 20)));
        *row += 1;
    }
    let width = 40 + (depth.values().max().copied().unwrap_or(0) + 1) * (W + 50);
    let height = 40 + rows.values().max().copied().unwrap_or(1) * (H + 20);
    let mut svg = format!(
        "<svg id=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-size=\"12\" font-family=\"sans-serif\">"
    );
    for s in &p.steps {
        let (x, y) = pos[s.id.as_str()];
        for n in &s.needs {
            if let Some(&(nx, ny)) = pos.get(n.as_str()) {
                let _ = write!(
                    svg,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#999\"/>",
                    nx + W,
                    ny + H / 2,
                    y + H / 2
                );
            }
        }
    }
    for s in &p.steps {
        let (x, y) = pos[s.id.as_str()];
        let st = status.get(&s.id).copied().unwrap_or("pending");
        let fill = match st {
            "succeeded" | "reused" => "#d7f0de",
            "failed" => "#f8d3d3",
            "running" => "#d8e6fb",
            _ => "#eeeeee",
        };
        let _ = write!(
            svg,
            "<g class=\"step {st}\" data-step=\"{id}\"><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" \
             rx=\"6\" fill=\"{fill}\" stroke=\"#888\"/><text x=\"{}\" y=\"{}\">{id}</text>\
             <text x=\"{}\" y=\"{}\" fill=\"#555\">{} · {st}</text></g>",
            x + 8,
            y + 18,
            x + 8,
            y + 34,
            esc(s.spec.kind()),
            id = esc(&s.id),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Run durations of a pipeline as bars, oldest left.
fn duration_chart(runs: &[RunRecord]) -> String {
    let runs: Vec<&RunRecord> = runs
        .iter()
        .rev()
        .filter(|r| duration_s(r).is_some())
        .collect();
    let max = runs
        .iter()
        .filter_map(|r| duration_s(r))
        .fold(0.0f64, f64::max)
        .max(0.001);
    let mut svg = format!(
        "<svg id=\"durations\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"140\" \
         font-size=\"11\" font-family=\"sans-serif\"><text x=\"0\" y=\"12\">max {max:.1} s</text>",
        40 + runs.len() * 14
    );
    for (i, r) in runs.iter().enumerate() {
        let secs = duration_s(r).unwrap_or(0.0);
        let h = (secs / max * 100.0).max(1.0);
        let colour = if r.status == RunStatus::Succeeded {
            "#3a9a5b"
        } else {
            "#c0262d"
        };
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"{h:.1}\" fill=\"{colour}\">\
             <title>{} {secs:.2} s</title></rect>",
            10 + i * 14,
            120.0 - h,
            esc(&r.run_id)
        );
    }
    svg.push_str("</svg>");
    svg
}

pub async fn pipeline(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> Response {
    let Some(p) = d.pipelines().get(&name).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            page("not found", "<p>no such pipeline</p>"),
        )
            .into_response();
    };
    let runs = d
        .history
        .runs(&RunFilter {
            pipeline: Some(name.clone()),
            limit: 30,
            ..RunFilter::default()
        })
        .unwrap_or_default();
    let mut body = format!("<h1>{}</h1>", esc(&p.name));
    if let Some(desc) = &p.description {
        let _ = write!(body, "<p>{}</p>", esc(desc));
    }
    body.push_str(&dag_svg(&p, &BTreeMap::new()));
    body.push_str("<h2>Run durations</h2>");
    body.push_str(&duration_chart(&runs));
    body.push_str("<h2>Runs</h2><table id=\"runs\"><tr><th>run</th><th>status</th><th>started (UTC)</th><th>duration</th></tr>");
    for r in &runs {
        let st = r.status.as_str();
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/runs/{}/{}\">{}</a></td><td class=\"{st}\">{st}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.pipeline),
            esc(&r.run_id),
            esc(&r.run_id),
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            duration_s(r)
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_default()
        );
    }
    body.push_str("</table>");
    page(&p.name, &body).into_response()
}

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
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"{st}\">{st}</td><td>{:.2} s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.id),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
