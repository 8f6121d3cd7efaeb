//! Retention of run directories and leftovers: the newest finished runs are kept,
//! runs in progress or waiting to resume never go, stale temporary files do; and
//! `recpipe run` prunes after itself.

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{TimeZone, Utc};
use recpipe::pipeline::retention::{Policy, prune_runs, prune_temp_files};
use recpipe::pipeline::{RunDir, RunRecord, RunStatus};

use crate::common::{project, recpipe, text};

fn run_dir(state: &Path, run_id: &str, hours_ago: i64, status: RunStatus) {
    let started =
        Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap() - chrono::Duration::hours(hours_ago);
    let dir = RunDir::new(state, "p", run_id);
    dir.write_record(&RunRecord {
        status,
        ..RunRecord::started("p", run_id, started, started)
    })
    .unwrap();
    std::fs::write(dir.root.join("big.bin"), vec![0u8; 1000]).unwrap();
}

fn left(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state.join("runs/p"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn keeps_the_newest_finished_runs_and_never_one_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let now = SystemTime::from(Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap());
    run_dir(state, "a-old", 10, RunStatus::Succeeded);
    run_dir(state, "b-failed", 9, RunStatus::Failed);
    run_dir(state, "c-running", 8, RunStatus::Running);
    run_dir(state, "d-interrupted", 7, RunStatus::Interrupted);
    run_dir(state, "e", 2, RunStatus::Succeeded);
    run_dir(state, "f-daemon", 1, RunStatus::Succeeded);
    run_dir(state, "g-new", 0, RunStatus::Cancelled);
    let policy = Policy {
        keep_runs: 2,
        max_age: None,
    };
    let pruned = prune_runs(state, "p", &policy, now, &|id| id == "f-daemon").unwrap();
    assert_eq!(pruned.runs.len(), 2, "{pruned:?}");
    assert!(pruned.bytes >= 2000);
    assert_eq!(
        left(state),
        ["c-running", "d-interrupted", "e", "f-daemon", "g-new"]
    );

    // Age: finished runs older than the limit go even below the count.
    let policy = Policy {
        keep_runs: 10,
        max_age: Some(Duration::from_secs(3 * 3600)),
    };
    prune_runs(state, "p", &policy, now, &|_| false).unwrap();
    assert_eq!(
        left(state),
        ["c-running", "d-interrupted", "e", "f-daemon", "g-new"]
    );
    let later = now + Duration::from_secs(2 * 3600);
    prune_runs(state, "p", &policy, later, &|_| false).unwrap();
    assert_eq!(
        left(state),
        ["c-running", "d-interrupted", "f-daemon", "g-new"]
    );
}

#[test]
fn stale_temporary_files_go_fresh_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let deep = root.join("runs/p/r1/step");
    std::fs::create_dir_all(&deep).unwrap();
    let stale = deep.join(".data.parquet.tmp-123-456");
    let check = root.join(".healthcheck-123-0");
    let fresh = deep.join(".other.parquet.tmp-999-1");
    let data = deep.join("data.parquet");
    for f in [&stale, &check, &fresh, &data] {
        std::fs::write(f, b"x").unwrap();
    }
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    for f in [&stale, &check, &data] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    let pruned = prune_temp_files(&[root.to_path_buf()], SystemTime::now()).unwrap();
    assert_eq!(pruned.temp_files.len(), 2, "{pruned:?}");
    assert!(std::fs::metadata(&stale).is_err());
    assert!(std::fs::metadata(&check).is_err());
    assert!(std::fs::metadata(&fresh).is_ok(), "may be being written");
    assert!(std::fs::metadata(&data).is_ok(), "not a leftover");
}

#[test]
fn the_run_command_prunes_after_itself() {
    let dir = project();
    let p = dir.path();
    let env = [("RECPIPE__RETENTION__KEEP_RUNS", "1")];
    for run_id in ["first", "second"] {
        let out = recpipe(p, &["run", "example", "--run-id", run_id], &env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let runs: Vec<String> = std::fs::read_dir(p.join("state/runs/example"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs, ["second"]);
}
