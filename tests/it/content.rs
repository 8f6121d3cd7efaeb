//! Content: `vectorize` (item text and categories → features, a saved
//! vocabulary) and the `fm` model that recommends items nobody has clicked yet.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use recpipe::artifact::{read_parquet, write_parquet};
use recpipe::synth::{SynthSpec, generate};

use crate::common::{i64s, project, recpipe, text};

fn write(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    write_parquet(path, batch.schema(), &[batch]).unwrap();
}

fn strings(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn ints(v: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(v.to_vec()))
}

/// `(item_id, feature)` → weight of an item-features artifact.
fn features(dir: &Path) -> HashMap<(i64, String), f32> {
    let (_, batches) = read_parquet(&dir.join("data.parquet")).unwrap();
    let mut out = HashMap::new();
    for b in &batches {
        let names = b
            .column_by_name("feature")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let weights = b
            .column_by_name("weight")
            .unwrap()
            .as_any()
            .downcast_ref::<Float32Array>()
            .unwrap();
        for (r, id) in i64s(b, "item_id").into_iter().enumerate() {
            out.insert((id, names.value(r).to_string()), weights.value(r));
        }
    }
    out
}

#[test]
fn fm_recommends_new_jobs_that_suit_each_user() {
    let dir = project();
    let p = dir.path();
    // The example data is `gen-data`'s default: the planted topics are the truth.
    let spec = SynthSpec::default();
    let data = generate(&spec);
    let new: HashSet<i64> =
        (spec.items as i64 + 1..=(spec.items + spec.new_items) as i64).collect();
    let topic_of_item = |i: i64| data.item_topics[i as usize - 1];
    // Both losses: the example's `als` (the default) and `warp`.
    for (run, loss) in [("c1", "als"), ("c2", "warp")] {
        if loss == "warp" {
            crate::common::edit(
                p,
                "example_fm.toml",
                "model = \"fm\"\n",
                "model = \"fm\"\nloss = \"warp\"\n",
            );
        }
        let out = recpipe(p, &["run", "example-fm", "--run-id", run], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let list = p.join("state/published/example_fm_new_jobs/current/data.parquet");
        let (_, batches) = read_parquet(&list).unwrap();
        let (mut hits, mut total, mut users) = (0usize, 0usize, HashSet::new());
        for b in &batches {
            for (u, i) in i64s(b, "user_id").into_iter().zip(i64s(b, "item_id")) {
                assert!(
                    new.contains(&i),
                    "{loss}: item {i} has interactions; only new items were asked for"
                );
                users.insert(u);
                total += 1;
                hits += usize::from(topic_of_item(i) == data.user_topics[u as usize - 1]);
            }
        }
        assert_eq!(users.len(), spec.users, "{loss}: every user gets new jobs");
        // A random pick of new items matches a user's topic about once in twelve;
        // popularity cannot rank items without interactions at all.
        let per_topic = |t: usize| new.iter().filter(|&&i| topic_of_item(i) == t).count();
        let random: f64 = data
            .user_topics
            .iter()
            .map(|&t| per_topic(t) as f64 / new.len() as f64)
            .sum::<f64>()
            / spec.users as f64;
        let precision = hits as f64 / total as f64;
        // With ~4 new items per topic, a perfect list holds all of them: recall
        // says how close the lists come.
        let suited: usize = data.user_topics.iter().map(|&t| per_topic(t).min(10)).sum();
        let recall = hits as f64 / suited as f64;
        eprintln!("fm {loss}: precision {precision:.3} (random {random:.3}), recall {recall:.3}");
        assert!(
            precision > 3.0 * random && recall > 0.8,
            "fm {loss} on new items: precision {precision:.3} (random {random:.3}), recall {recall:.3}"
        );
    }

    // Similar jobs by content: a new job's list holds jobs of its own category
    // (its category is one of its features, and titles follow the category).
    let list = p.join("state/published/example_fm_similar_jobs_by_content/current/data.parquet");
    let (_, batches) = read_parquet(&list).unwrap();
    let (mut same, mut pairs, mut listed) = (0usize, 0usize, HashSet::new());
    for b in &batches {
        for (i, j) in i64s(b, "item_id")
            .into_iter()
            .zip(i64s(b, "similar_item_id"))
        {
            assert_ne!(i, j);
            if new.contains(&i) {
                listed.insert(i);
                pairs += 1;
                same += usize::from(topic_of_item(i) == topic_of_item(j));
            }
        }
    }
    assert!(
        listed.len() == new.len(),
        "{} of {} new jobs have similar jobs",
        listed.len(),
        new.len()
    );
    assert!(
        same as f64 > 0.9 * pairs as f64,
        "{same} of {pairs} similar jobs share the category"
    );
}

#[test]
fn vectorize_maps_new_items_through_a_saved_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = d.join("first.parquet");
    write(
        &first,
        vec![
            ("item_id", ints(&[1, 2, 3, 4])),
            (
                "title",
                strings(&[
                    "Rust エンジニア",
                    "Go エンジニア",
                    "看護師 夜勤",
                    "rust 夜勤",
                ]),
            ),
            ("genres", strings(&["it|dev", "it", "care", "it"])),
        ],
    );
    let settings = [
        "--set",
        r#"columns.title={type="text",min_df=2}"#,
        "--set",
        r#"columns.genres={type="categorical",separator="|"}"#,
    ];
    let mut args = vec!["step", "vectorize", "--input", first.to_str().unwrap()];
    args.extend(settings);
    let v1 = d.join("v1");
    args.extend(["--output", v1.to_str().unwrap()]);
    let out = recpipe(d, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let f1 = features(&v1);
    let names: HashSet<&str> = f1.keys().map(|k| k.1.as_str()).collect();
    // min_df 2 keeps words in two titles ("rust", "エン", "夜勤" …), not "go" or "看護";
    // categorical columns are not pruned.
    for kept in [
        "title:rust",
        "title:エン",
        "title:ジニ",
        "title:夜勤",
        "genres:dev",
        "genres:care",
    ] {
        assert!(names.contains(kept), "{kept} missing from {names:?}");
    }
    for pruned in ["title:go", "title:看護"] {
        assert!(!names.contains(pruned), "{pruned} should be pruned");
    }
    // rows are L2-normalised tf-idf by default
    let norm: f32 = f1
        .iter()
        .filter(|(k, _)| k.0 == 1)
        .map(|(_, w)| w * w)
        .sum();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");

    // New items, one shared: they get only the saved features, weighed as before.
    let second = d.join("second.parquet");
    write(
        &second,
        vec![
            ("item_id", ints(&[1, 9])),
            (
                "title",
                strings(&["Rust エンジニア", "Python エンジニア 夜勤"]),
            ),
            ("genres", strings(&["it|dev", "ml"])),
        ],
    );
    let v2 = d.join("v2");
    let mut args = vec!["step", "vectorize", "--input", second.to_str().unwrap()];
    args.extend(settings);
    args.extend([
        "--vocabulary",
        v1.to_str().unwrap(),
        "--output",
        v2.to_str().unwrap(),
    ]);
    let out = recpipe(d, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let f2 = features(&v2);
    for (key, w) in f2.iter().filter(|(k, _)| k.0 == 1) {
        assert!((f1[key] - w).abs() < 1e-6, "{key:?}: {w} vs {}", f1[key]);
    }
    let new: HashSet<&str> = f2
        .keys()
        .filter(|k| k.0 == 9)
        .map(|k| k.1.as_str())
        .collect();
    assert!(
        new.contains("title:夜勤") && new.contains("title:エン"),
        "{new:?}"
    );
    assert!(
        new.iter().all(|f| names.contains(f)),
        "{new:?} has features outside the vocabulary"
    );
}

#[test]
fn bad_content_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let items = d.join("items.parquet");
    write(
        &items,
        vec![
            ("item_id", strings(&["a", "b"])),
            (
                "title",
                Arc::new(StringArray::from(vec![None, Some("  ")])) as ArrayRef,
            ),
        ],
    );
    let run = |set: &str| {
        let out = d.join("out");
        recpipe(
            d,
            &[
                "step",
                "vectorize",
                "--input",
                items.to_str().unwrap(),
                "--set",
                set,
                "--output",
                out.to_str().unwrap(),
            ],
            &[],
        )
    };
    let out = run(r#"columns.body={type="text"}"#);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no column `body`"), "{}", text(&out));
    let out = run(r#"columns.title={type="text"}"#);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("column `title` has no text"),
        "{}",
        text(&out)
    );
    let out = run(r#"columns.title={type="text",bucket=10}"#);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("columns.title.bucket"),
        "{}",
        text(&out)
    );

    // Features keyed by text ids cannot describe items keyed by numbers.
    write(
        &items,
        vec![
            ("item_id", strings(&["1", "2"])),
            ("title", strings(&["rust dev", "go dev"])),
        ],
    );
    let feats = d.join("feats");
    let out = recpipe(
        d,
        &[
            "step",
            "vectorize",
            "--input",
            items.to_str().unwrap(),
            "--set",
            r#"columns.title={type="text"}"#,
            "--output",
            feats.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let inter = d.join("interactions.parquet");
    write(
        &inter,
        vec![("user_id", ints(&[1, 2])), ("item_id", ints(&[1, 2]))],
    );
    let model = d.join("model");
    let out = recpipe(
        d,
        &[
            "step",
            "train",
            "--input",
            inter.to_str().unwrap(),
            "--item-features",
            feats.to_str().unwrap(),
            "--model",
            "fm",
            "--output",
            model.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("column `item_id` is Utf8"),
        "{}",
        text(&out)
    );
    // and a model that does not use features says so
    let out = recpipe(
        d,
        &[
            "step",
            "train",
            "--input",
            inter.to_str().unwrap(),
            "--item-features",
            feats.to_str().unwrap(),
            "--model",
            "als",
            "--output",
            model.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("does not use item features"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_content_model_without_features_is_refused_at_validation() {
    let dir = project();
    let p = dir.path();
    crate::common::edit(
        p,
        "example_fm.toml",
        "needs = [\"interactions\", \"features\"]\nmodel = \"content\"",
        "needs = [\"interactions\"]\nmodel = \"content\"",
    );
    crate::common::edit(
        p,
        "example_fm.toml",
        "needs = [\"interactions\", \"features\"]\nmodel = \"fm\"",
        "needs = [\"interactions\", \"features\"]\nmodel = \"als\"",
    );
    let out = recpipe(p, &["validate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("steps.content.needs: model `content` needs item features (a `vectorize` step): add one to `needs`"),
        "{all}"
    );
    assert!(
        all.contains(
            "steps.fm.needs: model `als` does not use item features (`fm` and `content` do): remove `features` from `needs`"
        ),
        "{all}"
    );
    assert!(all.contains("example_fm.toml:"), "{all}");
}

#[test]
fn content_settings_out_of_bounds_are_refused_with_their_line() {
    let dir = project();
    let p = dir.path();
    let edits = [
        (
            "columns.title_ja = { type = \"text\", min_df = 2 }",
            "columns.title_ja = { type = \"text\", max_df = 2.0, bucket = 10 }",
        ),
        (
            "columns.prefecture = { type = \"categorical\" }",
            "columns.prefecture = { type = \"numeric\" }",
        ),
        (
            "factors = 32\nepochs = 20",
            "factors = 0\nepochs = 20\nmax_sampled = 0\nlearning_rate = -1.0\n\
             regularization = -1.0\nnormalize = \"all\"",
        ),
    ];
    for (from, to) in edits {
        crate::common::edit(p, "example_fm.toml", from, to);
    }
    let out = recpipe(p, &["validate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    for key in [
        "steps.features.columns.title_ja.max_df",
        "steps.features.columns.title_ja.bucket",
        "steps.features.columns.prefecture.bucket",
        "steps.fm.factors",
        "steps.fm.max_sampled",
        "steps.fm.learning_rate",
        "steps.fm.regularization",
        "steps.fm.normalize",
    ] {
        assert!(
            all.lines()
                .any(|l| l.contains("example_fm.toml:") && l.contains(key)),
            "{key} not refused:\n{all}"
        );
    }
}
