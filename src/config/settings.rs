//! Daemon settings: `config/default.toml`, then `config/$RECPIPE_ENV.toml`, then
//! `RECPIPE__SECTION__KEY` environment variables, each layer overriding the last.
//!
//! Relative paths in the settings resolve against the project directory (the folder
//! holding `config/`, `pipelines/` and `sql/`), never against the process's current
//! directory, so the daemon behaves the same wherever it is started.
//!
//! Invariant: [`Settings::load`] returns settings whose every value is within the
//! bounds documented here, or every problem at once, each with the file and line
//! (or environment variable) that set it, and never a secret's value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::diagnostic::Diagnostics;
use super::introspect::fields;
use super::layers::Layers;
use super::redact;
use super::stores::stores;
pub use super::stores::{
    BigQueryConfig, BigQuerySinkConfig, DataFusionSourceConfig, FileFormat, ParquetSinkConfig,
    PostgresConfig, SinkConfig, SourceConfig, TableFileConfig, TlsMode, is_pg_identifier,
};
pub use super::values::{Secret, duration};

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
    #[serde(default)]
    pub retention: RetentionSettings,
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
    /// How long one attempt of a step may run when its pipeline gives it no
    /// `timeout`: a hung query or a runaway training cannot hold a run forever.
    #[serde(deserialize_with = "duration")]
    pub step_timeout: Duration,
}

/// The most compute threads accepted: more than any machine we run on has cores,
/// far fewer than would exhaust the process's memory for thread stacks.
pub const MAX_COMPUTE_THREADS: usize = 256;
/// The most steps of one run at the same time (each may hold a dataset in memory).
pub const MAX_PARALLEL_STEPS: usize = 64;

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            max_parallel_steps: 4,
            compute_threads: 0,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            step_timeout: Duration::from_secs(6 * 3600),
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

/// How many finished run directories stay on disk (about 25 MB each at 1.2M
/// interactions): a once-a-second schedule must not fill the disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Newest finished runs kept per pipeline (at least 1).
    pub keep_runs: usize,
    /// Finished runs older than this many days are removed even when fewer than
    /// `keep_runs` are left; 0 keeps them whatever their age.
    pub keep_days: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            keep_runs: 50,
            keep_days: 30,
        }
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

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Every problem of every layer, sorted by file and line. Displayed once:
    /// there is no `source`, so an error chain does not print it twice.
    #[error("{}", invalid_message(.0))]
    Invalid(Diagnostics),
}

fn invalid_message(diags: &Diagnostics) -> String {
    let n = diags.len();
    format!(
        "{n} problem{} in the settings:\n{diags}",
        if n == 1 { "" } else { "s" }
    )
}

impl Settings {
    /// Loads the layered settings of the project in `project_dir`.
    pub fn load(project_dir: &Path) -> Result<Self, SettingsError> {
        Self::load_with(project_dir, std::env::vars())
    }

    /// [`Settings::load`] with the environment given (tests set their own).
    pub fn load_with(
        project_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let config_dir = project_dir.join("config");
        let default_file = config_dir.join("default.toml");
        let mut layers = Layers::new(&default_file);
        layers.file(&default_file, false);
        let profile = env
            .iter()
            .find(|(k, _)| k == "RECPIPE_ENV")
            .map(|(_, v)| v.clone());
        if let Some(profile) = profile.filter(|e| !e.is_empty()) {
            layers.file(&config_dir.join(format!("{profile}.toml")), true);
        }
        layers.env(env);
        let mut settings = Self::from_layers(&mut layers, project_dir);
        settings.register_secrets();
        settings.resolve_paths();
        settings.check(&mut layers);
        match layers.diags.is_empty() {
            true => Ok(settings),
            false => Err(SettingsError::Invalid(
                std::mem::take(&mut layers.diags).sorted(),
            )),
        }
    }

    /// Deserializes the merged layers section by section, so that a problem in
    /// one section does not hide those of the others.
    fn from_layers(layers: &mut Layers, project_dir: &Path) -> Self {
        let mut root = layers.take();
        let mut settings = Self::empty(project_dir);
        settings.runtime = section(layers, &mut root, "runtime");
        settings.server = section(layers, &mut root, "server");
        settings.api = section(layers, &mut root, "api");
        settings.daemon = section(layers, &mut root, "daemon");
        settings.retention = section(layers, &mut root, "retention");
        if let Some(sources) = stores(layers, &mut root, "sources") {
            settings.sources = sources;
        }
        if let Some(sinks) = stores(layers, &mut root, "sinks") {
            settings.sinks = sinks;
        }
        // What is left are the top-level keys; unknown ones are told apart from
        // the sections with the whole list of accepted keys.
        if let Some(top) =
            layers.deserialize::<TopLevel>("", root, fields::<Settings>(), "the settings")
        {
            settings.state_dir = top.state_dir;
            settings.pipelines_dir = top.pipelines_dir;
        }
        // `RECPIPE__API__TOKEN=` is no token: it must not match a missing header.
        if settings
            .api
            .token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            settings.api.token = None;
        }
        settings
    }

    /// Makes every secret of the settings known to [`redact::redact`].
    fn register_secrets(&self) {
        if let Some(token) = &self.api.token {
            redact::register(token.expose());
        }
        let dsns = self
            .sources
            .values()
            .filter_map(|s| match s {
                SourceConfig::Postgres(pg) => Some(&pg.dsn),
                _ => None,
            })
            .chain(self.sinks.values().filter_map(|s| match s {
                SinkConfig::Postgres(pg) => Some(&pg.dsn),
                _ => None,
            }));
        for dsn in dsns {
            redact::register(dsn.expose());
        }
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
            retention: RetentionSettings::default(),
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
                // A URL stays as it is: validation names it if it is not one of ours.
                SinkConfig::Parquet(p) if p.path.to_string_lossy().contains("://") => {}
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
}

/// The top-level keys that are not sections.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopLevel {
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_pipelines_dir")]
    pipelines_dir: PathBuf,
}

/// A section (`[runtime]` …) deserialized with every problem reported; its
/// defaults stand in when it does not parse, so later checks still run.
fn section<T: DeserializeOwned + Default>(layers: &mut Layers, root: &mut Table, name: &str) -> T {
    match root.remove(name) {
        None => T::default(),
        Some(Value::Table(t)) => layers
            .deserialize(name, t, fields::<T>(), &format!("`[{name}]`"))
            .unwrap_or_default(),
        Some(_) => {
            layers.error(name, format!("must be a table: `[{name}]`"));
            T::default()
        }
    }
}

fn resolve_ca(dir: &Path, pg: &mut PostgresConfig) {
    if let Some(ca) = &mut pg.ca_file {
        *ca = dir.join(&*ca);
    }
}
