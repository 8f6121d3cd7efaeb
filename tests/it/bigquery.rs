//! The BigQuery source against the bqemulator REST API (`.ci/test` starts it and
//! sets `RECPIPE_TEST_BQ`): typed named parameters, paging into batches, errors,
//! and the dry run of `validate --check-connections`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::query_request::QueryRequest;
use recpipe::config::settings::{BigQueryConfig, SourceConfig};
use recpipe::sources::AnySource;
use recpipe::sources::ParamValue;

use crate::common::{recpipe, text};

const PROJECT: &str = "test-proj";

fn endpoint() -> String {
    std::env::var("RECPIPE_TEST_BQ").expect(
        "RECPIPE_TEST_BQ is not set: run the tests with .ci/test, which starts the BigQuery emulator",
    )
}

#[derive(Clone)]
struct AnyToken;

#[async_trait::async_trait]
impl gcp_bigquery_client::auth::Authenticator for AnyToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("test".into())
    }
}

/// A fresh dataset `dataset` holding `events`: 25,000 rows of every type extract
/// reads.
async fn events(dataset: &str) {
    let client = ClientBuilder::new()
        .with_v2_base_url(format!("{}/bigquery/v2", endpoint()))
        .build_from_authenticator(Arc::new(AnyToken))
        .await
        .unwrap();
    let _ = client.dataset().delete(PROJECT, dataset, true).await;
    client
        .dataset()
        .create(Dataset::new(PROJECT, dataset))
        .await
        .unwrap();
    let sql = format!(
        "CREATE TABLE {dataset}.events AS
         SELECT x AS user_id, CAST(x AS FLOAT64) / 2 AS value, CONCAT('item-', CAST(MOD(x, 100) AS STRING)) AS item_id,
                MOD(x, 2) = 0 AS even, TIMESTAMP_SECONDS(1793491200 + x) AS ts, DATE '2026-11-01' AS day
         FROM UNNEST(GENERATE_ARRAY(1, 25000)) AS x"
    );
    let response = client
        .job()
        .query(PROJECT, QueryRequest::new(sql))
        .await
        .unwrap();
    assert!(response.errors.is_none(), "{:?}", response.errors);
}

fn source(dataset: &str) -> AnySource {
    AnySource::from_config(&SourceConfig::Bigquery(BigQueryConfig {
        project: PROJECT.into(),
        dataset: Some(dataset.into()),
        location: None,
        key_file: None,
        endpoint: Some(endpoint()),
        page_size: 10_000,
        maximum_bytes_billed: None,
    }))
}

async fn all(
    source: &AnySource,
    sql: &str,
    params: &BTreeMap<String, ParamValue>,
) -> Vec<RecordBatch> {
    let result = source.query(sql, params).await.unwrap();
    result.batches.map(|b| b.unwrap()).collect().await
}

#[tokio::test]
async fn extract_pages_typed_rows_with_bound_parameters() {
    events("bq_extract").await;
    let source = source("bq_extract");
    let sql = "SELECT user_id, item_id, value, even, ts, day FROM bq_extract.events -- not @nothing\n\
               WHERE user_id > @min_id AND item_id != @skip ORDER BY user_id";
    let params = |min_id: i64, skip: &str| {
        BTreeMap::from([
            ("min_id".to_string(), ParamValue::Int(min_id)),
            ("skip".to_string(), ParamValue::Text(skip.into())),
            ("run_id".to_string(), ParamValue::Text("unused".into())),
        ])
    };
    let batches = all(&source, sql, &params(10, "item-0")).await;
    // 24,990 rows above 10, less the 250 ending in 00: paged by 10,000.
    assert_eq!(
        batches
            .iter()
            .map(RecordBatch::num_rows)
            .collect::<Vec<_>>(),
        vec![10_000, 10_000, 4_740]
    );
    let schema = batches[0].schema();
    let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
    assert_eq!(
        types,
        vec![
            &DataType::Int64,
            &DataType::Utf8,
            &DataType::Float64,
            &DataType::Boolean,
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            &DataType::Date32,
        ]
    );
    let first = &batches[0];
    assert_eq!(first.column(0).as_primitive::<Int64Type>().value(0), 11);
    assert_eq!(first.column(1).as_string::<i32>().value(0), "item-11");
    assert!(!first.column(3).as_boolean().value(0));
    assert_eq!(
        first
            .column(4)
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        (1_793_491_200 + 11) * 1_000_000
    );
    let last = batches.last().unwrap();
    assert_eq!(
        last.column(0)
            .as_primitive::<Int64Type>()
            .value(last.num_rows() - 1),
        25_000 - 1,
        "25000 ends in 00 and is skipped"
    );

    // A value is bound, never pasted into the text.
    let injected = all(&source, sql, &params(0, "x' OR '1'='1")).await;
    let rows: usize = injected.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 25_000);
    let err = source
        .query("SELECT nope FROM bq_extract.events", &BTreeMap::new())
        .await
        .err()
        .expect("bad SQL");
    assert!(err.to_string().contains("BigQuery"), "{err}");
    let err = source
        .query(
            "SELECT user_id FROM bq_extract.events WHERE user_id > @missing",
            &BTreeMap::new(),
        )
        .await
        .err()
        .expect("unset parameter");
    assert!(err.to_string().contains("`@missing` is not set"), "{err}");
}

#[test]
fn check_connections_dry_runs_bigquery_extracts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(events("bq_check"));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for sub in ["config", "pipelines", "sql"] {
        std::fs::create_dir_all(p.join(sub)).unwrap();
    }
    std::fs::write(
        p.join("config/default.toml"),
        format!(
            "[sources.warehouse]\nkind = \"bigquery\"\nproject = \"{PROJECT}\"\ndataset = \"bq_check\"\nendpoint = \"{}\"\n\
             [sinks.lists]\nkind = \"parquet\"\npath = \"lists\"\n",
            endpoint()
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("sql/interactions.sql"),
        "SELECT CAST(user_id AS STRING) AS user_id, item_id, value FROM bq_check.events WHERE user_id > @min_id",
    )
    .unwrap();
    std::fs::write(
        p.join("pipelines/warehouse.toml"),
        "name = \"warehouse\"\n\
         [steps.interactions]\nkind = \"extract\"\nsource = \"warehouse\"\nsql = \"sql/interactions.sql\"\nrole = \"interactions\"\nparams = { min_id = 5 }\n\
         [steps.popular]\nkind = \"train\"\nneeds = [\"interactions\"]\nmodel = \"popular\"\n\
         [steps.recs]\nkind = \"recommend\"\nneeds = [\"popular\"]\ntop_n = 5\n\
         [steps.publish]\nkind = \"write\"\nneeds = [\"recs\"]\nsink = \"lists\"\ntable = \"recs\"\n",
    )
    .unwrap();
    let out = recpipe(p, &["validate", "--check-connections"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok    source `warehouse` (bigquery)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    dry run `warehouse` step `interactions`:"),
        "{stdout}"
    );

    // The whole pipeline runs on the warehouse data.
    let out = recpipe(p, &["run", "warehouse", "--run-id", "r1"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, list) =
        recpipe::artifact::read_parquet(&p.join("lists/recs/current/data.parquet")).unwrap();
    let rows: usize = list.iter().map(RecordBatch::num_rows).sum();
    // 24,995 users above 5, each with one item seen: five others each.
    assert_eq!(rows, 24_995 * 5);
    assert!(list[0].column(0).null_count() == 0);
}

async fn bq_client() -> gcp_bigquery_client::Client {
    ClientBuilder::new()
        .with_v2_base_url(format!("{}/bigquery/v2", endpoint()))
        .build_from_authenticator(Arc::new(AnyToken))
        .await
        .unwrap()
}

/// `count(*)` and the single run id of a published table, and its run label.
async fn contents(table: &str) -> (i64, String, String) {
    let client = bq_client().await;
    let response = client
        .job()
        .query(
            PROJECT,
            QueryRequest::new(format!(
                "SELECT COUNT(*), MIN(run_id), MAX(run_id) FROM bq_sink_{table}"
            )),
        )
        .await
        .unwrap();
    assert!(response.errors.is_none(), "{table}: {:?}", response.errors);
    let row = &response.rows.unwrap()[0];
    let cell = |i: usize| {
        row.columns.as_ref().unwrap()[i]
            .value
            .as_ref()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(cell(1), cell(2), "{table} mixes runs");
    let (dataset, name) = table.split_once('.').unwrap();
    let meta = client
        .table()
        .get(PROJECT, &format!("bq_sink_{dataset}"), name, None)
        .await
        .unwrap();
    let label = meta
        .labels
        .unwrap_or_default()
        .remove("recpipe_run_id")
        .unwrap_or_default();
    (cell(0).parse().unwrap(), cell(1), label)
}

fn sink_config(dataset: &str) -> recpipe::config::settings::BigQuerySinkConfig {
    recpipe::config::settings::BigQuerySinkConfig {
        project: PROJECT.into(),
        dataset: dataset.into(),
        location: None,
        key_file: None,
        endpoint: Some(endpoint()),
        partition_by: Some("generated_at".into()),
        cluster_by: vec!["user_id".into()],
    }
}

async fn fresh_dataset(dataset: &str) {
    let client = bq_client().await;
    let _ = client.dataset().delete(PROJECT, dataset, true).await;
    client
        .dataset()
        .create(Dataset::new(PROJECT, dataset))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_bigquery_sink_replaces_the_table_and_rolls_back() {
    fresh_dataset("bq_sink_swap").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = recpipe::sinks::AnySink::from_config(
        "warehouse",
        &recpipe::config::settings::SinkConfig::Bigquery(sink_config("bq_sink_swap")),
    );
    let publish = |run: &'static str, rows: usize| {
        let (sink, path) = (sink.clone(), crate::postgres::list(dir.path(), run, rows));
        tokio::task::spawn_blocking(move || sink.get().publish("recs", run, &path))
    };
    let first = publish("run-1", 100).await.unwrap().unwrap();
    assert_eq!(first.rows, 100);
    assert_eq!(
        contents("swap.recs").await,
        (100, "run-1".into(), "run-1".into())
    );
    publish("run-2", 150).await.unwrap().unwrap();
    assert_eq!(
        contents("swap.recs").await,
        (150, "run-2".into(), "run-2".into())
    );
    assert_eq!(
        contents("swap.recs__prev").await,
        (100, "run-1".into(), "run-1".into())
    );
    // The same run again is a no-op: the previous table is not overwritten.
    publish("run-2", 150).await.unwrap().unwrap();
    assert_eq!(contents("swap.recs__prev").await.1, "run-1");

    let s = sink.clone();
    let back = tokio::task::spawn_blocking(move || s.get().rollback("recs"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.version, "run-1");
    assert_eq!(
        contents("swap.recs").await,
        (100, "run-1".into(), "run-1".into())
    );
    assert_eq!(
        contents("swap.recs__prev").await,
        (150, "run-2".into(), "run-2".into())
    );
}

#[test]
fn a_failed_load_keeps_the_table_and_the_next_run_cleans_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(fresh_dataset("bq_sink_fail"));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("config")).unwrap();
    std::fs::write(
        p.join("config/default.toml"),
        format!(
            "[sinks.warehouse]\nkind = \"bigquery\"\nproject = \"{PROJECT}\"\ndataset = \"bq_sink_fail\"\nendpoint = \"{}\"\n",
            endpoint()
        ),
    )
    .unwrap();
    let write = |run: &str, rows: usize, failpoint: &str| {
        let input = crate::postgres::list(p, run, rows);
        let args = [
            "step",
            "write",
            "--input",
            input.to_str().unwrap(),
            "--sink",
            "warehouse",
            "--table",
            "recs",
            "--version",
            run,
        ];
        recpipe(p, &args, &[("RECPIPE_FAILPOINTS", failpoint)])
    };
    let out = write("v1", 300, "");
    assert!(out.status.success(), "{}", text(&out));

    let out = write("v2", 400, "bigquery.corrupt_load");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("load job"), "{}", text(&out));
    assert_eq!(rt.block_on(contents("fail.recs")).0, 300);

    let out = write("v3", 500, "bigquery.before_swap");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(rt.block_on(contents("fail.recs")).1, "v1");

    let out = write("v4", 600, "");
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pruned = summary["details"]["pruned"].as_array().unwrap();
    assert!(
        pruned.contains(&serde_json::json!("recs__staging_v3")),
        "{summary}"
    );
    assert_eq!(
        rt.block_on(contents("fail.recs")),
        (600, "v4".into(), "v4".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bigquery_reader_never_sees_a_partial_list_or_a_missing_table() {
    fresh_dataset("bq_sink_reader").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = recpipe::sinks::AnySink::from_config(
        "warehouse",
        &recpipe::config::settings::SinkConfig::Bigquery(sink_config("bq_sink_reader")),
    );
    // Every run has its own size, so a partial or mixed table shows.
    let size = |i: usize| 200 + 37 * i;
    let runs: Vec<(String, std::path::PathBuf)> = (0..=20)
        .map(|i| {
            let run = format!("run-{i}");
            let path = crate::postgres::list(dir.path(), &run, size(i));
            (run, path)
        })
        .collect();
    let publisher = tokio::task::spawn_blocking(move || {
        for (run, path) in &runs {
            sink.get().publish("recs", run, path).unwrap();
        }
    });
    // Wait for the first list, then read until the last publish is done.
    while bq_client()
        .await
        .table()
        .get(PROJECT, "bq_sink_reader", "recs", None)
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut reads = 0;
    while !publisher.is_finished() {
        let (count, run, _) = contents("reader.recs").await;
        let i: usize = run.strip_prefix("run-").unwrap().parse().unwrap();
        assert_eq!(count as usize, size(i), "{run} is partial");
        reads += 1;
    }
    publisher.await.unwrap();
    assert!(reads >= 20, "only {reads} reads during 20 publishes");
    assert_eq!(contents("reader.recs").await.1, "run-20");
}

#[tokio::test]
async fn a_bigquery_rerun_with_a_changed_list_publishes_it() {
    fresh_dataset("bq_sink_rerun").await;
    let (long, short) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sink = recpipe::sinks::AnySink::from_config(
        "warehouse",
        &recpipe::config::settings::SinkConfig::Bigquery(sink_config("bq_sink_rerun")),
    );
    let publish = |path: std::path::PathBuf| {
        let sink = sink.clone();
        tokio::task::spawn_blocking(move || sink.get().publish("recs", "run-1", &path))
    };
    let first = publish(crate::postgres::list(long.path(), "run-1", 100))
        .await
        .unwrap()
        .unwrap();
    assert!(!first.unchanged);
    // The same run id with another list: published, not skipped.
    let short_list = crate::postgres::list(short.path(), "run-1", 30);
    let second = publish(short_list.clone()).await.unwrap().unwrap();
    assert_eq!((second.rows, second.unchanged), (30, false));
    assert_eq!(
        contents("rerun.recs").await,
        (30, "run-1".into(), "run-1".into())
    );
    // The very same list again: nothing done, and said so.
    let third = publish(short_list).await.unwrap().unwrap();
    assert_eq!((third.rows, third.unchanged), (30, true));
    assert_eq!(contents("rerun.recs__prev").await.0, 100);
}
