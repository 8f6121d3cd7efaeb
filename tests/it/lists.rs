//! The ALS example end to end: user→item and item→item lists with merged filters
//! (closed jobs denied, at most three jobs of a category per list).

use std::collections::HashMap;

use arrow::datatypes::DataType;
use recpipe::artifact::read_parquet;

use crate::common::{ExampleItems, example_items, example_seen, i64s, project, recpipe, text};

#[test]
fn als_lists_respect_filters_and_caps() {
    let dir = project();
    let p = dir.path();
    let out = recpipe(p, &["run", "example-als", "--run-id", "a1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let ExampleItems { category, closed } = example_items(p);
    let seen = example_seen(p);

    for (table, row_col, item_col) in [
        ("example_als_user_recs", "user_id", "item_id"),
        ("example_als_similar_items", "item_id", "similar_item_id"),
    ] {
        let path = p
            .join("state/published")
            .join(table)
            .join("current/data.parquet");
        let (schema, batches) = read_parquet(&path).unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            vec![row_col, item_col, "rank", "score", "run_id", "generated_at"]
        );
        assert_eq!(schema.field(1).data_type(), &DataType::Int64);
        let mut per_row: HashMap<i64, HashMap<String, usize>> = HashMap::new();
        let mut rows = 0;
        for b in &batches {
            for (r, i) in i64s(b, row_col).into_iter().zip(i64s(b, item_col)) {
                rows += 1;
                assert!(!closed.contains(&i), "{table}: closed item {i}");
                if row_col == "user_id" {
                    assert!(
                        !seen.contains(&(r, i)),
                        "{table}: seen item {i} for user {r}"
                    );
                } else {
                    assert_ne!(r, i, "{table}: item similar to itself");
                }
                let n = per_row
                    .entry(r)
                    .or_default()
                    .entry(category[&i].clone())
                    .or_default();
                *n += 1;
                assert!(
                    *n <= 3,
                    "{table}: more than 3 items of `{}` for {r}",
                    category[&i]
                );
            }
        }
        assert!(rows > 0, "{table} is empty");
        assert!(
            per_row
                .values()
                .all(|cats| cats.values().sum::<usize>() == 10),
            "{table}: lists of 10"
        );
    }

    // The evaluate step held out each user's latest 20% and compared with popularity.
    let metrics: serde_json::Value =
        recpipe::artifact::read_json(&p.join("state/runs/example-als/a1/quality/metrics.json"))
            .unwrap();
    let lift = metrics["ndcg_lift_over_popularity"].as_f64().unwrap();
    assert!(
        lift > 1.2,
        "ALS should beat popularity on held-out data: {metrics}"
    );
    assert!(
        metrics["metrics"]["users"].as_u64().unwrap() > 1000,
        "{metrics}"
    );
}

#[test]
fn item_item_model_needs_no_factorization() {
    let dir = project();
    let p = dir.path();
    let pipeline = r#"
name = "item-item"

[steps.interactions]
kind = "extract"
source = "local"
sql = "sql/example_interactions.sql"
role = "interactions"
params = { min_value = 1 }

[steps.model]
kind = "train"
needs = ["interactions"]
model = "item_item"
similarity = "bm25"
neighbors = 30

[steps.recs]
kind = "recommend"
needs = ["model"]

[steps.similar]
kind = "similar_items"
needs = ["model"]

[steps.quality]
kind = "evaluate"
needs = ["interactions"]
model = "item_item"
similarity = "cosine"
"#;
    std::fs::write(p.join("pipelines/item_item.toml"), pipeline).unwrap();
    let out = recpipe(p, &["run", "item-item", "--run-id", "i1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = p.join("state/runs/item-item/i1");
    let (_, similar) = read_parquet(&run.join("similar/data.parquet")).unwrap();
    let mut rows = 0;
    for b in &similar {
        for (i, j) in i64s(b, "item_id")
            .into_iter()
            .zip(i64s(b, "similar_item_id"))
        {
            assert_ne!(i, j);
            rows += 1;
        }
    }
    assert!(rows > 1000, "{rows} similar pairs");
    let (_, recs) = read_parquet(&run.join("recs/data.parquet")).unwrap();
    assert!(recs.iter().map(|b| b.num_rows()).sum::<usize>() > 1000);
    let metrics: serde_json::Value =
        recpipe::artifact::read_json(&run.join("quality/metrics.json")).unwrap();
    let lift = metrics["ndcg_lift_over_popularity"].as_f64().unwrap();
    assert!(
        lift > 1.1,
        "item-item should beat popularity on held-out data: {metrics}"
    );
}

#[test]
fn rp3beta_lists_users_and_items_from_its_stored_walk() {
    let dir = project();
    let p = dir.path();
    let pipeline = r#"
name = "walk"

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
neighbors = 100

[steps.recs]
kind = "recommend"
needs = ["model"]

[steps.similar]
kind = "similar_items"
needs = ["model"]

[steps.quality]
kind = "evaluate"
needs = ["interactions"]
model = "rp3beta"
"#;
    std::fs::write(p.join("pipelines/walk.toml"), pipeline).unwrap();
    let out = recpipe(p, &["run", "walk", "--run-id", "w1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = p.join("state/runs/walk/w1");
    // At most 100 neighbours kept per item, and never the item itself.
    let (_, neighbors) = read_parquet(&run.join("model/neighbors.parquet")).unwrap();
    let mut per_item = std::collections::HashMap::new();
    for b in &neighbors {
        let item = b.column_by_name("item").unwrap();
        let item = item
            .as_any()
            .downcast_ref::<arrow::array::UInt32Array>()
            .unwrap();
        for i in 0..b.num_rows() {
            *per_item.entry(item.value(i)).or_insert(0usize) += 1;
        }
    }
    assert!(
        per_item.values().all(|&n| n <= 100) && per_item.len() > 400,
        "{}",
        per_item.len()
    );
    let (_, recs) = read_parquet(&run.join("recs/data.parquet")).unwrap();
    assert!(recs.iter().map(|b| b.num_rows()).sum::<usize>() > 1000);
    let (_, similar) = read_parquet(&run.join("similar/data.parquet")).unwrap();
    assert!(similar.iter().map(|b| b.num_rows()).sum::<usize>() > 1000);
    let metrics: serde_json::Value =
        recpipe::artifact::read_json(&run.join("quality/metrics.json")).unwrap();
    let lift = metrics["ndcg_lift_over_popularity"].as_f64().unwrap();
    assert!(
        lift > 1.1,
        "rp3beta should beat popularity on held-out data: {metrics}"
    );
}

/// Runs `recpipe step extract` for `SELECT item_id FROM items WHERE <condition>`
/// over the example items as a filter list; returns `<project>/<name>.parquet`.
fn extract_item_filter(p: &std::path::Path, name: &str, condition: &str) -> std::path::PathBuf {
    let s = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let sql = p.join(format!("{name}.sql"));
    std::fs::write(&sql, format!("SELECT item_id FROM items WHERE {condition}")).unwrap();
    let table = format!("items={}", s(&p.join("data/example/items.parquet")));
    let output = p.join(format!("{name}.parquet"));
    let out = recpipe(
        p,
        &[
            "step",
            "extract",
            "--table",
            &table,
            "--sql",
            &s(&sql),
            "--role",
            "filter",
            "--output",
            &s(&output),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    output
}

/// The merge-filters and evaluate commands on plain files, chained with train and
/// recommend as an operator would when debugging a pipeline by hand.
#[test]
fn merge_filters_and_evaluate_commands() {
    let dir = project();
    let p = dir.path();
    let s = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let data = p.join("data/example");
    // A filter file: the closed items, made with the extract command.
    let closed = extract_item_filter(p, "closed", "status = 'closed'");
    let merged = p.join("merged");
    let closed_arg = format!("closed={}", s(&closed));
    let items_arg = format!("items={}", s(&data.join("items.parquet")));
    let out = recpipe(
        p,
        &[
            "step",
            "merge-filters",
            "--input",
            &closed_arg,
            "--input",
            &items_arg,
            "--groups-from",
            "items",
            "--group-column",
            "category",
            "--group-cap",
            "2",
            "--output",
            &s(&merged),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let model = p.join("model");
    let interactions = s(&data.join("interactions.parquet"));
    let out = recpipe(
        p,
        &[
            "step",
            "train",
            "--input",
            &interactions,
            "--model",
            "als",
            "--set",
            "factors=16",
            "--output",
            &s(&model),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let recs = p.join("recs.parquet");
    let out = recpipe(
        p,
        &[
            "step",
            "recommend",
            "--model",
            &s(&model),
            "--filter",
            &s(&merged),
            "--output",
            &s(&recs),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ExampleItems {
        category,
        closed: closed_ids,
    } = example_items(p);
    let (_, batches) = read_parquet(&recs).unwrap();
    let mut per_user: HashMap<(i64, String), usize> = HashMap::new();
    for b in &batches {
        for (u, i) in i64s(b, "user_id").into_iter().zip(i64s(b, "item_id")) {
            assert!(!closed_ids.contains(&i));
            let n = per_user.entry((u, category[&i].clone())).or_default();
            *n += 1;
            assert!(*n <= 2, "cap of 2 per category broken for user {u}");
        }
    }
    let eval_dir = p.join("eval");
    let out = recpipe(
        p,
        &[
            "step",
            "evaluate",
            "--input",
            &interactions,
            "--model",
            "als",
            "--set",
            "factors=16",
            "--split",
            "time",
            "--output",
            &s(&eval_dir),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let metrics: serde_json::Value =
        recpipe::artifact::read_json(&eval_dir.join("metrics.json")).unwrap();
    assert!(
        metrics["ndcg_lift_over_popularity"].as_f64().unwrap() > 1.2,
        "{metrics}"
    );
}

/// An allow list that came out empty allows nothing: it must not silently turn
/// into "no allow list".
#[test]
fn an_empty_allow_list_allows_nothing() {
    let dir = project();
    let p = dir.path();
    let s = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let data = p.join("data/example");
    let empty = extract_item_filter(p, "empty", "status = 'no such status'");
    let merged = p.join("merged");
    let input = format!("in_stock={}", s(&empty));
    let out = recpipe(
        p,
        &[
            "step",
            "merge-filters",
            "--input",
            &input,
            "--allow",
            "in_stock",
            "--output",
            &s(&merged),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let model = p.join("model");
    let interactions = s(&data.join("interactions.parquet"));
    let out = recpipe(
        p,
        &[
            "step",
            "train",
            "--input",
            &interactions,
            "--model",
            "popular",
            "--output",
            &s(&model),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let recs = p.join("recs.parquet");
    let out = recpipe(
        p,
        &[
            "step",
            "recommend",
            "--model",
            &s(&model),
            "--filter",
            &s(&merged),
            "--allow-empty",
            "--output",
            &s(&recs),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, batches) = read_parquet(&recs).unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
}
