//! `als`: implicit-feedback matrix factorization by alternating least squares.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Fit, Fitted, ModelKind, TrainData, Trained};
use crate::artifact::model::{Columns, ModelFiles, factors_array};
use crate::models::als::{self, AlsModel, AlsParams, Solver};
use crate::models::similarity::CosineSimilarity;
use crate::models::{Csr, Recommender, StopFlag};
use crate::steps::spec::{Problem, between, whole};
use crate::steps::{StepError, memory};

/// The largest values the bounds accept. They are far above any useful
/// setting; what they keep out are values that would exhaust memory or time.
pub const MAX_FACTORS: usize = 1024;
pub const MAX_ITERATIONS: usize = 1000;
pub const MAX_CG_STEPS: usize = 100;

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlsSolver {
    #[default]
    Cg,
    Cholesky,
}

impl AlsSpec {
    /// The parameters of `crate::models::als` this spec sets.
    pub fn params(&self) -> AlsParams {
        AlsParams {
            factors: self.factors,
            iterations: self.iterations,
            regularization: self.regularization,
            alpha: self.alpha,
            log_epsilon: self.log_epsilon,
            solver: match self.solver {
                AlsSolver::Cg => Solver::ConjugateGradient {
                    steps: self.cg_steps,
                },
                AlsSolver::Cholesky => Solver::Cholesky,
            },
            seed: self.seed,
            loss: self.report_loss,
            scale_regularization: self.scale_regularization,
        }
    }

    /// Fits ALS after checking it fits in memory, and refuses factors that came
    /// out non-finite.
    pub fn fit_als(
        &self,
        matrix: &Csr,
        stop: &StopFlag,
    ) -> Result<(AlsModel, als::FitReport), StepError> {
        let (n, k) = (matrix.n_rows + matrix.n_cols, self.factors);
        // Factors of both sides, the transposed matrix and k×k Gram plus per-thread
        // scratch: what `als::fit` allocates beyond its input.
        let bytes =
            (n * k * 4) as u64 + (matrix.nnz() * 8 + matrix.n_cols * 8) as u64 + (k * k * 8) as u64;
        memory::check(
            bytes,
            &format!("ALS with {k} factors for {n} users and items"),
            "`factors`",
        )?;
        let (model, report) = als::fit(matrix, &self.params(), stop)?;
        if !model.is_finite() {
            return Err(StepError::Data(format!(
                "ALS produced non-finite factors (alpha {}, regularization {}): the confidences \
                 overflow; lower `alpha` or scale `value` down in the SQL",
                self.alpha, self.regularization
            )));
        }
        Ok((model, report))
    }
}

impl ModelKind for AlsSpec {
    const NAME: &'static str = "als";

    fn problems(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = [
            whole("factors", self.factors, MAX_FACTORS),
            whole("iterations", self.iterations, MAX_ITERATIONS),
            whole("cg_steps", self.cg_steps, MAX_CG_STEPS),
            between("regularization", self.regularization, 0.0, 1e6),
            between("alpha", self.alpha, 0.0, 1e6),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(eps) = self.log_epsilon
            && !(eps.is_finite() && eps > 0.0)
        {
            problems.push(Problem::new(
                "log_epsilon",
                format!("must be a finite number above 0, not {eps}"),
            ));
        }
        problems
    }

    fn fit(&self, data: &TrainData, stop: &StopFlag) -> Result<Fit, StepError> {
        let matrix = data.matrix;
        let (model, report) = self.fit_als(matrix, stop)?;
        Ok(Fit {
            model: Box::new(model),
            report: json!({ "loss": report.losses }),
        })
    }

    fn load(artifact: &ModelFiles) -> Result<Fitted, StepError> {
        let (user_factors, item_factors, factors) = artifact.factors()?;
        Ok(Box::new(AlsModel {
            factors,
            user_factors,
            item_factors,
        }))
    }
}

impl Trained for AlsModel {
    fn similarity(&self) -> Option<Box<dyn Recommender + '_>> {
        Some(Box::new(CosineSimilarity::new(
            &self.item_factors,
            self.factors,
        )))
    }

    fn columns(&self) -> Result<Columns, StepError> {
        Ok(Columns {
            users: vec![("factors", factors_array(&self.user_factors, self.factors)?)],
            items: vec![("factors", factors_array(&self.item_factors, self.factors)?)],
            files: Vec::new(),
        })
    }
}
