//! `recpipe export argo`: a pipeline (or every pipeline) as Argo Workflows
//! manifests, checked by the exporter's lint before anything is written.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use recpipe::config::Settings;
use recpipe::pipeline::export::argo::{self, Target};
use recpipe::pipeline::export::yaml::to_yaml;
use recpipe::pipeline::load;

use super::Failure;

#[derive(Subcommand)]
pub enum ExportCommand {
    /// A WorkflowTemplate per pipeline (each step a pod running `recpipe step
    /// run`) and, for a scheduled pipeline, the CronWorkflow that submits it.
    Argo(ArgoArgs),
}

#[derive(Args)]
pub struct ArgoArgs {
    /// A pipeline name or the path of its file; default every pipeline.
    pub pipeline: Option<String>,
    /// The container image the pods run (the `image` parameter's default).
    #[arg(long, default_value = "recpipe")]
    pub image: String,
    /// Where the pods keep run directories (the `store` parameter's default);
    /// default the settings' `state_dir`.
    #[arg(long)]
    pub store: Option<String>,
    /// Write `<name>.workflowtemplate.<ext>` and `<name>.cronworkflow.<ext>` here
    /// instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

pub fn run(settings: &Settings, command: ExportCommand) -> Result<(), Failure> {
    let ExportCommand::Argo(args) = command;
    let pipelines = match &args.pipeline {
        Some(p) => vec![super::find_pipeline(settings, p)?],
        None => {
            let (pipelines, diags) =
                load::load_all(settings, std::slice::from_ref(&settings.pipelines_dir));
            if !diags.is_empty() {
                return Err(Failure::BadInput(anyhow!("invalid pipeline:\n{diags}")));
            }
            pipelines.into_iter().map(std::sync::Arc::new).collect()
        }
    };
    let target = Target {
        image: args.image.clone(),
        store: args
            .store
            .clone()
            .unwrap_or_else(|| settings.state_dir.display().to_string()),
    };
    let mut documents = Vec::new();
    for p in &pipelines {
        let m = argo::export(p, settings, &target)
            .map_err(|e| Failure::BadInput(anyhow!("{}: {e}", p.file.display())))?;
        let name = argo::resource_name(&p.name);
        documents.push((format!("{name}.workflowtemplate"), m.template));
        if let Some(cron) = m.cron {
            documents.push((format!("{name}.cronworkflow"), cron));
        }
    }
    let render = |v: &serde_json::Value| match args.format {
        Format::Yaml => to_yaml(v),
        Format::Json => format!("{v:#}\n"),
    };
    match &args.out {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::Transient(anyhow!("{}: {e}", dir.display())))?;
            let ext = match args.format {
                Format::Yaml => "yaml",
                Format::Json => "json",
            };
            for (name, doc) in &documents {
                let path = dir.join(format!("{name}.{ext}"));
                std::fs::write(&path, render(doc))
                    .map_err(|e| Failure::Transient(anyhow!("{}: {e}", path.display())))?;
                println!("{}", path.display());
            }
        }
        None => {
            let texts: Vec<String> = documents.iter().map(|(_, d)| render(d)).collect();
            match args.format {
                Format::Yaml => print!("{}", texts.join("---\n")),
                Format::Json => print!("{}", texts.join("")),
            }
        }
    }
    Ok(())
}
