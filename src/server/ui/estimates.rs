//! `/ui/estimates/{pipeline}/{step}`: what an `estimate` step found, for a
//! reader who is not an engineer. For empirical Bayes, every item's estimated
//! rate with its interval drawn as a bar, and the prior it was pulled toward;
//! for a logistic regression, each attribute's effect as a forest plot, how
//! the model did on held-out rows, and every item's predicted rate. Tables sort,
//! filter by group and search by id through plain links and a GET form;
//! `…/csv?table=` downloads each whole table. Shows the latest run whose step
//! succeeded, or `?run=`.

use std::fmt::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{esc, page_still};
use crate::artifact::estimates::{FIT_FILE, PREDICTIONS_FILE, PRIOR_FILE, PriorRecord};
use crate::artifact::read_parquet;
use crate::daemon::Daemon;
use crate::pipeline::history::RunFilter;
use crate::pipeline::{RunDir, StepStatus};
use crate::steps::estimate::Method;
use crate::steps::{DATA_FILE, StepSpec};

/// Rows per page of an item table.
const PAGE: usize = 100;

#[derive(Debug, Default, Deserialize)]
pub struct ViewQuery {
    run: Option<String>,
    sort: Option<String>,
    /// `asc` or `desc` (the default).
    order: Option<String>,
    group: Option<String>,
    q: Option<String>,
    page: Option<usize>,
    table: Option<String>,
}

/// A value of a table cell.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

impl Cell {
    fn float(&self) -> Option<f64> {
        match self {
            Cell::Float(v) => Some(*v),
            Cell::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Int(v) => v.to_string(),
            Cell::Float(v) => v.to_string(),
            Cell::Text(s) => s.clone(),
        }
    }

    /// Numbers by value, text by text (nulls are placed by the caller).
    fn cmp(&self, other: &Cell) -> std::cmp::Ordering {
        match (self.float(), other.float()) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            _ => self.text().cmp(&other.text()),
        }
    }
}

/// A Parquet file read whole: its column names and rows.
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    fn read(path: &FsPath) -> Result<Table, String> {
        let (schema, batches) = read_parquet(path).map_err(|e| e.to_string())?;
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut rows = Vec::new();
        for batch in &batches {
            let cols: Vec<Vec<Cell>> = batch
                .columns()
                .iter()
                .map(|c| cells(c.as_ref()))
                .collect::<Result<_, _>>()?;
            for i in 0..batch.num_rows() {
                rows.push(cols.iter().map(|c| c[i].clone()).collect());
            }
        }
        Ok(Table { columns, rows })
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// RFC 4180 CSV of the whole table.
    fn csv(&self) -> String {
        let quote = |s: String| {
            // A spreadsheet would run a cell that starts like a formula.
            let s = match s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err() {
                true => format!("'{s}"),
                false => s,
            };
            match s.contains([',', '"', '\n', '\r']) {
                true => format!("\"{}\"", s.replace('"', "\"\"")),
                false => s,
            }
        };
        let mut out = self
            .columns
            .iter()
            .cloned()
            .map(quote)
            .collect::<Vec<_>>()
            .join(",");
        out.push_str("\r\n");
        for row in &self.rows {
            out.push_str(
                &row.iter()
                    .map(|c| quote(c.text()))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push_str("\r\n");
        }
        out
    }
}

fn cells(col: &dyn Array) -> Result<Vec<Cell>, String> {
    let of = |f: &dyn Fn(usize) -> Cell| -> Vec<Cell> {
        (0..col.len())
            .map(|i| if col.is_null(i) { Cell::Null } else { f(i) })
            .collect()
    };
    Ok(match col.data_type() {
        DataType::Float64 | DataType::Float32 => {
            let c = cast(col, &DataType::Float64).map_err(|e| e.to_string())?;
            let c = c.as_primitive::<Float64Type>();
            of(&|i| Cell::Float(c.value(i)))
        }
        t if t.is_integer() => {
            let c = cast(col, &DataType::Int64).map_err(|e| e.to_string())?;
            let c = c.as_primitive::<Int64Type>();
            of(&|i| Cell::Int(c.value(i)))
        }
        _ => {
            let c = cast(col, &DataType::Utf8).map_err(|e| e.to_string())?;
            let c = c.as_string::<i32>();
            of(&|i| Cell::Text(c.value(i).to_string()))
        }
    })
}

/// What the viewer shows: one estimate step's output in one run.
struct Found {
    method: Method,
    run_id: String,
    dir: PathBuf,
}

/// The estimate step `step` of `pipeline`, in run `run` or the latest run in
/// which it succeeded.
fn find(d: &Daemon, pipeline: &str, step: &str, run: Option<&str>) -> Result<Found, String> {
    let p = d
        .pipelines()
        .get(pipeline)
        .cloned()
        .ok_or("no such pipeline")?;
    let method = match p.steps.iter().find(|s| s.id == step).map(|s| &s.spec) {
        Some(StepSpec::Estimate(e)) => e.method,
        Some(_) => return Err(format!("`{step}` is not an estimate step")),
        None => return Err(format!("no step `{step}` in {pipeline}")),
    };
    let runs = match run {
        Some(id) => d
            .history
            .run(pipeline, id)
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect(),
        None => d
            .history
            .runs(&RunFilter {
                pipeline: Some(pipeline.to_string()),
                limit: 50,
                ..RunFilter::default()
            })
            .map_err(|e| e.to_string())?,
    };
    let done = |r: &&crate::pipeline::RunRecord| {
        r.steps
            .iter()
            .any(|s| s.id == step && matches!(s.status, StepStatus::Succeeded | StepStatus::Reused))
    };
    let r = runs.iter().find(done).ok_or_else(|| match run {
        Some(id) => format!("`{step}` did not succeed in run {id}"),
        None => format!("`{step}` has not succeeded in the last {} runs", runs.len()),
    })?;
    let dir = RunDir::new(&d.settings.state_dir, pipeline, &r.run_id).step_dir(step);
    Ok(Found {
        method,
        run_id: r.run_id.clone(),
        dir,
    })
}

pub(super) fn failed(message: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        page_still("error", &format!("<p>{}</p>", esc(message))),
    )
        .into_response()
}

pub(super) fn not_found(message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        page_still("not found", &format!("<p>{}</p>", esc(message))),
    )
        .into_response()
}

pub async fn estimates(
    State(d): State<Arc<Daemon>>,
    Path((pipeline, step)): Path<(String, String)>,
    Query(q): Query<ViewQuery>,
) -> Response {
    let found = match find(&d, &pipeline, &step, q.run.as_deref()) {
        Ok(f) => f,
        Err(e) => return not_found(&e),
    };
    // Reading and sorting tens of thousands of rows is blocking work.
    let rendered = tokio::task::spawn_blocking(move || {
        let title = format!("{pipeline} · {step}");
        let body = match found.method {
            Method::BetaBinomial => rates_page(&pipeline, &step, &found, &q),
            Method::Logistic => effects_page(&pipeline, &step, &found, &q),
        };
        (title, body)
    })
    .await;
    match rendered {
        Ok((title, Ok(body))) => page_still(&title, &body).into_response(),
        Ok((_, Err(e))) => failed(&format!("the step's output cannot be read: {e}")),
        Err(e) => failed(&e.to_string()),
    }
}

/// `…/csv?table=estimates|coefficients|items`: a whole table as CSV.
pub async fn csv(
    State(d): State<Arc<Daemon>>,
    Path((pipeline, step)): Path<(String, String)>,
    Query(q): Query<ViewQuery>,
) -> Response {
    let found = match find(&d, &pipeline, &step, q.run.as_deref()) {
        Ok(f) => f,
        Err(e) => return not_found(&e),
    };
    let file = match (found.method, q.table.as_deref()) {
        (Method::BetaBinomial, None | Some("estimates")) => DATA_FILE,
        (Method::Logistic, None | Some("coefficients")) => DATA_FILE,
        (Method::Logistic, Some("items")) => PREDICTIONS_FILE,
        (_, Some(t)) => return not_found(&format!("no table `{t}` here")),
    };
    let path = found.dir.join(file);
    let name = format!(
        "{pipeline}-{step}-{}-{}.csv",
        q.table.as_deref().unwrap_or("all"),
        found.run_id
    );
    match tokio::task::spawn_blocking(move || Table::read(&path).map(|t| t.csv())).await {
        Ok(Ok(text)) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}\"", name.replace('"', "")),
                ),
            ],
            text,
        )
            .into_response(),
        Ok(Err(e)) => failed(&e),
        Err(e) => failed(&e.to_string()),
    }
}

/// A count with thousands separated: 199,999.
pub(super) fn count(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn percent(v: f64) -> String {
    match v {
        0.0 => "0%".into(),
        v if v < 0.001 => format!("{:.3}%", v * 100.0),
        v if v < 0.1 => format!("{:.2}%", v * 100.0),
        v => format!("{:.1}%", v * 100.0),
    }
}

/// The query string for the same view with `key` set to `value` (the page
/// starts again at 1; a new sort drops the old order).
fn with(q: &ViewQuery, key: &str, value: &str) -> String {
    let current = [
        ("run", &q.run),
        ("sort", &q.sort),
        ("order", &q.order),
        ("group", &q.group),
        ("q", &q.q),
    ];
    let mut pairs: Vec<String> = current
        .iter()
        .filter(|(k, _)| *k != key && !(key == "sort" && *k == "order"))
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", url_encode(v))))
        .collect();
    if !value.is_empty() {
        pairs.push(format!("{key}={}", url_encode(value)));
    }
    format!("?{}", esc(&pairs.join("&")))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The rows of `t` the query selects (group and search), sorted; and the page.
fn select<'t>(
    t: &'t Table,
    q: &ViewQuery,
    group: Option<usize>,
    default_sort: &str,
) -> Vec<&'t Vec<Cell>> {
    let id = t.index("item_id").unwrap_or(0);
    let needle = q.q.as_deref().unwrap_or("").trim().to_lowercase();
    let mut rows: Vec<&Vec<Cell>> = t
        .rows
        .iter()
        .filter(|r| match (group, q.group.as_deref()) {
            (Some(g), Some(want)) if !want.is_empty() => r[g].text() == want,
            _ => true,
        })
        .filter(|r| needle.is_empty() || r[id].text().to_lowercase().contains(&needle))
        .collect();
    let sort = q
        .sort
        .as_deref()
        .and_then(|s| t.index(s))
        .or_else(|| t.index(default_sort))
        .unwrap_or(0);
    let ascending = q.order.as_deref() == Some("asc");
    // Nulls (an item with no trials has no raw rate) last in either order.
    rows.sort_by(|a, b| {
        let (x, y) = (&a[sort], &b[sort]);
        match (*x == Cell::Null, *y == Cell::Null) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ if ascending => x.cmp(y),
            _ => y.cmp(x),
        }
    });
    rows
}

/// The search form and the group filter above an item table.
fn controls(
    q: &ViewQuery,
    groups: &[String],
    group_column: Option<&str>,
    rows: usize,
    total: usize,
) -> String {
    let mut s = String::from("<form method=\"get\" id=\"filters\">");
    if let Some(run) = &q.run {
        let _ = write!(
            s,
            "<input type=\"hidden\" name=\"run\" value=\"{}\">",
            esc(run)
        );
    }
    for (k, v) in [("sort", &q.sort), ("order", &q.order)] {
        if let Some(v) = v {
            let _ = write!(
                s,
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                esc(v)
            );
        }
    }
    let _ = write!(
        s,
        "<label>Item id contains <input type=\"search\" name=\"q\" value=\"{}\"></label> ",
        esc(q.q.as_deref().unwrap_or(""))
    );
    if let Some(g) = group_column {
        let _ = write!(
            s,
            "<label>{} <select name=\"group\"><option value=\"\">all</option>",
            esc(g)
        );
        for v in groups {
            let selected = if q.group.as_deref() == Some(v) {
                " selected"
            } else {
                ""
            };
            let _ = write!(
                s,
                "<option value=\"{v}\"{selected}>{v}</option>",
                v = esc(v)
            );
        }
        s.push_str("</select></label> ");
    }
    let _ = write!(
        s,
        "<button>Show</button> <span id=\"shown\">{rows} of {total} items</span></form>"
    );
    s
}

/// The first row of the page asked for (clamped to the pages there are).
fn page_start(q: &ViewQuery, rows: usize) -> usize {
    (q.page.unwrap_or(1).clamp(1, rows.div_ceil(PAGE).max(1)) - 1) * PAGE
}

/// Page links under a table.
fn pages(q: &ViewQuery, rows: usize) -> String {
    let count = rows.div_ceil(PAGE).max(1);
    if count == 1 {
        return String::new();
    }
    let current = q.page.unwrap_or(1).clamp(1, count);
    let mut s = String::from("<p id=\"pages\">Page ");
    for p in 1..=count {
        // Around the current page, the first and the last; the rest elided.
        if p == 1 || p == count || p.abs_diff(current) <= 3 {
            match p == current {
                true => {
                    let _ = write!(s, "<b>{p}</b> ");
                }
                false => {
                    let _ = write!(
                        s,
                        "<a href=\"{}\">{p}</a> ",
                        with(q, "page", &p.to_string())
                    );
                }
            }
        } else if p.abs_diff(current) == 4 {
            s.push_str("… ");
        }
    }
    s.push_str("</p>");
    s
}

/// A sortable column header: a link that sorts by it, descending first.
fn header(q: &ViewQuery, column: &str, label: &str, default_sort: &str) -> String {
    let current = q.sort.as_deref().unwrap_or(default_sort) == column;
    let descending = q.order.as_deref() != Some("asc");
    let (order, arrow) = match (current, descending) {
        (true, true) => ("asc", " ▼"),
        (true, false) => ("desc", " ▲"),
        (false, _) => ("desc", ""),
    };
    let mut href = with(q, "sort", column);
    let _ = write!(href, "&amp;order={order}");
    format!(
        "<th><a href=\"{href}\" data-sort=\"{}\">{}{arrow}</a></th>",
        esc(column),
        esc(label)
    )
}

/// An interval as a bar on a shared scale from 0 to `max`: the line is the
/// interval, the dot the estimate, the hollow ring the raw rate, the dashed
/// line the reference.
pub(super) fn bar(
    lower: f64,
    upper: f64,
    mean: f64,
    raw: Option<f64>,
    reference: f64,
    max: f64,
) -> String {
    const W: f64 = 220.0;
    let x = |v: f64| 5.0 + (v / max).clamp(0.0, 1.0) * (W - 10.0);
    let mut s = format!(
        "<svg class=\"bar\" width=\"{W}\" height=\"16\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"{r:.1}\" x2=\"{r:.1}\" y1=\"0\" y2=\"16\" stroke=\"#999\" stroke-dasharray=\"2,2\"/>\
         <rect class=\"interval\" x=\"{:.1}\" y=\"5\" width=\"{:.1}\" height=\"6\" rx=\"3\" fill=\"#9cc3e6\"/>\
         <circle class=\"estimate\" cx=\"{:.1}\" cy=\"8\" r=\"4\" fill=\"#1f5fbf\"/>",
        x(lower),
        (x(upper) - x(lower)).max(1.0),
        x(mean),
        r = x(reference),
    );
    if let Some(raw) = raw {
        let _ = write!(
            s,
            "<circle class=\"raw\" cx=\"{:.1}\" cy=\"8\" r=\"3\" fill=\"none\" stroke=\"#c0262d\"/>",
            x(raw)
        );
    }
    s.push_str("</svg>");
    s
}

fn rates_page(pipeline: &str, step: &str, f: &Found, q: &ViewQuery) -> Result<String, String> {
    let t = Table::read(&f.dir.join(DATA_FILE))?;
    let prior: PriorRecord =
        crate::artifact::read_json(&f.dir.join(PRIOR_FILE)).map_err(|e| e.to_string())?;
    let col = |name: &str| t.index(name).ok_or(format!("no `{name}` column"));
    let (id, trials, successes, raw, mean, lower, upper, p_above, shrink) = (
        col("item_id")?,
        col("trials")?,
        col("successes")?,
        col("raw_rate")?,
        col("posterior_mean")?,
        col("lower")?,
        col("upper")?,
        col("p_above_reference")?,
        col("shrinkage")?,
    );
    // The group column is the one that is not a fixed column of the artifact.
    let group = (0..t.columns.len())
        .find(|&i| !crate::artifact::estimates::COLUMNS.contains(&t.columns[i].as_str()));
    let group_name = group.map(|g| t.columns[g].clone());
    let mut groups: Vec<String> = group
        .map(|g| t.rows.iter().map(|r| r[g].text()).collect())
        .unwrap_or_default();
    groups.sort();
    groups.dedup();
    let total_trials: f64 = t.rows.iter().filter_map(|r| r[trials].float()).sum();
    let total_successes: f64 = t.rows.iter().filter_map(|r| r[successes].float()).sum();
    let level = (prior.level * 100.0).round();
    let reference = prior.reference;
    let mut body = format!(
        "<h1>Estimated rates · {}</h1><p>Step <b>{}</b> of pipeline <a href=\"/ui/pipelines/{p}\">{p}</a>, \
         run <a href=\"/ui/runs/{p}/{r}\">{r}</a>.</p>",
        esc(step),
        esc(step),
        p = esc(pipeline),
        r = esc(&f.run_id),
    );
    let by = match &group_name {
        Some(g) => format!("the typical rate of its <b>{}</b>", esc(g)),
        None => "the typical rate of all items".into(),
    };
    let _ = write!(
        body,
        "<div class=\"explain\"><p>{} items, {} trials and {} successes in all ({} overall). \
         A raw rate from few trials is mostly luck (0 of 120 is not “never”), so each item's \
         <b>estimate</b> is its raw rate pulled toward {by}: the fewer its trials, the more. \
         The bar shows where the true rate lies with {level}% probability; \
         <span style=\"color:#1f5fbf\">●</span> is the estimate, \
         <span style=\"color:#c0262d\">○</span> the raw rate, and the dashed line the reference rate {}. \
         <b>Chance above</b> is the probability that the item's true rate beats the reference.</p></div>",
        count(t.rows.len() as f64),
        count(total_trials),
        count(total_successes),
        percent(total_successes / total_trials.max(1.0)),
        percent(reference),
    );
    body.push_str(&prior_section(&prior));
    let rows = select(&t, q, group, "posterior_mean");
    body.push_str(&controls(
        q,
        &groups,
        group_name.as_deref(),
        rows.len(),
        t.rows.len(),
    ));
    let max = t
        .rows
        .iter()
        .filter_map(|r| r[upper].float())
        .fold(reference, f64::max)
        .max(1e-9);
    let h = |c: &str, l: &str| header(q, c, l, "posterior_mean");
    let _ = write!(
        body,
        "<table id=\"items\"><tr>{}{}{}{}{}{}<th>{level}% interval</th><th>0 – {}</th>{}{}</tr>",
        h("item_id", "item"),
        group_name.as_deref().map(|g| h(g, g)).unwrap_or_default(),
        h("trials", "trials"),
        h("successes", "successes"),
        h("raw_rate", "raw rate"),
        h("posterior_mean", "estimate"),
        percent(max),
        h(
            "p_above_reference",
            &format!("chance above {}", percent(reference))
        ),
        h("shrinkage", "pulled toward typical"),
    );
    let start = page_start(q, rows.len());
    for r in rows.iter().skip(start).take(PAGE) {
        let f = |i: usize| r[i].float().unwrap_or(f64::NAN);
        let _ = write!(
            body,
            "<tr><td class=\"id\">{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td class=\"mean\" data-value=\"{}\"><b>{}</b></td>\
             <td>{} – {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r[id].text()),
            group
                .map(|g| format!("<td class=\"group\">{}</td>", esc(&r[g].text())))
                .unwrap_or_default(),
            r[trials].text(),
            r[successes].text(),
            r[raw].float().map(percent).unwrap_or_else(|| "–".into()),
            f(mean),
            percent(f(mean)),
            percent(f(lower)),
            percent(f(upper)),
            bar(f(lower), f(upper), f(mean), r[raw].float(), reference, max),
            percent(f(p_above)),
            percent(f(shrink)),
        );
    }
    body.push_str("</table>");
    body.push_str(&pages(q, rows.len()));
    body.push_str(&csv_link(
        pipeline,
        step,
        f,
        ("estimates", "csv"),
        &format!("all {} items", t.rows.len()),
    ));
    Ok(body)
}

/// The link that downloads `table` of this step's run as CSV (`id` for tests).
fn csv_link(
    pipeline: &str,
    step: &str,
    f: &Found,
    (table, id): (&str, &str),
    what: &str,
) -> String {
    format!(
        "<p><a id=\"{id}\" href=\"/ui/estimates/{}/{}/csv?table={table}&amp;run={}\">Download {what} as CSV</a></p>",
        esc(pipeline),
        esc(step),
        esc(&url_encode(&f.run_id)),
    )
}

/// The prior (or priors, per group) in words and numbers.
fn prior_section(prior: &PriorRecord) -> String {
    let describe = |p: &Value| -> (String, String) {
        let mean = p["mean"].as_f64().unwrap_or(f64::NAN);
        let strength = match (p["flat"].as_bool(), p["a"].as_f64(), p["b"].as_f64()) {
            (Some(true), _, _) => {
                "no detectable difference between items: each is estimated at the pooled rate"
                    .into()
            }
            (_, Some(a), Some(b)) => format!(
                "counts as much as {:.0} trials: an item with {:.0} trials is pulled halfway",
                a + b,
                a + b
            ),
            _ => String::new(),
        };
        (percent(mean), strength)
    };
    let (mean, strength) = describe(&prior.global);
    let mut s = format!(
        "<h2>What the estimates are pulled toward</h2><table id=\"prior\"><tr><th>items</th><th>typical rate</th><th>strength</th></tr>\
         <tr><td>all</td><td>{mean}</td><td>{}</td></tr>",
        esc(&strength)
    );
    for (g, gp) in &prior.groups {
        let (mean, strength) = describe(&gp.prior);
        let note = match gp.fallback {
            true => format!(" (only {} items: uses the prior of all items)", gp.items),
            false => format!(" ({} items)", gp.items),
        };
        let _ = write!(
            s,
            "<tr><td>{}{}</td><td>{mean}</td><td>{}</td></tr>",
            esc(g),
            esc(&note),
            esc(&strength)
        );
    }
    s.push_str("</table>");
    s
}

/// A term of the forest plot: its name, estimate and interval (log-odds).
type Term = (String, f64, Option<(f64, f64)>);

/// The forest plot: each term's estimate and interval on the log-odds axis,
/// labelled as odds multipliers, with the line of no effect.
fn forest(terms: &[Term]) -> String {
    const LABEL: f64 = 230.0;
    const W: f64 = 360.0;
    const ROW: f64 = 22.0;
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for (_, e, ci) in terms {
        let (l, u) = ci.unwrap_or((*e, *e));
        lo = lo.min(l);
        hi = hi.max(u);
    }
    let pad = ((hi - lo) * 0.05).max(0.05);
    let (lo, hi) = (lo - pad, hi + pad);
    let x = |v: f64| LABEL + (v - lo) / (hi - lo) * W;
    let height = 30.0 + ROW * terms.len() as f64;
    let mut s = format!(
        "<svg id=\"forest\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-size=\"12\" font-family=\"sans-serif\">\
         <line x1=\"{z:.1}\" x2=\"{z:.1}\" y1=\"0\" y2=\"{}\" stroke=\"#999\" stroke-dasharray=\"3,3\"/>",
        LABEL + W + 20.0,
        height - 20.0,
        z = x(0.0),
    );
    // Ticks at round odds multipliers inside the range.
    for m in [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0] {
        let v = f64::ln(m);
        if v > lo && v < hi {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">×{m}</text>",
                x(v),
                height - 5.0
            );
        }
    }
    for (k, (term, e, ci)) in terms.iter().enumerate() {
        let y = 12.0 + ROW * k as f64;
        let _ = write!(
            s,
            "<g class=\"term\" data-term=\"{t}\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text>",
            LABEL - 8.0,
            y + 4.0,
            t = esc(term)
        );
        if let Some((l, u)) = ci {
            let _ = write!(
                s,
                "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#1f5fbf\" stroke-width=\"2\"/>",
                x(*l),
                x(*u)
            );
        }
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"#1f5fbf\"/></g>",
            x(*e) - 4.0,
            y - 4.0
        );
    }
    s.push_str("</svg>");
    s
}

fn effects_page(pipeline: &str, step: &str, f: &Found, q: &ViewQuery) -> Result<String, String> {
    let coef = Table::read(&f.dir.join(DATA_FILE))?;
    let items = Table::read(&f.dir.join(PREDICTIONS_FILE))?;
    let fit: Value =
        crate::artifact::read_json(&f.dir.join(FIT_FILE)).map_err(|e| e.to_string())?;
    let level = (fit["level"].as_f64().unwrap_or(0.95) * 100.0).round();
    let mut body = format!(
        "<h1>Effects · {}</h1><p>Step <b>{}</b> of pipeline <a href=\"/ui/pipelines/{p}\">{p}</a>, \
         run <a href=\"/ui/runs/{p}/{r}\">{r}</a>.</p>",
        esc(step),
        esc(step),
        p = esc(pipeline),
        r = esc(&f.run_id),
    );
    let references: Vec<String> = fit["reference_levels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(c, l)| format!("{} = {}", esc(c), esc(l.as_str().unwrap_or(""))))
        .collect();
    let _ = write!(
        body,
        "<div class=\"explain\"><p>Each row is one attribute. Its <b>effect</b> multiplies the odds of success \
         with everything else equal: ×1.5 means 50% higher odds, ×0.8 20% lower. For a category, the effect \
         compares a level with the reference level{}. For a number, it is the effect of one unit more. \
         The line is the {level}% confidence interval: one that crosses ×1 may be no effect at all.</p></div>",
        match references.is_empty() {
            true => String::new(),
            false => format!(" ({})", references.join(", ")),
        }
    );
    let col = |t: &Table, name: &str| t.index(name).ok_or(format!("no `{name}` column"));
    let (term, est, lower, upper, p_value) = (
        col(&coef, "term")?,
        col(&coef, "estimate")?,
        col(&coef, "lower")?,
        col(&coef, "upper")?,
        col(&coef, "p_value")?,
    );
    // The intercept is a baseline, not an effect: it stays out of the plot.
    let terms: Vec<Term> = coef
        .rows
        .iter()
        .filter(|r| r[term].text() != "const")
        .map(|r| {
            let ci = r[lower].float().zip(r[upper].float());
            (r[term].text(), r[est].float().unwrap_or(0.0), ci)
        })
        .collect();
    body.push_str(&forest(&terms));
    let _ = write!(
        body,
        "<table id=\"coefficients\"><tr><th>attribute</th><th>effect on the odds</th><th>{level}% interval</th>\
         <th>log-odds</th><th>p-value</th></tr>"
    );
    for r in &coef.rows {
        // The intercept is the rate at the reference levels with every number
        // at 0: a rate, not a multiplier.
        let baseline = r[term].text() == "const";
        let shown = |log_odds: Option<f64>| {
            log_odds.map(|v| match baseline {
                true => format!("rate {}", percent(1.0 / (1.0 + (-v).exp()))),
                false => format!("×{:.3}", v.exp()),
            })
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td><b>{}</b></td><td>{}</td><td>{:.4}</td><td>{}</td></tr>",
            match baseline {
                true => "baseline (const)".to_string(),
                false => esc(&r[term].text()),
            },
            shown(r[est].float()).unwrap_or_default(),
            match (shown(r[lower].float()), shown(r[upper].float())) {
                (Some(l), Some(u)) => format!("{l} – {u}"),
                _ => "–".into(),
            },
            r[est].float().unwrap_or(f64::NAN),
            r[p_value]
                .float()
                .map(|p| if p < 1e-4 {
                    "< 0.0001".into()
                } else {
                    format!("{p:.4}")
                })
                .unwrap_or_else(|| "–".into()),
        );
    }
    body.push_str("</table>");
    body.push_str(&csv_link(
        pipeline,
        step,
        f,
        ("coefficients", "csv-coefficients"),
        "the coefficients",
    ));
    body.push_str(&heldout_section(&fit));
    // Every item's predicted rate against its observed one.
    let (id, trials, successes, raw, predicted) = (
        col(&items, "item_id")?,
        col(&items, "trials")?,
        col(&items, "successes")?,
        col(&items, "raw_rate")?,
        col(&items, "predicted_rate")?,
    );
    body.push_str("<h2>Predicted rate per item</h2>");
    let rows = select(&items, q, None, "predicted_rate");
    body.push_str(&controls(q, &[], None, rows.len(), items.rows.len()));
    let h = |c: &str, l: &str| header(q, c, l, "predicted_rate");
    let _ = write!(
        body,
        "<table id=\"items\"><tr>{}{}{}{}{}</tr>",
        h("item_id", "item"),
        h("trials", "trials"),
        h("successes", "successes"),
        h("raw_rate", "observed rate"),
        h("predicted_rate", "predicted rate"),
    );
    let start = page_start(q, rows.len());
    for r in rows.iter().skip(start).take(PAGE) {
        let _ = write!(
            body,
            "<tr><td class=\"id\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mean\" data-value=\"{}\"><b>{}</b></td></tr>",
            esc(&r[id].text()),
            r[trials].text(),
            r[successes].text(),
            r[raw].float().map(percent).unwrap_or_else(|| "–".into()),
            r[predicted].float().unwrap_or(f64::NAN),
            r[predicted].float().map(percent).unwrap_or_default(),
        );
    }
    body.push_str("</table>");
    body.push_str(&pages(q, rows.len()));
    body.push_str(&csv_link(
        pipeline,
        step,
        f,
        ("items", "csv-items"),
        &format!("all {} items", items.rows.len()),
    ));
    Ok(body)
}

/// How the model did on rows it did not see, in words.
fn heldout_section(fit: &Value) -> String {
    let split = &fit["split"];
    let train = &split["train"];
    let mut s = format!(
        "<h2>How well it predicts</h2><div id=\"heldout\"><p>Fitted on {} rows ({} successes)",
        count(train["rows"].as_f64().unwrap_or(0.0)),
        count(train["successes"].as_f64().unwrap_or(0.0))
    );
    let h = &fit["heldout"];
    match (h["logloss"].as_f64(), h["logloss_global"].as_f64()) {
        (Some(model), Some(global)) => {
            let test = &split["test"];
            let better = match model < global {
                true => "better than",
                false => "no better than",
            };
            let _ = write!(
                s,
                ". Tested on the latest {} rows ({} successes, by {}), which it did not see: \
                 it predicts them {better} the overall rate does (log-loss {model:.5} against {global:.5}; lower is better).",
                count(test["rows"].as_f64().unwrap_or(0.0)),
                count(test["successes"].as_f64().unwrap_or(0.0)),
                esc(split["by"].as_str().unwrap_or("file order"))
            );
            if let Some(auc) = h["auc"].as_f64() {
                let _ = write!(
                    s,
                    " Ranking rows by predicted rate puts a success above a failure {:.0}% of the time (AUC {auc:.3}; 50% is chance).",
                    auc * 100.0
                );
            }
        }
        _ => s.push_str(". No rows were held out to test it (`holdout = 0`)."),
    }
    s.push_str("</p>");
    if let Some(sep) = fit["separated"].as_array().filter(|a| !a.is_empty()) {
        let names: Vec<String> = sep.iter().map(|v| esc(v.as_str().unwrap_or(""))).collect();
        let _ = write!(
            s,
            "<p class=\"problems\">These attributes' training rows are all successes or all failures; \
             their effects are held finite by the L2 penalty and should be read as “strong, size unknown”: {}</p>",
            names.join(", ")
        );
    }
    if let Some(merged) = fit["merged_levels"].as_object().filter(|m| !m.is_empty()) {
        let list: Vec<String> = merged
            .iter()
            .map(|(c, v)| format!("{}: {}", esc(c), v.as_array().map_or(0, |a| a.len())))
            .collect();
        let _ = write!(
            s,
            "<p>Rare levels counted as their column's most frequent level: {}.</p>",
            list.join(", ")
        );
    }
    s.push_str("</div>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: Vec<Vec<Cell>>) -> Table {
        Table {
            columns: vec!["item_id".into(), "raw_rate".into()],
            rows,
        }
    }

    #[test]
    fn nulls_sort_last_both_ways_and_search_filters() {
        let t = table(vec![
            vec![Cell::Int(1), Cell::Float(0.2)],
            vec![Cell::Int(12), Cell::Null],
            vec![Cell::Int(3), Cell::Float(0.1)],
        ]);
        for order in ["asc", "desc"] {
            let q = ViewQuery {
                sort: Some("raw_rate".into()),
                order: Some(order.into()),
                ..ViewQuery::default()
            };
            let ids: Vec<String> = select(&t, &q, None, "raw_rate")
                .iter()
                .map(|r| r[0].text())
                .collect();
            let want = if order == "asc" {
                ["3", "1", "12"]
            } else {
                ["1", "3", "12"]
            };
            assert_eq!(ids, want, "{order}");
        }
        let q = ViewQuery {
            q: Some("1".into()),
            ..ViewQuery::default()
        };
        assert_eq!(select(&t, &q, None, "raw_rate").len(), 2);
    }

    #[test]
    fn links_keep_the_view_and_escape_it() {
        let q = ViewQuery {
            run: Some("r1".into()),
            group: Some("a&b <c>".into()),
            sort: Some("trials".into()),
            order: Some("asc".into()),
            ..ViewQuery::default()
        };
        assert_eq!(
            with(&q, "page", "2"),
            "?run=r1&amp;sort=trials&amp;order=asc&amp;group=a%26b%20%3Cc%3E&amp;page=2"
        );
        // A new sort drops the old order.
        assert_eq!(
            with(&q, "sort", "weight"),
            "?run=r1&amp;group=a%26b%20%3Cc%3E&amp;sort=weight"
        );
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let t = Table {
            columns: vec!["item_id".into(), "x".into()],
            rows: vec![
                vec![Cell::Text("=HYPERLINK(\"x\")".into()), Cell::Float(-0.5)],
                vec![Cell::Text("a,b".into()), Cell::Null],
            ],
        };
        assert_eq!(
            t.csv(),
            "item_id,x\r\n\"'=HYPERLINK(\"\"x\"\")\",-0.5\r\n\"a,b\",\r\n"
        );
    }

    #[test]
    fn pages_clamp() {
        let q = |p| ViewQuery {
            page: Some(p),
            ..ViewQuery::default()
        };
        assert_eq!(page_start(&q(0), 250), 0);
        assert_eq!(page_start(&q(3), 250), 200);
        assert_eq!(page_start(&q(99), 250), 200);
        assert_eq!(page_start(&q(2), 0), 0);
    }
}
