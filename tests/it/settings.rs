//! Daemon settings: every problem of every layer reported once, all at once, with
//! the file and line (or environment variable) that set it; bounds on values
//! that would hang or exhaust the machine; and no secret in any message.

use std::path::Path;

use recpipe::config::Settings;

use crate::common::{project, recpipe, text};

/// `recpipe validate` on a project whose `config/default.toml` gets `extra`
/// appended and whose environment is `env`.
fn validate(project: &Path, env: &[(&str, &str)]) -> std::process::Output {
    recpipe(project, &["validate"], env)
}

fn append(project: &Path, extra: &str) {
    let file = project.join("config/default.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(extra);
    std::fs::write(file, text).unwrap();
}

/// The stderr of `out` with the project's path removed.
fn stderr_of(project: &Path, out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).replace(&format!("{}/", project.display()), "")
}

#[test]
fn every_settings_error_is_reported_once_with_its_line_and_a_suggestion() {
    let dir = project();
    let p = dir.path();
    // A section the default file does not have yet, with a mistake.
    append(p, "\n[sinks.extra]\nkind = \"parqet\"\npath = \"x\"\n");
    let file = p.join("config/default.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("compute_threads = 0", "compute_thread = 0")
        .replace("keep_runs = 50", "keep_run = 5")
        .replace("retry_base_delay = \"1s\"", "retry_base_delay = \"2m\"")
        .replace("shutdown_grace = \"30s\"", "shutdown_grace = \"forever\"");
    std::fs::write(&file, text).unwrap();
    let out = validate(p, &[("RECPIPE__RUNTIME__MAX_PARALLEL_STEPS", "100000")]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::common::text(&out));
    let stderr = stderr_of(p, &out);
    insta::assert_snapshot!(stderr);
    assert_eq!(
        stderr.matches("compute_thread`").count() + stderr.matches("compute_thread:").count(),
        1,
        "reported once: {stderr}"
    );
}

#[test]
fn thread_counts_and_delays_out_of_range_are_refused() {
    let dir = project();
    let out = validate(
        dir.path(),
        &[("RECPIPE__RUNTIME__COMPUTE_THREADS", "100000")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = stderr_of(dir.path(), &out);
    assert!(
        stderr.contains(
            "$RECPIPE__RUNTIME__COMPUTE_THREADS: runtime.compute_threads: 100000 is out of range; accepted: 0 (one per core) to 256"
        ),
        "{stderr}"
    );
    let out = validate(
        dir.path(),
        &[
            ("RECPIPE__RUNTIME__RETRY_BASE_DELAY", "5m"),
            ("RECPIPE__RUNTIME__RETRY_MAX_DELAY", "1m"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr_of(dir.path(), &out).contains("is longer than `runtime.retry_max_delay`"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_bad_listen_address_is_invalid_input() {
    let dir = project();
    let out = validate(dir.path(), &[("RECPIPE__SERVER__LISTEN", "localhost")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr_of(dir.path(), &out).contains("server.listen: `localhost` is not `host:port`"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_syntax_error_on_a_dsn_line_does_not_print_the_password() {
    let dir = project();
    let p = dir.path();
    let file = p.join("config/default.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=postgres\"",
        "dsn = \"host=127.0.0.1 user=postgres password=Hunter2-very-secret dbname=postgres",
    );
    std::fs::write(&file, text).unwrap();
    let out = validate(p, &[]);
    let all = crate::common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(!all.contains("Hunter2-very-secret"), "{all}");
    let line = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .position(|l| l.contains("Hunter2"))
        .unwrap()
        + 1;
    assert!(
        stderr_of(p, &out).contains(&format!("config/default.toml:{line}:")),
        "{all}"
    );
    assert!(all.contains("invalid TOML"), "{all}");
}

#[test]
fn step_timeout_defaults_to_six_hours_and_must_be_positive() {
    let dir = project();
    let env = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let s = Settings::load_with(dir.path(), env(&[])).unwrap();
    assert_eq!(
        s.runtime.step_timeout,
        std::time::Duration::from_secs(6 * 3600)
    );
    let e = Settings::load_with(dir.path(), env(&[("RECPIPE__RUNTIME__STEP_TIMEOUT", "0s")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("runtime.step_timeout: `0s` is out of range"),
        "{e}"
    );
}

#[test]
fn an_empty_token_is_no_token() {
    let dir = project();
    let s = Settings::load_with(
        dir.path(),
        [("RECPIPE__API__TOKEN".to_string(), String::new())],
    )
    .unwrap();
    assert!(s.api.token.is_none());
    // A token of digits stays text.
    let s = Settings::load_with(
        dir.path(),
        [("RECPIPE__API__TOKEN".to_string(), "12345678".to_string())],
    )
    .unwrap();
    assert_eq!(s.api.token.unwrap().expose(), "12345678");
}

/// A wrong value deep in a table is reported at its own key and line, not at
/// the key whose removal hides it; a section set only by a variable is blamed
/// on the variable; a Parquet sink may not publish into the project dir itself.
#[test]
fn each_problem_is_placed_at_the_key_that_holds_it() {
    let dir = project();
    let p = dir.path();
    append(
        p,
        "\n[sources.sheet]\nkind = \"datafusion\"\ntables.items = { path = \"data/example/items.parquet\", format = \"xlsx\" }\n\n[sinks.here]\nkind = \"parquet\"\npath = \"\"\n",
    );
    let lines = std::fs::read_to_string(p.join("config/default.toml"))
        .unwrap()
        .lines()
        .count();
    let out = validate(p, &[("RECPIPE__NOSUCH__X", "1")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = stderr_of(p, &out);
    let format_line = lines - 4;
    assert!(
        stderr.contains(&format!(
            "config/default.toml:{format_line}:55: sources.sheet.tables.items.format: unknown value `xlsx`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("$RECPIPE__NOSUCH__X: nosuch: unknown key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sinks.here.path: names the project dir itself"),
        "{stderr}"
    );
}

#[test]
fn object_storage_is_refused_where_a_local_directory_is_needed_and_checked_where_it_is_not() {
    let dir = project();
    let p = dir.path();
    let file = p.join("config/default.toml");
    let toml = std::fs::read_to_string(&file)
        .unwrap()
        .replace("state_dir = \"state\"", "state_dir = \"s3://bucket/state\"")
        .replace(
            "path = \"state/published\"",
            "path = \"gcs://bucket/lists\"",
        );
    std::fs::write(&file, toml).unwrap();
    let out = validate(p, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = stderr_of(p, &out);
    let line = |key: &str| {
        stderr
            .lines()
            .find(|l| l.contains("config/default.toml:") && l.contains(key))
            .unwrap_or_else(|| panic!("no line for {key}: {stderr}"))
            .to_string()
    };
    assert!(
        line("state_dir").contains("must be a local directory"),
        "{stderr}"
    );
    assert!(
        line("sinks.local_lists.path").contains("s3://bucket/prefix or gs://"),
        "{stderr}"
    );

    // A well-formed bucket URL is accepted as the sink's path.
    let toml = std::fs::read_to_string(&file)
        .unwrap()
        .replace("s3://bucket/state", "state")
        .replace("gcs://bucket/lists", "s3://bucket/lists");
    std::fs::write(&file, toml).unwrap();
    let out = validate(p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
