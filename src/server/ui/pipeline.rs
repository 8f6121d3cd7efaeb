//! `/ui/pipelines/{name}`: a pipeline's DAG with the state of its last run,
//! and its recent runs and their durations.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{duration_s, esc, page};
use crate::daemon::Daemon;
use crate::pipeline::history::RunFilter;
use crate::pipeline::{Pipeline, RunRecord, RunStatus};
use crate::steps::StepSpec;

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
pub(super) fn dag_svg(p: &Pipeline, status: &BTreeMap<String, &'static str>) -> String {
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
    let estimates: Vec<_> = p
        .steps
        .iter()
        .filter(|s| s.spec.kind() == "estimate")
        .collect();
    if !estimates.is_empty() {
        body.push_str("<h2>Estimates</h2><ul id=\"viewers\">");
        for s in estimates {
            let _ = write!(
                body,
                "<li><a href=\"/ui/estimates/{}/{id}\">{id}</a>: {}</li>",
                esc(&p.name),
                esc(&s.spec.describe()),
                id = esc(&s.id)
            );
        }
        body.push_str("</ul>");
    }
    let experiments: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|s| match &s.spec {
            StepSpec::Allocate(a) => Some(a.experiment.as_str()),
            _ => None,
        })
        .collect();
    if !experiments.is_empty() {
        body.push_str("<h2>Experiments</h2><ul id=\"experiments\">");
        for e in experiments {
            let _ = write!(
                body,
                "<li><a href=\"/ui/experiments/{e}\">{e}</a></li>",
                e = esc(e)
            );
        }
        body.push_str("</ul>");
    }
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
