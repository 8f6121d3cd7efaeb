//! `train`: fits a model on an interactions artifact and writes the model artifact.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::model_io::{self, ModelMeta};
use super::{StepError, StepOutput, interactions};
use crate::config::pipeline::{PopularBy, TrainSpec};
use crate::models::popular::Popular;

/// Fits `spec` on the interactions in `input` and writes the model into `out_dir`.
/// Blocking: call through [`super::compute`].
pub fn run(spec: &TrainSpec, input: &Path, out_dir: &Path) -> Result<StepOutput, StepError> {
    let data = interactions::load(input)?;
    if data.matrix.nnz() == 0 {
        return Err(StepError::Data(format!(
            "{}: no interactions to train on",
            input.display()
        )));
    }
    let trained_on: PathBuf =
        std::path::absolute(input).map_err(|e| StepError::Data(e.to_string()))?;
    let meta = |model: &str, params: serde_json::Value| ModelMeta {
        model: model.to_string(),
        params,
        n_users: data.users.len(),
        n_items: data.items.len(),
        nnz: data.matrix.nnz(),
        trained_on: trained_on.clone(),
    };
    let files = match spec {
        TrainSpec::Popular(p) => {
            let model = Popular::fit(&data.matrix, p.by == PopularBy::Value);
            let meta = meta("popular", serde_json::to_value(p).unwrap_or_default());
            model_io::save_popular(out_dir, &meta, &data.users, &data.items, &model)?
        }
    };
    Ok(StepOutput {
        rows: data.matrix.nnz() as u64,
        details: json!({
            "users": data.users.len(),
            "items": data.items.len(),
            "interactions": data.matrix.nnz(),
        }),
        files,
    })
}
