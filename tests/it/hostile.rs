//! The hostile suite: what a careless operator or a hostile input does to a
//! run. Values that parse but cannot run, data that overflows, corrupt files,
//! degenerate models, two runners on one run, and a cancel that must reach the
//! compute. Each case must end in a clear error (or a correct result) with the
//! published list untouched: never a panic, an abort, a hang or a wrong list.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float32Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use recpipe::pipeline::{RunRecord, RunStatus, StepStatus};

use crate::common::{edit, project, recpipe, repo, text, write_columns};

fn current(project: &Path, table: &str) -> Option<String> {
    std::fs::read_to_string(project.join("state/published").join(table).join("CURRENT"))
        .ok()
        .map(|v| v.trim().to_string())
}

fn record(project: &Path, pipeline: &str, run_id: &str) -> RunRecord {
    let path = project.join(format!("state/runs/{pipeline}/{run_id}/run.json"));
    recpipe::artifact::read_json(&path).unwrap()
}

fn no_panic(out: &std::process::Output) {
    let all = text(out);
    assert!(!all.contains("panicked"), "{all}");
    assert!(
        matches!(out.status.code(), Some(0..=2) | Some(75)),
        "ended by a signal or an abort: {all}"
    );
}

#[test]
fn validate_refuses_values_that_cannot_run() {
    let fixture = repo().join("tests/it/fixtures/invalid/out_of_bounds.toml");
    let out = recpipe(&repo(), &["validate", fixture.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "steps.als.factors",
        "steps.als.iterations",
        "steps.als.alpha",
        "steps.als.regularization",
        "steps.ratings.timeout",
        "steps.ratings.sql",
        "steps.user_recs.min_score",
        "steps.huge.factors",
    ] {
        assert!(stderr.contains(key), "{key} not refused:\n{stderr}");
    }
    // The refused SQL path is never read, so nothing of it is echoed.
    assert!(!stderr.contains("root:"), "{stderr}");
}

#[test]
fn step_commands_refuse_the_same_values() {
    let dir = project();
    let p = dir.path();
    let input = p.join("data/example/interactions.parquet");
    for set in [
        "factors=0",
        "factors=1000000000",
        "alpha=inf",
        "iterations=0",
    ] {
        let out = recpipe(
            p,
            &[
                "step",
                "train",
                "--input",
                input.to_str().unwrap(),
                "--model",
                "als",
                "--set",
                set,
                "--output",
                p.join("model").to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{set}: {}", text(&out));
        no_panic(&out);
    }
}

/// Values each finite that overflow when duplicates are summed: the factors
/// would be NaN and the lists random or empty.
#[test]
fn interaction_sums_that_overflow_are_refused() {
    let dir = project();
    let p = dir.path();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("value", DataType::Float32, false),
    ]));
    let users: Vec<i64> = (0..40).map(|i| i % 10).collect();
    let items: Vec<i64> = (0..40).map(|i| i % 7).collect();
    let mut values = vec![1.0f32; 40];
    values[0] = 3e38;
    let mut users2 = users.clone();
    let mut items2 = items.clone();
    users2.push(users[0]);
    items2.push(items[0]);
    values.push(3e38);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(users2)),
            Arc::new(Int64Array::from(items2)),
            Arc::new(Float32Array::from(values)),
        ],
    )
    .unwrap();
    let input = p.join("overflow.parquet");
    recpipe::artifact::write_parquet(&input, schema, &[batch]).unwrap();
    let out = recpipe(
        p,
        &[
            "step",
            "train",
            "--input",
            input.to_str().unwrap(),
            "--model",
            "als",
            "--output",
            p.join("model").to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    no_panic(&out);
    assert!(text(&out).contains("sum to inf"), "{}", text(&out));
}

/// A `min_score` no item reaches passes validation (it is finite) but gives an
/// empty list: the run fails and the previous list stays current.
#[test]
fn an_empty_list_is_not_published() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["run", "example", "--run-id", "good"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    edit(
        p,
        "example.toml",
        "top_n = 10",
        "top_n = 10\nmin_score = 1e30",
    );
    let out = recpipe(p, &["run", "example", "--run-id", "empty"], &[]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    no_panic(&out);
    assert!(text(&out).contains("min_coverage"), "{}", text(&out));
    assert_eq!(current(p, "example_user_recs").as_deref(), Some("good"));
    assert_eq!(record(p, "example", "empty").status, RunStatus::Failed);
}

/// A corrupt Parquet footer in an extract's input: a data error naming the
/// file, not a panic, and nothing published.
#[test]
fn a_corrupt_input_file_is_a_data_error() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["run", "example", "--run-id", "good"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let file = p.join("data/example/interactions.parquet");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    // Garble the footer's metadata, keep the length and the magic.
    for b in &mut bytes[n - 200..n - 8] {
        *b = 0xA5;
    }
    std::fs::write(&file, bytes).unwrap();
    let out = recpipe(p, &["run", "example", "--run-id", "corrupt"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interactions.parquet"), "{}", text(&out));
    assert!(
        !stderr.contains("step `interactions`: panicked"),
        "{}",
        text(&out)
    );
    assert_eq!(current(p, "example_user_recs").as_deref(), Some("good"));
}

/// Two processes on one run id: the second waits for the first, then resumes
/// it (reusing every step), and both records agree with what was published.
#[test]
fn two_runners_on_one_run_agree() {
    let dir = project();
    let p = dir.path();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_recpipe"))
            .arg("--project-dir")
            .arg(p)
            .args(["run", "example-als", "--run-id", "twice"])
            .env_remove("RECPIPE_FAILPOINTS")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b));
    assert_eq!(
        record(p, "example-als", "twice").status,
        RunStatus::Succeeded
    );
    assert_eq!(
        current(p, "example_als_user_recs").as_deref(),
        Some("twice")
    );
}

/// A project whose `example-als` fit runs for minutes: enough data, many
/// factors and iterations.
fn long_fit_project() -> tempfile::TempDir {
    let dir = project();
    let p = dir.path();
    let data = p.join("data/example");
    let out = recpipe(
        p,
        &[
            "gen-data",
            "--out",
            data.to_str().unwrap(),
            "--users",
            "20000",
            "--items",
            "4000",
            "--events",
            "400000",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    edit(
        p,
        "example_als.toml",
        "factors = 32\niterations = 10",
        "factors = 256\niterations = 1000",
    );
    dir
}

/// Ctrl-C (SIGINT), or SIGTERM from a supervisor, during a long ALS fit: the
/// stop reaches the solver, the process exits within seconds and the run is
/// recorded as cancelled (so it can be resumed, and retention may prune it).
#[test]
#[allow(clippy::disallowed_methods)] // a plain test thread polling a child process
fn an_interrupt_reaches_a_long_fit() {
    let dir = long_fit_project();
    let p = dir.path();
    for (signal, run_id) in [(libc::SIGINT, "int"), (libc::SIGTERM, "term")] {
        let child = Command::new(env!("CARGO_BIN_EXE_recpipe"))
            .arg("--project-dir")
            .arg(p)
            .args(["run", "example-als", "--run-id", run_id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the fit is running (the extract is done).
        let started = Instant::now();
        let extract = p.join(format!(
            "state/runs/example-als/{run_id}/interactions/manifest.json"
        ));
        while std::fs::metadata(&extract).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the run never got going"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY: signalling a child process this test started.
        unsafe { libc::kill(child.id() as i32, signal) };
        let signalled = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "{run_id}: took {:?} to stop: {}",
            signalled.elapsed(),
            text(&out)
        );
        assert_eq!(out.status.code(), Some(1), "{run_id}: {}", text(&out));
        assert_eq!(
            record(p, "example-als", run_id).status,
            RunStatus::Cancelled,
            "{run_id}"
        );
    }
}

/// A step with no `timeout` of its own is bounded by `runtime.step_timeout`:
/// the long fit is stopped, the run fails as retryable and names the setting.
#[test]
fn a_step_without_a_timeout_is_bounded_by_the_settings() {
    let dir = long_fit_project();
    let p = dir.path();
    let started = Instant::now();
    let out = recpipe(
        p,
        &["run", "example-als", "--run-id", "bounded"],
        &[("RECPIPE__RUNTIME__STEP_TIMEOUT", "10s")],
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}: {}",
        started.elapsed(),
        text(&out)
    );
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let run = record(p, "example-als", "bounded");
    assert_eq!(run.status, RunStatus::Failed);
    let step = |id: &str| run.steps.iter().find(|s| s.id == id).unwrap();
    let als = step("als");
    assert_eq!(als.status, StepStatus::Failed);
    let error = als.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("timed out after 10s (`runtime.step_timeout`)"),
        "{error}"
    );
    assert_eq!(step("publish_user_recs").status, StepStatus::Skipped);
}

/// A fit that needs more memory than the process may use fails before it
/// allocates, as retryable (memory may free up), naming what to lower; the
/// previous list stays current.
#[test]
fn a_fit_beyond_the_memory_limit_fails_before_it_allocates() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["run", "example-als", "--run-id", "good"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = recpipe(
        p,
        &["run", "example-als", "--run-id", "small"],
        &[("RECPIPE_MEMORY_LIMIT", "100000")],
    );
    no_panic(&out);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let run = record(p, "example-als", "small");
    let als = run.steps.iter().find(|s| s.id == "als").unwrap();
    let error = als.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("needs about") && error.contains("lower `factors`"),
        "{error}"
    );
    assert_eq!(current(p, "example_als_user_recs").as_deref(), Some("good"));
}

/// A file that is not a sound list is not published: NaN scores, a rank of 0,
/// or missing columns fail the write (exit 2) and the current list stays.
#[test]
fn a_list_with_nan_scores_or_bad_ranks_is_not_published() {
    let dir = project();
    let p = dir.path();
    let write = |file: &Path, version: &str| {
        recpipe(
            p,
            &[
                "step",
                "write",
                "--input",
                file.to_str().unwrap(),
                "--sink",
                "local_lists",
                "--table",
                "probe",
                "--version",
                version,
            ],
            &[],
        )
    };
    let list = |name: &str, rank: i32, score: f32| {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("item_id", DataType::Int64, false),
            Field::new("rank", DataType::Int32, false),
            Field::new("score", DataType::Float32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 1])),
                Arc::new(Int64Array::from(vec![7, 8])),
                Arc::new(Int32Array::from(vec![1, rank])),
                Arc::new(Float32Array::from(vec![0.5, score])),
            ],
        )
        .unwrap();
        let file = p.join(name);
        recpipe::artifact::write_parquet(&file, schema, &[batch]).unwrap();
        file
    };
    let out = write(&list("good.parquet", 2, 0.25), "good");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (file, says) in [
        (
            list("nan.parquet", 2, f32::NAN),
            "`score` must be a finite number",
        ),
        (
            list("inf.parquet", 2, f32::INFINITY),
            "`score` must be a finite number",
        ),
        (list("rank0.parquet", 0, 0.25), "`rank` must be 1 or more"),
        (p.join("data/example/items.parquet"), "not a list"),
    ] {
        let out = write(&file, "bad");
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(says), "{}", text(&out));
        assert_eq!(current(p, "probe").as_deref(), Some("good"));
    }
}

/// Sizes the generator cannot allocate are refused, not a panic or an abort.
#[test]
fn gen_data_refuses_sizes_it_cannot_make() {
    let dir = project();
    let p = dir.path();
    let out_dir = p.join("gen");
    for users in ["0", "100000000000", "18446744073709551615"] {
        let out = recpipe(
            p,
            &[
                "gen-data",
                "--out",
                out_dir.to_str().unwrap(),
                "--users",
                users,
            ],
            &[],
        );
        no_panic(&out);
        assert_eq!(out.status.code(), Some(2), "{users}: {}", text(&out));
        assert!(
            text(&out).contains("--users must be between 1 and"),
            "{}",
            text(&out)
        );
    }
}

/// A missing input file is invalid input (exit 2), and its cause is said once:
/// the error's message holds it, so a report of the whole chain must not repeat it.
#[test]
fn a_missing_input_is_named_once() {
    let dir = project();
    let p = dir.path();
    let missing = p.join("missing.parquet");
    let out = recpipe(
        p,
        &[
            "step",
            "train",
            "--input",
            missing.to_str().unwrap(),
            "--model",
            "popular",
            "--output",
            p.join("model").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.parquet"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

/// Off-policy evaluation: clips that cannot run, and logs or candidates that
/// cannot be weighed, are each refused by name, never a NaN estimate.
#[test]
fn off_policy_refuses_what_it_cannot_weigh() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = std::cell::Cell::new(0);
    let parquet = |name: &str, columns: Vec<(&str, arrow::array::ArrayRef)>| {
        // Every file its own: the cases are all written before any runs.
        files.set(files.get() + 1);
        let name = format!("{}-{name}", files.get());
        write_columns(&d.join(name), columns)
            .to_str()
            .unwrap()
            .to_string()
    };
    let strings = |v: &[&str]| Arc::new(arrow::array::StringArray::from(v.to_vec())) as _;
    let floats = |v: &[f64]| Arc::new(arrow::array::Float64Array::from(v.to_vec())) as _;
    let logs = |reward: &[f64], propensity: &[f64]| {
        parquet(
            "logs.parquet",
            vec![
                ("arm_id", strings(&["a", "b"][..reward.len()])),
                ("reward", floats(reward)),
                ("propensity", floats(propensity)),
            ],
        )
    };
    let policy = |arms: &[&str], p: &[f64]| {
        parquet(
            "policy.parquet",
            vec![("arm_id", strings(arms)), ("probability", floats(p))],
        )
    };
    let run = |logs: &str, policy: &str, clips: &str| {
        recpipe(
            d,
            &[
                "step",
                "off-policy",
                "--logs",
                logs,
                "--policy",
                policy,
                "--clips",
                clips,
                "--output",
                d.join("out").to_str().unwrap(),
            ],
            &[],
        )
    };
    let good = (
        logs(&[1.0, 0.0], &[0.5, 0.5]),
        policy(&["a", "b"], &[0.5, 0.5]),
    );
    assert_eq!(run(&good.0, &good.1, "10").status.code(), Some(0));
    for (clips, expect) in [("0.5", "--clips"), ("inf", "--clips"), ("NaN", "--clips")] {
        let out = run(&good.0, &good.1, clips);
        assert_eq!(out.status.code(), Some(2), "{clips}: {}", text(&out));
        assert!(text(&out).contains(expect), "{}", text(&out));
        no_panic(&out);
    }
    let cases = [
        (
            logs(&[f64::NAN, 0.0], &[0.5, 0.5]),
            good.1.clone(),
            "reward NaN is not finite",
        ),
        (
            logs(&[1.0, 0.0], &[0.5, 1.5]),
            good.1.clone(),
            "row 2: propensity 1.5",
        ),
        (logs(&[], &[]), good.1.clone(), "has no rows"),
        (
            good.0.clone(),
            policy(&["a", "b"], &[0.5, 2.0]),
            "probability 2",
        ),
        (
            good.0.clone(),
            policy(&["a", "a"], &[0.5, 0.5]),
            "appears twice",
        ),
        (
            good.0.clone(),
            policy(&["a", "b"], &[0.8, 0.8]),
            "sum to 1.6",
        ),
        (good.0.clone(), policy(&["c"], &[1.0]), "nothing to weigh"),
    ];
    for (logs, policy, expect) in cases {
        let out = run(&logs, &policy, "10");
        assert_eq!(out.status.code(), Some(2), "{expect}: {}", text(&out));
        assert!(text(&out).contains(expect), "{expect}: {}", text(&out));
        no_panic(&out);
    }
}
