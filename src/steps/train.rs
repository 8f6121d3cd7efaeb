//! `train`: fits a model on an interactions artifact and writes the model artifact.
//! The models a step may name, with their keys, defaults and bounds, are here too;
//! `evaluate` fits them the same way.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kind::{
    Problem, SpecReader, StepKind, create_output, parse_key_value, refuse, toml_string,
};
use super::model_io::{self, Fitted, ModelMeta};
use super::{
    DATA_FILE, Input, Resources, StepContext, StepError, StepOutput, compute, input_of,
    interactions, memory,
};
use crate::artifact::ArtifactKind;
use crate::config::introspect::fields;
use crate::models::als::{self, AlsParams, Solver};
use crate::models::item_item::{self, ItemItemModel, Similarity};
use crate::models::popular::Popular;
use crate::models::{Csr, StopFlag};

/// Which model a train step fits; the `model` key picks the variant.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum TrainSpec {
    Popular(PopularSpec),
    Als(AlsSpec),
    ItemItem(ItemItemSpec),
}

impl TrainSpec {
    pub const MODELS: &[&str] = &["popular", "als", "item_item"];

    pub fn fields_of(model: &str) -> Option<&'static [&'static str]> {
        match model {
            "popular" => Some(fields::<PopularSpec>()),
            "als" => Some(fields::<AlsSpec>()),
            "item_item" => Some(fields::<ItemItemSpec>()),
            _ => None,
        }
    }

    pub fn model(&self) -> &'static str {
        match self {
            TrainSpec::Popular(_) => "popular",
            TrainSpec::Als(_) => "als",
            TrainSpec::ItemItem(_) => "item_item",
        }
    }
}

/// Implicit-feedback matrix factorization. The defaults (ALS-WR regularization
/// 0.3 per interaction, alpha 0.25) won a grid search on a validation split carved
/// from MovieLens 100K training rows (`bench/tune.py --scale-regularization`) and
/// beat implicit's defaults on the synthetic set too (see the README).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlsSpec {
    pub factors: usize,
    pub iterations: usize,
    pub regularization: f32,
    /// Confidence `1 + alpha · value`.
    pub alpha: f32,
    /// When set, confidence is `1 + alpha · ln(1 + value / log_epsilon)`.
    pub log_epsilon: Option<f32>,
    /// `cg` (conjugate gradient, fast) or `cholesky` (exact, slow).
    pub solver: AlsSolver,
    pub cg_steps: usize,
    pub seed: u64,
    /// Record the training loss of every iteration in the step's manifest.
    pub report_loss: bool,
    /// Scale each user's and item's regularization by its interaction count
    /// (ALS-WR), which lets one `regularization` suit data sets of any size.
    pub scale_regularization: bool,
}

/// The model's own defaults ([`AlsParams`]), written once.
impl Default for AlsSpec {
    fn default() -> Self {
        let p = AlsParams::default();
        let (solver, cg_steps) = match p.solver {
            Solver::ConjugateGradient { steps } => (AlsSolver::Cg, steps),
            Solver::Cholesky => (AlsSolver::Cholesky, 3),
        };
        Self {
            factors: p.factors,
            iterations: p.iterations,
            regularization: p.regularization,
            alpha: p.alpha,
            log_epsilon: p.log_epsilon,
            solver,
            cg_steps,
            seed: p.seed,
            report_loss: p.loss,
            scale_regularization: p.scale_regularization,
        }
    }
}

/// Item-based co-occurrence similarity: needs no factorization.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ItemItemSpec {
    /// `cosine`, `jaccard` or `bm25`.
    pub similarity: ItemSimilarity,
    /// Similar items kept per item.
    pub neighbors: usize,
    pub bm25_k1: f32,
    pub bm25_b: f32,
}

impl Default for ItemItemSpec {
    fn default() -> Self {
        Self {
            similarity: ItemSimilarity::Cosine,
            neighbors: 50,
            bm25_k1: 1.2,
            bm25_b: 0.75,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemSimilarity {
    #[default]
    Cosine,
    Jaccard,
    Bm25,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlsSolver {
    #[default]
    Cg,
    Cholesky,
}

/// Most-interacted items: the baseline every learned model must beat.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PopularSpec {
    /// `users` counts distinct users per item; `value` sums interaction values.
    #[serde(default)]
    pub by: PopularBy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PopularBy {
    #[default]
    Users,
    Value,
}

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
    pub fn spec(&self) -> Result<TrainSpec, StepError> {
        let mut text = format!("model = {}\n", toml_string(&self.model));
        for (k, v) in &self.set {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let spec: TrainSpec = toml::from_str(&text)
            .map_err(|e| StepError::Data(format!("model parameters: {}", e.message())))?;
        refuse(model_problems(&spec), |k| format!("--set {k}"))?;
        Ok(spec)
    }
}

impl StepKind for TrainSpec {
    const NAME: &'static str = "train";
    const INPUTS: Option<&'static [(ArtifactKind, usize, usize)]> =
        Some(&[(ArtifactKind::Interactions, 1, 1)]);
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
        model_problems(self)
    }

    fn describe(&self) -> String {
        format!("model {}", self.model())
    }

    async fn run(
        &self,
        inputs: &[Input],
        out_dir: &Path,
        cx: &StepContext,
        _resources: &Resources,
    ) -> Result<StepOutput, StepError> {
        let input = input_of(inputs, ArtifactKind::Interactions)?
            .dir
            .join(DATA_FILE);
        let (spec, out, stop) = (self.clone(), out_dir.to_path_buf(), cx.stop.clone());
        compute(&cx.pool, move || run(&spec, &input, &out, &stop)).await
    }

    async fn run_alone(
        a: TrainArgs,
        _project_dir: &Path,
        cx: &StepContext,
    ) -> Result<StepOutput, StepError> {
        let spec = a.model.spec()?;
        create_output(&a.output)?;
        let stop = cx.stop.clone();
        compute(&cx.pool, move || run(&spec, &a.input, &a.output, &stop)).await
    }
}

/// The largest model values the bounds below accept. They are far above any
/// useful setting; what they keep out are values that would exhaust memory or
/// time.
pub const MAX_FACTORS: usize = 1024;
pub const MAX_ITERATIONS: usize = 1000;
pub const MAX_CG_STEPS: usize = 100;
pub const MAX_NEIGHBORS: usize = 10_000;

/// Every model parameter outside the range the model can
/// run with: each would panic, exhaust memory, run for days or give NaN factors.
pub fn model_problems(spec: &TrainSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut whole = |key: &str, value: usize, max: usize| {
        if !(1..=max).contains(&value) {
            problems.push(Problem::new(
                key,
                format!("must be between 1 and {max}, not {value}"),
            ));
        }
    };
    match spec {
        TrainSpec::Popular(_) => {}
        TrainSpec::Als(a) => {
            whole("factors", a.factors, MAX_FACTORS);
            whole("iterations", a.iterations, MAX_ITERATIONS);
            whole("cg_steps", a.cg_steps, MAX_CG_STEPS);
            for (key, value) in [("regularization", a.regularization), ("alpha", a.alpha)] {
                if !(value.is_finite() && (0.0..=1e6).contains(&value)) {
                    problems.push(Problem::new(
                        key,
                        format!("must be between 0 and 1000000, not {value}"),
                    ));
                }
            }
            if let Some(eps) = a.log_epsilon
                && !(eps.is_finite() && eps > 0.0)
            {
                problems.push(Problem::new(
                    "log_epsilon",
                    format!("must be a finite number above 0, not {eps}"),
                ));
            }
        }
        TrainSpec::ItemItem(i) => {
            whole("neighbors", i.neighbors, MAX_NEIGHBORS);
            if !(i.bm25_k1.is_finite() && (0.0..=100.0).contains(&i.bm25_k1)) {
                problems.push(Problem::new(
                    "bm25_k1",
                    format!("must be between 0 and 100, not {}", i.bm25_k1),
                ));
            }
            if !(0.0..=1.0).contains(&i.bm25_b) {
                problems.push(Problem::new(
                    "bm25_b",
                    format!("must be between 0 and 1, not {}", i.bm25_b),
                ));
            }
        }
    }
    problems
}

pub fn als_params(spec: &AlsSpec) -> AlsParams {
    AlsParams {
        factors: spec.factors,
        iterations: spec.iterations,
        regularization: spec.regularization,
        alpha: spec.alpha,
        log_epsilon: spec.log_epsilon,
        solver: match spec.solver {
            AlsSolver::Cg => Solver::ConjugateGradient {
                steps: spec.cg_steps,
            },
            AlsSolver::Cholesky => Solver::Cholesky,
        },
        seed: spec.seed,
        loss: spec.report_loss,
        scale_regularization: spec.scale_regularization,
    }
}

pub fn similarity(spec: &ItemItemSpec) -> Similarity {
    match spec.similarity {
        ItemSimilarity::Cosine => Similarity::Cosine,
        ItemSimilarity::Jaccard => Similarity::Jaccard,
        ItemSimilarity::Bm25 => Similarity::Bm25 {
            k1: spec.bm25_k1,
            b: spec.bm25_b,
        },
    }
}

/// Fits popularity, refusing scores that overflowed: summed `value`s of a
/// popular item can exceed what a float holds.
pub fn fit_popular(matrix: &Csr, spec: &PopularSpec) -> Result<Popular, StepError> {
    let model = Popular::fit(matrix, spec.by == PopularBy::Value);
    match model.scores.iter().all(|s| s.is_finite()) {
        true => Ok(model),
        false => Err(StepError::Data(
            "popularity by `value` overflows: the values of one item sum past the largest \
             float; scale `value` down in the SQL or use `by = \"users\"`"
                .into(),
        )),
    }
}

/// Fits item-item neighbours after checking they fit in memory.
pub fn fit_item_item(
    matrix: &Csr,
    spec: &ItemItemSpec,
    stop: &StopFlag,
) -> Result<ItemItemModel, StepError> {
    // Kept lists, the transposed matrix and a dense accumulator per thread.
    let items = matrix.n_cols as u64;
    let bytes = items * spec.neighbors.min(matrix.n_cols) as u64 * 8
        + matrix.nnz() as u64 * 16
        + rayon::current_num_threads() as u64 * items * 4;
    memory::check(
        bytes,
        &format!(
            "item-item with {} neighbors for {items} items",
            spec.neighbors
        ),
        "`neighbors`",
    )?;
    Ok(ItemItemModel {
        neighbors: item_item::neighbors(matrix, similarity(spec), spec.neighbors, stop)?,
        user_items: matrix.clone(),
    })
}

/// Fits ALS after checking it fits in memory, and refuses factors that came out
/// non-finite.
pub fn fit_als(
    matrix: &Csr,
    spec: &AlsSpec,
    stop: &StopFlag,
) -> Result<(als::AlsModel, als::FitReport), StepError> {
    let (n, k) = (matrix.n_rows + matrix.n_cols, spec.factors);
    // Factors of both sides, the transposed matrix and k×k Gram plus per-thread
    // scratch: what `als::fit` allocates beyond its input.
    let bytes =
        (n * k * 4) as u64 + (matrix.nnz() * 8 + matrix.n_cols * 8) as u64 + (k * k * 8) as u64;
    memory::check(
        bytes,
        &format!("ALS with {k} factors for {n} users and items"),
        "`factors`",
    )?;
    let (model, report) = als::fit(matrix, &als_params(spec), stop)?;
    if !model.is_finite() {
        return Err(StepError::Data(format!(
            "ALS produced non-finite factors (alpha {}, regularization {}): the confidences \
             overflow; lower `alpha` or scale `value` down in the SQL",
            spec.alpha, spec.regularization
        )));
    }
    Ok((model, report))
}

/// Fits `spec` on the interactions in `input` and writes the model into `out_dir`.
/// Blocking: call through [`super::compute`].
pub fn run(
    spec: &TrainSpec,
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
    let (fitted, report) = match spec {
        TrainSpec::Popular(p) => (Fitted::Popular(fit_popular(&data.matrix, p)?), json!({})),
        TrainSpec::Als(a) => {
            let (model, report) = fit_als(&data.matrix, a, stop)?;
            (Fitted::Als(model), json!({ "loss": report.losses }))
        }
        TrainSpec::ItemItem(i) => {
            let model = fit_item_item(&data.matrix, i, stop)?;
            let report = json!({ "neighbor_pairs": model.neighbors.nnz() });
            (Fitted::ItemItem(model), report)
        }
    };
    let meta = ModelMeta {
        model: spec.model().to_string(),
        params: serde_json::to_value(spec).unwrap_or_default(),
        n_users: data.users.len(),
        n_items: data.items.len(),
        nnz: data.matrix.nnz(),
        trained_on,
        report: report.clone(),
    };
    let files = model_io::save(out_dir, &meta, &data.users, &data.items, &fitted)?;
    Ok(StepOutput {
        rows: data.matrix.nnz() as u64,
        details: json!({
            "model": spec.model(),
            "users": data.users.len(),
            "items": data.items.len(),
            "interactions": data.matrix.nnz(),
            "report": report,
        }),
        files,
    })
}
