//! `train`: fits a model on an interactions artifact and writes the model artifact.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::model_io::{self, Fitted, ModelMeta};
use super::{StepError, StepOutput, interactions, memory};
use crate::models::als::{self, AlsParams, Solver};
use crate::models::item_item::{self, ItemItemModel, Similarity};
use crate::models::popular::Popular;
use crate::models::{Csr, StopFlag};
use crate::steps::spec::{
    AlsSolver, AlsSpec, ItemItemSpec, ItemSimilarity, PopularBy, PopularSpec, TrainSpec,
};

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
