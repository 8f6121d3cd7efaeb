//! `train`: fits a model (any of [`super::model`]) on an interactions artifact and
//! writes the model artifact.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::kind::{
    Inputs, ON_INTERACTIONS, Problem, SpecReader, StepKind, create_output, parse_key_value, refuse,
    toml_string,
};
use super::model::{self, ModelSpec};
use super::{StepContext, StepError, StepOutput, StepResult, StepRun};
use crate::artifact::ArtifactKind;
use crate::artifact::interactions;
use crate::artifact::model::ModelMeta;
use crate::models::StopFlag;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// An interactions Parquet file.
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Folder for the model artifact.
    #[arg(long)]
    output: PathBuf,
}

/// A model on the command line: `--model` and its keys, as a pipeline file writes them.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The model: `popular`, `als` or `item_item`.
    #[arg(long)]
    model: String,
    /// Model parameters as `key=value` in TOML syntax (as in a pipeline file).
    #[arg(long = "set", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
}

impl ModelArgs {
    /// The model spec, read exactly as the same keys in a pipeline file would be.
    pub fn spec(&self) -> Result<ModelSpec, StepError> {
        let mut text = format!("model = {}\n", toml_string(&self.model));
        for (k, v) in &self.set {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let spec: ModelSpec = toml::from_str(&text)
            .map_err(|e| StepError::Data(format!("model parameters: {}", e.message())))?;
        refuse(spec.problems(), |k| format!("--set {k}"))?;
        Ok(spec)
    }
}

impl StepKind for ModelSpec {
    const NAME: &'static str = "train";
    const INPUTS: Inputs = ON_INTERACTIONS;
    type Args = TrainArgs;

    fn keys() -> &'static [&'static str] {
        &["model"]
    }

    fn read(table: &mut impl SpecReader) -> Option<Self> {
        table.model()
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, _: &super::kind::CheckContext) -> Vec<Problem> {
        self.problems()
    }

    fn describe(&self) -> String {
        format!("model {}", self.model())
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        step.from_interactions(self, run).await
    }

    async fn run_alone(a: TrainArgs, _project_dir: &Path, cx: &StepContext) -> StepResult {
        let spec = a.model.spec()?;
        create_output(&a.output)?;
        cx.compute(move |stop| run(&spec, &a.input, &a.output, stop))
            .await
    }
}

/// Fits `spec` on the interactions in `input` and writes the model into `out_dir`.
/// Blocking: call through [`super::compute`].
pub fn run(
    spec: &ModelSpec,
    input: &Path,
    out_dir: &Path,
    stop: &StopFlag,
) -> Result<StepOutput, StepError> {
    let data = interactions::load(input)?;
    if data.matrix.nnz() == 0 {
        return Err(StepError::Data(format!(
            "{}: no interactions to train on",
            input.display()
        )));
    }
    let trained_on: PathBuf =
        std::path::absolute(input).map_err(|e| StepError::Data(e.to_string()))?;
    let fit = spec.fit(&data.matrix, stop)?;
    let meta = ModelMeta {
        model: spec.model().to_string(),
        params: serde_json::to_value(spec).unwrap_or_default(),
        n_users: data.users.len(),
        n_items: data.items.len(),
        nnz: data.matrix.nnz(),
        trained_on,
        report: fit.report.clone(),
    };
    let files = model::save(out_dir, &meta, &data.users, &data.items, fit.model.as_ref())?;
    Ok(StepOutput {
        rows: data.matrix.nnz() as u64,
        details: json!({
            "model": spec.model(),
            "users": data.users.len(),
            "items": data.items.len(),
            "interactions": data.matrix.nnz(),
            "report": fit.report,
        }),
        files,
    })
}
