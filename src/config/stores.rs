//! Where data comes from and goes to: the settings of each named source
//! (`[sources.<name>]`) and sink (`[sinks.<name>]`), picked by their `kind`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::diagnostic::{one_of, suggest};
use super::introspect::fields;
use super::layers::Layers;
use super::values::{Secret, duration};

/// A source or a sink as the settings configure it: a table per name whose
/// `kind` picks the variant.
pub trait StoreConfig: DeserializeOwned {
    const KINDS: &[&str];
    /// `source` or `sink`, for messages.
    const WHAT: &str;
    /// The keys of `kind` (one of [`Self::KINDS`]) besides `kind`.
    fn keys_of(kind: &str) -> &'static [&'static str];
    /// Its `kind`.
    fn kind(&self) -> &'static str;
}

/// Implements [`StoreConfig`] for an enum of store configs from its variants,
/// each with its config type and `kind` name.
macro_rules! store_config {
    ($config:ident, $what:literal: $($variant:ident($spec:ty) = $name:literal),*) => {
        impl StoreConfig for $config {
            const KINDS: &[&str] = &[$($name),*];
            const WHAT: &str = $what;

            fn keys_of(kind: &str) -> &'static [&'static str] {
                $(if kind == $name {
                    return fields::<$spec>();
                })*
                &[]
            }

            fn kind(&self) -> &'static str {
                match self {
                    $($config::$variant(_) => $name,)*
                }
            }
        }
    };
}

store_config!(SourceConfig, "source": Datafusion(DataFusionSourceConfig) = "datafusion",
    Postgres(PostgresConfig) = "postgres", Bigquery(BigQueryConfig) = "bigquery");
store_config!(SinkConfig, "sink": Parquet(ParquetSinkConfig) = "parquet",
    Postgres(PostgresConfig) = "postgres", Bigquery(BigQuerySinkConfig) = "bigquery");

/// A named place extract steps read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// The embedded DataFusion engine over local Parquet/CSV files.
    Datafusion(DataFusionSourceConfig),
    /// A PostgreSQL database (often the service's own, for filter lists).
    Postgres(PostgresConfig),
    /// The BigQuery warehouse (or its emulator).
    Bigquery(BigQueryConfig),
}

/// A BigQuery project. Credentials: `key_file` (a service-account key), else the
/// application default credentials (on GKE, Workload Identity through the
/// metadata server; elsewhere `GOOGLE_APPLICATION_CREDENTIALS`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigQueryConfig {
    /// The project queries run (and are billed) in.
    pub project: String,
    /// The dataset unqualified table names resolve in.
    pub dataset: Option<String>,
    /// Where jobs run, e.g. `asia-northeast1`; BigQuery infers it when absent.
    pub location: Option<String>,
    pub key_file: Option<PathBuf>,
    /// A BigQuery emulator's address (`http://127.0.0.1:9050`): no credentials.
    pub endpoint: Option<String>,
    /// Rows per result page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Queries that would scan more fail instead of running.
    pub maximum_bytes_billed: Option<u64>,
}

fn default_page_size() -> u32 {
    10_000
}

/// A PostgreSQL connection, for a source or a sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq key=value or `postgresql://` URL; holds the password, so it is never
    /// printed (set it with `RECPIPE__SINKS__<NAME>__DSN` from a Kubernetes Secret).
    pub dsn: Secret,
    /// Sources: the `search_path` of queries. Sinks: where tables are published.
    #[serde(default = "default_pg_schema")]
    pub schema: String,
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of the CA that signed the server's certificate; without it the
    /// web PKI roots are trusted.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Further connection attempts after a failed one, with doubling delays.
    #[serde(default = "default_connect_retries")]
    pub connect_retries: u32,
}

fn default_pg_schema() -> String {
    "public".into()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_retries() -> u32 {
    3
}

/// Whether a PostgreSQL connection is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    Disable,
    /// TLS, with the server's certificate and host name verified (libpq's
    /// `sslmode=verify-full`).
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFusionSourceConfig {
    /// SQL table name → file, directory or glob.
    #[serde(default)]
    pub tables: BTreeMap<String, TableFileConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFileConfig {
    pub path: PathBuf,
    /// Taken from the extension when absent.
    pub format: Option<FileFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Parquet,
    Csv,
}

/// A named store that write steps publish to.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Versioned Parquet directories with an atomically switched `CURRENT` pointer.
    Parquet(ParquetSinkConfig),
    /// Tables in a PostgreSQL schema, swapped in by rename.
    Postgres(PostgresConfig),
    /// Tables in a BigQuery dataset, replaced in one statement.
    Bigquery(BigQuerySinkConfig),
}

/// A BigQuery dataset lists are published to; credentials as for the source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigQuerySinkConfig {
    pub project: String,
    pub dataset: String,
    pub location: Option<String>,
    pub key_file: Option<PathBuf>,
    /// A BigQuery emulator's address (`http://127.0.0.1:9050`): no credentials.
    pub endpoint: Option<String>,
    /// A timestamp or date column: the table is partitioned by its day.
    pub partition_by: Option<String>,
    /// Columns the table is clustered by (e.g. `["user_id"]`).
    #[serde(default)]
    pub cluster_by: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    pub path: PathBuf,
    /// Published versions kept per table, the current one included.
    #[serde(default = "default_keep_versions")]
    pub keep_versions: usize,
}

fn default_keep_versions() -> usize {
    3
}

/// A name services can write unquoted in PostgreSQL: lowercase, so it does not
/// depend on quoting, and at most 63 bytes.
pub fn is_pg_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// The configured stores of section `name` (`sources` or `sinks`), each checked
/// against its kind's keys; `None` when the section is absent or not a table.
pub(super) fn stores<C: StoreConfig>(
    layers: &mut Layers,
    root: &mut Table,
    name: &str,
) -> Option<BTreeMap<String, C>> {
    let tables = named_tables(layers, root, name)?;
    let stores = tables.into_iter().filter_map(|(id, table)| {
        let path = format!("{name}.{id}");
        let kind = kind_of(layers, &path, &table, C::KINDS)?;
        let mut allowed = C::keys_of(&kind).to_vec();
        allowed.push("kind");
        let what = format!("a `{kind}` {}", C::WHAT);
        let config = layers.deserialize(&path, table, &allowed, &what)?;
        Some((id, config))
    });
    Some(stores.collect())
}

/// `[sources.<name>]` or `[sinks.<name>]`: each entry a table.
pub(super) fn named_tables(
    layers: &mut Layers,
    root: &mut Table,
    name: &str,
) -> Option<BTreeMap<String, Table>> {
    let table = match root.remove(name)? {
        Value::Table(t) => t,
        _ => {
            layers.error(
                name,
                format!("must be a table of named entries: `[{name}.<name>]`"),
            );
            return None;
        }
    };
    let mut out = BTreeMap::new();
    for (entry, value) in table {
        match value {
            Value::Table(t) => {
                out.insert(entry, t);
            }
            _ => layers.error(
                &format!("{name}.{entry}"),
                format!("must be a table: `[{name}.{entry}]` with a `kind`"),
            ),
        }
    }
    Some(out)
}

/// The `kind` of a source or sink table, reported when missing or unknown.
pub(super) fn kind_of(
    layers: &mut Layers,
    path: &str,
    table: &Table,
    kinds: &[&str],
) -> Option<String> {
    match table.get("kind") {
        Some(Value::String(k)) if kinds.contains(&k.as_str()) => Some(k.clone()),
        Some(Value::String(k)) => {
            layers.error(
                &format!("{path}.kind"),
                format!(
                    "unknown value `{k}`{}; accepted: {}",
                    suggest(k, kinds.iter().copied()),
                    one_of(kinds)
                ),
            );
            None
        }
        Some(_) => {
            layers.error(
                &format!("{path}.kind"),
                format!("expected text: {}", one_of(kinds)),
            );
            None
        }
        None => {
            layers.error(
                &format!("{path}.kind"),
                format!("missing; accepted: {}", one_of(kinds)),
            );
            None
        }
    }
}
