//! The BigQuery sink: a list becomes a table in the sink's dataset, replaced in
//! one statement so a query sees the old list or the new one.
//!
//! Publishing `<table>` for run `r`:
//! 1. delete leftover `<table>__staging_*` tables of crashed runs;
//! 2. a load job uploads the Parquet list into `<table>__staging_<r>` (a
//!    multipart upload: gcp-bigquery-client has no upload API, so the request
//!    is made here with the same credentials);
//! 3. `CREATE OR REPLACE TABLE <table>__prev AS SELECT * FROM <table>` keeps the
//!    current list for rollback;
//! 4. `CREATE OR REPLACE TABLE <table> … OPTIONS (labels) AS SELECT * FROM
//!    staging` replaces the table atomically, with the run id as a label and
//!    optional partitioning and clustering;
//! 5. the staging table is deleted.
//!
//! A failure before step 4 leaves `<table>` as it was. A second label,
//! `recpipe_sha256`, holds the first 32 hex digits of the list file's SHA-256
//! (label values are at most 63 lowercase characters): a publish does nothing
//! (`unchanged`) only when both labels match, i.e. the same run already
//! published this very list; a rerun whose list changed replaces the table.
//!
//! Tables published together (`publish_group`) are all loaded into staging
//! tables first, then replaced one after another. BigQuery has no transaction
//! around DDL, so the group is not atomic: each table switches in one statement,
//! but between two of them a query can see one table's new list next to
//! another's old one, and a failure between them leaves the earlier tables
//! switched and fails the step (its retry, a rerun, or `rollback` mends it).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use gcp_bigquery_client::Client;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_reference::TableReference;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::table::ListOptions;
use serde_json::json;

use super::{Published, Sink, SinkError, Staged};
use crate::bqconn::Access;
use crate::config::settings::BigQuerySinkConfig;
use crate::failpoint;

const PREV: &str = "__prev";
const STAGING: &str = "__staging_";
const RUN_LABEL: &str = "recpipe_run_id";
const SHA_LABEL: &str = "recpipe_sha256";
/// Hex digits of the SHA-256 kept in the label (128 bits).
const SHA_LABEL_LEN: usize = 32;

/// The labels recpipe puts on a table it published.
type Labels = HashMap<String, String>;

/// A failure: its message, and whether a retry could help.
struct Failure(String, bool);

impl super::ClientError for Failure {
    fn split(self) -> (String, bool) {
        (self.0, self.1)
    }
}

fn transport(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure(format!("{what}: {e}"), true)
}

#[derive(Debug, Clone)]
pub struct BigQuerySink {
    name: String,
    config: BigQuerySinkConfig,
}

impl BigQuerySink {
    pub fn new(name: &str, config: BigQuerySinkConfig) -> Self {
        Self {
            name: name.to_string(),
            config,
        }
    }

    async fn access(&self) -> Result<(Access, Client), Failure> {
        let access = Access::new(
            self.config.endpoint.as_deref(),
            self.config.key_file.as_deref(),
        )
        .await
        .map_err(|e| Failure(e, true))?;
        let client = access.client().await.map_err(|e| Failure(e, true))?;
        Ok((access, client))
    }

    fn qualified(&self, table: &str) -> String {
        format!("`{}.{}.{table}`", self.config.project, self.config.dataset)
    }

    /// recpipe's labels of `table` (empty if it has none), or `None` if the table
    /// does not exist.
    async fn labels_of(&self, client: &Client, table: &str) -> Result<Option<Labels>, Failure> {
        match client
            .table()
            .get(&self.config.project, &self.config.dataset, table, None)
            .await
        {
            Ok(t) => Ok(Some(
                t.labels
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(k, _)| k == RUN_LABEL || k == SHA_LABEL)
                    .collect(),
            )),
            Err(BQError::ResponseError { error }) if error.error.code == 404 => Ok(None),
            Err(e) => Err(transport(&format!("cannot read table `{table}`"), e)),
        }
    }

    async fn query(&self, client: &Client, sql: String) -> Result<(), Failure> {
        let request = QueryRequest {
            location: self.config.location.clone(),
            ..QueryRequest::new(sql.clone())
        };
        let response = match client.job().query(&self.config.project, request).await {
            Ok(r) => r,
            Err(BQError::ResponseError { error }) => {
                return Err(Failure(
                    format!("{} (HTTP {})", error.error.message, error.error.code),
                    error.error.code >= 500,
                ));
            }
            Err(e) => return Err(transport("query", e)),
        };
        // Some servers answer a failed statement with 200 and the errors in the body.
        match response.errors.as_deref().and_then(|e| e.first()) {
            Some(e) => Err(Failure(
                e.message
                    .clone()
                    .unwrap_or_else(|| "statement failed".into()),
                false,
            )),
            None => Ok(()),
        }
    }

    /// Replaces `to` with the rows of `from`, labelled with `labels`.
    async fn replace(
        &self,
        client: &Client,
        to: &str,
        from: &str,
        labels: &Labels,
        layout: bool,
    ) -> Result<(), Failure> {
        let mut ddl = format!("CREATE OR REPLACE TABLE {}", self.qualified(to));
        if layout {
            if let Some(column) = &self.config.partition_by {
                ddl.push_str(&format!(" PARTITION BY DATE({column})"));
            }
            if !self.config.cluster_by.is_empty() {
                ddl.push_str(&format!(
                    " CLUSTER BY {}",
                    self.config.cluster_by.join(", ")
                ));
            }
        }
        // Label values are lowercase letters, digits, `_` and `-` (run_label, hex),
        // so they are safe in the text.
        let mut pairs: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("(\"{k}\", \"{v}\")"))
            .collect();
        pairs.sort();
        ddl.push_str(&format!(
            " OPTIONS (labels = [{}]) AS SELECT * FROM {}",
            pairs.join(", "),
            self.qualified(from)
        ));
        self.query(client, ddl)
            .await
            .map_err(|Failure(m, r)| Failure(format!("cannot replace `{to}`: {m}"), r))?;
        // The same labels again, for servers that ignore them in DDL (the
        // emulator); a no-op on BigQuery.
        let labels = Table {
            table_reference: TableReference::new(&self.config.project, &self.config.dataset, to),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        client
            .table()
            .patch(&self.config.project, &self.config.dataset, to, labels)
            .await
            .map(|_| ())
            .map_err(|e| transport(&format!("cannot label `{to}`"), e))
    }

    async fn drop_leftovers(&self, client: &Client, table: &str) -> Result<Vec<String>, Failure> {
        let prefix = format!("{table}{STAGING}");
        let list = client
            .table()
            .list(
                &self.config.project,
                &self.config.dataset,
                ListOptions::default(),
            )
            .await
            .map_err(|e| transport("cannot list tables", e))?;
        let mut dropped = Vec::new();
        for t in list.tables.unwrap_or_default() {
            let name = t.table_reference.table_id;
            if name.starts_with(&prefix) {
                client
                    .table()
                    .delete(&self.config.project, &self.config.dataset, &name)
                    .await
                    .map_err(|e| transport(&format!("cannot delete leftover `{name}`"), e))?;
                dropped.push(name);
            }
        }
        Ok(dropped)
    }

    /// A load job from the Parquet file into `staging`, waited for.
    async fn load(
        &self,
        access: &Access,
        client: &Client,
        staging: &str,
        run: &str,
        input: &Path,
    ) -> Result<(), Failure> {
        let mut data = std::fs::read(input)
            .map_err(|e| Failure(format!("cannot read list {}: {e}", input.display()), false))?;
        // The table first, with the list's schema: the load then appends typed
        // rows (REQUIRED where the list has no nulls) instead of guessing.
        let schema = TableSchema::new(fields(input)?);
        client
            .table()
            .create(Table::new(
                &self.config.project,
                &self.config.dataset,
                staging,
                schema,
            ))
            .await
            .map_err(|e| transport(&format!("cannot create `{staging}`"), e))?;
        if failpoint::armed("bigquery.corrupt_load") {
            data.truncate(data.len() / 2);
        }
        let job = json!({
            "jobReference": { "projectId": self.config.project, "location": self.config.location },
            "configuration": {
                "labels": { RUN_LABEL: run },
                "load": {
                    "destinationTable": {
                        "projectId": self.config.project,
                        "datasetId": self.config.dataset,
                        "tableId": staging,
                    },
                    "sourceFormat": "PARQUET",
                    "writeDisposition": "WRITE_APPEND",
                    "createDisposition": "CREATE_IF_NEEDED",
                }
            }
        });
        let boundary = format!("recpipe-{run}");
        let mut body = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{job}\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!(
            "{}/projects/{}/jobs?uploadType=multipart",
            access.upload_base(),
            self.config.project
        );
        let token = access.token().await.map_err(|e| Failure(e, true))?;
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .header(
                "Content-Type",
                format!("multipart/related; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| transport("cannot upload the list", e))?;
        let status = response.status();
        let answer: serde_json::Value = response
            .json()
            .await
            .map_err(|e| transport("cannot read the load job", e))?;
        if !status.is_success() {
            return Err(Failure(
                format!(
                    "load job refused (HTTP {status}): {}",
                    answer["error"]["message"]
                ),
                status.is_server_error(),
            ));
        }
        let job_id = answer["jobReference"]["jobId"]
            .as_str()
            .ok_or_else(|| Failure("the load job has no id".into(), true))?
            .to_string();
        loop {
            let job = client
                .job()
                .get_job(
                    &self.config.project,
                    &job_id,
                    self.config.location.as_deref(),
                )
                .await
                .map_err(|e| transport("cannot read the load job", e))?;
            let status = job.status.unwrap_or_default();
            if let Some(e) = status.error_result {
                return Err(Failure(
                    format!(
                        "load job {job_id} failed: {}",
                        e.message.unwrap_or_else(|| "no message".into())
                    ),
                    false,
                ));
            }
            if status.state.as_deref() == Some("DONE") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Keeps the current `table` as `<table>__prev`, replaces it with run `run`'s
    /// staging table (labelled with the run and the list's hash), and deletes that.
    async fn swap_in(&self, client: &Client, table: &str, labels: &Labels) -> Result<(), Failure> {
        let run = labels
            .get(RUN_LABEL)
            .map(String::as_str)
            .unwrap_or_default();
        let staging = staging_name(table, run);
        if let Some(current) = self.labels_of(client, table).await? {
            self.replace(client, &format!("{table}{PREV}"), table, &current, false)
                .await?;
        }
        self.replace(client, table, &staging, labels, true).await?;
        client
            .table()
            .delete(&self.config.project, &self.config.dataset, &staging)
            .await
            .map_err(|e| transport(&format!("cannot delete `{staging}`"), e))
    }

    fn published(&self, staged: &Staged, pruned: Vec<String>) -> Published {
        let table = &staged.table;
        Published {
            table: table.clone(),
            version: staged.version.clone(),
            rows: staged.rows,
            location: format!("{}.{}.{table}", self.config.project, self.config.dataset),
            pruned,
            sha256: staged.sha256.clone(),
            unchanged: staged.unchanged,
        }
    }
}

impl Sink for BigQuerySink {
    fn healthcheck(&self) -> Result<(), SinkError> {
        super::block_on(&self.name, async {
            let (_, client) = self.access().await?;
            client
                .dataset()
                .get(&self.config.project, &self.config.dataset)
                .await
                .map(|_| ())
                .map_err(|e| transport(&format!("dataset `{}`", self.config.dataset), e))
        })
    }

    fn write_staging(&self, table: &str, version: &str, input: &Path) -> Result<Staged, SinkError> {
        let sha256 = super::sha256_of(&self.name, input)?;
        super::block_on(&self.name, async {
            let (access, client) = self.access().await?;
            let run = run_label(version);
            let staged = Staged::of(table, version, &sha256);
            let rows = list_rows(input)?;
            if self.labels_of(&client, table).await? == Some(labels(&run, &sha256)) {
                // Published by an earlier attempt of this run whose result was lost.
                return Ok::<_, Failure>(staged(rows, true, Vec::new()));
            }
            let pruned = self.drop_leftovers(&client, table).await?;
            self.load(&access, &client, &staging_name(table, &run), &run, input)
                .await?;
            Ok(staged(rows, false, pruned))
        })
    }

    fn swap(&self, staged: &Staged) -> Result<Published, SinkError> {
        if staged.unchanged {
            return Ok(self.published(staged, Vec::new()));
        }
        super::block_on(&self.name, async {
            if failpoint::armed("bigquery.before_swap") {
                return Err(Failure(
                    "failure point `bigquery.before_swap` armed".into(),
                    false,
                ));
            }
            let (_, client) = self.access().await?;
            let run = run_label(&staged.version);
            self.swap_in(&client, &staged.table, &labels(&run, &staged.sha256))
                .await?;
            Ok(self.published(staged, staged.pruned.clone()))
        })
    }

    fn rollback(&self, table: &str) -> Result<Published, SinkError> {
        super::block_on(&self.name, async {
            let (_, client) = self.access().await?;
            let prev = format!("{table}{PREV}");
            let Some(current) = self.labels_of(&client, table).await? else {
                return Err(Failure(
                    format!(
                        "table `{table}` has never been published: nothing to roll back; publish a list first"
                    ),
                    false,
                ));
            };
            let Some(previous) = self.labels_of(&client, &prev).await? else {
                return Err(Failure(
                    format!(
                        "table `{table}` has no previous version (`{prev}`) to roll back to; a rollback needs two publishes"
                    ),
                    false,
                ));
            };
            let aside = format!("{table}__rollback");
            self.replace(&client, &aside, table, &current, false)
                .await?;
            self.replace(&client, table, &prev, &previous, true).await?;
            self.replace(&client, &prev, &aside, &current, false)
                .await?;
            client
                .table()
                .delete(&self.config.project, &self.config.dataset, &aside)
                .await
                .map_err(|e| transport(&format!("cannot delete `{aside}`"), e))?;
            let rows = client
                .table()
                .get(&self.config.project, &self.config.dataset, table, None)
                .await
                .ok()
                .and_then(|t| t.num_rows)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Ok(Published {
                table: table.to_string(),
                version: previous.get(RUN_LABEL).cloned().unwrap_or_default(),
                rows,
                location: format!("{}.{}.{table}", self.config.project, self.config.dataset),
                pruned: Vec::new(),
                sha256: previous.get(SHA_LABEL).cloned().unwrap_or_default(),
                unchanged: false,
            })
        })
    }
}

/// The labels of a table published by run label `run` from a list with SHA-256
/// `sha256`.
fn labels(run: &str, sha256: &str) -> Labels {
    let prefix: String = sha256.chars().take(SHA_LABEL_LEN).collect();
    HashMap::from([
        (RUN_LABEL.to_string(), run.to_string()),
        (SHA_LABEL.to_string(), prefix),
    ])
}

/// A run id as a label value: lowercase letters, digits, `_` and `-`.
fn run_label(version: &str) -> String {
    version
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .take(63)
        .collect()
}

/// The BigQuery columns of the Parquet list at `path`.
fn fields(path: &Path) -> Result<Vec<TableFieldSchema>, Failure> {
    use arrow::datatypes::DataType;
    let bad = |e: &dyn std::fmt::Display| {
        Failure(format!("cannot read list {}: {e}", path.display()), false)
    };
    let file = std::fs::File::open(path).map_err(|e| bad(&e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(&e))?;
    builder
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let ty = match f.data_type() {
                DataType::Int32 | DataType::Int64 => FieldType::Integer,
                DataType::Float32 | DataType::Float64 => FieldType::Float,
                DataType::Utf8 => FieldType::String,
                DataType::Boolean => FieldType::Boolean,
                DataType::Timestamp(_, _) => FieldType::Timestamp,
                DataType::Date32 => FieldType::Date,
                other => {
                    return Err(Failure(
                        format!(
                            "column `{}`: {other} has no BigQuery mapping here",
                            f.name()
                        ),
                        false,
                    ));
                }
            };
            let mut field = TableFieldSchema::new(f.name(), ty);
            field.mode = Some(
                if f.is_nullable() {
                    "NULLABLE"
                } else {
                    "REQUIRED"
                }
                .into(),
            );
            Ok(field)
        })
        .collect()
}

/// `<table>__staging_<run>`.
fn staging_name(table: &str, run: &str) -> String {
    format!("{table}{STAGING}{}", run.replace('-', "_"))
}

fn list_rows(path: &Path) -> Result<u64, Failure> {
    super::parquet::parquet_rows(path)
        .map_err(|e| Failure(format!("cannot read list {}: {e}", path.display()), false))
}
