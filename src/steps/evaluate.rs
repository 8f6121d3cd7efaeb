//! `evaluate`: a hold-out evaluation of a model on the run's own interactions,
//! against the popularity baseline, written to `metrics.json` and the manifest, so
//! every run shows whether the model still earns its keep.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kind::{
    CheckContext, Inputs, ON_INTERACTIONS, Problem, SpecReader, StepKind, create_output, refuse,
    refuse_flags,
};
use super::model::popular::PopularSpec;
use super::model::{FeatureUse, ModelSpec, TrainData};
use super::train::ModelArgs;
pub use super::tune::SplitKind;
use super::tune::{self, Cells, TuneSpec};
use super::{StepContext, StepError, StepOutput, StepResult, StepRun};
use crate::artifact;
use crate::artifact::ArtifactKind;
use crate::eval::{self, MAX_K, Metrics};
use crate::models::StopFlag;
use crate::models::popular::Popular;

pub const METRICS_FILE: &str = "metrics.json";

/// Holds out part of the interactions, fits `model` (any train model, with its
/// keys) and the popularity baseline on the rest, and records precision, recall,
/// nDCG, MAP and coverage at `k` of both in the run manifest.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// `random` cells, or each user's latest (`time`, by `ts`).
    #[serde(default)]
    pub split: SplitKind,
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    #[serde(default = "super::recommend::default_top_n")]
    pub k: usize,
    #[serde(default)]
    pub seed: u64,
    /// Search the model's settings on the training part first, and evaluate
    /// the choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune: Option<TuneSpec>,
    /// Set from the step's `model` key and that model's keys.
    #[serde(skip_deserializing, default = "default_model")]
    pub model: ModelSpec,
}

fn default_test_fraction() -> f64 {
    0.2
}

fn default_model() -> ModelSpec {
    ModelSpec::Popular(PopularSpec::default())
}

/// The evaluate step's own keys; its model's keys are added as for a train step.
const EVALUATE_KEYS: &[&str] = &["split", "test_fraction", "k", "seed", "tune", "model"];

#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// An interactions Parquet file.
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// `random` or `time` (each user's latest, by `ts`).
    #[arg(long, value_enum, default_value = "random")]
    split: SplitKind,
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A TOML file holding a `tune` table: search the model's settings on the
    /// training part, then evaluate the choice.
    #[arg(long)]
    tune: Option<PathBuf>,
    /// Folder for metrics.json.
    #[arg(long)]
    output: PathBuf,
}

impl StepKind for EvaluateSpec {
    const NAME: &'static str = "evaluate";
    const INPUTS: Inputs = ON_INTERACTIONS;
    type Args = EvaluateArgs;

    fn keys() -> &'static [&'static str] {
        EVALUATE_KEYS
    }

    fn read(table: &mut impl SpecReader) -> Option<Self> {
        // Both halves are read so that each reports its problems.
        match (table.own::<EvaluateSpec>(), table.model()) {
            (Some(own), Some(model)) => Some(EvaluateSpec { model, ..own }),
            _ => None,
        }
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Metrics
    }

    fn check(&self, _: &CheckContext) -> Vec<Problem> {
        let mut problems = self.model.problems();
        problems.extend(evaluate_problems(self));
        if let Some(tune) = &self.tune {
            problems.extend(tune.problems(&self.model));
        }
        if self.model.item_features() == FeatureUse::Required {
            problems.push(Problem::new(
                "model",
                format!(
                    "`evaluate` fits on interactions alone; model `{}` needs item features",
                    self.model.model()
                ),
            ));
        }
        problems
    }

    fn describe(&self) -> String {
        format!(
            "model {} against popularity, {:?} hold-out {}",
            self.model.model(),
            self.split,
            self.test_fraction
        )
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        step.from_interactions(self, run).await
    }

    async fn run_alone(a: EvaluateArgs, _project_dir: &Path, cx: &StepContext) -> StepResult {
        let spec = EvaluateSpec {
            split: a.split,
            test_fraction: a.test_fraction,
            k: a.k,
            seed: a.seed,
            tune: a.tune.as_deref().map(tune::read).transpose()?,
            model: a.model.spec()?,
        };
        refuse_flags(evaluate_problems(&spec))?;
        if let Some(tune) = &spec.tune {
            refuse(tune.problems(&spec.model), |k| format!("--tune {k}"))?;
        }
        create_output(&a.output)?;
        cx.compute(move |stop| run(&spec, &a.input, &a.output, stop))
            .await
    }
}

/// Bounds of an evaluation's own keys.
fn evaluate_problems(spec: &EvaluateSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !(spec.test_fraction > 0.0 && spec.test_fraction < 1.0) {
        problems.push(Problem::new(
            "test_fraction",
            format!(
                "must be between 0 and 1 (exclusive), not {}",
                spec.test_fraction
            ),
        ));
    }
    if !(1..=MAX_K).contains(&spec.k) {
        problems.push(Problem::new(
            "k",
            format!("must be between 1 and {MAX_K}, not {}", spec.k),
        ));
    }
    problems
}

/// Blocking: call through [`super::compute`].
pub fn run(
    spec: &EvaluateSpec,
    input: &Path,
    out_dir: &Path,
    stop: &StopFlag,
) -> Result<StepOutput, StepError> {
    let cells = Cells::read(input, spec.split == SplitKind::Time)?;
    let is_test = cells.split(spec.split, spec.test_fraction, spec.seed);
    let (train_m, test_m) = cells.matrices(&is_test, input)?;
    if test_m.nnz() == 0 || train_m.nnz() == 0 {
        return Err(StepError::Data(format!(
            "{}: {} interactions are too few to hold out {}",
            input.display(),
            cells.rows.len(),
            spec.test_fraction
        )));
    }
    // Tuning sees only the training part: the test part judges its choice.
    let (model_spec, tuned) = match &spec.tune {
        Some(tune) => {
            let train_cells = cells.subset(&is_test, false);
            let search = tune::search(tune, &spec.model, &train_cells, None, stop)?;
            (search.chosen.clone(), Some(search))
        }
        None => (spec.model.clone(), None),
    };
    let popular = Popular::fit(&train_m, false);
    let baseline = eval::evaluate(&popular, &train_m, &test_m, spec.k, stop)?;
    let model = model_spec
        .fit(
            &TrainData {
                matrix: &train_m,
                item_features: None,
            },
            stop,
        )?
        .model;
    let metrics = eval::evaluate(model.as_ref(), &train_m, &test_m, spec.k, stop)?;
    let lift = |m: &Metrics, b: &Metrics| if b.ndcg > 0.0 { m.ndcg / b.ndcg } else { 0.0 };
    let mut details = json!({
        "model": model_spec.model(),
        "split": spec.split,
        "test_fraction": spec.test_fraction,
        "train_rows": train_m.nnz(),
        "test_rows": test_m.nnz(),
        "metrics": metrics,
        "popularity": baseline,
        "ndcg_lift_over_popularity": lift(&metrics, &baseline),
    });
    if let Some(search) = tuned {
        details["tune"] = search.report();
    }
    let file = artifact::write_json(&out_dir.join(METRICS_FILE), &details)?;
    Ok(StepOutput {
        files: vec![file],
        rows: metrics.users as u64,
        details,
    })
}
