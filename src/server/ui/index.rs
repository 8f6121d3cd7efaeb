//! `/`: every pipeline with its schedule, next fire and last run.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;

use super::{esc, page};
use crate::daemon::Daemon;
use crate::scheduler::cron::Schedule;

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
