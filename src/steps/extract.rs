//! `extract`: runs an SQL file against a source and stores the checked result as
//! Parquet. The run id and logical date are bound as `$run_id` and
//! `$logical_date` (RFC 3339 text) next to the step's own `params`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kind::{
    CheckContext, Inputs, Problem, StepKind, parse_key_value, settings_of, typed_param,
};
use super::{DATA_FILE, StepContext, StepError, StepOutput, StepResult, StepRun};
use crate::artifact::contract;
use crate::artifact::{ArtifactKind, ParquetWriter, Role};
use crate::config::Settings;
use crate::config::diagnostic::is_identifier;
use crate::config::settings::{DataFusionSourceConfig, TableFileConfig};
use crate::sources::datafusion::DataFusionSource;
use crate::sources::{AnySource, ParamValue, SourceError};

/// Runs an SQL file against a named source and checks the result against `role`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    pub source: String,
    pub sql: PathBuf,
    pub role: Role,
    /// Bound as query parameters (`$name` in DataFusion SQL), never pasted into text.
    #[serde(default)]
    pub params: BTreeMap<String, ParamValue>,
    /// An empty result is an error for interactions and items unless this is set;
    /// an empty filter list is normal.
    #[serde(default)]
    pub allow_empty: Option<bool>,
}

#[derive(clap::Args)]
pub struct ExtractArgs {
    /// A source from the settings; or give tables with `--table`.
    #[arg(long, conflicts_with = "table")]
    source: Option<String>,
    /// `name=path` of a Parquet/CSV file (or glob) to query as table `name`.
    #[arg(long, value_parser = parse_key_value)]
    table: Vec<(String, String)>,
    #[arg(long)]
    sql: PathBuf,
    /// `name=value`, bound as `$name`; numbers and true/false are typed.
    #[arg(long, value_parser = parse_key_value)]
    param: Vec<(String, String)>,
    #[arg(long, value_enum)]
    role: Role,
    #[arg(long)]
    allow_empty: bool,
    #[arg(long)]
    output: PathBuf,
}

impl StepKind for ExtractSpec {
    const NAME: &'static str = "extract";
    const INPUTS: Inputs = None;
    type Args = ExtractArgs;

    fn output(&self) -> ArtifactKind {
        match self.role {
            Role::Interactions => ArtifactKind::Interactions,
            Role::Items => ArtifactKind::Items,
            Role::Filter => ArtifactKind::Filter,
            Role::Events => ArtifactKind::Events,
            Role::Arms => ArtifactKind::Arms,
        }
    }

    fn check(&self, cx: &CheckContext) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !cx.settings.sources.contains_key(&self.source) {
            let known = cx.settings.sources.keys();
            problems.push(Problem::new(
                "source",
                crate::config::diagnostic::unknown_name("source", &self.source, known),
            ));
        }
        for name in self.params.keys() {
            let problem = if !is_identifier(name, false) {
                "parameter names use lowercase letters, digits and `_`"
            } else if matches!(name.as_str(), "run_id" | "logical_date") {
                "set by the run itself (`$run_id`, `$logical_date`); name the parameter otherwise"
            } else {
                continue;
            };
            problems.push(Problem::new(format!("params.{name}"), problem));
        }
        let sql = match sql_path(cx.settings, &self.sql) {
            Ok(sql) => sql,
            Err(message) => {
                problems.push(Problem::new("sql", message));
                return problems;
            }
        };
        let unreadable = match std::fs::metadata(&sql) {
            Ok(m) if m.is_file() => return problems,
            Ok(_) => format!("`{}` is not a file", self.sql.display()),
            Err(err) => format!(
                "cannot read SQL file `{}` ({err}); paths are relative to the project dir {}",
                self.sql.display(),
                cx.settings.project_dir.display()
            ),
        };
        problems.push(Problem::new("sql", unreadable));
        problems
    }

    fn hashed_files(&self) -> Vec<&Path> {
        vec![&self.sql]
    }

    fn describe(&self) -> String {
        format!(
            "{} on source `{}`, role {}",
            self.sql.display(),
            self.source,
            self.role.as_str()
        )
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        let source = step.source(&self.source)?;
        let sql_path = sql_path(&step.resources.settings, &self.sql).map_err(StepError::Data)?;
        let job = ExtractJob {
            source,
            sql_path,
            params: self.params.clone(),
            role: self.role,
            allow_empty: self.allow_empty.unwrap_or(self.role == Role::Filter),
        };
        run(job, step.out_dir.join(DATA_FILE), step.cx).await
    }

    async fn run_alone(a: ExtractArgs, project_dir: &Path, cx: &StepContext) -> StepResult {
        let source = if a.table.is_empty() {
            let settings = settings_of(project_dir)?;
            let name = a
                .source
                .ok_or_else(|| StepError::Data("give --source NAME or --table name=path".into()))?;
            let config = settings
                .sources
                .get(&name)
                .ok_or_else(|| StepError::Data(format!("unknown source `{name}`")))?;
            AnySource::from_config(config)
        } else {
            let tables = a
                .table
                .into_iter()
                .map(|(name, path)| {
                    let table = TableFileConfig {
                        path: path.into(),
                        format: None,
                    };
                    (name, table)
                })
                .collect();
            AnySource::DataFusion(DataFusionSource::new(DataFusionSourceConfig { tables }))
        };
        let params = a
            .param
            .into_iter()
            .map(|(k, v)| (k, typed_param(&v)))
            .collect();
        // As in a pipeline: an empty filter list is normal, other empty tables are errors.
        let job = ExtractJob {
            source,
            sql_path: a.sql,
            params,
            role: a.role,
            allow_empty: a.allow_empty || a.role == Role::Filter,
        };
        run(job, a.output, cx).await
    }
}

/// The SQL file of an extract, inside the project dir: a pipeline may name only
/// files of its own project (`../../etc/passwd` or `/etc/passwd` would let a
/// pipeline file read, and echo, anything the process can read).
pub fn sql_path(settings: &Settings, sql: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let outside = || {
        format!(
            "`{}` is outside the project dir {}; name an SQL file inside it, relative to it (e.g. `sql/ratings.sql`)",
            sql.display(),
            settings.project_dir.display()
        )
    };
    let mut depth = 0usize;
    for part in sql.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside());
            }
        }
    }
    let path = settings.resolve(sql);
    // A symlink inside the project may still point out of it.
    if let (Ok(real), Ok(root)) = (
        std::fs::canonicalize(&path),
        std::fs::canonicalize(&settings.project_dir),
    ) && !real.starts_with(&root)
    {
        return Err(outside());
    }
    Ok(path)
}

/// Everything one extract needs, resolved from the pipeline or the command line.
#[derive(Debug, Clone)]
pub struct ExtractJob {
    pub source: AnySource,
    pub sql_path: PathBuf,
    pub params: BTreeMap<String, ParamValue>,
    pub role: Role,
    pub allow_empty: bool,
}

/// Runs one extract job.
pub async fn run(
    job: ExtractJob,
    output: PathBuf,
    cx: &StepContext,
) -> Result<StepOutput, StepError> {
    let sql = tokio::fs::read_to_string(&job.sql_path)
        .await
        .map_err(|e| {
            StepError::Data(format!(
                "cannot read SQL file {}: {e}",
                job.sql_path.display()
            ))
        })?;
    let mut params = BTreeMap::from([
        ("run_id".to_string(), ParamValue::Text(cx.run_id.clone())),
        (
            "logical_date".to_string(),
            ParamValue::Text(cx.logical_date.to_rfc3339()),
        ),
    ]);
    params.extend(job.params.clone());
    let stop = cx.stop.clone();
    let sql_path = job.sql_path.clone();
    let source = job.source.clone();
    let work = async move {
        let result = job.source.query(&sql, &params).await?;
        let target = contract::conform_schema(job.role, &result.schema).map_err(StepError::Data)?;
        let mut sink = ParquetWriter::create(&output, target.clone())?;
        let mut batches = result.batches;
        let mut rows = 0u64;
        while let Some(batch) = batches.next().await {
            if stop.is_stopped() {
                return Err(StepError::Stopped(crate::models::Stopped));
            }
            let batch = batch?;
            let batch = contract::conform_batch(job.role, &batch, &target, rows)
                .map_err(StepError::Data)?;
            rows += batch.num_rows() as u64;
            sink.write(&batch)?;
        }
        if rows == 0 && !job.allow_empty {
            return Err(StepError::Data(format!(
                "the query returned no rows; an empty `{}` table is an error (set `allow_empty = true` if it is expected)",
                job.role.as_str()
            )));
        }
        let file = sink.finish()?;
        Ok(StepOutput {
            rows,
            details: json!({ "role": job.role.as_str(), "columns": file.schema }),
            files: vec![file],
        })
    };
    // Aborted when this future is dropped (a cancelled run), so a query does not
    // go on in the background.
    let mut task = AbortOnDrop(crate::sources::engine().spawn(work));
    let joined = (&mut task.0).await;
    match joined {
        Ok(r) => r.map_err(|e| match e {
            StepError::Source(SourceError::Query(m)) => {
                StepError::Source(SourceError::Query(format!("{}: {m}", sql_path.display())))
            }
            other => other,
        }),
        Err(e) => match e.try_into_panic() {
            // A panic inside DataFusion or the parquet crate comes from a file it
            // could not read (a corrupt footer, say): a data error naming the file.
            Ok(panic) => {
                // Reading footers is file I/O: off the async threads.
                let unreadable = tokio::task::spawn_blocking(move || source.unreadable_file());
                Err(StepError::Data(format!(
                    "{}: reading the query's input failed ({}){}",
                    sql_path.display(),
                    super::panic_message(&panic),
                    match unreadable.await.ok().flatten() {
                        Some(file) => format!("; {file}"),
                        None => "; a table file may be corrupt".to_string(),
                    }
                )))
            }
            Err(e) => Err(StepError::Panic(e.to_string())),
        },
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
