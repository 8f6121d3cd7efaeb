//! `recpipe step <kind>`: one step kind alone, file in / file out, running the
//! same code a pipeline runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use chrono::Utc;
use clap::{Args, Subcommand};
use recpipe::artifact::Role;
use recpipe::config::Settings;
use recpipe::config::settings::{DataFusionSourceConfig, TableFileConfig};
use recpipe::models::StopFlag;
use recpipe::sources::AnySource;
use recpipe::sources::ParamValue;
use recpipe::steps::spec::TrainSpec;
use recpipe::steps::{self, StepContext, StepOutput};

use super::Failure;

#[derive(Subcommand)]
pub enum StepCommand {
    /// Run an SQL file and store the checked result as Parquet.
    Extract(ExtractArgs),
    /// Fit a model on an interactions file.
    Train(TrainArgs),
    /// Top-N items per user from a model, seen items and filters removed.
    Recommend(RecommendArgs),
    /// Top-N similar items per item from a factor model, filtered items removed.
    SimilarItems(RecommendArgs),
    /// Merge filter lists into one filter artifact (deny, allow, group caps).
    MergeFilters(MergeFiltersArgs),
    /// Hold out part of an interactions file and score a model against popularity.
    Evaluate(EvaluateArgs),
    /// Publish a list file to a configured sink, atomically.
    Write(WriteArgs),
}

#[derive(Args)]
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

#[derive(Args)]
pub struct TrainArgs {
    /// An interactions Parquet file.
    #[arg(long)]
    input: PathBuf,
    /// The model: `popular`, `als` or `item_item`.
    #[arg(long)]
    model: String,
    /// Model parameters as `key=value` in TOML syntax (as in a pipeline file).
    #[arg(long = "set", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// Folder for the model artifact.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
pub struct RecommendArgs {
    /// A model folder written by `step train`.
    #[arg(long)]
    model: PathBuf,
    /// Whose seen items to exclude (default: the model's training data).
    #[arg(long)]
    interactions: Option<PathBuf>,
    /// Filter lists to apply: `item_id` [, `user_id`] files, or filter artifact folders
    /// (a `merge_filters` output carries allow lists and group caps too).
    #[arg(long)]
    filter: Vec<PathBuf>,
    #[arg(long, default_value_t = 10)]
    top_n: usize,
    /// Leave out items scoring below this.
    #[arg(long)]
    min_score: Option<f32>,
    /// Keep items the user already interacted with (`recommend` only).
    #[arg(long)]
    keep_seen: bool,
    /// Fail when fewer than this share of users (items) get a list.
    #[arg(long, default_value_t = 0.5)]
    min_coverage: f64,
    /// Write an empty list instead of failing.
    #[arg(long)]
    allow_empty: bool,
    #[arg(long, default_value = "cli")]
    run_id: String,
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
pub struct MergeFiltersArgs {
    /// `name=path` of a filter (or items) Parquet file; deny lists unless `--allow`.
    #[arg(long, value_parser = parse_key_value, required = true)]
    input: Vec<(String, String)>,
    /// Names of inputs that are allow lists.
    #[arg(long)]
    allow: Vec<String>,
    /// The input mapping `item_id` to a group, with `--group-column` and `--group-cap`.
    #[arg(long, requires_all = ["group_column", "group_cap"])]
    groups_from: Option<String>,
    #[arg(long)]
    group_column: Option<String>,
    #[arg(long)]
    group_cap: Option<usize>,
    /// Folder for the merged filter artifact.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// An interactions Parquet file.
    #[arg(long)]
    input: PathBuf,
    /// The model: `popular`, `als` or `item_item`.
    #[arg(long)]
    model: String,
    /// Model parameters as `key=value` in TOML syntax (as in a pipeline file).
    #[arg(long = "set", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// `random` or `time` (each user's latest, by `ts`).
    #[arg(long, default_value = "random")]
    split: String,
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for metrics.json.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
pub struct WriteArgs {
    #[arg(long)]
    input: PathBuf,
    /// A sink from the settings.
    #[arg(long)]
    sink: String,
    #[arg(long)]
    table: String,
    /// The version name. Writing the same version with the same list again does
    /// nothing; with a different list, publishes it.
    #[arg(long)]
    version: Option<String>,
    /// Publish the list even if it has no rows (by default an empty list is
    /// refused and the previous list stays current).
    #[arg(long)]
    allow_empty: bool,
}

pub async fn run_step(project_dir: &Path, command: StepCommand) -> Result<(), Failure> {
    let pool = Arc::new(steps::compute_pool(0).map_err(|e| Failure::Failed(e.into()))?);
    let cx = StepContext {
        pipeline: "cli".into(),
        run_id: "cli".into(),
        logical_date: Utc::now(),
        stop: StopFlag::default(),
        pool: pool.clone(),
    };
    let output: StepOutput = match command {
        StepCommand::Extract(a) => {
            let source = if a.table.is_empty() {
                let settings =
                    Settings::load(project_dir).map_err(|e| Failure::BadInput(e.into()))?;
                let name = a.source.ok_or_else(|| {
                    Failure::BadInput(anyhow!("give --source NAME or --table name=path"))
                })?;
                let config = settings
                    .sources
                    .get(&name)
                    .ok_or_else(|| Failure::BadInput(anyhow!("unknown source `{name}`")))?;
                AnySource::from_config(config)
            } else {
                let tables = a
                    .table
                    .into_iter()
                    .map(|(name, path)| {
                        (
                            name,
                            TableFileConfig {
                                path: path.into(),
                                format: None,
                            },
                        )
                    })
                    .collect();
                AnySource::DataFusion(recpipe::sources::datafusion::DataFusionSource::new(
                    DataFusionSourceConfig { tables },
                ))
            };
            let params: BTreeMap<String, ParamValue> = a
                .param
                .into_iter()
                .map(|(k, v)| (k, typed_param(&v)))
                .collect();
            // As in a pipeline: an empty filter list is normal, other empty tables are errors.
            let allow_empty = a.allow_empty || a.role == Role::Filter;
            let job = steps::extract::ExtractJob {
                source,
                sql_path: a.sql,
                params,
                role: a.role,
                allow_empty,
            };
            steps::extract::run(job, a.output, &cx)
                .await
                .map_err(|e| Failure::step("extract", e))?
        }
        StepCommand::Train(a) => {
            let spec = train_spec(&a.model, &a.set)?;
            create_output(&a.output)?;
            let (input, out) = (a.input, a.output);
            on_pool(&pool, "train", move |stop| {
                steps::train::run(&spec, &input, &out, stop)
            })
            .await?
        }
        StepCommand::MergeFilters(a) => {
            let inputs: Vec<steps::filters::FilterInput> = a
                .input
                .into_iter()
                .map(|(step, file)| steps::filters::FilterInput {
                    step,
                    file: file.into(),
                })
                .collect();
            let groups = match (a.groups_from, a.group_column, a.group_cap) {
                (Some(from), Some(column), Some(cap)) if cap > 0 => {
                    Some(recpipe::steps::spec::GroupsSpec { from, column, cap })
                }
                (Some(_), _, _) => {
                    return Err(Failure::BadInput(anyhow!("--group-cap must be at least 1")));
                }
                _ => None,
            };
            create_output(&a.output)?;
            let (allow, out) = (a.allow, a.output);
            tokio::task::spawn_blocking(move || {
                steps::filters::merge(&inputs, &allow, groups.as_ref(), &out)
            })
            .await
            .map_err(|e| anyhow!(e))?
            .map_err(|e| Failure::step("merge-filters", e))?
        }
        StepCommand::Evaluate(a) => {
            let mut spec: recpipe::steps::spec::EvaluateSpec = toml::from_str(&format!(
                "split = {}\ntest_fraction = {}\nk = {}\nseed = {}\n",
                toml_string(&a.split),
                a.test_fraction,
                a.k,
                a.seed
            ))
            .map_err(|e| Failure::BadInput(anyhow!("evaluate: {}", e.message())))?;
            spec.model = train_spec(&a.model, &a.set)?;
            refuse(recpipe::steps::spec::evaluate_problems(&spec), flag)?;
            create_output(&a.output)?;
            let (input, out) = (a.input, a.output);
            on_pool(&pool, "evaluate", move |stop| {
                steps::evaluate::run(&spec, &input, &out, stop)
            })
            .await?
        }
        StepCommand::Recommend(a) => {
            let (job, out) = list_job(a)?;
            on_pool(&pool, "recommend", move |stop| {
                steps::recommend::run(&job, &out, stop)
            })
            .await?
        }
        StepCommand::SimilarItems(a) => {
            let (job, out) = list_job(a)?;
            on_pool(&pool, "similar-items", move |stop| {
                steps::recommend::similar(&job, &out, stop)
            })
            .await?
        }
        StepCommand::Write(a) => {
            let settings = Settings::load(project_dir).map_err(|e| Failure::BadInput(e.into()))?;
            let config = settings
                .sinks
                .get(&a.sink)
                .ok_or_else(|| Failure::BadInput(anyhow!("unknown sink `{}`", a.sink)))?;
            if !recpipe::pipeline::load::is_table_name(&a.table) {
                return Err(Failure::BadInput(anyhow!(
                    "`{}` is not a valid table name",
                    a.table
                )));
            }
            let sink = recpipe::sinks::AnySink::from_config(&a.sink, config);
            let version = a.version.unwrap_or_else(|| {
                format!("cli-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ")).replace('.', "-")
            });
            if !recpipe::pipeline::rundir::is_valid_run_id(&version) {
                return Err(Failure::BadInput(anyhow!(
                    "`{version}` is not a valid version name"
                )));
            }
            let job = steps::write::WriteJob {
                sink,
                lists: vec![recpipe::sinks::ListFile {
                    table: a.table,
                    input: a.input,
                }],
                version,
                allow_empty: a.allow_empty,
            };
            tokio::task::spawn_blocking(move || steps::write::run(&job))
                .await
                .map_err(|e| anyhow!(e))?
                .map_err(|e| Failure::step("write", e))?
        }
    };
    let summary = serde_json::to_string_pretty(&output).map_err(|e| Failure::Failed(e.into()))?;
    println!("{summary}");
    Ok(())
}

/// The output folder of a step that writes a folder (a model, filters, metrics).
fn create_output(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))
        .map_err(Failure::from)
}

/// Runs `f` on the compute pool; its error is classed as step `name`'s.
async fn on_pool<F>(pool: &rayon::ThreadPool, name: &str, f: F) -> Result<StepOutput, Failure>
where
    F: FnOnce(&StopFlag) -> Result<StepOutput, steps::StepError> + Send + 'static,
{
    steps::compute(pool, move || f(&StopFlag::default()))
        .await
        .map_err(|e| Failure::step(name, e))
}

/// A model spec from `--model` and `--set key=value` pairs, read exactly as the same
/// keys in a pipeline file would be.
fn train_spec(model: &str, set: &[(String, String)]) -> Result<TrainSpec, Failure> {
    let mut text = format!("model = {}\n", toml_string(model));
    for (k, v) in set {
        text.push_str(&format!("{k} = {v}\n"));
    }
    let spec: TrainSpec = toml::from_str(&text)
        .map_err(|e| Failure::BadInput(anyhow!("model parameters: {}", e.message())))?;
    refuse(recpipe::steps::spec::model_problems(&spec), |k| {
        format!("--set {k}")
    })?;
    Ok(spec)
}

/// Every out-of-bounds argument at once, as bad input; `flag` names the
/// argument of a key.
fn refuse(problems: Vec<(&str, String)>, flag: fn(&str) -> String) -> Result<(), Failure> {
    let lines: Vec<String> = problems
        .into_iter()
        .map(|(key, message)| format!("{}: {message}", flag(key)))
        .collect();
    match lines.is_empty() {
        true => Ok(()),
        false => Err(Failure::BadInput(anyhow!(lines.join("\n")))),
    }
}

/// The flag of a spec key: `top_n` is `--top-n`.
fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

fn list_job(a: RecommendArgs) -> Result<(steps::recommend::RecommendJob, PathBuf), Failure> {
    let problems = recpipe::steps::spec::list_problems(a.top_n, a.min_score, a.min_coverage);
    refuse(problems, flag)?;
    let job = steps::recommend::RecommendJob {
        model_dir: a.model,
        interactions: a.interactions,
        filters: a.filter,
        top_n: a.top_n,
        exclude_seen: !a.keep_seen,
        min_score: a.min_score,
        min_coverage: a.min_coverage,
        allow_empty: a.allow_empty,
        run_id: a.run_id,
        generated_at: Utc::now(),
    };
    Ok((job, a.output))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not `key=value`"))
}

/// Command-line params are text unless they read as a number or boolean.
fn typed_param(v: &str) -> ParamValue {
    if let Ok(i) = v.parse::<i64>() {
        ParamValue::Int(i)
    } else if let Ok(f) = v.parse::<f64>() {
        ParamValue::Float(f)
    } else if let Ok(b) = v.parse::<bool>() {
        ParamValue::Bool(b)
    } else {
        ParamValue::Text(v.to_string())
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
