//! The BigQuery source against the bqemulator REST API (`.ci/test` starts it and
//! sets `RECPIPE_TEST_BQ`): typed named parameters, paging into batches, errors,
//! and the dry run of `validate --check-connections`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::query_request::QueryRequest;
use recpipe::config::pipeline::ParamValue;
use recpipe::config::settings::{BigQueryConfig, SourceConfig};
use recpipe::sources::AnySource;

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
