//! `train`: fits a model on an interactions artifact and writes the model artifact.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::model_io::{self, Fitted, ModelMeta};
use super::{StepError, StepOutput, interactions};
use crate::config::pipeline::{
    AlsSolver, AlsSpec, ItemItemSpec, ItemSimilarity, PopularBy, TrainSpec,
};
use crate::models::StopFlag;
use crate::models::als::{self, AlsParams, Solver};
use crate::models::item_item::{self, ItemItemModel, Similarity};
use crate::models::popular::Popular;

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
        TrainSpec::Popular(p) => (
            Fitted::Popular(Popular::fit(&data.matrix, p.by == PopularBy::Value)),
            json!({}),
        ),
        TrainSpec::Als(a) => {
            let (model, report) = als::fit(&data.matrix, &als_params(a), stop)?;
            (Fitted::Als(model), json!({ "loss": report.losses }))
        }
        TrainSpec::ItemItem(i) => {
            let neighbors = item_item::neighbors(&data.matrix, similarity(i), i.neighbors, stop)?;
            let report = json!({ "neighbor_pairs": neighbors.nnz() });
            (
                Fitted::ItemItem(ItemItemModel {
                    neighbors,
                    user_items: data.matrix.clone(),
                }),
                report,
            )
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
