//! Whole runs of the example pipeline through the real binary: the published list
//! meets its contract, a failed publish keeps the previous list, and a rerun of the
//! same run id resumes without redoing finished steps.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use arrow::array::{Array, Float32Array, Int32Array, StringArray};
use arrow::datatypes::{DataType, TimeUnit};
use recpipe::artifact::read_parquet;
use recpipe::pipeline::rundir::StepManifest;
use recpipe::pipeline::{RunRecord, RunStatus, StepStatus};
use recpipe::steps::ErrorClass;

use crate::common::{edit, example_items, example_seen, i64s, project, recpipe, text};

fn published(project: &Path) -> std::path::PathBuf {
    project.join("state/published/example_user_recs")
}

fn current(project: &Path) -> String {
    std::fs::read_to_string(published(project).join("CURRENT"))
        .unwrap()
        .trim()
        .to_string()
}

fn record(project: &Path, run_id: &str) -> RunRecord {
    let path = project
        .join("state/runs/example")
        .join(run_id)
        .join("run.json");
    recpipe::artifact::read_json(&path).unwrap()
}

fn manifest(project: &Path, run_id: &str, step: &str) -> StepManifest {
    let path = project
        .join("state/runs/example")
        .join(run_id)
        .join(step)
        .join("manifest.json");
    recpipe::artifact::read_json(&path).unwrap()
}

#[test]
fn example_pipeline_publishes_a_contract_list() {
    let dir = project();
    let out = recpipe(dir.path(), &["run", "example", "--run-id", "r1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("published `publish`"), "{}", text(&out));

    let (schema, batches) =
        read_parquet(&published(dir.path()).join("current/data.parquet")).unwrap();
    let types: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("user_id".into(), DataType::Int64),
            ("item_id".into(), DataType::Int64),
            ("rank".into(), DataType::Int32),
            ("score".into(), DataType::Float32),
            ("run_id".into(), DataType::Utf8),
            (
                "generated_at".into(),
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            ),
        ]
    );

    // Seen pairs and closed items from the source data.
    let seen = example_seen(dir.path());
    let closed = example_items(dir.path()).closed;
    assert!(!closed.is_empty());

    let mut lists: HashMap<i64, Vec<(i32, f32)>> = HashMap::new();
    let mut rows = 0;
    for b in &batches {
        let users = i64s(b, "user_id");
        let items = i64s(b, "item_id");
        let ranks = b
            .column_by_name("rank")
            .unwrap()
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        let scores = b
            .column_by_name("score")
            .unwrap()
            .as_any()
            .downcast_ref::<Float32Array>()
            .unwrap();
        let run_ids = b
            .column_by_name("run_id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            assert!(
                !seen.contains(&(users[i], items[i])),
                "seen item {} recommended to {}",
                items[i],
                users[i]
            );
            assert!(
                !closed.contains(&items[i]),
                "closed item {} recommended",
                items[i]
            );
            assert_eq!(run_ids.value(i), "r1");
            lists
                .entry(users[i])
                .or_default()
                .push((ranks.value(i), scores.value(i)));
            rows += 1;
        }
    }
    let users: HashSet<i64> = seen.iter().map(|p| p.0).collect();
    assert_eq!(lists.len(), users.len(), "every user gets a list");
    for (user, list) in &lists {
        let ranks: Vec<i32> = list.iter().map(|r| r.0).collect();
        assert_eq!(ranks, (1..=10).collect::<Vec<_>>(), "user {user}");
        assert!(
            list.windows(2).all(|w| w[0].1 >= w[1].1),
            "scores fall with rank for user {user}"
        );
    }
    assert_eq!(rows, users.len() * 10);
    assert_eq!(current(dir.path()), "r1");
}

#[test]
fn failed_publish_keeps_previous_list_and_rerun_resumes() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["run", "example", "--run-id", "r1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = std::fs::read(published(p).join("current/data.parquet")).unwrap();

    // r2 dies between staging and the swap.
    let out = recpipe(
        p,
        &["run", "example", "--run-id", "r2"],
        &[("RECPIPE_FAILPOINTS", "parquet.before_swap")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("parquet.before_swap"),
        "{}",
        text(&out)
    );
    assert_eq!(current(p), "r1");
    assert_eq!(
        std::fs::read(published(p).join("current/data.parquet")).unwrap(),
        before
    );
    let r2 = record(p, "r2");
    assert_eq!(r2.status, RunStatus::Failed);
    let publish = r2.steps.iter().find(|s| s.id == "publish").unwrap();
    assert_eq!(publish.status, StepStatus::Failed);
    let finished_before: Vec<_> = ["interactions", "closed_items", "popular", "user_recs"]
        .iter()
        .map(|s| manifest(p, "r2", s).finished_at)
        .collect();

    // Rerunning r2 reuses the four finished steps and only publishes.
    let out = recpipe(p, &["run", "example", "--run-id", "r2"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r2 = record(p, "r2");
    for s in &r2.steps {
        let expected = if s.id == "publish" {
            StepStatus::Succeeded
        } else {
            StepStatus::Reused
        };
        assert_eq!(s.status, expected, "{}", s.id);
    }
    let finished_after: Vec<_> = ["interactions", "closed_items", "popular", "user_recs"]
        .iter()
        .map(|s| manifest(p, "r2", s).finished_at)
        .collect();
    assert_eq!(
        finished_before, finished_after,
        "finished steps were not redone"
    );
    assert_eq!(current(p), "r2");

    // Once more: nothing left to do, and the published list stays r2.
    let out = recpipe(p, &["run", "example", "--run-id", "r2"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        record(p, "r2")
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Reused)
    );
    assert_eq!(current(p), "r2");
}

#[test]
fn old_versions_are_pruned_to_keep_versions() {
    let dir = project();
    let p = dir.path();
    for id in ["v1", "v2", "v3", "v4"] {
        let out = recpipe(p, &["run", "example", "--run-id", id], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let mut versions: Vec<String> = std::fs::read_dir(published(p).join("versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    assert_eq!(versions, vec!["v2", "v3", "v4"]);
    assert_eq!(current(p), "v4");
}

#[test]
fn a_failed_step_skips_its_dependents() {
    let dir = project();
    let p = dir.path();
    // The interactions query now returns a table without `user_id`.
    std::fs::write(
        p.join("sql/example_interactions.sql"),
        "SELECT item_id FROM interactions WHERE value >= $min_value",
    )
    .unwrap();
    let out = recpipe(p, &["run", "example", "--run-id", "bad"], &[]);
    // A query result that breaks its contract is invalid input.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing column `user_id`"),
        "{}",
        text(&out)
    );
    let r = record(p, "bad");
    let status = |id: &str| r.steps.iter().find(|s| s.id == id).unwrap().status;
    assert_eq!(status("interactions"), StepStatus::Failed);
    assert_eq!(status("popular"), StepStatus::Skipped);
    assert_eq!(status("user_recs"), StepStatus::Skipped);
    assert_eq!(status("publish"), StepStatus::Skipped);
    assert!(
        std::fs::metadata(published(p)).is_err(),
        "nothing was published"
    );
}

#[test]
fn retryable_errors_are_retried_then_fail_the_run() {
    let dir = project();
    let p = dir.path();
    let env = [
        ("RECPIPE_FAILPOINTS", "parquet.write_staging"),
        ("RECPIPE__RUNTIME__RETRY_BASE_DELAY", "10ms"),
    ];
    let out = recpipe(p, &["run", "example", "--run-id", "flaky"], &env);
    // Retries exhausted on an I/O error: transient, worth a later retry.
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let r = record(p, "flaky");
    let publish = r.steps.iter().find(|s| s.id == "publish").unwrap();
    // `retries = 3` in the example: one attempt and three retries.
    assert_eq!((publish.status, publish.attempts), (StepStatus::Failed, 4));
    assert!(
        publish
            .error
            .as_deref()
            .unwrap()
            .contains("parquet.write_staging")
    );

    // A failure that cannot be cured by retrying is not retried.
    let out = recpipe(
        p,
        &["run", "example", "--run-id", "swap"],
        &[("RECPIPE_FAILPOINTS", "parquet.before_swap")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let publish = record(p, "swap")
        .steps
        .into_iter()
        .find(|s| s.id == "publish")
        .unwrap();
    assert_eq!(publish.attempts, 1);
}

#[test]
fn state_dir_follows_the_environment() {
    let dir = project();
    let elsewhere = dir.path().join("elsewhere");
    let out = recpipe(
        dir.path(),
        &["run", "example", "--run-id", "env"],
        &[("RECPIPE__STATE_DIR", elsewhere.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(std::fs::metadata(elsewhere.join("runs/example/env/run.json")).is_ok());
    assert!(std::fs::metadata(dir.path().join("state/runs")).is_err());
}

#[test]
fn plan_lists_steps_in_run_order() {
    let dir = project();
    let out = recpipe(dir.path(), &["plan", "example"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let order: Vec<&str> = [
        "closed_items [extract]",
        "interactions [extract]",
        "popular [train]",
        "user_recs [recommend]",
        "publish [write]",
    ]
    .into_iter()
    .collect();
    let positions: Vec<usize> = order
        .iter()
        .map(|s| {
            stdout
                .find(s)
                .unwrap_or_else(|| panic!("{s} missing:\n{stdout}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{stdout}");
    assert!(
        stdout.contains("reads:  popular (model), closed_items (filter)"),
        "{stdout}"
    );
}

/// The step commands run the same code as the pipeline: chaining them by hand on
/// the pipeline's own extracts gives the same list.
#[test]
fn step_commands_reproduce_the_pipeline() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["run", "example", "--run-id", "r1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = p.join("state/runs/example/r1");
    let s = |x: &Path| x.to_str().unwrap().to_string();
    let model = p.join("cli-model");
    let recs = p.join("cli-recs.parquet");
    let out = recpipe(
        p,
        &[
            "step",
            "train",
            "--input",
            &s(&run.join("interactions/data.parquet")),
            "--model",
            "popular",
            "--output",
            &s(&model),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = recpipe(
        p,
        &[
            "step",
            "recommend",
            "--model",
            &s(&model),
            "--filter",
            &s(&run.join("closed_items/data.parquet")),
            "--top-n",
            "10",
            "--run-id",
            "r1",
            "--output",
            &s(&recs),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let strip = |path: &Path| {
        let (_, batches) = read_parquet(path).unwrap();
        batches
            .iter()
            .map(|b| b.project(&[0, 1, 2, 3]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&recs), strip(&run.join("user_recs/data.parquet")));

    let out = recpipe(
        p,
        &[
            "step",
            "write",
            "--input",
            &s(&recs),
            "--sink",
            "local_lists",
            "--table",
            "by_hand",
            "--version",
            "v1",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let current = std::fs::read_to_string(p.join("state/published/by_hand/CURRENT")).unwrap();
    assert_eq!(current.trim(), "v1");
}

/// Rows of the list a reader of `current/data.parquet` gets.
fn current_rows(project: &Path) -> usize {
    let (_, batches) = read_parquet(&published(project).join("current/data.parquet")).unwrap();
    batches.iter().map(|b| b.num_rows()).sum()
}

/// `(rows, location)` of the `published `publish` (N rows): …` line.
fn printed(out: &std::process::Output) -> (usize, String) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("published `publish` ("))
        .unwrap_or_else(|| panic!("no published line\n{}", text(out)));
    let (count, location) = line["published `publish` (".len()..]
        .split_once(" rows): ")
        .unwrap();
    (count.parse().unwrap(), location.to_string())
}

#[test]
fn a_rerun_after_an_edit_publishes_the_new_list() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["run", "example", "--run-id", "r1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = current_rows(p);
    assert_eq!(printed(&out).0, first);

    // The same run id after an edit: the new, shorter list is what readers get,
    // kept under a new version name so the old folder never changes under them.
    edit(p, "example.toml", "top_n = 10", "top_n = 3");
    let out = recpipe(p, &["run", "example", "--run-id", "r1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = current_rows(p);
    assert_eq!(now * 10, first * 3, "the list of top_n = 3 is current");
    assert_eq!(
        printed(&out).0,
        now,
        "the printed count is what readers see"
    );
    assert_eq!(manifest(p, "r1", "publish").rows as usize, now);
    assert_eq!(current(p), "r1-2");

    // Back to 10: a new list again (its `generated_at` differs from the one
    // kept as `r1`), so a third version.
    edit(p, "example.toml", "top_n = 3", "top_n = 10");
    let out = recpipe(p, &["run", "example", "--run-id", "r1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!((current(p), current_rows(p)), ("r1-3".to_string(), first));
    assert_eq!(printed(&out).0, first);

    // Rolling back returns to the top-3 list.
    let out = recpipe(p, &["rollback", "example"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(current_rows(p), now);
}

#[test]
fn writing_the_same_list_again_does_nothing_and_says_so() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["run", "example", "--run-id", "r1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let list = p.join("state/runs/example/r1/user_recs/data.parquet");
    let write = |version: &str| {
        let args = [
            "step",
            "write",
            "--input",
            list.to_str().unwrap(),
            "--sink",
            "local_lists",
            "--table",
            "example_user_recs",
            "--version",
            version,
        ];
        let out = recpipe(p, &args, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let again = write("r1");
    assert_eq!(again["details"]["unchanged"], true, "{again}");
    assert_eq!(again["rows"].as_u64().unwrap() as usize, current_rows(p));
    assert_eq!(current(p), "r1");
    // Another version of the same bytes is published (made current) as asked.
    let other = write("r9");
    assert_eq!(other["details"]["unchanged"], false, "{other}");
    assert_eq!(current(p), "r9");
}

#[test]
fn an_empty_list_is_refused_and_the_previous_stays_current() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["run", "example", "--run-id", "r1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = current_rows(p);

    // No score reaches the minimum: the recommend step, told to accept it,
    // makes an empty list, which the write step refuses on its own.
    edit(
        p,
        "example.toml",
        "top_n = 10",
        "top_n = 10\nmin_score = 1e30\nallow_empty = true",
    );
    let out = recpipe(p, &["run", "example", "--run-id", "r2"], &[]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("the list for table `example_user_recs` is empty; nothing was published and the previous list stays current (set `allow_empty = true` on the write step"),
        "{err}"
    );
    let publish = record(p, "r2")
        .steps
        .into_iter()
        .find(|s| s.id == "publish")
        .unwrap();
    assert_eq!(publish.status, StepStatus::Failed);
    assert_eq!(publish.error_class, Some(ErrorClass::InvalidInput));
    assert_eq!(publish.attempts, 1, "a data error is not retried");
    assert_eq!((current(p), current_rows(p)), ("r1".to_string(), before));

    // Allowed on the step, the empty list is published.
    edit(
        p,
        "example.toml",
        "retries = 3",
        "retries = 3\nallow_empty = true",
    );
    let out = recpipe(p, &["run", "example", "--run-id", "r2"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!((current(p), current_rows(p)), ("r2".to_string(), 0));

    // The command alone refuses it too (exit 2), unless `--allow-empty`.
    let empty = p.join("state/runs/example/r2/user_recs/data.parquet");
    let args = |allow: bool| {
        let mut a = vec![
            "step",
            "write",
            "--input",
            empty.to_str().unwrap(),
            "--sink",
            "local_lists",
            "--table",
            "other",
        ];
        if allow {
            a.push("--allow-empty");
        }
        recpipe(p, &a, &[])
    };
    let out = args(false);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("pass `--allow-empty`"),
        "{}",
        text(&out)
    );
    assert!(std::fs::metadata(p.join("state/published/other/CURRENT")).is_err());
    let out = args(true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn rollback_with_nothing_published_says_so() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["rollback", "example"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("table `example_user_recs` has never been published here"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("publish a list first"),
        "{}",
        text(&out)
    );
    let out = recpipe(p, &["run", "example", "--run-id", "r1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = recpipe(p, &["rollback", "example"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("table `example_user_recs` has no version before `r1` to roll back to"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_unreachable_source_exits_75_without_printing_its_password() {
    let dir = project();
    let p = dir.path();
    let file = p.join("pipelines/example.toml");
    let text_ = std::fs::read_to_string(&file).unwrap();
    // The closed-items list now comes from a database nobody listens for.
    std::fs::write(
        &file,
        text_.replacen(
            "source = \"local\"\nsql = \"sql/example_closed_items.sql\"",
            "source = \"down\"\nsql = \"sql/example_closed_items.sql\"",
            1,
        ),
    )
    .unwrap();
    let env = [
        ("RECPIPE__SOURCES__DOWN__KIND", "postgres"),
        (
            "RECPIPE__SOURCES__DOWN__DSN",
            "host=127.0.0.1 port=1 user=app password=Zz-unreachable-pw dbname=x",
        ),
        ("RECPIPE__SOURCES__DOWN__CONNECT_RETRIES", "0"),
        ("RECPIPE__RUNTIME__RETRY_BASE_DELAY", "1ms"),
        ("RECPIPE__RUNTIME__RETRY_MAX_DELAY", "2ms"),
    ];
    let out = recpipe(p, &["run", "example", "--run-id", "down"], &env);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(75), "{all}");
    assert!(!all.contains("Zz-unreachable-pw"), "{all}");
    let run_json = std::fs::read_to_string(p.join("state/runs/example/down/run.json")).unwrap();
    assert!(!run_json.contains("Zz-unreachable-pw"), "{run_json}");
    let r = record(p, "down");
    let closed = r.steps.iter().find(|s| s.id == "closed_items").unwrap();
    assert_eq!(closed.status, StepStatus::Failed);
}

#[test]
fn a_step_command_exits_with_the_class_of_its_error() {
    let dir = project();
    let p = dir.path();
    std::fs::write(p.join("bad.sql"), "SELECT item_id FROM items").unwrap();
    let table = format!("items={}", p.join("data/example/items.parquet").display());
    let out = recpipe(
        p,
        &[
            "step",
            "extract",
            "--table",
            &table,
            "--sql",
            "bad.sql",
            "--role",
            "interactions",
            "--output",
            "out",
        ],
        &[],
    );
    // `user_id` is missing: the data is invalid input, as in a pipeline run.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // A missing input file will not appear by retrying: invalid input too.
    let out = recpipe(
        p,
        &[
            "step",
            "train",
            "--input",
            "missing.parquet",
            "--model",
            "popular",
            "--output",
            "m",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
