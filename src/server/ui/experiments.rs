//! `/ui/experiments/{name}`: an A/B experiment as its owner reads it. Where it
//! stands (scheduled, running, won, ended) in a sentence; each arm's counts,
//! estimated rate with its credible interval, chance of being best and share of
//! units now; and how the shares and the chances moved over the published runs.
//! Shows what the assignment API serves: published runs only.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use super::estimates::{bar, count, failed, not_found, percent};
use super::{esc, page_still};
use crate::artifact::allocation::{self, AllocationRecord, ArmRow, State as Stage};
use crate::daemon::Daemon;
use crate::pipeline::RunDir;
use crate::steps::allocate::AllocateSpec;

/// Published runs drawn in the history charts.
const HISTORY: usize = 60;

/// One colour per arm, in the configured order (repeating past eight arms).
const COLOURS: [&str; 8] = [
    "#1f5fbf", "#17803d", "#d9730d", "#8e44ad", "#c0262d", "#2c9fa8", "#7f6a00", "#555555",
];

/// One published run's allocation: when it was decided, and its arms.
struct Point {
    run_id: String,
    record: AllocationRecord,
    arms: Vec<ArmRow>,
}

pub async fn experiment(State(d): State<Arc<Daemon>>, Path(name): Path<String>) -> Response {
    let Some((pipeline, step, spec)) = d.find_experiment(&name) else {
        return not_found(&format!("no experiment `{name}` in the loaded pipelines"));
    };
    let title = format!("experiment {name}");
    // Reading up to HISTORY allocations is blocking work.
    let rendered = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let runs = d.published_runs(&pipeline, &step, HISTORY)?;
        let mut points = Vec::new();
        for r in &runs {
            let dir = RunDir::new(&d.settings.state_dir, &pipeline, &r.run_id).step_dir(&step);
            let (record, arms) = allocation::read(&dir).map_err(|e| e.to_string())?;
            points.push(Point {
                run_id: r.run_id.clone(),
                record,
                arms,
            });
        }
        points.reverse();
        Ok(body(&name, &pipeline, &step, &spec, &points))
    })
    .await;
    match rendered {
        Ok(Ok(body)) => page_still(&title, &body).into_response(),
        Ok(Err(e)) => failed(&format!("the experiment's allocations cannot be read: {e}")),
        Err(e) => failed(&e.to_string()),
    }
}

fn body(name: &str, pipeline: &str, step: &str, spec: &AllocateSpec, points: &[Point]) -> String {
    let mut body = format!(
        "<h1>Experiment {}</h1><p>Step <code>{}</code> of pipeline <a href=\"/ui/pipelines/{p}\">{p}</a>. ",
        esc(name),
        esc(step),
        p = esc(pipeline)
    );
    let Some(latest) = points.last() else {
        body.push_str(
            "</p><p id=\"state\" class=\"explain\">Nothing is published yet: the pipeline has \
             not succeeded since the experiment was added, and the assignment API answers 503.</p>",
        );
        return body;
    };
    let r = &latest.record;
    let _ = write!(
        body,
        "Each {} gets an arm; these are the shares of run <a href=\"/ui/runs/{}/{run}\">{run}</a> \
         (data up to {}).</p>",
        esc(&r.unit),
        esc(pipeline),
        r.logical_date.format("%Y-%m-%d %H:%M UTC"),
        run = esc(&latest.run_id)
    );
    let _ = write!(
        body,
        "<p id=\"state\" class=\"explain\" data-state=\"{}\">{}</p>",
        serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        esc(&state_sentence(spec, r, &latest.arms))
    );
    body.push_str(&arms_table(r, &latest.arms));
    body.push_str("<h2>Shares over time</h2>");
    body.push_str(&history_chart("shares", points, |a| a.weight));
    body.push_str("<h2>Chance of being best over time</h2>");
    body.push_str(&history_chart("p-best", points, |a| a.p_best));
    body
}

/// Where the experiment stands, in words.
fn state_sentence(spec: &AllocateSpec, r: &AllocationRecord, arms: &[ArmRow]) -> String {
    let best = arms
        .iter()
        .max_by(|a, b| a.p_best.total_cmp(&b.p_best))
        .map(|a| (a.id.to_string(), a.p_best))
        .unwrap_or_default();
    let rule = match r.rule.as_str() {
        "top_two" => {
            "top-two Thompson sampling (the best arm of a draw, or at times the runner-up)"
        }
        _ => "Thompson sampling: each arm's share is its chance of being best",
    };
    let mut floor = match r.min_share {
        m if m > 0.0 => format!(", and no arm gets less than {}", setting(m)),
        _ => String::new(),
    };
    if let Some(c) = &spec.control {
        let _ = write!(
            floor,
            "; control \u{201c}{}\u{201d} is held at {}",
            c.arm,
            setting(c.share)
        );
    }
    let stop = match &spec.stop {
        Some(s) => format!(
            " A winner is declared when an arm's chance of being best reaches {} and every arm has {} trials.",
            setting(s.p_best),
            count(s.min_trials as f64)
        ),
        None => " No stopping rule is set: it runs until its end.".into(),
    };
    let winner = r.winner.as_deref().unwrap_or(&best.0);
    match r.state {
        Stage::Scheduled => {
            format!("Scheduled: it has not started, so every arm gets an equal share.{stop}")
        }
        Stage::Running => format!(
            "Running. Shares follow {rule}{floor}. Arm \u{201c}{}\u{201d} is most likely best \
             ({} chance).{stop}",
            best.0,
            percent(best.1)
        ),
        Stage::Winner => format!(
            "Decided: arm \u{201c}{winner}\u{201d} is best with a {} chance, and every {} now gets it.",
            percent(best.1),
            r.unit
        ),
        Stage::Ended => format!(
            "Ended without a winner: arm \u{201c}{winner}\u{201d}, the most likely best ({} \
             chance), now gets every {}.",
            percent(best.1),
            r.unit
        ),
    }
}

/// A configured share as written: 0.05 is 5%, 0.975 is 97.5%.
fn setting(v: f64) -> String {
    let s = format!("{:.4}", v * 100.0);
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

fn arms_table(r: &AllocationRecord, arms: &[ArmRow]) -> String {
    // The bars span the arms' intervals, not 0 to the top: arms differ by little.
    let hi = arms.iter().map(|a| a.upper).fold(0.0f64, f64::max);
    let lo = arms.iter().map(|a| a.lower).fold(hi, f64::min);
    let pad = (hi - lo).max(1e-9) * 0.05;
    let (lo, span) = ((lo - pad).max(0.0), hi - lo + 2.0 * pad);
    let pooled = arms.iter().map(|a| a.successes).sum::<u64>() as f64
        / (arms.iter().map(|a| a.trials).sum::<u64>() as f64).max(1.0);
    let mut s = String::from(
        "<table id=\"arms\"><tr><th>arm</th><th>description</th><th>trials</th>\
         <th>converted (observed)</th><th>estimated rate</th><th>chance best</th><th>share now</th></tr>",
    );
    for (i, a) in arms.iter().enumerate() {
        let observed = (a.trials > 0).then(|| a.successes as f64 / a.trials as f64);
        let _ = write!(
            s,
            "<tr data-arm=\"{id}\"><td><span style=\"color:{}\">\u{25a0}</span> {id}</td><td class=\"description\">{}</td>\
             <td>{}</td><td>{} ({})</td><td class=\"rate\">{} {} ({}–{})</td>\
             <td class=\"p-best\" data-value=\"{}\">{}{}</td><td class=\"share\" data-value=\"{}\">{}</td></tr>",
            COLOURS[i % COLOURS.len()],
            esc(&a.description),
            count(a.trials as f64),
            count(a.successes as f64),
            observed.map(percent).unwrap_or_else(|| "–".into()),
            bar(
                a.lower - lo,
                a.upper - lo,
                a.posterior_mean - lo,
                observed.map(|o| o - lo),
                pooled - lo,
                span
            ),
            percent(a.posterior_mean),
            percent(a.lower),
            percent(a.upper),
            a.p_best,
            percent(a.p_best),
            match a.p_best_se {
                se if se > 0.0 => format!(" ± {}", percent(2.0 * se)),
                _ => String::new(),
            },
            a.weight,
            percent(a.weight),
            id = esc(&a.id.to_string()),
        );
    }
    let _ = write!(
        s,
        "</table><p>The bar is the rate's {} credible interval with the estimate on it; \
         the ring is the observed rate, the dashed line all arms together.</p>",
        setting(r.level)
    );
    s
}

/// A line per arm of `value` (a share or a chance, in [0, 1]) across the
/// published runs, oldest left. Arms added later start where they appear.
fn history_chart(id: &str, points: &[Point], value: impl Fn(&ArmRow) -> f64) -> String {
    const W: f64 = 640.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 40.0;
    const TOP: f64 = 10.0;
    let step = match points.len() {
        0 | 1 => 0.0,
        n => (W - LEFT - 10.0) / (n - 1) as f64,
    };
    // Below the plot: the dates, then the legend.
    let y = |v: f64| TOP + (1.0 - v.clamp(0.0, 1.0)) * (H - TOP - 45.0);
    let mut svg = format!(
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-size=\"11\" font-family=\"sans-serif\">"
    );
    for tick in [0.0, 0.5, 1.0] {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{W}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"0\" y=\"{:.1}\">{}</text>",
            y(tick) + 4.0,
            setting(tick),
            y = y(tick)
        );
    }
    // The arms of the latest run, in its order, give the colours and legend.
    let arms: Vec<String> = points
        .last()
        .map(|p| p.arms.iter().map(|a| a.id.to_string()).collect())
        .unwrap_or_default();
    for (i, arm) in arms.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut line = Vec::new();
        for (k, p) in points.iter().enumerate() {
            if let Some(a) = p.arms.iter().find(|a| a.id.to_string() == *arm) {
                line.push((LEFT + k as f64 * step, y(value(a))));
            }
        }
        let _ = write!(
            svg,
            "<g class=\"arm\" data-arm=\"{a}\" data-points=\"{}\"><polyline points=\"{}\" fill=\"none\" \
             stroke=\"{colour}\" stroke-width=\"2\"/>",
            line.len(),
            line.iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect::<Vec<_>>()
                .join(" "),
            a = esc(arm)
        );
        for (x, y) in &line {
            let _ = write!(
                svg,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{colour}\"/>"
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">\u{25a0} {}</text></g>",
            LEFT + i as f64 * 90.0,
            H - 4.0,
            esc(arm)
        );
    }
    // When the first and the last runs decided (their logical dates).
    for (x, anchor, p) in [
        (LEFT, "start", points.first()),
        (W - 10.0, "end", points.last()),
    ] {
        if let Some(p) = p.filter(|_| points.len() > 1 || anchor == "start") {
            let _ = write!(
                svg,
                "<text x=\"{x}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"#777\">{}</text>",
                y(0.0) + 16.0,
                p.record.logical_date.format("%Y-%m-%d %H:%M")
            );
        }
    }
    let _ = write!(
        svg,
        "<title>{} published runs, from {} to {}</title></svg>",
        points.len(),
        points.first().map(|p| esc(&p.run_id)).unwrap_or_default(),
        points.last().map(|p| esc(&p.run_id)).unwrap_or_default()
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_as_written() {
        assert_eq!(setting(0.05), "5%");
        assert_eq!(setting(0.975), "97.5%");
        assert_eq!(setting(1.0), "100%");
        assert_eq!(setting(0.0), "0%");
    }
}
