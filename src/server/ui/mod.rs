//! The web UI: server-rendered HTML and inline SVG, no scripts and no build step,
//! one module per page. Pages about runs refresh themselves every few seconds;
//! the estimates viewer, which is read at length, does not. Every value from
//! configuration, history or data is HTML-escaped.

mod estimates;
mod experiments;
mod index;
mod pipeline;
mod run;

use axum::response::Html;

use crate::pipeline::RunRecord;

pub use estimates::{csv as estimates_csv, estimates};
pub use experiments::experiment;
pub use index::index;
pub use pipeline::pipeline;
pub use run::run;

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}\
.succeeded,.reused{color:#17803d}.failed,.interrupted{color:#c0262d}.blocked{color:#b35c00}tr.chosen{font-weight:bold}.running{color:#1f5fbf}\
.skipped,.cancelled{color:#777}.problems{background:#fde8e8;padding:.5em 1em;white-space:pre-wrap}\
pre{background:#f4f4f4;padding:1em;overflow:auto}\
.explain{max-width:50em;background:#f4f8fd;padding:.2em 1em}#items td{vertical-align:middle;white-space:nowrap}\
#filters{margin:1em 0}th a{color:inherit}#arms td{white-space:nowrap}#arms td.description{white-space:normal}";

/// A page that reloads itself every 5 seconds.
pub(super) fn page(title: &str, body: &str) -> Html<String> {
    document(title, body, "<meta http-equiv=\"refresh\" content=\"5\">")
}

/// A page that stays as it is.
pub(super) fn page_still(title: &str, body: &str) -> Html<String> {
    document(title, body, "")
}

fn document(title: &str, body: &str, head: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         {head}<link rel=\"icon\" href=\"data:,\"><title>{} · recpipe</title>\
         <style>{STYLE}</style></head><body><p><a href=\"/\">recpipe</a></p>{body}</body></html>",
        esc(title)
    ))
}

pub(super) fn duration_s(r: &RunRecord) -> Option<f64> {
    r.finished_at
        .map(|f| (f - r.started_at).num_milliseconds() as f64 / 1000.0)
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
