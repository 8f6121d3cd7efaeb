//! `recpipe step estimate`: per-item rates by empirical Bayes, from impressions or
//! counts, checked against planted truth; and every kind of bad input refused
//! with its column and row.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recpipe::artifact::{read_parquet, write_parquet};
use recpipe::synth::beta_sample;
use serde_json::Value;

use crate::common::{edit, i64s, project, recpipe, text};

type Columns<'a> = Vec<(&'a str, ArrayRef)>;

/// A Parquet file of the named columns.
fn events(dir: &Path, name: &str, columns: Columns) -> PathBuf {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch =
        RecordBatch::try_new(schema.clone(), columns.into_iter().map(|c| c.1).collect()).unwrap();
    let path = dir.join(format!("{name}.parquet"));
    write_parquet(&path, schema, &[batch]).unwrap();
    path
}

fn estimate(dir: &Path, input: &Path, extra: &[&str]) -> std::process::Output {
    let out = dir.join("out");
    let mut args = vec![
        "step",
        "estimate",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    recpipe(dir, &args, &[])
}

fn floats(b: &RecordBatch, name: &str) -> Vec<f64> {
    b.column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .values()
        .to_vec()
}

#[test]
fn planted_rates_are_recovered_and_covered() {
    // 2,000 items with rates drawn from Beta(4, 196) (mean 2%), 50 to 2,000
    // impressions each, given as counts; a second set as one row per impression.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let items = 2000;
    let truth: Vec<f64> = (0..items)
        .map(|_| beta_sample(&mut rng, 4.0, 196.0))
        .collect();
    let trials: Vec<i64> = (0..items).map(|_| rng.random_range(50..2000)).collect();
    let successes: Vec<i64> = trials
        .iter()
        .zip(&truth)
        .map(|(&n, &p)| (0..n).filter(|_| rng.random::<f64>() < p).count() as i64)
        .collect();
    let input = events(
        dir.path(),
        "counts",
        vec![
            (
                "item_id",
                Arc::new(Int64Array::from_iter_values(0..items as i64)),
            ),
            ("trials", Arc::new(Int64Array::from(trials.clone()))),
            ("successes", Arc::new(Int64Array::from(successes.clone()))),
        ],
    );
    let o = estimate(dir.path(), &input, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    let prior = &summary["details"]["prior"];
    let (a, b) = (prior["a"].as_f64().unwrap(), prior["b"].as_f64().unwrap());
    // The prior's mean and spread come back within sampling error of the truth.
    assert!((a / (a + b) - 0.02).abs() < 0.002, "{prior}");
    assert!((a + b) > 100.0 && (a + b) < 400.0, "{prior}");
    assert!(!prior["flat"].as_bool().unwrap());

    let (_, batches) = read_parquet(&dir.path().join("out/data.parquet")).unwrap();
    let b0 = &batches[0];
    assert_eq!(i64s(b0, "item_id"), (0..items as i64).collect::<Vec<_>>());
    let (mean, lower, upper) = (
        floats(b0, "posterior_mean"),
        floats(b0, "lower"),
        floats(b0, "upper"),
    );
    // 95% intervals cover about 95% of the planted rates (±3 standard errors).
    let covered = (0..items)
        .filter(|&i| lower[i] <= truth[i] && truth[i] <= upper[i])
        .count() as f64
        / items as f64;
    assert!((covered - 0.95).abs() < 0.015, "coverage {covered}");
    // Shrinkage beats the raw rates, most where counts are small.
    let rmse = |est: &dyn Fn(usize) -> f64| {
        ((0..items).map(|i| (est(i) - truth[i]).powi(2)).sum::<f64>() / items as f64).sqrt()
    };
    let raw = rmse(&|i| successes[i] as f64 / trials[i] as f64);
    let eb = rmse(&|i| mean[i]);
    assert!(eb < 0.85 * raw, "EB {eb} against raw {raw}");

    // The same counts as one row per impression give the same estimates.
    let (mut ids, mut converted) = (Vec::new(), Vec::new());
    for i in 0..items {
        for k in 0..trials[i] {
            ids.push(format!("job-{i:05}"));
            converted.push((k < successes[i]) as i64);
        }
    }
    let rows = events(
        dir.path(),
        "rows",
        vec![
            ("item_id", Arc::new(StringArray::from(ids))),
            ("converted", Arc::new(Int64Array::from(converted))),
        ],
    );
    let o = estimate(dir.path(), &rows, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (_, batches) = read_parquet(&dir.path().join("out/data.parquet")).unwrap();
    let again = floats(&batches[0], "posterior_mean");
    assert!(
        again.iter().zip(&mean).all(|(x, y)| (x - y).abs() < 1e-12),
        "impressions and counts disagree"
    );
}

#[test]
fn groups_get_their_own_prior_and_small_ones_the_global() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    // Category "a": 60 items at about 1%; "b": 60 at about 6%; "c": 5 items.
    let (mut ids, mut groups, mut trials, mut successes) = (vec![], vec![], vec![], vec![]);
    for (g, n, mean) in [("a", 60, 0.01), ("b", 60, 0.06), ("c", 5, 0.03)] {
        for _ in 0..n {
            let p = beta_sample(&mut rng, 50.0 * mean, 50.0 * (1.0 - mean));
            let t: i64 = rng.random_range(100..600);
            ids.push(ids.len() as i64);
            groups.push(g);
            trials.push(t);
            successes.push((0..t).filter(|_| rng.random::<f64>() < p).count() as i64);
        }
    }
    let input = events(
        dir.path(),
        "grouped",
        vec![
            ("item_id", Arc::new(Int64Array::from(ids))),
            ("category", Arc::new(StringArray::from(groups))),
            ("trials", Arc::new(Int64Array::from(trials))),
            ("successes", Arc::new(Int64Array::from(successes))),
        ],
    );
    let o = estimate(dir.path(), &input, &["--group", "category"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let prior: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/prior.json")).unwrap()).unwrap();
    let mean = |g: &str| prior["groups"][g]["prior"]["mean"].as_f64().unwrap();
    assert!(
        (mean("a") - 0.01).abs() < 0.004 && (mean("b") - 0.06).abs() < 0.015,
        "{prior}"
    );
    assert_eq!(prior["groups"]["c"]["fallback"], true);
    assert_eq!(prior["groups"]["c"]["prior"], prior["global"]);
    let (_, batches) = read_parquet(&dir.path().join("out/data.parquet")).unwrap();
    assert!(batches[0].column_by_name("category").is_some());
}

#[test]
fn bad_events_are_refused_naming_the_column_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let ids = || -> ArrayRef { Arc::new(Int64Array::from(vec![1, 2, 3])) };
    let cases: Vec<(&str, Columns, &str)> = vec![
        (
            "converted_2",
            vec![
                ("item_id", ids()),
                ("converted", Arc::new(Int64Array::from(vec![0, 2, 1]))),
            ],
            "row 2: `converted` is 2; it must be 0 or 1",
        ),
        (
            "converted_nan",
            vec![
                ("item_id", ids()),
                (
                    "converted",
                    Arc::new(Float64Array::from(vec![0.0, 1.0, f64::NAN])),
                ),
            ],
            "row 3: `converted` is NaN",
        ),
        (
            "more_successes",
            vec![
                ("item_id", ids()),
                ("trials", Arc::new(Int64Array::from(vec![5, 5, 5]))),
                ("successes", Arc::new(Int64Array::from(vec![1, 6, 0]))),
            ],
            "row 2: `successes` (6) is more than `trials` (5)",
        ),
        (
            "negative",
            vec![
                ("item_id", ids()),
                ("trials", Arc::new(Int64Array::from(vec![5, -1, 5]))),
                ("successes", Arc::new(Int64Array::from(vec![1, 0, 0]))),
            ],
            "row 2: `trials` is -1; counts must be 0 or more",
        ),
        (
            "huge",
            vec![
                ("item_id", ids()),
                (
                    "trials",
                    Arc::new(Int64Array::from(vec![1 << 49, 1 << 49, 1])),
                ),
                ("successes", Arc::new(Int64Array::from(vec![1, 0, 0]))),
            ],
            "row 3: more than 1125899906842624 trials in all",
        ),
        (
            "no_outcome",
            vec![
                ("item_id", ids()),
                ("clicks", Arc::new(Int64Array::from(vec![0, 1, 0]))),
            ],
            "needs `converted` (0/1 per impression) or `trials` and `successes`",
        ),
        (
            "empty",
            vec![
                ("item_id", Arc::new(Int64Array::from(Vec::<i64>::new()))),
                ("converted", Arc::new(Int64Array::from(Vec::<i64>::new()))),
            ],
            "has no rows: nothing to estimate",
        ),
    ];
    for (name, columns, expected) in cases {
        let input = events(dir.path(), name, columns);
        let o = estimate(dir.path(), &input, &[]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(expected) && err.contains(&format!("{name}.parquet")),
            "{name}: {err}"
        );
    }
    // An empty group value, and a group column that is not there.
    let input = events(
        dir.path(),
        "empty_group",
        vec![
            ("item_id", ids()),
            (
                "category",
                Arc::new(StringArray::from(vec![Some("a"), None, Some("b")])),
            ),
            ("converted", Arc::new(Int64Array::from(vec![0, 1, 0]))),
        ],
    );
    let o = estimate(dir.path(), &input, &["--group", "category"]);
    assert!(
        text(&o).contains("row 2: the group column `category` is empty"),
        "{}",
        text(&o)
    );
    let o = estimate(dir.path(), &input, &["--group", "brand"]);
    assert!(text(&o).contains("no `brand` column"), "{}", text(&o));
    // Out-of-range settings, each named.
    let o = estimate(dir.path(), &input, &["--level", "1.5", "--reference", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--level: 1.5 is out of range") && text(&o).contains("--reference"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_example_pipeline_publishes_rates_that_cover_the_planted_ones() {
    let dir = project();
    let p = dir.path();
    let o = recpipe(p, &["run", "example-effects", "--run-id", "r1"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let list = p.join("state/published/example_apply_rates/current/data.parquet");
    let (_, batches) = read_parquet(&list).unwrap();
    let published = &batches[0];
    assert_eq!(published.num_rows(), 500);
    // The planted rates, from the generator's own file.
    let (_, truth) = read_parquet(&p.join("data/example/item_counts.parquet")).unwrap();
    let planted = floats(&truth[0], "planted_rate");
    assert_eq!(i64s(published, "item_id"), i64s(&truth[0], "item_id"));
    let (mean, lower, upper) = (
        floats(published, "posterior_mean"),
        floats(published, "lower"),
        floats(published, "upper"),
    );
    let covered = (0..500)
        .filter(|&i| lower[i] <= planted[i] && planted[i] <= upper[i])
        .count() as f64
        / 500.0;
    // A prior per category, each from about 40 jobs, is itself uncertain, which
    // the intervals do not carry (empirical Bayes' known optimism): here 91%
    // against 95% with one prior for all (checked on 2,000 items above).
    assert!((0.88..=0.98).contains(&covered), "coverage {covered}");
    let raw = published
        .column_by_name("raw_rate")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .clone();
    let rmse = |est: &dyn Fn(usize) -> f64| {
        ((0..500).map(|i| (est(i) - planted[i]).powi(2)).sum::<f64>() / 500.0).sqrt()
    };
    let (eb, mle) = (rmse(&|i| mean[i]), rmse(&|i| raw.value(i)));
    assert!(eb < 0.8 * mle, "EB {eb} against raw {mle}");
    assert!(published.column_by_name("category").is_some());

    // A group column named like an output column is refused at validation.
    edit(
        p,
        "example_effects.toml",
        "group = \"category\"",
        "group = \"trials\"",
    );
    let o = recpipe(p, &["validate"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("example_effects.toml:")
            && text(&o).contains("`trials` cannot be the group column"),
        "{}",
        text(&o)
    );
}
