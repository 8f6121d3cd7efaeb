//! `popular`: the most-interacted items, the baseline every learned model must beat.

use std::sync::Arc;

use arrow::array::Float32Array;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Fit, Fitted, ModelKind, TrainData, Trained};
use crate::artifact::model::{Columns, ModelFiles};
use crate::models::StopFlag;
use crate::models::popular::Popular;
use crate::steps::StepError;

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

impl ModelKind for PopularSpec {
    const NAME: &'static str = "popular";

    /// Refuses scores that overflowed: summed `value`s of a popular item can
    /// exceed what a float holds.
    fn fit(&self, data: &TrainData, _stop: &StopFlag) -> Result<Fit, StepError> {
        let matrix = data.matrix;
        let model = Popular::fit(matrix, self.by == PopularBy::Value);
        if !model.scores.iter().all(|s| s.is_finite()) {
            return Err(StepError::Data(
                "popularity by `value` overflows: the values of one item sum past the largest \
                 float; scale `value` down in the SQL or use `by = \"users\"`"
                    .into(),
            ));
        }
        Ok(Fit {
            model: Box::new(model),
            report: json!({}),
        })
    }

    fn load(artifact: &ModelFiles) -> Result<Fitted, StepError> {
        let scores = artifact.item_floats("score")?;
        Ok(Box::new(Popular { scores }))
    }
}

impl Trained for Popular {
    fn columns(&self) -> Result<Columns, StepError> {
        Ok(Columns {
            items: vec![("score", Arc::new(Float32Array::from(self.scores.clone())))],
            ..Columns::default()
        })
    }
}
