//! `allocate`: an experiment that moves traffic to its best arm over rounds of
//! simulated users, its states (scheduled, winner, ended), and bad experiments
//! and logs refused with the previous allocation left published.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recpipe::artifact::read_parquet;
use serde_json::Value;

use crate::common::{edit, project, published_weights, recpipe, text, write_columns};

/// Writes per-arm counts and runs `recpipe step allocate`: the weights, the
/// state file, and the process output.
fn allocate(
    dir: &Path,
    experiment: &str,
    arms: &[&str],
    trials: &[i64],
    successes: &[i64],
) -> (Vec<f64>, Value, std::process::Output) {
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("arm_id", Arc::new(StringArray::from(arms.to_vec()))),
        ("trials", Arc::new(Int64Array::from(trials.to_vec()))),
        ("successes", Arc::new(Int64Array::from(successes.to_vec()))),
    ];
    write_columns(&dir.join("arms.parquet"), columns);
    std::fs::write(dir.join("experiment.toml"), experiment).unwrap();
    let out = dir.join("out");
    let o = recpipe(
        dir,
        &[
            "step",
            "allocate",
            "--input",
            dir.join("arms.parquet").to_str().unwrap(),
            "--experiment",
            dir.join("experiment.toml").to_str().unwrap(),
            "--logical-date",
            "2026-12-04T00:00:00Z",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    if o.status.code() != Some(0) {
        return (Vec::new(), Value::Null, o);
    }
    let (_, batches) = read_parquet(&out.join("data.parquet")).unwrap();
    let weights = batches[0]
        .column_by_name("weight")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .values()
        .to_vec();
    let state =
        serde_json::from_str(&std::fs::read_to_string(out.join("allocation.json")).unwrap())
            .unwrap();
    (weights, state, o)
}

const THREE_ARMS: &str = r#"
experiment = "button"
arms = [{ id = "a" }, { id = "b" }, { id = "c" }]
min_share = 0.05
"#;

#[test]
fn a_simulated_experiment_moves_traffic_to_the_best_arm() {
    let dir = tempfile::tempdir().unwrap();
    let rates = [0.02, 0.03, 0.045];
    let mut rng = StdRng::seed_from_u64(5);
    let (mut trials, mut successes) = (vec![0i64; 3], vec![0i64; 3]);
    let mut weights = vec![1.0 / 3.0; 3];
    let (mut regret, mut first_best_weight) = (0.0, None);
    let (rounds, users) = (12, 3000);
    for _ in 0..rounds {
        for _ in 0..users {
            // A user gets an arm with the published weights.
            let u: f64 = rng.random();
            let arm = (0..3)
                .find(|&i| u < weights[..=i].iter().sum::<f64>())
                .unwrap_or(2);
            trials[arm] += 1;
            successes[arm] += (rng.random::<f64>() < rates[arm]) as i64;
            regret += rates[2] - rates[arm];
        }
        let (w, state, o) = allocate(
            dir.path(),
            THREE_ARMS,
            &["a", "b", "c"],
            &trials,
            &successes,
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(state["state"], "running");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{w:?}");
        assert!(
            w.iter().all(|&x| x >= 0.05 - 1e-12),
            "the minimum share: {w:?}"
        );
        first_best_weight.get_or_insert(w[2]);
        weights = w;
    }
    // The best arm ends with most of the traffic, more than it started with,
    // and the experiment cost less than splitting evenly would have.
    assert!(
        weights[2] > 0.6 && weights[2] > first_best_weight.unwrap(),
        "{weights:?}"
    );
    let uniform = (rounds * users) as f64 * (rates[2] - (rates[0] + rates[1] + rates[2]) / 3.0);
    assert!(
        regret < 0.6 * uniform,
        "regret {regret} against uniform's {uniform}"
    );
    assert!(trials.iter().all(|&n| n > 0));
}

#[test]
fn an_experiment_is_scheduled_decided_or_ended_by_its_dates_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (arms, trials, successes) = (["a", "b"], [6000, 6000], [120, 240]);
    let run = |extra: &str| {
        allocate(
            dir.path(),
            &format!("{THREE_ARMS}{extra}").replace(
                "arms = [{ id = \"a\" }, { id = \"b\" }, { id = \"c\" }]",
                "arms = [{ id = \"a\" }, { id = \"b\" }]",
            ),
            &arms,
            &trials,
            &successes,
        )
    };
    // Before its start: even shares.
    let (w, state, _) = run("start = \"2027-01-01T00:00:00Z\"\n");
    assert_eq!(state["state"], "scheduled");
    assert_eq!(w, vec![0.5, 0.5]);
    // The rule met: the winner gets everyone.
    let (w, state, _) = run("stop = { p_best = 0.95, min_trials = 5000 }\n");
    assert_eq!(state["state"], "winner");
    assert_eq!(state["winner"], "b");
    assert_eq!(w, vec![0.0, 1.0]);
    // Not enough trials for the rule: still running.
    let (_, state, _) = run("stop = { p_best = 0.95, min_trials = 7000 }\n");
    assert_eq!(state["state"], "running");
    // Past its end: the arm most likely best.
    let (w, state, _) = run("end = \"2026-12-01T00:00:00Z\"\n");
    assert_eq!(
        (state["state"].as_str(), w),
        (Some("ended"), vec![0.0, 1.0])
    );
    // A control at a fixed share; the rest by the posteriors.
    let (w, _, _) = run("control = { arm = \"a\", share = 0.5 }\n");
    assert_eq!(w[0], 0.5);
}

#[test]
fn bad_experiments_and_logs_are_refused_and_the_published_weights_stay() {
    let dir = tempfile::tempdir().unwrap();
    let arms = ["a", "b", "c"];
    let refused =
        |experiment: &str, arms: &[&str], trials: &[i64], successes: &[i64], expected: &[&str]| {
            let (_, _, o) = allocate(dir.path(), experiment, arms, trials, successes);
            assert_eq!(o.status.code(), Some(2), "{}", text(&o));
            for e in expected {
                assert!(text(&o).contains(e), "wanted {e:?} in {}", text(&o));
            }
        };
    refused(
        THREE_ARMS,
        &arms,
        &[10, 10, 10],
        &[1, 11, 0],
        &["row 2: `successes` (11) is more than `trials` (10)"],
    );
    refused(
        THREE_ARMS,
        &arms[..2],
        &[10, 10],
        &[1, 1],
        &["`c` of experiment `button` are missing from the logs"],
    );
    refused(
        THREE_ARMS,
        &["a", "b", "c", "d"],
        &[1, 1, 1, 1],
        &[0, 0, 0, 0],
        &["arm `d`, which experiment `button` does not list"],
    );
    refused(
        "experiment = \"x\"\narms = [{ id = \"a\" }]\n",
        &["a"],
        &[1],
        &[0],
        &["experiment.toml: arms: 1 arms; an experiment compares 2"],
    );
    refused(
        &THREE_ARMS.replace("min_share = 0.05", "min_share = 0.4"),
        &arms,
        &[1, 1, 1],
        &[0, 0, 0],
        &["min_share", "must sum to at most 1"],
    );

    // In a pipeline: a published allocation stays when the next run's logs are bad.
    let project = project();
    let p = project.path();
    let o = recpipe(p, &["run", "example-ab", "--run-id", "r1"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let published = p.join("state/published/example_ab_weights/current/data.parquet");
    let before = std::fs::read(&published).unwrap();
    // `replay` weighs each logged assignment by its arm's new share over the
    // share it was assigned with: recomputed here from the log itself.
    let column = |batches: &[RecordBatch], name: &str| -> Vec<String> {
        let c = arrow::compute::cast(
            batches[0].column_by_name(name).unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        (0..c.len()).map(|i| c.value(i).to_string()).collect()
    };
    let share: std::collections::HashMap<String, f64> = published_weights(p).into_iter().collect();
    let (_, log) = read_parquet(&p.join("data/example/ab_log.parquet")).unwrap();
    let (arms, logged, converted) = (
        column(&log, "arm_id"),
        column(&log, "probability"),
        column(&log, "converted"),
    );
    let ipw = arms
        .iter()
        .zip(&logged)
        .zip(&converted)
        .map(|((a, q), c)| share[a] / q.parse::<f64>().unwrap() * c.parse::<f64>().unwrap())
        .sum::<f64>()
        / arms.len() as f64;
    let (_, replay) =
        read_parquet(&p.join("state/runs/example-ab/r1/replay/data.parquet")).unwrap();
    let replayed: f64 = column(&replay, "ipw")[0].parse().unwrap();
    assert!((replayed - ipw).abs() < 1e-12, "{replayed} vs {ipw}");
    edit(
        p,
        "../sql/example_ab_arms.sql",
        "FROM ab_log",
        "FROM ab_log WHERE arm_id <> 'orange'",
    );
    let o = recpipe(p, &["run", "example-ab", "--run-id", "r2"], &[]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("`orange` of experiment `apply_button` are missing"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&published).unwrap(), before);
    // A bad experiment is refused at validation, with its line.
    edit(p, "example_ab.toml", "min_share = 0.05", "min_share = 0.5");
    let o = recpipe(p, &["validate"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("example_ab.toml:") && text(&o).contains("steps.weights.min_share"),
        "{}",
        text(&o)
    );
    // Two pipelines running one experiment would serve each other's units.
    edit(p, "example_ab.toml", "min_share = 0.5", "min_share = 0.05");
    let copy = std::fs::read_to_string(p.join("pipelines/example_ab.toml"))
        .unwrap()
        .replace("name = \"example-ab\"", "name = \"example-ab-copy\"")
        .replace(
            "table = \"example_ab_weights\"",
            "table = \"example_ab_copy\"",
        );
    std::fs::write(p.join("pipelines/example_ab_copy.toml"), copy).unwrap();
    let o = recpipe(p, &["validate"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let line = std::fs::read_to_string(p.join("pipelines/example_ab.toml"))
        .unwrap()
        .lines()
        .position(|l| l.starts_with("experiment ="))
        .unwrap()
        + 1;
    assert!(
        text(&o).contains(&format!("example_ab_copy.toml:{line}:"))
            && text(&o).contains("experiment `apply_button` is also run by"),
        "{}",
        text(&o)
    );
}

#[test]
fn off_policy_weighs_logged_rows_by_the_candidate_over_the_logged_propensity() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, columns| write_columns(&dir.path().join(name), columns);
    let logs = |propensity: Vec<f64>| {
        write(
            "logs.parquet",
            vec![
                (
                    "arm_id",
                    Arc::new(StringArray::from(vec!["a", "b", "a", "c"])),
                ),
                ("converted", Arc::new(Int64Array::from(vec![1, 0, 1, 0]))),
                ("propensity", Arc::new(Float64Array::from(propensity))),
            ],
        )
    };
    let policy = write(
        "policy.parquet",
        vec![
            ("arm_id", Arc::new(StringArray::from(vec!["a", "b", "c"]))),
            (
                "probability",
                Arc::new(Float64Array::from(vec![0.2, 0.8, 0.0])),
            ),
        ],
    );
    let run = |logs: &Path| {
        let out = dir.path().join("ope");
        recpipe(
            dir.path(),
            &[
                "step",
                "off-policy",
                "--logs",
                logs.to_str().unwrap(),
                "--policy",
                policy.to_str().unwrap(),
                "--clips",
                "1",
                "--output",
                out.to_str().unwrap(),
            ],
            &[],
        )
    };
    let o = run(&logs(vec![0.5, 0.25, 0.5, 0.25]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (_, batches) = read_parquet(&dir.path().join("ope/data.parquet")).unwrap();
    let col = |name: &str| {
        batches[0]
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone()
    };
    // Weights 0.4, 3.2, 0.4, 0: by hand.
    let (ipw, snipw, ess, max) = (
        col("ipw"),
        col("snipw"),
        col("effective_sample_size"),
        col("max_weight"),
    );
    assert!((ipw.value(0) - 0.2).abs() < 1e-15);
    assert!((snipw.value(0) - 0.8 / 4.0).abs() < 1e-15);
    assert!((ess.value(0) - 16.0 / 10.56).abs() < 1e-12);
    assert_eq!(max.value(0), 3.2);
    // Four rows worth about two: the estimate says so.
    let caution = batches[0].column_by_name("caution").unwrap();
    let caution = caution.as_any().downcast_ref::<StringArray>().unwrap();
    assert!(
        caution.value(0).contains("about 2 of 4 rows"),
        "{}",
        caution.value(0)
    );
    // Clipped at 1: 0.4, 1, 0.4, 0.
    assert_eq!(col("clip").value(1), 1.0);
    assert!((snipw.value(1) - 0.8 / 1.8).abs() < 1e-15);
    // A propensity of 0 cannot weigh a row.
    let o = run(&logs(vec![0.5, 0.0, 0.5, 0.25]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("row 2: propensity 0"), "{}", text(&o));
}
