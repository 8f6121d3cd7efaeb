//! `recpipe validate`: checks pipeline files, optionally every connection.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::anyhow;
use chrono::Utc;
use clap::Args;
use recpipe::config::Settings;
use recpipe::config::stores::StoreConfig;
use recpipe::pipeline::load::Pipeline;
use recpipe::sources::AnySource;
use recpipe::sources::ParamValue;
use recpipe::steps::StepSpec;

use super::Failure;

#[derive(Args)]
pub struct ValidateArgs {
    /// Pipeline files or folders (default: the pipelines dir).
    pub paths: Vec<PathBuf>,
    /// Also reach every configured source and sink; exit 75 if one fails.
    #[arg(long)]
    pub check_connections: bool,
}

/// Validates, then checks connections when asked.
pub async fn run(settings: &Settings, args: ValidateArgs) -> Result<(), Failure> {
    let pipelines = validate(settings, args.paths)?;
    match args.check_connections {
        true => check_connections_of(settings, &pipelines).await,
        false => Ok(()),
    }
}

fn validate(settings: &Settings, paths: Vec<PathBuf>) -> Result<Vec<Pipeline>, Failure> {
    let paths = if paths.is_empty() {
        vec![settings.pipelines_dir.clone()]
    } else {
        paths
    };
    let (pipelines, diags) = recpipe::pipeline::load::load_all(settings, &paths);
    if !diags.is_empty() {
        return Err(Failure::BadInput(anyhow!(
            "{} problem{} found:\n{diags}",
            diags.len(),
            if diags.len() == 1 { "" } else { "s" }
        )));
    }
    for p in &pipelines {
        println!(
            "ok  {}  {} ({} steps)",
            p.file.display(),
            p.name,
            p.steps.len()
        );
    }
    Ok(pipelines)
}

/// Reaches every configured source and sink and reports each; dry-runs every
/// BigQuery extract of `pipelines` and prints the bytes it would scan.
async fn check_connections_of(settings: &Settings, pipelines: &[Pipeline]) -> Result<(), Failure> {
    let mut failed = 0;
    let mut report = |what: String, result: Result<(), String>| match result {
        Ok(()) => println!("ok    {what}"),
        Err(e) => {
            failed += 1;
            println!("FAIL  {what}: {e}");
        }
    };
    for (name, config) in &settings.sources {
        let source = AnySource::from_config(config);
        let result = source.healthcheck().await.map_err(|e| e.to_string());
        report(format!("source `{name}` ({})", config.kind()), result);
    }
    for p in pipelines {
        for step in &p.steps {
            let StepSpec::Extract(e) = &step.spec else {
                continue;
            };
            let Some(AnySource::BigQuery(bq)) =
                settings.sources.get(&e.source).map(AnySource::from_config)
            else {
                continue;
            };
            let mut params = BTreeMap::from([
                ("run_id".to_string(), ParamValue::Text("dry-run".into())),
                (
                    "logical_date".to_string(),
                    ParamValue::Text(Utc::now().to_rfc3339()),
                ),
            ]);
            params.extend(e.params.clone());
            let result = match std::fs::read_to_string(settings.resolve(&e.sql)) {
                Ok(sql) => bq.dry_run(&sql, &params).await.map_err(|e| e.to_string()),
                Err(err) => Err(format!("cannot read {}: {err}", e.sql.display())),
            };
            let what = format!("dry run `{}` step `{}`", p.name, step.id);
            match result {
                Ok(bytes) => report(format!("{what}: {bytes} bytes processed"), Ok(())),
                Err(e) => report(what, Err(e)),
            }
        }
    }
    for (name, config) in &settings.sinks {
        let sink = recpipe::sinks::AnySink::from_config(name, config);
        let result = tokio::task::spawn_blocking(move || sink.get().healthcheck())
            .await
            .map_err(|e| anyhow!(e))?
            .map_err(|e| e.to_string());
        report(format!("sink `{name}` ({})", config.kind()), result);
    }
    match failed {
        0 => Ok(()),
        // Connections that fail are worth retrying (exit 75), as for a run.
        n => Err(Failure::Transient(anyhow!(
            "{n} connection check(s) failed"
        ))),
    }
}
