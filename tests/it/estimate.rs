//! `recpipe step estimate`: per-item rates by empirical Bayes, from impressions or
//! counts, checked against planted truth; and every kind of bad input refused
//! with its column and row.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recpipe::artifact::read_parquet;
use recpipe::synth::beta_sample;
use serde_json::Value;

use crate::common::{edit, i64s, project, recpipe, text, write_columns};

type Columns<'a> = Vec<(&'a str, ArrayRef)>;

/// A Parquet file of the named columns.
fn events(dir: &Path, name: &str, columns: Columns) -> PathBuf {
    write_columns(&dir.join(format!("{name}.parquet")), columns)
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

/// A table's rows by its `term` column: (estimate, std_error, z, p_value, lower, upper).
fn coefficients(path: &Path) -> std::collections::BTreeMap<String, [f64; 6]> {
    let (_, batches) = read_parquet(path).unwrap();
    let b = &batches[0];
    let terms = b
        .column_by_name("term")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let cols = ["estimate", "std_error", "z", "p_value", "lower", "upper"].map(|c| floats(b, c));
    (0..b.num_rows())
        .map(|i| (terms.value(i).to_string(), cols.each_ref().map(|c| c[i])))
        .collect()
}

fn logit(s: f64, n: f64) -> f64 {
    (s / (n - s)).ln()
}

#[test]
fn logistic_matches_the_closed_form_of_a_saturated_model() {
    // One categorical feature: the MLE is each level's log-odds against the
    // reference level's, and the variance of a log-odds is 1/s + 1/(n − s).
    let dir = tempfile::tempdir().unwrap();
    let color = ["blue", "blue", "green", "green", "red", "red"];
    let trials = [40, 60, 100, 50, 30, 90];
    let successes = [3, 5, 20, 8, 1, 6];
    let input = events(
        dir.path(),
        "colors",
        vec![
            ("item_id", Arc::new(Int64Array::from_iter_values(1..=6))),
            ("color", Arc::new(StringArray::from(color.to_vec()))),
            ("trials", Arc::new(Int64Array::from(trials.to_vec()))),
            ("successes", Arc::new(Int64Array::from(successes.to_vec()))),
        ],
    );
    let cell = |c: &str| {
        let pick = |v: &[i64]| {
            (0..6)
                .filter(|&i| color[i] == c)
                .map(|i| v[i] as f64)
                .sum::<f64>()
        };
        (pick(&successes), pick(&trials))
    };
    let args = [
        "--method",
        "logistic",
        "--categorical",
        "color",
        "--holdout",
        "0",
    ];
    for reference in ["blue", "red"] {
        let mut a = args.to_vec();
        let flag = format!("color={reference}");
        if reference == "red" {
            a.extend(["--reference-level", &flag]);
        }
        let o = estimate(dir.path(), &input, &a);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let got = coefficients(&dir.path().join("out/data.parquet"));
        let (sr, nr) = cell(reference);
        let var = |(s, n): (f64, f64)| 1.0 / s + 1.0 / (n - s);
        let mut want = vec![("const".to_string(), logit(sr, nr), var((sr, nr)).sqrt())];
        for c in ["blue", "green", "red"]
            .into_iter()
            .filter(|c| *c != reference)
        {
            let (s, n) = cell(c);
            want.push((
                format!("color_{c}"),
                logit(s, n) - logit(sr, nr),
                (var((s, n)) + var((sr, nr))).sqrt(),
            ));
        }
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (term, beta, se) in want {
            let [est, got_se, z, p, lower, upper] = got[&term];
            assert!((est - beta).abs() < 1e-9, "{term}: {est} against {beta}");
            assert!(
                (got_se - se).abs() < 1e-9,
                "{term}: se {got_se} against {se}"
            );
            assert!((z - beta / se).abs() < 1e-6);
            let p_want = libm::erfc((beta / se).abs() / std::f64::consts::SQRT_2);
            assert!(
                (p - p_want).abs() < 1e-9 * p_want.max(1e-300),
                "{term}: p {p} against {p_want}"
            );
            assert!((lower - (beta - 1.959963984540054 * se)).abs() < 1e-9);
            assert!((upper - (beta + 1.959963984540054 * se)).abs() < 1e-9);
        }
    }
    // Saturated in color: each item's predicted rate is its color's pooled rate.
    let (_, batches) = read_parquet(&dir.path().join("out/predictions.parquet")).unwrap();
    let predicted = floats(&batches[0], "predicted_rate");
    for (i, c) in color.iter().enumerate() {
        let (s, n) = cell(c);
        assert!(
            (predicted[i] - s / n).abs() < 1e-9,
            "item {}: {}",
            i + 1,
            predicted[i]
        );
    }
    let fit: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/fit.json")).unwrap())
            .unwrap();
    assert_eq!(fit["reference_levels"]["color"], "red");
    assert_eq!(fit["heldout"], Value::Null);
}

#[test]
fn the_example_pipeline_recovers_the_planted_effects() {
    let dir = project();
    let p = dir.path();
    let o = recpipe(p, &["run", "example-effects", "--run-id", "r1"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let got = coefficients(&p.join("state/published/example_apply_effects/current/data.parquet"));
    assert_eq!(got.len(), recpipe::synth::PLANTED_EFFECTS.len(), "{got:?}");
    // Every planted coefficient within 3.3 standard errors: a 0.1% miss each.
    // (The example's seed happens to give the device terms a 2.5σ draw; the
    // numbers match statsmodels on the same rows.)
    for (term, truth) in recpipe::synth::PLANTED_EFFECTS {
        let [est, se, ..] = got[*term];
        assert!(
            (est - truth).abs() < 3.3 * se,
            "{term}: {est} ± {se} against {truth}"
        );
    }
    let fit: Value = serde_json::from_str(
        &std::fs::read_to_string(p.join("state/runs/example-effects/r1/apply_effects/fit.json"))
            .unwrap(),
    )
    .unwrap();
    let heldout = &fit["heldout"];
    assert!(
        heldout["logloss"].as_f64().unwrap() < heldout["logloss_global"].as_f64().unwrap(),
        "{heldout}"
    );
    assert!(heldout["auc"].as_f64().unwrap() > 0.6, "{heldout}");
    assert_eq!(fit["split"]["by"], "ts");
    assert_eq!(fit["split"]["test"]["rows"], 12_000);

    // Interactions the generator did not plant come out near zero; L-BFGS
    // lands where Newton does.
    let input = p.join("data/example/impressions.parquet");
    let mut args = vec![
        "--method",
        "logistic",
        "--numeric",
        "salary,remote",
        "--categorical",
        "position,device",
        "--reference-level",
        "device=pc",
        "--interaction",
        "position*remote",
        "--interaction",
        "device*position",
        "--interaction",
        "salary*remote",
    ];
    let o = estimate(p, &input, &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let newton = coefficients(&p.join("out/data.parquet"));
    // 7 main terms, 2 position×remote, 4 device×position, 1 salary×remote.
    assert_eq!(newton.len(), 14, "{:?}", newton.keys());
    for (term, [est, se, ..]) in newton.iter().filter(|(t, _)| t.contains(':')) {
        assert!(est.abs() < 4.0 * se, "{term}: {est} ± {se}");
    }
    args.extend(["--solver", "lbfgs"]);
    let o = estimate(p, &input, &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let lbfgs = coefficients(&p.join("out/data.parquet"));
    for (term, n) in &newton {
        let l = lbfgs[term];
        assert!(
            (n[0] - l[0]).abs() < 1e-5 * (1.0 + n[0].abs()),
            "{term}: {} against {}",
            l[0],
            n[0]
        );
        assert!(
            (n[1] - l[1]).abs() < 1e-4 * n[1],
            "{term}: se {} against {}",
            l[1],
            n[1]
        );
    }
}

#[test]
fn logistic_refuses_what_it_cannot_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let n = 2000;
    let x: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
    let level: Vec<&str> = (0..n).map(|i| ["a", "b", "c"][i % 3]).collect();
    // Level `c` never converts; `x` is otherwise a real effect.
    let converted: Vec<i64> = (0..n)
        .map(|i| (level[i] != "c" && rng.random::<f64>() < 0.05 + 0.2 * x[i]) as i64)
        .collect();
    let base = |extra: Columns<'static>| -> Columns<'static> {
        let mut c: Columns = vec![
            (
                "item_id",
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 50))),
            ),
            ("x", Arc::new(Float64Array::from(x.clone()))),
            ("level", Arc::new(StringArray::from(level.clone()))),
            ("converted", Arc::new(Int64Array::from(converted.clone()))),
        ];
        c.extend(extra);
        c
    };
    let fails = |name: &str, columns: Columns<'static>, args: &[&str], expected: &[&str]| {
        let input = events(dir.path(), name, columns);
        let mut a = vec!["--method", "logistic"];
        a.extend_from_slice(args);
        let o = estimate(dir.path(), &input, &a);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        for e in expected {
            assert!(text(&o).contains(e), "{name}: wanted {e:?} in {}", text(&o));
        }
    };
    fails(
        "separated_level",
        base(vec![]),
        &["--numeric", "x", "--categorical", "level"],
        &["the outcome is separated: `level_c`", "set `l2`"],
    );
    let flat: Columns = vec![("flat", Arc::new(Float64Array::from(vec![2.5; n])))];
    fails(
        "constant",
        base(flat),
        &["--numeric", "x,flat"],
        &["`flat` takes one value in every training row"],
    );
    let twice: Columns = vec![(
        "x2",
        Arc::new(Float64Array::from_iter_values(
            x.iter().map(|v| 2.0 * v + 1.0),
        )),
    )];
    fails(
        "collinear",
        base(twice),
        &["--numeric", "x,x2"],
        &["collinear", "`x2`", "`x`"],
    );
    // `y` above 0.5 converts, below never: complete separation by a number.
    let y: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
    let separating: Columns = vec![
        (
            "item_id",
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
        ),
        ("y", Arc::new(Float64Array::from(y.clone()))),
        (
            "converted",
            Arc::new(Int64Array::from_iter_values(
                y.iter().map(|&v| (v > 0.5) as i64),
            )),
        ),
    ];
    fails(
        "separating_number",
        separating,
        &["--numeric", "y"],
        &["separated by `y`"],
    );
    let mut with_nan = x.clone();
    with_nan[7] = f64::NAN;
    let nan: Columns = vec![("z", Arc::new(Float64Array::from(with_nan)))];
    fails(
        "nan",
        base(nan),
        &["--numeric", "z"],
        &["row 8: `z` is NaN", "nan.parquet"],
    );
    let mut with_null: Vec<Option<&str>> = level.iter().map(|l| Some(*l)).collect();
    with_null[1] = None;
    let null: Columns = vec![("site", Arc::new(StringArray::from(with_null)))];
    fails(
        "null_level",
        base(null),
        &["--categorical", "site"],
        &["row 2: `site` is null"],
    );
    fails(
        "unknown_reference",
        base(vec![]),
        &[
            "--categorical",
            "level",
            "--reference-level",
            "level=z",
            "--l2",
            "1",
        ],
        &["`reference_levels.level` is `z`", "`a`, `b`, `c`"],
    );
    let none: Columns = vec![("converted", Arc::new(Int64Array::from(vec![0; n])))];
    let mut cols = base(vec![]);
    cols.pop();
    cols.extend(none);
    fails(
        "no_successes",
        cols,
        &["--numeric", "x"],
        &["needs both outcomes"],
    );
    fails(
        "flags",
        base(vec![]),
        &[
            "--numeric",
            "x",
            "--interaction",
            "x*nope",
            "--l2=-1",
            "--group",
            "level",
        ],
        &[
            "`nope` is not a feature",
            "--l2: -1 is out of range",
            "applies to `method = \"beta_binomial\"`",
        ],
    );

    // With L2 the separated level is held finite, and the fit says so.
    let input = events(dir.path(), "held", base(vec![]));
    let o = estimate(
        dir.path(),
        &input,
        &[
            "--method",
            "logistic",
            "--numeric",
            "x",
            "--categorical",
            "level",
            "--l2",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let fit: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/fit.json")).unwrap())
            .unwrap();
    assert_eq!(fit["separated"], serde_json::json!(["level_c"]));
    let got = coefficients(&dir.path().join("out/data.parquet"));
    let [c, ..] = got["level_c"];
    assert!((-10.0..-1.0).contains(&c), "level_c {c}");
    let [xe, xse, ..] = got["x"];
    assert!(xe > 2.0 * xse, "x {xe} ± {xse}");
}

#[test]
fn a_saturated_interaction_matches_its_closed_form() {
    // Two binary features and their product, saturated: the interaction is the
    // difference of log-odds differences, its variance Σ 1/s + 1/(n − s).
    let dir = tempfile::tempdir().unwrap();
    let cells = [
        ("a0", "b0", 50, 4),
        ("a0", "b1", 80, 10),
        ("a1", "b0", 60, 9),
        ("a1", "b1", 40, 2),
    ];
    let input = events(
        dir.path(),
        "cells",
        vec![
            ("item_id", Arc::new(Int64Array::from_iter_values(1..=4))),
            (
                "a",
                Arc::new(StringArray::from_iter_values(cells.iter().map(|c| c.0))),
            ),
            (
                "b",
                Arc::new(StringArray::from_iter_values(cells.iter().map(|c| c.1))),
            ),
            (
                "trials",
                Arc::new(Int64Array::from_iter_values(cells.iter().map(|c| c.2))),
            ),
            (
                "successes",
                Arc::new(Int64Array::from_iter_values(cells.iter().map(|c| c.3))),
            ),
        ],
    );
    let o = estimate(
        dir.path(),
        &input,
        &[
            "--method",
            "logistic",
            "--categorical",
            "a,b",
            "--interaction",
            "a*b",
            "--holdout",
            "0",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let got = coefficients(&dir.path().join("out/data.parquet"));
    let l = |k: usize| logit(cells[k].3 as f64, cells[k].2 as f64);
    let want = l(3) - l(2) - l(1) + l(0);
    let var: f64 = cells
        .iter()
        .map(|c| 1.0 / c.3 as f64 + 1.0 / (c.2 - c.3) as f64)
        .sum();
    let [est, se, ..] = got["a_a1:b_b1"];
    assert!((est - want).abs() < 1e-9, "{est} against {want}");
    assert!(
        (se - var.sqrt()).abs() < 1e-9,
        "{se} against {}",
        var.sqrt()
    );
    assert!((got["a_a1"][0] - (l(2) - l(0))).abs() < 1e-9);
    assert!((got["b_b1"][0] - (l(1) - l(0))).abs() < 1e-9);
}

#[test]
fn the_latest_rows_are_held_out_and_rare_levels_merge() {
    // File order is the reverse of time: the held-out rows are the first ones
    // in the file. Level `rare` is under the 5% floor; `new` appears only in
    // the held-out rows.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let n = 1000usize;
    let ts: Vec<i64> = (0..n as i64).map(|i| 1_000_000 * (n as i64 - i)).collect();
    let level: Vec<&str> = (0..n)
        .map(|i| match i {
            i if i < 300 && i % 10 == 0 => "new",
            i if i >= 300 && i % 100 == 7 => "rare",
            i if i % 2 == 0 => "a",
            _ => "b",
        })
        .collect();
    let converted: Vec<i64> = (0..n)
        .map(|i| (rng.random::<f64>() < if level[i] == "b" { 0.2 } else { 0.1 }) as i64)
        .collect();
    let input = events(
        dir.path(),
        "timed",
        vec![
            (
                "item_id",
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 20))),
            ),
            (
                "ts",
                Arc::new(arrow::array::TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            ),
            ("level", Arc::new(StringArray::from(level.clone()))),
            ("converted", Arc::new(Int64Array::from(converted.clone()))),
        ],
    );
    let o = estimate(
        dir.path(),
        &input,
        &[
            "--method",
            "logistic",
            "--categorical",
            "level",
            "--min-level-share",
            "0.05",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let fit: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/fit.json")).unwrap())
            .unwrap();
    let latest: i64 = converted[..300].iter().sum();
    assert_eq!(fit["split"]["by"], "ts");
    assert_eq!(fit["split"]["test"]["rows"], 300);
    assert_eq!(
        fit["split"]["test"]["successes"].as_f64().unwrap(),
        latest as f64
    );
    assert_eq!(fit["merged_levels"]["level"], serde_json::json!(["rare"]));
    let got = coefficients(&dir.path().join("out/data.parquet"));
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["const", "level_b"]);
    let rate = |l: &str| {
        let (s, t) = (300..n)
            .filter(|&i| level[i] == l)
            .fold((0.0, 0.0), |(s, t), i| (s + converted[i] as f64, t + 1.0));
        (s, t)
    };
    let (sb, nb) = rate("b");
    let ((sa, na), (sr, nr)) = (rate("a"), rate("rare"));
    // `rare` joins `a`, the most frequent level in training (350 rows, `b` 343).
    let want = logit(sb, nb) - logit(sa + sr, na + nr);
    assert!(
        (got["level_b"][0] - want).abs() < 1e-8,
        "{:?} against {want}",
        got["level_b"]
    );
}
