//! The run history in SQLite: runs survive reopening, a duplicate run id is not
//! recorded twice, runs left "running" become interrupted, schedules only advance.

use chrono::{DateTime, TimeZone, Utc};
use recpipe::pipeline::history::{History, RunFilter};
use recpipe::pipeline::{RunRecord, RunStatus};

fn record(pipeline: &str, run_id: &str, started: DateTime<Utc>, status: RunStatus) -> RunRecord {
    RunRecord {
        status,
        ..RunRecord::started(pipeline, run_id, started, started)
    }
}

fn at(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, hour, 0, 0).unwrap()
}

#[test]
fn runs_survive_reopening_and_duplicates_are_no_ops() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = History::open(dir.path()).unwrap();
        assert!(
            h.begin(&record("a", "r1", at(1), RunStatus::Running))
                .unwrap()
        );
        assert!(
            !h.begin(&record("a", "r1", at(2), RunStatus::Failed))
                .unwrap(),
            "duplicate"
        );
        assert!(
            h.begin(&record("b", "r1", at(3), RunStatus::Running))
                .unwrap(),
            "other pipeline"
        );
        let mut done = record("a", "r1", at(1), RunStatus::Succeeded);
        done.finished_at = Some(at(2));
        h.update(&done).unwrap();
    }
    let h = History::open(dir.path()).unwrap();
    let r1 = h.run("a", "r1").unwrap().unwrap();
    assert_eq!(r1.status, RunStatus::Succeeded);
    assert_eq!(r1.finished_at, Some(at(2)));
    assert!(h.run("a", "nope").unwrap().is_none());
    let all = h.runs(&RunFilter::default()).unwrap();
    let ids: Vec<_> = all
        .iter()
        .map(|r| (r.pipeline.as_str(), r.started_at))
        .collect();
    assert_eq!(ids, vec![("b", at(3)), ("a", at(1))], "newest first");
    let only_a = RunFilter {
        pipeline: Some("a".into()),
        ..RunFilter::default()
    };
    assert_eq!(h.runs(&only_a).unwrap().len(), 1);
    let failed = RunFilter {
        status: Some(RunStatus::Failed),
        ..RunFilter::default()
    };
    assert!(h.runs(&failed).unwrap().is_empty());
}

#[test]
fn running_runs_become_interrupted_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(dir.path()).unwrap();
    h.begin(&record("a", "r1", at(1), RunStatus::Running))
        .unwrap();
    h.begin(&record("a", "r2", at(2), RunStatus::Succeeded))
        .unwrap();
    drop(h);
    let h = History::open(dir.path()).unwrap();
    let interrupted = h.interrupt_running().unwrap();
    assert_eq!(interrupted.len(), 1);
    assert_eq!(interrupted[0].run_id, "r1");
    assert_eq!(
        h.run("a", "r1").unwrap().unwrap().status,
        RunStatus::Interrupted
    );
    assert_eq!(
        h.run("a", "r2").unwrap().unwrap().status,
        RunStatus::Succeeded
    );
}

#[test]
fn last_scheduled_only_moves_forward() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(dir.path()).unwrap();
    assert_eq!(h.last_scheduled("a").unwrap(), None);
    h.set_last_scheduled("a", at(5)).unwrap();
    h.set_last_scheduled("a", at(4)).unwrap();
    assert_eq!(h.last_scheduled("a").unwrap(), Some(at(5)));
    h.set_last_scheduled("a", at(6)).unwrap();
    assert_eq!(h.last_scheduled("a").unwrap(), Some(at(6)));
}

#[test]
fn a_run_is_found_by_id_in_any_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(dir.path()).unwrap();
    h.begin(&record("gone", "r1", at(1), RunStatus::Succeeded))
        .unwrap();
    h.begin(&record("other", "r1", at(2), RunStatus::Failed))
        .unwrap();
    h.begin(&record("other", "r2", at(3), RunStatus::Failed))
        .unwrap();
    let found = h.find("r1", None).unwrap();
    let pipelines: Vec<&str> = found.iter().map(|r| r.pipeline.as_str()).collect();
    assert_eq!(pipelines, ["gone", "other"]);
    assert_eq!(h.find("r1", Some("gone")).unwrap().len(), 1);
    assert!(h.find("nope", None).unwrap().is_empty());
}

#[test]
fn each_startup_that_finds_a_run_running_counts_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(dir.path()).unwrap();
    h.begin(&record("a", "r1", at(1), RunStatus::Running))
        .unwrap();
    let first = h.interrupt_running().unwrap();
    assert_eq!(first[0].crashes, 1);
    // Resumed, and the process died again.
    let mut resumed = first[0].clone();
    resumed.status = RunStatus::Running;
    h.update(&resumed).unwrap();
    let second = h.interrupt_running().unwrap();
    assert_eq!(second[0].crashes, 2);
    let stored = h.run("a", "r1").unwrap().unwrap();
    assert_eq!((stored.status, stored.crashes), (RunStatus::Interrupted, 2));
    assert!(stored.reason.unwrap().contains("2 times"));
}
