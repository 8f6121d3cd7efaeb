//! The PostgreSQL sink and source against a real server (`.ci/test` starts one
//! and sets `RECPIPE_TEST_PG`): swap, rollback, crash points, a concurrent
//! reader, extraction with bound parameters, connection checks.
//!
//! Each test works in a schema of its own, so they run in parallel.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{Float32Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use recpipe::config::settings::{PostgresConfig, Secret, SinkConfig, SourceConfig, TlsMode};
use recpipe::sinks::{AnySink, SinkError};
use recpipe::sources::AnySource;
use recpipe::sources::ParamValue;
use tokio_postgres::{Client, NoTls, Row};

use crate::common::{recpipe, text};

fn admin_dsn() -> String {
    std::env::var("RECPIPE_TEST_PG")
        .expect("RECPIPE_TEST_PG is not set: run the tests with .ci/test, which starts PostgreSQL")
}

/// An admin connection for setting up and inspecting.
struct Db {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Db {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&admin_dsn(), NoTls).await.unwrap();
            tokio::spawn(connection);
            client
        });
        Self { rt, client }
    }

    fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    fn rows(&self, sql: &str) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.rt.block_on(self.client.query(sql, &[]))
    }

    /// `count(*)`, and the single run id, of a published table.
    fn contents(&self, table: &str) -> (i64, String) {
        let rows = self
            .rows(&format!(
                "SELECT count(*), min(run_id), max(run_id) FROM {table}"
            ))
            .unwrap_or_else(|e| panic!("{table}: {e:?}"));
        let (min, max): (String, String) = (rows[0].get(1), rows[0].get(2));
        assert_eq!(min, max, "{table} mixes runs");
        (rows[0].get(0), min)
    }

    fn tables(&self, schema: &str) -> Vec<String> {
        self.rows(&format!(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = '{schema}' ORDER BY 1"
        ))
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    /// A fresh schema (dropped with everything in it first).
    fn schema(&self, name: &str) -> String {
        self.exec(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
        ));
        name.to_string()
    }
}

fn pg_config(dsn: &str, schema: &str) -> PostgresConfig {
    PostgresConfig {
        dsn: Secret::new(dsn),
        schema: schema.into(),
        tls: TlsMode::Disable,
        ca_file: None,
        connect_timeout: Duration::from_secs(5),
        connect_retries: 0,
    }
}

fn sink(dsn: &str, schema: &str) -> AnySink {
    AnySink::from_config("service_db", &SinkConfig::Postgres(pg_config(dsn, schema)))
}

/// A user→item list of `rows` rows for run `run`, as the recommend step writes it.
pub fn list(dir: &Path, run: &str, rows: usize) -> PathBuf {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("score", DataType::Float32, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new(
            "generated_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let n = rows as i64;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i / 10))),
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(Int32Array::from_iter_values(
                (0..n).map(|i| (i % 10) as i32 + 1),
            )),
            Arc::new(Float32Array::from_iter_values(
                (0..n).map(|i| 1.0 / (i % 10 + 1) as f32),
            )),
            Arc::new(StringArray::from_iter_values((0..n).map(|_| run))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..n).map(|_| 1_795_000_000_000_000))
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap();
    let path = dir.join(format!("{run}.parquet"));
    recpipe::artifact::write_parquet(&path, schema, &[batch]).unwrap();
    path
}

#[test]
fn publish_swaps_in_the_new_table_and_rollback_swaps_back() {
    let db = Db::new();
    let s = db.schema("rp_swap");
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&admin_dsn(), &s);
    let sink = sink.get();
    let first = sink
        .publish("recs", "run-1", &list(dir.path(), "run-1", 100))
        .unwrap();
    assert_eq!((first.rows, first.location.as_str()), (100, "rp_swap.recs"));
    assert_eq!(db.contents("rp_swap.recs"), (100, "run-1".into()));
    let columns: Vec<(String, String, String)> = db
        .rows(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns
             WHERE table_schema = 'rp_swap' AND table_name = 'recs' ORDER BY ordinal_position",
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected = [
        ("user_id", "bigint"),
        ("item_id", "bigint"),
        ("rank", "integer"),
        ("score", "real"),
        ("run_id", "text"),
        ("generated_at", "timestamp with time zone"),
    ];
    assert_eq!(
        columns,
        expected
            .iter()
            .map(|(c, t)| (c.to_string(), t.to_string(), "NO".to_string()))
            .collect::<Vec<_>>()
    );
    let generated: Vec<Row> = db
        .rows("SELECT min(generated_at)::text, min(score), max(rank) FROM rp_swap.recs")
        .unwrap();
    assert_eq!(generated[0].get::<_, String>(0), "2026-11-18 11:06:40+00");
    assert_eq!(generated[0].get::<_, f32>(1), 0.1);
    assert_eq!(generated[0].get::<_, i32>(2), 10);

    sink.publish("recs", "run-2", &list(dir.path(), "run-2", 150))
        .unwrap();
    assert_eq!(db.contents("rp_swap.recs"), (150, "run-2".into()));
    assert_eq!(db.contents("rp_swap.recs__prev"), (100, "run-1".into()));
    // The same version again is a no-op: the previous table is not overwritten.
    let again = sink
        .publish("recs", "run-2", &list(dir.path(), "run-2", 150))
        .unwrap();
    assert_eq!(again.rows, 150);
    assert_eq!(db.contents("rp_swap.recs__prev"), (100, "run-1".into()));
    let indexes = db
        .rows("SELECT indexdef FROM pg_indexes WHERE schemaname = 'rp_swap' AND tablename = 'recs'")
        .unwrap();
    assert_eq!(indexes.len(), 1);
    assert!(indexes[0].get::<_, String>(0).contains("(user_id, rank)"));

    let back = sink.rollback("recs").unwrap();
    assert_eq!((back.version.as_str(), back.rows), ("run-1", 100));
    assert_eq!(db.contents("rp_swap.recs"), (100, "run-1".into()));
    assert_eq!(db.contents("rp_swap.recs__prev"), (150, "run-2".into()));
    sink.rollback("recs").unwrap();
    assert_eq!(db.contents("rp_swap.recs"), (150, "run-2".into()));
    assert_eq!(db.tables("rp_swap"), vec!["recs", "recs__prev"]);
}

#[test]
fn a_reader_never_sees_a_partial_list_or_a_missing_table() {
    let db = Db::new();
    let s = db.schema("rp_reader");
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&admin_dsn(), &s);
    // Every run has its own size, so a partial or mixed table shows.
    let size = |i: usize| 2_000 + 137 * i;
    let runs: Vec<(String, PathBuf)> = (0..=20)
        .map(|i| {
            let run = format!("run-{i}");
            let path = list(dir.path(), &run, size(i));
            (run, path)
        })
        .collect();
    sink.get().publish("recs", &runs[0].0, &runs[0].1).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let db = Db::new();
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let (count, run) = db.contents("rp_reader.recs");
                let i: usize = run.strip_prefix("run-").unwrap().parse().unwrap();
                assert_eq!(count as usize, size(i), "{run} is partial");
                reads += 1;
            }
            reads
        })
    };
    for (run, path) in &runs[1..] {
        let published = sink.get().publish("recs", run, path).unwrap();
        assert_eq!(published.rows as usize, size(run[4..].parse().unwrap()));
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader
        .join()
        .expect("the reader saw a partial or missing table");
    assert!(reads >= 20, "only {reads} reads during 20 publishes");
    assert_eq!(
        db.contents("rp_reader.recs"),
        (size(20) as i64, "run-20".into())
    );
}

/// A project whose settings have the sink `service_db` on schema `schema`.
fn project(schema: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/default.toml"),
        format!(
            "[sinks.service_db]\nkind = \"postgres\"\ndsn = \"{}\"\nschema = \"{schema}\"\n{extra}",
            admin_dsn()
        ),
    )
    .unwrap();
    dir
}

fn write(project: &Path, input: &Path, version: &str, failpoint: &str) -> std::process::Output {
    let input = input.to_str().unwrap();
    let args = [
        "step",
        "write",
        "--input",
        input,
        "--sink",
        "service_db",
        "--table",
        "recs",
        "--version",
        version,
    ];
    recpipe(project, &args, &[("RECPIPE_FAILPOINTS", failpoint)])
}

#[test]
fn a_crash_before_the_swap_keeps_the_table_and_the_next_run_cleans_up() {
    let db = Db::new();
    let s = db.schema("rp_crash");
    let dir = project(&s, "");
    let p = dir.path();
    let out = write(p, &list(p, "v1", 300), "v1", "");
    assert!(out.status.success(), "{}", text(&out));

    let out = write(p, &list(p, "v2", 400), "v2", "postgres.before_swap");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("postgres.before_swap"),
        "{}",
        text(&out)
    );
    assert_eq!(db.contents("rp_crash.recs"), (300, "v1".into()));
    assert_eq!(db.tables(&s), vec!["recs", "recs__staging_v2"]);

    let out = write(p, &list(p, "v3", 500), "v3", "");
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["details"]["pruned"],
        serde_json::json!(["recs__staging_v2"])
    );
    assert_eq!(db.contents("rp_crash.recs"), (500, "v3".into()));
    assert_eq!(db.tables(&s), vec!["recs", "recs__prev"]);
}

#[test]
fn a_connection_dropped_mid_copy_loses_nothing() {
    let db = Db::new();
    let s = db.schema("rp_drop");
    let dir = project(&s, "");
    let p = dir.path();
    let out = write(p, &list(p, "v1", 300), "v1", "");
    assert!(out.status.success(), "{}", text(&out));

    // About 4 MB of COPY data: the connection drops after the first 1 MiB.
    let big = list(p, "v2", 60_000);
    let out = write(p, &big, "v2", "postgres.drop_connection_in_copy");
    // A dropped connection is transient: exit 75, worth a retry.
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("cannot copy into `rp_drop.recs__staging_v2`"),
        "{err}"
    );
    assert_eq!(db.contents("rp_drop.recs"), (300, "v1".into()));
    // The staging table died with the transaction.
    assert_eq!(db.tables(&s), vec!["recs"]);

    let out = write(p, &big, "v2", "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(db.contents("rp_drop.recs"), (60_000, "v2".into()));
}

#[test]
fn a_refused_rename_keeps_the_table_and_is_not_retried() {
    let db = Db::new();
    let s = db.schema("rp_perm");
    db.exec(
        "DROP ROLE IF EXISTS rp_perm_writer;
         CREATE ROLE rp_perm_writer LOGIN;
         GRANT USAGE, CREATE ON SCHEMA rp_perm TO rp_perm_writer",
    );
    let dir = tempfile::tempdir().unwrap();
    // The current table belongs to another role, so the writer may not rename it.
    sink(&admin_dsn(), &s)
        .get()
        .publish("recs", "v1", &list(dir.path(), "v1", 100))
        .unwrap();
    let writer_dsn = admin_dsn().replace("user=postgres", "user=rp_perm_writer");
    let writer = sink(&writer_dsn, &s);
    let err = writer
        .get()
        .publish("recs", "v2", &list(dir.path(), "v2", 200))
        .expect_err("not the owner");
    assert!(matches!(err, SinkError::Rejected { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(
        message
            .contains("cannot swap `rp_perm.recs`: must be owner of table recs (SQLSTATE 42501)"),
        "{message}"
    );
    assert_eq!(db.contents("rp_perm.recs"), (100, "v1".into()));

    db.exec("ALTER TABLE rp_perm.recs OWNER TO rp_perm_writer");
    let published = writer
        .get()
        .publish("recs", "v3", &list(dir.path(), "v3", 300))
        .unwrap();
    assert_eq!(published.pruned, vec!["recs__staging_v2"]);
    assert_eq!(db.contents("rp_perm.recs"), (300, "v3".into()));
}

#[tokio::test]
async fn extract_streams_rows_with_bound_parameters() {
    // The admin connection has its own runtime: set up outside this one.
    tokio::task::spawn_blocking(|| {
        let db = Db::new();
        let s = db.schema("rp_source");
        db.exec(&format!(
            "CREATE TABLE {s}.closed_jobs (job_id bigint, status text, closed_at timestamptz, day date, score numeric);
             INSERT INTO {s}.closed_jobs
             SELECT i, CASE WHEN i % 2 = 0 THEN 'closed' ELSE 'open' END,
                    '2026-11-01 00:00:00+00'::timestamptz + i * interval '1 second', '2026-11-01', 1.5
             FROM generate_series(1, 20000) i"
        ));
    })
    .await
    .unwrap();
    let source = AnySource::from_config(&SourceConfig::Postgres(pg_config(
        &admin_dsn(),
        "rp_source",
    )));
    let sql = "SELECT job_id AS item_id, closed_at, day FROM closed_jobs -- not $status\n\
               WHERE status = $status AND job_id > $min_id ORDER BY job_id";
    let params = |status: &str, min_id: ParamValue| {
        [
            ("status".to_string(), ParamValue::Text(status.into())),
            ("min_id".to_string(), min_id),
        ]
        .into_iter()
        .collect()
    };
    let result = source
        .query(sql, &params("closed", ParamValue::Int(100)))
        .await
        .unwrap();
    let fields: Vec<(String, DataType)> = result
        .schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("item_id".into(), DataType::Int64),
            (
                "closed_at".into(),
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            ),
            ("day".into(), DataType::Date32),
        ]
    );
    let batches: Vec<RecordBatch> = result.batches.map(|b| b.unwrap()).collect().await;
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
        vec![8192, 1758],
        "streamed in batches"
    );
    let first = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(first.value(0), 102);
    let closed = batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(closed.value(0), 1_793_491_200_000_000 + 102_000_000);

    // A value is bound, never pasted into the text.
    let injected = source
        .query(sql, &params("closed' OR '1'='1", ParamValue::Int(0)))
        .await
        .unwrap();
    let rows: usize = injected
        .batches
        .map(|b| b.unwrap().num_rows())
        .fold(0, |a, n| async move { a + n })
        .await;
    assert_eq!(rows, 0);

    let err = source
        .query(sql, &params("closed", ParamValue::Text("ten".into())))
        .await
        .err()
        .expect("a text value for a bigint parameter");
    assert!(err.to_string().contains("`$min_id::bigint`"), "{err}");
    let err = source
        .query("SELECT score FROM closed_jobs", &Default::default())
        .await
        .err()
        .expect("numeric is not read");
    assert!(err.to_string().contains("`score::float8`"), "{err}");
    let err = source
        .query("SELECT * FROM no_such_table", &Default::default())
        .await
        .err()
        .expect("missing table");
    assert!(
        err.to_string()
            .contains("relation \"no_such_table\" does not exist (SQLSTATE 42P01)"),
        "{err}"
    );
}

#[test]
fn check_connections_reports_each_source_and_sink() {
    let db = Db::new();
    let s = db.schema("rp_check");
    let dir = project(
        &s,
        "[sources.dead]\nkind = \"postgres\"\ndsn = \"host=127.0.0.1 port=1 user=app password=hunter2 dbname=x\"\nconnect_retries = 0\n",
    );
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    let out = recpipe(dir.path(), &["validate", "--check-connections"], &[]);
    // A connection that fails is transient: exit 75.
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok    sink `service_db` (postgres)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  source `dead` (postgres): I/O error: cannot connect to postgres://app@127.0.0.1:1/x"),
        "{stdout}"
    );
    assert!(!text(&out).contains("hunter2"), "{}", text(&out));
}

#[test]
fn the_example_pipeline_publishes_to_postgres_and_rolls_back() {
    let db = Db::new();
    let s = db.schema("rp_example");
    let dir = crate::common::project();
    let p = dir.path();
    let dsn = admin_dsn();
    let env = [
        ("RECPIPE__SINKS__SERVICE_DB__DSN", dsn.as_str()),
        ("RECPIPE__SINKS__SERVICE_DB__SCHEMA", s.as_str()),
    ];
    for run in ["r1", "r2"] {
        let out = recpipe(p, &["run", "example-postgres", "--run-id", run], &env);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (rows, run) = db.contents("rp_example.example_user_recs");
    assert_eq!(run, "r2");
    let ranks = db
        .rows("SELECT count(DISTINCT user_id), max(rank) FROM rp_example.example_user_recs")
        .unwrap();
    let (users, max_rank): (i64, i32) = (ranks[0].get(0), ranks[0].get(1));
    assert_eq!((rows, max_rank), (users * 10, 10));

    let out = recpipe(p, &["rollback", "example-postgres"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("table `example_user_recs`: now version r1"),
        "{}",
        text(&out)
    );
    assert_eq!(db.contents("rp_example.example_user_recs").1, "r1");
    let out = recpipe(
        p,
        &["rollback", "example-postgres", "--sink", "local_lists"],
        &env,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn tls_verify_full_checks_the_server_certificate() {
    let ca = std::env::var("RECPIPE_TEST_PG_CA")
        .expect("RECPIPE_TEST_PG_CA is not set: run the tests with .ci/test");
    let tls = |ca_file: PathBuf| {
        AnySource::from_config(&SourceConfig::Postgres(PostgresConfig {
            tls: TlsMode::VerifyFull,
            ca_file: Some(ca_file),
            ..pg_config(&admin_dsn(), "public")
        }))
    };
    let result = tls(PathBuf::from(&ca))
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &Default::default(),
        )
        .await
        .unwrap();
    let batches: Vec<RecordBatch> = result.batches.map(|b| b.unwrap()).collect().await;
    let ssl = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()
        .unwrap();
    assert!(ssl.value(0), "the session is encrypted");

    // A CA that did not sign the server's certificate: refused, not downgraded.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.crt");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=other"])
        .arg("-keyout")
        .arg(dir.path().join("other.key"))
        .arg("-out")
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success());
    let err = tls(other).healthcheck().await.expect_err("unknown issuer");
    assert!(
        err.to_string()
            .contains("cannot connect to postgres://postgres@127.0.0.1"),
        "{err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn a_rerun_with_a_changed_list_publishes_it() {
    let db = Db::new();
    let s = db.schema("rp_rerun");
    let (long, short) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sink = sink(&admin_dsn(), &s);
    let sink = sink.get();
    let first = sink
        .publish("recs", "run-1", &list(long.path(), "run-1", 100))
        .unwrap();
    assert!(!first.unchanged);
    // The same run id with another list (an edited `top_n`): published, and the
    // count is what the table holds.
    let second = sink
        .publish("recs", "run-1", &list(short.path(), "run-1", 30))
        .unwrap();
    assert_eq!((second.rows, second.unchanged), (30, false));
    assert_eq!(db.contents("rp_rerun.recs"), (30, "run-1".into()));
    assert_eq!(db.contents("rp_rerun.recs__prev"), (100, "run-1".into()));
    // The very same list again: nothing done, and said so.
    let third = sink
        .publish("recs", "run-1", &short.path().join("run-1.parquet"))
        .unwrap();
    assert_eq!((third.rows, third.unchanged), (30, true));
    assert_eq!(third.sha256, second.sha256);
    assert_eq!(db.contents("rp_rerun.recs__prev"), (100, "run-1".into()));
}

#[test]
fn a_grouped_publish_switches_its_tables_in_one_transaction() {
    let db = Db::new();
    let s = db.schema("rp_group");
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&admin_dsn(), &s);
    // Two lists of different sizes per run, so a table of another run shows.
    let group = |i: usize| {
        let run = format!("run-{i}");
        let sub = dir.path().join(&run);
        std::fs::create_dir_all(&sub).unwrap();
        let lists = vec![
            recpipe::sinks::ListFile {
                table: "recs_a".into(),
                input: list(&sub, &run, 1_000 + 10 * i),
            },
            recpipe::sinks::ListFile {
                table: "recs_b".into(),
                input: {
                    let b = sub.join("b");
                    std::fs::create_dir_all(&b).unwrap();
                    list(&b, &run, 500 + 10 * i)
                },
            },
        ];
        (run, lists)
    };
    let (run, lists) = group(0);
    sink.get().publish_group(&lists, &run).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let db = Db::new();
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                // One statement reads both tables: they must be of one run.
                let row = &db
                    .rows(
                        "SELECT (SELECT min(run_id) FROM rp_group.recs_a),
                                (SELECT min(run_id) FROM rp_group.recs_b)",
                    )
                    .expect("both tables exist")[0];
                let (a, b): (String, String) = (row.get(0), row.get(1));
                assert_eq!(a, b, "one table switched without the other");
                reads += 1;
            }
            reads
        })
    };
    for i in 1..=15 {
        let (run, lists) = group(i);
        let published = sink.get().publish_group(&lists, &run).unwrap();
        let rows: Vec<u64> = published.iter().map(|p| p.rows).collect();
        assert_eq!(rows, vec![1_000 + 10 * i as u64, 500 + 10 * i as u64]);
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw tables of two runs");
    assert!(reads >= 15, "only {reads} reads during 15 publishes");
    assert_eq!(db.contents("rp_group.recs_a"), (1_150, "run-15".into()));
    assert_eq!(db.contents("rp_group.recs_b"), (650, "run-15".into()));

    // Rolled back together, in one transaction as well.
    let back = sink
        .get()
        .rollback_group(&["recs_a".into(), "recs_b".into()])
        .unwrap();
    assert_eq!(
        back.iter().map(|p| p.version.as_str()).collect::<Vec<_>>(),
        vec!["run-14", "run-14"]
    );
    assert_eq!(db.contents("rp_group.recs_a").1, "run-14");
    assert_eq!(db.contents("rp_group.recs_b").1, "run-14");
}

/// The example pipeline with a second, shorter list, both published by one write
/// step with `tables`.
const GROUPED: &str = r#"
name = "grouped"

[steps.interactions]
kind = "extract"
source = "local"
sql = "sql/example_interactions.sql"
role = "interactions"
params = { min_value = 1 }

[steps.popular]
kind = "train"
needs = ["interactions"]
model = "popular"

[steps.long]
kind = "recommend"
needs = ["popular"]
top_n = 10

[steps.short]
kind = "recommend"
needs = ["popular"]
top_n = 3

[steps.publish]
kind = "write"
needs = ["long", "short"]
sink = "service_db"
tables = { long = "recs_long", short = "recs_short" }
"#;

#[test]
fn a_grouped_write_step_publishes_and_rolls_back_its_tables_together() {
    let db = Db::new();
    let s = db.schema("rp_grouped_run");
    let dir = crate::common::project();
    let p = dir.path();
    std::fs::write(p.join("pipelines/grouped.toml"), GROUPED).unwrap();
    let dsn = admin_dsn();
    let env = |failpoint: &'static str| {
        vec![
            ("RECPIPE__SINKS__SERVICE_DB__DSN", dsn.clone()),
            ("RECPIPE__SINKS__SERVICE_DB__SCHEMA", s.clone()),
            ("RECPIPE_FAILPOINTS", failpoint.to_string()),
        ]
    };
    let run = |id: &str, failpoint: &'static str| {
        let env = env(failpoint);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        recpipe(p, &["run", "grouped", "--run-id", id], &env)
    };
    let out = run("g1", "");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (long, _) = db.contents("rp_grouped_run.recs_long");
    let (short, _) = db.contents("rp_grouped_run.recs_short");
    assert_eq!(long * 3, short * 10);
    assert!(
        stdout.contains(&format!(
            "published `publish` ({long} rows): rp_grouped_run.recs_long"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "published `publish` ({short} rows): rp_grouped_run.recs_short"
        )),
        "{stdout}"
    );

    // A crash after staging both: neither table switched.
    let out = run("g2", "postgres.before_swap");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(db.contents("rp_grouped_run.recs_long").1, "g1");
    assert_eq!(db.contents("rp_grouped_run.recs_short").1, "g1");
    let out = run("g2", "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(db.contents("rp_grouped_run.recs_long").1, "g2");
    assert_eq!(db.contents("rp_grouped_run.recs_short").1, "g2");

    let env = env("");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = recpipe(p, &["rollback", "grouped"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(db.contents("rp_grouped_run.recs_long").1, "g1");
    assert_eq!(db.contents("rp_grouped_run.recs_short").1, "g1");
    let out = recpipe(p, &["plan", "grouped"], &env);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("tables `recs_long` ← long, `recs_short` ← short (published together)"),
        "{}",
        text(&out)
    );
}

#[test]
fn rollback_with_nothing_published_says_so_in_postgres() {
    let db = Db::new();
    let s = db.schema("rp_nothing");
    let sink = sink(&admin_dsn(), &s);
    let err = sink.get().rollback("recs").expect_err("nothing published");
    assert!(
        err.to_string().contains(
            "table `rp_nothing.recs` has never been published by recpipe: nothing to roll back; publish a list first"
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    let dir = tempfile::tempdir().unwrap();
    sink.get()
        .publish("recs", "v1", &list(dir.path(), "v1", 10))
        .unwrap();
    let err = sink.get().rollback("recs").expect_err("one version");
    assert!(
        err.to_string()
            .contains("has no previous version (`rp_nothing.recs__prev`) to roll back to"),
        "{err}"
    );
}

/// The publish gate (`gate.rs`) against PostgreSQL: a worse model is blocked
/// with exit 3 and the table still holds the first run's list.
#[test]
fn the_gate_keeps_the_previous_postgres_table_current() {
    use crate::gate::{GATED, run};
    let db = Db::new();
    let schema = db.schema("rp_gate");
    let dir = crate::common::project();
    let p = dir.path();
    let file = "gated.toml";
    std::fs::write(
        p.join("pipelines").join(file),
        GATED.replace("{sink}", "service_db"),
    )
    .unwrap();
    let dsn = admin_dsn();
    let env = [
        ("RECPIPE__SINKS__SERVICE_DB__DSN", dsn.as_str()),
        ("RECPIPE__SINKS__SERVICE_DB__SCHEMA", schema.as_str()),
    ];
    let out = run(p, "p1", &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let worse = "model = \"popular\"\n\n[steps.publish]";
    crate::common::edit(p, file, "model = \"rp3beta\"\n\n[steps.publish]", worse);
    let out = run(p, "p2", &env);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let (rows, run_id) = db.contents("rp_gate.gated_recs");
    assert_eq!(run_id, "p1");
    assert!(rows > 1000, "{rows}");
}
