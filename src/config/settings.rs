//! Daemon settings: `config/default.toml`, then `config/$RECPIPE_ENV.toml`, then
//! `RECPIPE__SECTION__KEY` environment variables, each layer overriding the last.
//!
//! Relative paths in the settings resolve against the project directory (the folder
//! holding `config/`, `pipelines/` and `sql/`), never against the process's current
//! directory, so the daemon behaves the same wherever it is started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything the daemon and the CLI read from `config/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Run directories and sink versions live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_pipelines_dir")]
    pub pipelines_dir: PathBuf,
    #[serde(default)]
    pub runtime: RuntimeSettings,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub api: ApiSettings,
    #[serde(default)]
    pub daemon: DaemonSettings,
    /// Set by [`Settings::load`]: the folder every relative path resolves against.
    #[serde(skip)]
    pub project_dir: PathBuf,
}

fn default_state_dir() -> PathBuf {
    "state".into()
}

fn default_pipelines_dir() -> PathBuf {
    "pipelines".into()
}

/// How runs use the machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Steps of one run that may execute at the same time.
    pub max_parallel_steps: usize,
    /// Threads of the compute (rayon) pool; 0 means one per core.
    pub compute_threads: usize,
    /// First retry delay; doubles per attempt, with full jitter.
    #[serde(deserialize_with = "duration")]
    pub retry_base_delay: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_max_delay: Duration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            max_parallel_steps: 4,
            compute_threads: 0,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
        }
    }
}

/// The daemon's HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// `host:port`; in a pod, `0.0.0.0:8080` (`RECPIPE__SERVER__LISTEN`).
    pub listen: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
        }
    }
}

/// Who may trigger and cancel runs over HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Bearer token for the POST endpoints (`RECPIPE__API__TOKEN`); without one
    /// they refuse every request.
    pub token: Option<Secret>,
}

/// A value never printed: `Debug` and `Display` show `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How the long-running process behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    /// After SIGTERM, how long running steps may go on before they are cancelled.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// How often the pipelines folder is checked for changes (SIGHUP checks now).
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Duration,
    /// A run found running at startup (the process died under it) is resumed
    /// from its last finished step when true, else recorded as interrupted.
    pub resume_interrupted: bool,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(30),
            reload_interval: Duration::from_secs(2),
            resume_interrupted: true,
        }
    }
}

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

impl SourceConfig {
    pub const KINDS: &[&str] = &["datafusion", "postgres", "bigquery"];

    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Datafusion(_) => "datafusion",
            SourceConfig::Postgres(_) => "postgres",
            SourceConfig::Bigquery(_) => "bigquery",
        }
    }
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

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Postgres(_) => "postgres",
            SinkConfig::Bigquery(_) => "bigquery",
        }
    }
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

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("settings: {key}: {message}")]
    Invalid { key: String, message: String },
}

impl Settings {
    /// Loads the layered settings of the project in `project_dir`.
    pub fn load(project_dir: &Path) -> Result<Self, SettingsError> {
        let config_dir = project_dir.join("config");
        let env = std::env::var("RECPIPE_ENV").ok();
        let mut builder = config::Config::builder()
            .add_source(config::File::from(config_dir.join("default.toml")).required(false));
        if let Some(env) = env.filter(|e| !e.is_empty()) {
            builder = builder.add_source(
                config::File::from(config_dir.join(format!("{env}.toml"))).required(true),
            );
        }
        let raw = builder
            .add_source(
                config::Environment::with_prefix("RECPIPE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?;
        let mut settings: Settings = raw.try_deserialize()?;
        settings.project_dir = project_dir.to_path_buf();
        settings.resolve_paths();
        settings.check()?;
        Ok(settings)
    }

    /// Settings with no file at all: used by the standalone step commands and tests.
    pub fn empty(project_dir: &Path) -> Self {
        let mut settings = Self {
            state_dir: default_state_dir(),
            pipelines_dir: default_pipelines_dir(),
            runtime: RuntimeSettings::default(),
            sources: BTreeMap::new(),
            sinks: BTreeMap::new(),
            server: ServerSettings::default(),
            api: ApiSettings::default(),
            daemon: DaemonSettings::default(),
            project_dir: project_dir.to_path_buf(),
        };
        settings.resolve_paths();
        settings
    }

    /// `path` made absolute against the project directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.project_dir.join(path)
    }

    fn resolve_paths(&mut self) {
        self.state_dir = self.resolve(&self.state_dir);
        self.pipelines_dir = self.resolve(&self.pipelines_dir);
        let dir = self.project_dir.clone();
        for source in self.sources.values_mut() {
            match source {
                SourceConfig::Datafusion(df) => {
                    for table in df.tables.values_mut() {
                        table.path = dir.join(&table.path);
                    }
                }
                SourceConfig::Postgres(pg) => resolve_ca(&dir, pg),
                SourceConfig::Bigquery(bq) => {
                    if let Some(key) = &mut bq.key_file {
                        *key = dir.join(&*key);
                    }
                }
            }
        }
        for sink in self.sinks.values_mut() {
            match sink {
                SinkConfig::Parquet(p) => p.path = dir.join(&p.path),
                SinkConfig::Postgres(pg) => resolve_ca(&dir, pg),
                SinkConfig::Bigquery(bq) => {
                    if let Some(key) = &mut bq.key_file {
                        *key = dir.join(&*key);
                    }
                }
            }
        }
    }

    fn check(&self) -> Result<(), SettingsError> {
        let invalid = |key: String, message: &str| {
            Err(SettingsError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if self.runtime.max_parallel_steps == 0 {
            return invalid("runtime.max_parallel_steps".into(), "must be at least 1");
        }
        for (name, sink) in &self.sinks {
            match sink {
                SinkConfig::Parquet(p) if p.keep_versions == 0 => {
                    return invalid(
                        format!("sinks.{name}.keep_versions"),
                        "must be at least 1 (the current version)",
                    );
                }
                SinkConfig::Parquet(_) => {}
                SinkConfig::Postgres(pg) if !is_pg_identifier(&pg.schema) => {
                    return invalid(
                        format!("sinks.{name}.schema"),
                        "must be a lowercase identifier (letters, digits, `_`)",
                    );
                }
                SinkConfig::Postgres(_) => {}
                // Pasted into DDL, which takes no parameters: plain names only.
                SinkConfig::Bigquery(bq)
                    if !bq
                        .partition_by
                        .iter()
                        .chain(&bq.cluster_by)
                        .all(|c| is_pg_identifier(c)) =>
                {
                    return invalid(
                        format!("sinks.{name}.partition_by / cluster_by"),
                        "must be lowercase column names (letters, digits, `_`)",
                    );
                }
                SinkConfig::Bigquery(_) => {}
            }
        }
        Ok(())
    }
}

fn resolve_ca(dir: &Path, pg: &mut PostgresConfig) {
    if let Some(ca) = &mut pg.ca_file {
        *ca = dir.join(&*ca);
    }
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

/// Deserializes `"30s"`, `"5m"`, `"1h 30m"`.
pub fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"30s\", \"5m\" or \"1h\""
        ))
    })
}
