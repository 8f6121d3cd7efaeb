//! Pipeline validation: the exact diagnostics for each invalid fixture, the
//! shipped pipelines, and the `validate` command's exit codes.

use std::path::PathBuf;

use recpipe::config::Settings;
use recpipe::pipeline::load::load_all;

use crate::common::{recpipe, repo, text};

fn settings() -> Settings {
    Settings::load(&repo()).expect("the repository's config/ loads")
}

/// Diagnostics of a fixture (file or folder), with the machine's paths removed.
fn diagnostics(fixture: &str) -> String {
    let settings = settings();
    let path = PathBuf::from("tests/it/fixtures/invalid").join(fixture);
    let (pipelines, diags) = load_all(&settings, &[repo().join(&path)]);
    assert!(pipelines.len() < 2 || !diags.is_empty());
    assert!(!diags.is_empty(), "{fixture} should be invalid");
    diags
        .to_string()
        .replace(&format!("{}/", repo().display()), "")
        .replace(&repo().display().to_string(), "<project>")
}

macro_rules! fixture_tests {
    ($($name:ident: $file:expr,)*) => {$(
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), diagnostics($file));
        }
    )*};
}

fixture_tests! {
    unknown_step_key: "unknown_step_key.toml",
    unknown_top_key: "unknown_top_key.toml",
    unknown_kind: "unknown_kind.toml",
    unknown_needs: "unknown_needs.toml",
    cycle: "cycle.toml",
    missing_sql: "missing_sql.toml",
    unknown_source: "unknown_source.toml",
    unknown_sink: "unknown_sink.toml",
    wrong_type: "wrong_type.toml",
    bad_cron: "bad_cron.toml",
    bad_cron_value: "bad_cron_value.toml",
    bad_timezone: "bad_timezone.toml",
    invalid_toml: "invalid_toml.toml",
    wrong_inputs: "wrong_inputs.toml",
    unknown_model: "unknown_model.toml",
    many_errors: "many_errors.toml",
    duplicate_table: "duplicate_table",
    out_of_bounds: "out_of_bounds.toml",
    write_tables: "write_tables.toml",
}

#[test]
fn every_shipped_pipeline_validates() {
    let settings = settings();
    let (pipelines, diags) = load_all(&settings, std::slice::from_ref(&settings.pipelines_dir));
    assert!(diags.is_empty(), "{diags}");
    assert!(!pipelines.is_empty());
}

#[test]
fn validate_command_exits_2_with_every_error() {
    let out = recpipe(
        &repo(),
        &["validate", "tests/it/fixtures/invalid/many_errors.toml"],
        &[],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every problem, each with file:line:col, in one run.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("many_errors.toml:"))
        .collect();
    assert!(lines.len() >= 8, "{all}");
    assert!(
        stderr.contains("(did you mean `extract`?)") || stderr.contains("did you mean"),
        "{all}"
    );
}

#[test]
fn validate_command_accepts_the_shipped_pipelines() {
    let out = recpipe(&repo(), &["validate"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("example"));
}
