//! The web UI: server-rendered HTML and inline SVG, no scripts and no build step,
//! one module per page. Pages refresh themselves every few seconds. Every value
//! from configuration or history is HTML-escaped.

mod index;
mod pipeline;
mod run;

use axum::response::Html;

use crate::pipeline::RunRecord;

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
.succeeded,.reused{color:#17803d}.failed,.interrupted{color:#c0262d}.running{color:#1f5fbf}\
.skipped,.cancelled{color:#777}.problems{background:#fde8e8;padding:.5em 1em;white-space:pre-wrap}\
pre{background:#f4f4f4;padding:1em;overflow:auto}";

pub(super) fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\"><link rel=\"icon\" href=\"data:,\"><title>{} · recpipe</title>\
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
