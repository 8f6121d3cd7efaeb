//! `train`: fits a model (any of [`super::model`]) on an interactions artifact and
//! writes the model artifact.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kind::{
    Inputs, Problem, SpecReader, StepKind, create_output, parse_key_value, refuse, toml_string,
};
use super::model::{self, FeatureUse, ModelSpec, TrainData};
use super::tune::{self, Cells, SplitKind, TuneSpec};
use super::{DATA_FILE, StepContext, StepError, StepOutput, StepResult, StepRun, input_of};
use crate::artifact::interactions::{self, Interactions, ids_type_name};
use crate::artifact::model::ModelMeta;
use crate::artifact::{ArtifactKind, features};
use crate::models::{Csr, StopFlag};

/// Fits a model, the one its keys set or, with `tune`, the best of a search.
/// (Pipeline files are read through `TrainKeys` and the model's own keys,
/// which refuse unknown keys with their line.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    #[serde(flatten)]
    pub model: ModelSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune: Option<TuneSpec>,
}

/// The train step's own keys besides `model` and the model's keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainKeys {
    #[serde(default)]
    tune: Option<TuneSpec>,
}

/// Where a tuned step keeps its choice for the next run, in its state folder.
const CHOSEN_FILE: &str = "tuned.json";

#[derive(clap::Args)]
pub struct TrainArgs {
    /// An interactions Parquet file.
    #[arg(long)]
    input: PathBuf,
    /// A `vectorize` output folder, for models that learn from item features (`fm`).
    #[arg(long)]
    item_features: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// A TOML file holding a `tune` table (as `[steps.<id>.tune]` in a
    /// pipeline file): search settings before fitting.
    #[arg(long)]
    tune: Option<PathBuf>,
    /// Folder for the model artifact.
    #[arg(long)]
    output: PathBuf,
}

/// A model on the command line: `--model` and its keys, as a pipeline file writes them.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The model: `popular`, `als`, `item_item`, `rp3beta`, `ease`, `fm` or `content`.
    #[arg(long)]
    model: String,
    /// Model parameters as `key=value` in TOML syntax (as in a pipeline file).
    #[arg(long = "set", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
}

impl ModelArgs {
    /// The model spec, read exactly as the same keys in a pipeline file would be.
    pub fn spec(&self) -> Result<ModelSpec, StepError> {
        model_of(&self.model, &self.set)
    }
}

/// `model` with its keys given as `key=value` (TOML values), read as a pipeline
/// file's keys are and checked against the model's bounds.
pub fn model_of(model: &str, set: &[(String, String)]) -> Result<ModelSpec, StepError> {
    let mut text = format!("model = {}\n", toml_string(model));
    for (k, v) in set {
        text.push_str(&format!("{k} = {v}\n"));
    }
    let spec: ModelSpec = toml::from_str(&text)
        .map_err(|e| StepError::Data(format!("model parameters: {}", e.message())))?;
    refuse(spec.problems(), |k| format!("--set {k}"))?;
    Ok(spec)
}

impl ModelSpec {
    /// What is wrong with giving this model item features, or with not giving them.
    fn item_features_problem(&self, given: bool) -> Option<String> {
        match (given, self.item_features()) {
            (true, FeatureUse::No) => Some(format!(
                "model `{}` does not use item features (`fm` and `content` do)",
                self.model()
            )),
            (false, FeatureUse::Required) => Some(format!(
                "model `{}` needs item features (a `vectorize` step)",
                self.model()
            )),
            _ => None,
        }
    }
}

impl StepKind for TrainSpec {
    const NAME: &'static str = "train";
    const INPUTS: Inputs = Some(&[
        (ArtifactKind::Interactions, 1, 1),
        (ArtifactKind::ItemFeatures, 0, 1),
    ]);
    type Args = TrainArgs;

    fn keys() -> &'static [&'static str] {
        &["model", "tune"]
    }

    fn read(table: &mut impl SpecReader) -> Option<Self> {
        match (table.own::<TrainKeys>(), table.model()) {
            (Some(own), Some(model)) => Some(TrainSpec {
                model,
                tune: own.tune,
            }),
            _ => None,
        }
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, _: &super::kind::CheckContext) -> Vec<Problem> {
        let mut problems = self.model.problems();
        if let Some(tune) = &self.tune {
            problems.extend(tune.problems(&self.model));
        }
        problems
    }

    fn input_problems(&self, given: &[(&str, ArtifactKind)]) -> Option<Vec<String>> {
        let features = given.iter().find(|(_, k)| *k == ArtifactKind::ItemFeatures);
        let problem = self.model.item_features_problem(features.is_some())?;
        let fix = match features {
            Some((step, _)) => format!("remove `{step}` from `needs`"),
            None => "add one to `needs`".to_string(),
        };
        Some(vec![format!("{problem}: {fix}")])
    }

    fn describe(&self) -> String {
        match &self.tune {
            Some(_) => format!("model {}, tuned", self.model.model()),
            None => format!("model {}", self.model.model()),
        }
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        let input = step.data_of(ArtifactKind::Interactions)?;
        let features = input_of(step.inputs, ArtifactKind::ItemFeatures)
            .ok()
            .map(|i| i.dir.clone());
        let (spec, out) = (self.clone(), step.out_dir.to_path_buf());
        let state = step.cx.step_state.clone();
        step.cx
            .compute(move |stop| {
                run(
                    &spec,
                    &input,
                    features.as_deref(),
                    &out,
                    state.as_deref(),
                    stop,
                )
            })
            .await
    }

    async fn run_alone(a: TrainArgs, _project_dir: &Path, cx: &StepContext) -> StepResult {
        let model = a.model.spec()?;
        if let Some(problem) = model.item_features_problem(a.item_features.is_some()) {
            return Err(StepError::Data(format!("--item-features: {problem}")));
        }
        let tune = a.tune.as_deref().map(tune::read).transpose()?;
        let spec = TrainSpec { model, tune };
        if let Some(tune) = &spec.tune {
            refuse(tune.problems(&spec.model), |k| format!("--tune {k}"))?;
        }
        create_output(&a.output)?;
        cx.compute(move |stop| {
            run(
                &spec,
                &a.input,
                a.item_features.as_deref(),
                &a.output,
                None,
                stop,
            )
        })
        .await
    }
}

/// Fits `spec` on the interactions in `input` (and the item features of a
/// `vectorize` output) and writes the model into `out_dir`; with `tune`, first
/// searches for the setting, starting from the one kept in `state` (the step's
/// folder that outlives runs) and keeping the new choice there. Blocking: call
/// through [`super::compute`].
pub fn run(
    train: &TrainSpec,
    input: &Path,
    item_features: Option<&Path>,
    out_dir: &Path,
    state: Option<&Path>,
    stop: &StopFlag,
) -> Result<StepOutput, StepError> {
    let search = match &train.tune {
        Some(tune) => {
            let cells = Cells::read(input, tune.split == SplitKind::Time)?;
            let previous = state.and_then(|dir| previous_choice(dir, tune, &train.model));
            Some(tune::search(tune, &train.model, &cells, previous, stop)?)
        }
        None => None,
    };
    let spec = search.as_ref().map_or(&train.model, |s| &s.chosen);
    let mut data = interactions::load(input)?;
    if data.matrix.nnz() == 0 {
        return Err(StepError::Data(format!(
            "{}: no interactions to train on",
            input.display()
        )));
    }
    let content = match item_features {
        Some(dir) => Some(with_item_features(&mut data, input, dir)?),
        None => None,
    };
    let trained_on = trained_on(input, out_dir)?;
    let started = Instant::now();
    let train = TrainData {
        matrix: &data.matrix,
        item_features: content.as_ref(),
    };
    let fit = spec.fit(&train, stop)?;
    let fit_seconds = started.elapsed().as_secs_f64();
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
    let mut details = json!({
        "model": spec.model(),
        "users": data.users.len(),
        "items": data.items.len(),
        "interactions": data.matrix.nnz(),
        "fit_seconds": fit_seconds,
        "report": fit.report,
    });
    if let Some(search) = &search {
        details["tune"] = search.report();
        if let Some(dir) = state {
            super::keep_state(dir, CHOSEN_FILE, &search.chosen)?;
        }
    }
    Ok(StepOutput {
        rows: data.matrix.nnz() as u64,
        details,
        files,
    })
}

/// The setting the last tuned run chose, if it is still among this search's
/// settings (a changed `tune` table or model starts afresh).
fn previous_choice(state: &Path, tune: &TuneSpec, base: &ModelSpec) -> Option<ModelSpec> {
    let chosen: ModelSpec = super::read_state(state, CHOSEN_FILE)?;
    tune.settings(base)
        .ok()?
        .contains(&chosen)
        .then_some(chosen)
}

/// Adds the items of the features in `dir` to `data` (as items without
/// interactions) and returns their features in `data`'s item indices.
/// Where a model records its training data: `../<folder>/<file>` when the
/// interactions sit in a folder beside the model's (one run directory), so the
/// pair can move together; otherwise the full path.
fn trained_on(input: &Path, out_dir: &Path) -> Result<PathBuf, StepError> {
    let absolute = |p: &Path| std::path::absolute(p).map_err(|e| StepError::Data(e.to_string()));
    let (input, out_dir) = (absolute(input)?, absolute(out_dir)?);
    let folder = input.parent().filter(|d| d.parent() == out_dir.parent());
    Ok(
        match (folder.and_then(Path::file_name), input.file_name()) {
            (Some(folder), Some(file)) => Path::new("..").join(folder).join(file),
            _ => input,
        },
    )
}

fn with_item_features(data: &mut Interactions, input: &Path, dir: &Path) -> Result<Csr, StepError> {
    let features = features::read(dir)?;
    let file = dir.join(DATA_FILE);
    let (ours, theirs) = (ids_type_name(&data.items), ids_type_name(&features.items));
    if features.items.is_empty() || ours != theirs {
        return Err(StepError::Data(format!(
            "{}: column `item_id` is {theirs} but the interactions' `item_id` ({}) is {ours}; \
             cast one of them in its SQL",
            file.display(),
            input.display()
        )));
    }
    let shared = (0..data.items.len())
        .filter(|&i| features.items.index(data.items.id(i)).is_some())
        .count();
    if shared == 0 {
        return Err(StepError::Data(format!(
            "{}: none of the {} items of the interactions ({}) has features there: do the \
             `item_id`s of the two extracts match?",
            file.display(),
            data.items.len(),
            input.display()
        )));
    }
    let items = data.items.union(&features.items);
    data.matrix = interactions::load_with(input, &data.users, &items)?;
    data.items = items;
    Ok(features::align(&features, &data.items))
}
