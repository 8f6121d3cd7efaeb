//! Tuning inside a pipeline and the publish gate, end to end through `recpipe
//! run`: a tuned train step records its trials and starts the next run from
//! its choice; a gated write step blocks a worse model or a shrunken list, in
//! the Parquet sink (PostgreSQL: `postgres.rs`), and the previous list stays
//! current.

use std::path::Path;

use crate::common::{block_on, edit, project, recpipe, s3_url, text};

/// A walk model, evaluated, its lists published behind a gate; `{sink}` is
/// the sink.
pub const GATED: &str = r#"
name = "gated"

[steps.interactions]
kind = "extract"
source = "local"
sql = "sql/example_interactions.sql"
role = "interactions"
params = { min_value = 1 }

[steps.model]
kind = "train"
needs = ["interactions"]
model = "rp3beta"

[steps.recs]
kind = "recommend"
needs = ["model"]
top_n = 10

[steps.quality]
kind = "evaluate"
needs = ["interactions"]
model = "rp3beta"

[steps.publish]
kind = "write"
needs = ["recs", "quality"]
sink = "{sink}"
table = "gated_recs"
gate = { evaluate = "quality" }
"#;

pub fn run(project: &Path, run_id: &str, env: &[(&str, &str)]) -> std::process::Output {
    recpipe(project, &["run", "gated", "--run-id", run_id], env)
}

/// A project holding `GATED` as `pipelines/gated.toml`, publishing to the
/// local Parquet sink.
fn gated_project() -> tempfile::TempDir {
    let dir = project();
    std::fs::write(
        dir.path().join("pipelines/gated.toml"),
        GATED.replace("{sink}", "local_lists"),
    )
    .unwrap();
    dir
}

/// The runs a `published.json` remembers, oldest first.
fn recorded_runs(record: &[u8]) -> Vec<String> {
    let record: Vec<serde_json::Value> = serde_json::from_slice(record).unwrap();
    record
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

fn current_parquet(project: &Path) -> String {
    std::fs::read_to_string(project.join("state/published/gated_recs/CURRENT"))
        .unwrap()
        .trim()
        .to_string()
}

/// A worse model in the evaluation (popularity instead of the walk) and
/// then a list cut to a fifth are each blocked with exit 3 and say why;
/// the first publish stays current and the step's manifest says what failed.
#[test]
fn the_gate_blocks_a_worse_model_and_a_shrunken_list_in_parquet() {
    let dir = gated_project();
    let (p, file) = (dir.path(), "gated.toml");
    let out = run(p, "g1", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(current_parquet(p), "g1");
    let manifest: serde_json::Value =
        recpipe::artifact::read_json(&p.join("state/runs/gated/g1/publish/manifest.json")).unwrap();
    assert!(
        manifest.to_string().contains("over popularity"),
        "{manifest}"
    );

    edit(
        p,
        file,
        "model = \"rp3beta\"\n\n[steps.publish]",
        "model = \"popular\"\n\n[steps.publish]",
    );
    let out = run(p, "g2", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("publish gate: ndcg"), "{said}");
    assert!(said.contains("run `g1` stay current"), "{said}");
    assert_eq!(current_parquet(p), "g1");

    edit(
        p,
        file,
        "model = \"popular\"\n\n[steps.publish]",
        "model = \"rp3beta\"\n\n[steps.publish]",
    );
    edit(p, file, "top_n = 10", "top_n = 2");
    let out = run(p, "g3", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("rows of `gated_recs`"),
        "{}",
        text(&out)
    );
    assert_eq!(current_parquet(p), "g1");
    // The list itself is still readable where the service reads it.
    let (_, batches) =
        recpipe::artifact::read_parquet(&p.join("state/published/gated_recs/current/data.parquet"))
            .unwrap();
    assert!(batches.iter().map(|b| b.num_rows()).sum::<usize>() > 1000);

    // Back to the good model and lists: published again.
    edit(p, file, "top_n = 2", "top_n = 10");
    let out = run(p, "g4", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(current_parquet(p), "g4");

    // Rolled back to g1, the gate compares the next run with g1's lists,
    // not with g4's that are no longer served.
    let out = recpipe(p, &["rollback", "gated"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(current_parquet(p), "g1");
    let record = std::fs::read(p.join("state/steps/gated/publish/published.json")).unwrap();
    assert_eq!(recorded_runs(&record), ["g1"]);
    edit(p, file, "top_n = 10", "top_n = 2");
    let out = run(p, "g5", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("run `g1` stay current"),
        "{}",
        text(&out)
    );
}

/// A gate naming a step that is not an evaluate, or one outside `needs`, is
/// refused by `validate` with the file and line.
#[test]
fn a_gate_on_a_step_that_is_not_an_evaluate_is_refused_with_its_line() {
    let dir = project();
    let p = dir.path();
    let wrong = GATED.replace("{sink}", "local_lists").replace(
        "gate = { evaluate = \"quality\" }",
        "gate = { evaluate = \"recs\" }",
    );
    std::fs::write(p.join("pipelines/gated.toml"), wrong).unwrap();
    let out = recpipe(p, &["validate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("gated.toml:31"), "{said}");
    assert!(
        said.contains("`recs` is a `recommend` step, not an `evaluate` step"),
        "{said}"
    );
}

/// A tuned train step: every trial in the manifest, the choice kept for the
/// next run, which tries it first.
#[test]
fn a_tuned_train_step_records_its_trials_and_starts_from_its_choice() {
    let dir = project();
    let p = dir.path();
    let pipeline = r#"
name = "tuned"

[steps.interactions]
kind = "extract"
source = "local"
sql = "sql/example_interactions.sql"
role = "interactions"
params = { min_value = 1 }

[steps.model]
kind = "train"
needs = ["interactions"]
model = "popular"

[steps.model.tune]
max_trials = 4
[[steps.model.tune.candidates]]
model = "popular"
[[steps.model.tune.candidates]]
model = "rp3beta"
beta = [0.0, 0.4]
[[steps.model.tune.candidates]]
model = "ease"
lambda = 100
"#;
    std::fs::write(p.join("pipelines/tuned.toml"), pipeline).unwrap();
    let out = recpipe(p, &["run", "tuned", "--run-id", "t1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let manifest = |run: &str| -> serde_json::Value {
        recpipe::artifact::read_json(&p.join(format!("state/runs/tuned/{run}/model/manifest.json")))
            .unwrap()
    };
    let first = manifest("t1");
    let tune = &first["details"]["tune"];
    assert_eq!(tune["trials"].as_array().unwrap().len(), 4, "{tune}");
    assert_eq!(tune["started_from_previous"], false);
    let chosen = tune["chosen"].clone();
    assert_ne!(chosen["model"], "popular", "{tune}");
    assert_eq!(first["details"]["model"], chosen["model"]);
    let out = recpipe(p, &["run", "tuned", "--run-id", "t2"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let second = manifest("t2");
    let tune = &second["details"]["tune"];
    assert_eq!(tune["started_from_previous"], true);
    assert_eq!(tune["trials"][0]["setting"], chosen, "{tune}");
}

/// Each step of a gated pipeline run as an Argo pod runs it (`recpipe step
/// run --store s3://…`: each pod works in a fresh local copy): the second
/// run's gate still compares with the first run's publish, kept in the store
/// beside the runs, and blocks a worse model.
#[test]
fn pods_with_empty_disks_gate_against_the_publish_kept_in_the_store() {
    let dir = gated_project();
    let (p, file) = (dir.path(), "gated.toml");
    let store = s3_url("gate-pods");
    let pod_run = |run_id: &str, step: &str| {
        recpipe(
            p,
            &[
                "step",
                "run",
                "--pipeline",
                "gated",
                "--step",
                step,
                "--run-id",
                run_id,
                "--store",
                &store,
            ],
            &[],
        )
    };
    let steps = ["interactions", "model", "recs", "quality", "publish"];
    for step in steps {
        let out = pod_run("p1", step);
        assert_eq!(out.status.code(), Some(0), "{step}: {}", text(&out));
    }
    assert_eq!(current_parquet(p), "p1");
    let remote = recpipe::store::Remote::open(&store).unwrap();
    let record = block_on(remote.get("steps/gated/publish/published.json")).unwrap();
    assert!(record.is_some(), "no publish record in {store}");

    // Popularity in the evaluation: no lift over itself is needed to pass the
    // lift check, so only the comparison with p1 can block it.
    edit(
        p,
        file,
        "model = \"rp3beta\"\n\n[steps.publish]",
        "model = \"popular\"\n\n[steps.publish]",
    );
    for step in &steps[..4] {
        let out = pod_run("p2", step);
        assert_eq!(out.status.code(), Some(0), "{step}: {}", text(&out));
    }
    let out = pod_run("p2", "publish");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("against the last publish's"), "{said}");
    assert!(!said.contains("over popularity"), "{said}");
    assert!(said.contains("run `p1` stay current"), "{said}");
    assert_eq!(current_parquet(p), "p1");

    // The walk again: p3 publishes. Rolled back with the store, the record
    // kept there forgets p3.
    edit(
        p,
        file,
        "model = \"popular\"\n\n[steps.publish]",
        "model = \"rp3beta\"\n\n[steps.publish]",
    );
    for step in steps {
        let out = pod_run("p3", step);
        assert_eq!(out.status.code(), Some(0), "{step}: {}", text(&out));
    }
    assert_eq!(current_parquet(p), "p3");
    let out = recpipe(p, &["rollback", "gated", "--store", &store], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("warning"), "{}", text(&out));
    assert_eq!(current_parquet(p), "p1");
    let (bytes, _) = block_on(remote.get("steps/gated/publish/published.json"))
        .unwrap()
        .unwrap();
    assert_eq!(recorded_runs(&bytes), ["p1"]);
}

/// `recpipe step write` alone holds the same gate: with `--state` and
/// `--gate-metrics`, a list whose evaluation fell below the last publish's
/// is blocked with exit 3 and the previous list stays current; a gate key
/// out of bounds is refused naming the flag.
#[test]
fn step_write_alone_holds_the_gate_with_its_state_and_metrics() {
    let dir = gated_project();
    let p = dir.path();
    let out = run(p, "g1", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run_dir = p.join("state/runs/gated/g1");
    let list = run_dir.join("recs/data.parquet");
    let metrics = run_dir.join("quality/metrics.json");
    let state = p.join("cli-state");
    let write = |version: &str, metrics: &Path, more: &[&str]| {
        let mut args = vec![
            "step",
            "write",
            "--input",
            list.to_str().unwrap(),
            "--sink",
            "local_lists",
            "--table",
            "cli_recs",
            "--version",
            version,
            "--state",
            state.to_str().unwrap(),
            "--gate-metrics",
            metrics.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        recpipe(p, &args, &[])
    };
    let current = || std::fs::read_to_string(p.join("state/published/cli_recs/CURRENT")).unwrap();
    let out = write("c1", &metrics, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(current().trim(), "c1");

    // The same list, evaluated at half its nDCG: still above popularity's,
    // below 0.95 × c1's.
    let mut figures: serde_json::Value = recpipe::artifact::read_json(&metrics).unwrap();
    let ndcg = figures["metrics"]["ndcg"].as_f64().unwrap();
    figures["metrics"]["ndcg"] = serde_json::json!(ndcg / 2.0);
    let worse = p.join("worse.json");
    std::fs::write(&worse, figures.to_string()).unwrap();
    let out = write("c2", &worse, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("ndcg against the last publish's"),
        "{}",
        text(&out)
    );
    assert_eq!(current().trim(), "c1");

    let out = write("c3", &metrics, &["--gate", "min_ratio=200"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--gate min_ratio: must be between 0 and 100"),
        "{}",
        text(&out)
    );
}
