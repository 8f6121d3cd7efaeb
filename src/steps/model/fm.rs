//! `fm`: the hybrid factorization model of [`crate::models::fm`], on the
//! interactions and, when the step needs a `vectorize` step, its item features.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{FeatureUse, Fit, Fitted, ModelKind, TrainData, Trained};
use crate::artifact::model::{Columns, ModelFiles, factors_array};
use crate::models::als::{AlsParams, Solver};
use crate::models::fm::als::AlsInput;
use crate::models::fm::{self, FmInput, FmModel, FmParams, Loss};
use crate::models::similarity::CosineSimilarity;
use crate::models::{Csr, Recommender, StopFlag};
use crate::steps::spec::{Problem, between, whole};
use crate::steps::{StepError, memory};

pub const MAX_FACTORS: usize = 1024;
pub const MAX_EPOCHS: usize = 10_000;
pub const MAX_SAMPLED: usize = 10_000;

/// The defaults were chosen on validation splits carved from the training rows
/// of the cold-start benchmark (`bench/coldstart.sh`, issue 13's notes):
/// - `loss = "als"` gives the best lists of known items (nDCG@10 0.235 against
///   WARP's 0.217 on the warm validation split) and features do not make them
///   worse; WARP ranks new items better (0.165 against 0.113 on the cold
///   validation split, with titles). Most lists are of known items, hence the
///   default.
/// - WARP and BPR take LightFM's setup with fewer epochs: 10 beat 30 on warm
///   validation (0.213 against 0.185; LightFM falls off the same way).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FmSpec {
    pub factors: usize,
    /// Passes over the data: 15 for `als` (as the `als` model), 10 for `warp`
    /// and `bpr`.
    pub epochs: Option<usize>,
    pub loss: FmLoss,
    /// `als`: confidence `1 + alpha · value`, as the `als` model.
    pub alpha: f32,
    /// `als`: ALS-WR's λ, scaled by each row's (each feature's) interactions.
    pub regularization: f32,
    /// `warp` and `bpr`: Adagrad's step.
    pub learning_rate: f32,
    /// WARP: negatives tried per positive.
    pub max_sampled: usize,
    pub user_alpha: f32,
    pub item_alpha: f32,
    /// Give each item with interactions its own feature besides its content
    /// features. An item without interactions never gets one: its identity
    /// embedding could only be noise.
    pub identity: bool,
    /// How each item's feature weights are scaled (README, benchmark).
    pub normalize: FmNormalize,
    pub seed: u64,
}

impl Default for FmSpec {
    fn default() -> Self {
        Self {
            factors: 64,
            epochs: None,
            loss: FmLoss::Als,
            alpha: AlsParams::default().alpha,
            regularization: AlsParams::default().regularization,
            learning_rate: 0.05,
            max_sampled: 10,
            user_alpha: 0.0,
            item_alpha: 0.0,
            identity: true,
            normalize: FmNormalize::None,
            seed: 42,
        }
    }
}

/// `none` is the default for both losses, chosen on validation splits carved
/// from the training rows (issue 13's notes). Cold: nDCG@10 of new items, the
/// cold validation split, genres + decade / + titles. Warm: the warm
/// validation split, genres + decade + titles.
///
/// | `normalize` | `als` cold | `als` warm | `warp` cold | `warp` warm |
/// |---|---|---|---|---|
/// | `none` | 0.084 / 0.113 | 0.234 | 0.134 / 0.165 | 0.195 |
/// | `content_l2` | 0.080 / 0.109 | 0.237 | 0.126 / 0.168 | 0.217 |
/// | `content_l1` | 0.075 / 0.109 | 0.237 | 0.110 / 0.124 | 0.224 |
/// | identity alone | | 0.234 | | 0.209 |
///
/// With `warp`, unscaled title words cost known items' lists what they gain
/// new items'; `content_l1` or `content_l2` suits a `warp` model whose lists
/// are of known items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FmNormalize {
    /// Weights as `vectorize` gave them; the identity weighs 1.
    #[default]
    None,
    /// The content features have unit length; the identity weighs 1.
    ContentL2,
    /// The content features sum to 1; the identity weighs 1.
    ContentL1,
    /// Identity and content together sum to 1, as LightFM's `Dataset`.
    All,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FmLoss {
    /// Implicit ALS's weighted squared error ([`fm::als`]).
    #[default]
    Als,
    Warp,
    Bpr,
}

impl FmSpec {
    fn epochs(&self) -> usize {
        self.epochs.unwrap_or(match self.loss {
            FmLoss::Als => AlsParams::default().iterations,
            FmLoss::Warp | FmLoss::Bpr => 10,
        })
    }

    fn params(&self, loss: Loss) -> FmParams {
        FmParams {
            factors: self.factors,
            epochs: self.epochs(),
            learning_rate: self.learning_rate,
            loss,
            max_sampled: self.max_sampled,
            user_alpha: self.user_alpha,
            item_alpha: self.item_alpha,
            seed: self.seed,
        }
    }

    /// Items × [identity of the items with interactions, when `identity` |
    /// content features].
    fn item_features(&self, data: &TrainData, identity: bool) -> Result<Csr, StepError> {
        let m = data.matrix;
        let has = with_interactions(m);
        let content = data.item_features;
        if !self.identity && content.is_none() {
            return Err(StepError::Data(
                "fm with `identity = false` needs item features: add a `vectorize` step to `needs`"
                    .into(),
            ));
        }
        let offset = if identity { m.n_cols } else { 0 };
        let n_cols = offset + content.map_or(0, |c| c.n_cols);
        let (mut r, mut c, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for (item, &has) in has.iter().enumerate() {
            let start = r.len();
            if identity && has {
                r.push(item as u32);
                c.push(item as u32);
                v.push(1.0);
            }
            let own = r.len();
            if let Some(content) = content {
                let (cols, weights) = content.row(item);
                r.extend(std::iter::repeat_n(item as u32, cols.len()));
                c.extend(cols.iter().map(|&f| f + offset as u32));
                v.extend_from_slice(weights);
            }
            let (scaled, l2) = match self.normalize {
                FmNormalize::None => continue,
                FmNormalize::ContentL2 => (&mut v[own..], true),
                FmNormalize::ContentL1 => (&mut v[own..], false),
                FmNormalize::All => (&mut v[start..], false),
            };
            let norm: f32 = match l2 {
                true => scaled.iter().map(|w| w * w).sum::<f32>().sqrt(),
                false => scaled.iter().map(|w| w.abs()).sum(),
            };
            if norm > 0.0 {
                scaled.iter_mut().for_each(|w| *w /= norm);
            }
        }
        Ok(Csr::from_triplets(m.n_cols, n_cols, &r, &c, &v))
    }
}

impl ModelKind for FmSpec {
    const NAME: &'static str = "fm";
    const ITEM_FEATURES: FeatureUse = FeatureUse::Optional;

    fn problems(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = [
            whole("factors", self.factors, MAX_FACTORS),
            whole("epochs", self.epochs(), MAX_EPOCHS),
            whole("max_sampled", self.max_sampled, MAX_SAMPLED),
            between("learning_rate", self.learning_rate, 1e-9, 10.0),
            between("user_alpha", self.user_alpha, 0.0, 1e3),
            between("item_alpha", self.item_alpha, 0.0, 1e3),
            between("alpha", self.alpha, 0.0, 1e6),
            between("regularization", self.regularization, 0.0, 1e6),
        ]
        .into_iter()
        .flatten()
        .collect();
        if self.loss == FmLoss::Als && self.normalize == FmNormalize::All {
            problems.push(Problem::new(
                "normalize",
                "`all` scales the identity, which `loss = \"als\"` keeps at 1: use `none`, \
                 `content_l2` or `content_l1`",
            ));
        }
        problems
    }

    fn fit(&self, data: &TrainData, stop: &StopFlag) -> Result<Fit, StepError> {
        match self.loss {
            FmLoss::Als => self.fit_als(data, stop),
            FmLoss::Warp => self.fit_sgd(data, Loss::Warp, stop),
            FmLoss::Bpr => self.fit_sgd(data, Loss::Bpr, stop),
        }
    }

    fn load(artifact: &ModelFiles) -> Result<Fitted, StepError> {
        let (users, items, w) = artifact.factors()?;
        Ok(Box::new(FmModel {
            factors: w.saturating_sub(1),
            users,
            items,
        }))
    }
}

impl FmSpec {
    fn fit_als(&self, data: &TrainData, stop: &StopFlag) -> Result<Fit, StepError> {
        let m = data.matrix;
        let content = match data.item_features {
            Some(_) => Some(self.item_features(data, false)?),
            None => None,
        };
        let (k, features) = (
            self.factors as u64,
            content.as_ref().map_or(0, |c| c.n_cols),
        );
        // Users, items and the item-sized work arrays (content prediction,
        // right-hand side, products), the content CG's vectors, and the
        // transposed interactions and features.
        let bytes = (2 * m.n_rows as u64 + 6 * m.n_cols as u64 + 5 * features as u64) * k * 4
            + (m.nnz() + content.as_ref().map_or(0, Csr::nnz)) as u64 * 16;
        memory::check(
            bytes,
            &format!(
                "fm (als) with {} factors for {} users, {} items and {features} item features",
                self.factors, m.n_rows, m.n_cols
            ),
            "`factors`",
        )?;
        let params = AlsParams {
            factors: self.factors,
            iterations: self.epochs(),
            regularization: self.regularization,
            alpha: self.alpha,
            log_epsilon: None,
            solver: Solver::ConjugateGradient { steps: 3 },
            seed: self.seed,
            loss: false,
            scale_regularization: true,
        };
        let input = AlsInput {
            values: m,
            content: content.as_ref(),
            identity: self.identity,
        };
        let model = fm::als::fit(&input, &params, stop)?;
        if !model.is_finite() {
            return Err(StepError::Data(format!(
                "fm produced non-finite factors (alpha {}, regularization {}): the confidences \
                 overflow; lower `alpha` or scale `value` down in the SQL",
                self.alpha, self.regularization
            )));
        }
        Ok(Fit {
            model: Box::new(model),
            report: json!({
                "item_features": features,
                "items_without_interactions": with_interactions(m).iter().filter(|&&h| !h).count(),
            }),
        })
    }

    fn fit_sgd(&self, data: &TrainData, loss: Loss, stop: &StopFlag) -> Result<Fit, StepError> {
        let m = data.matrix;
        let items = self.item_features(data, self.identity)?;
        let w = (self.factors + 1) as u64;
        // Parameters and Adagrad accumulators of every feature, the final
        // representations and the shuffled positives.
        let bytes = (m.n_rows + items.n_cols) as u64 * w * 8
            + (m.n_rows + m.n_cols) as u64 * w * 4
            + m.nnz() as u64 * 8
            + items.nnz() as u64 * 8;
        memory::check(
            bytes,
            &format!(
                "fm with {} factors for {} users and {} item features",
                self.factors, m.n_rows, items.n_cols
            ),
            "`factors`",
        )?;
        let users = identity(m.n_rows);
        let negatives: Vec<u32> = (0..m.n_cols as u32)
            .zip(with_interactions(m))
            .filter_map(|(i, has)| has.then_some(i))
            .collect();
        let input = FmInput {
            positives: m,
            user_features: &users,
            item_features: &items,
            negatives: &negatives,
        };
        let (model, report) = fm::fit(&input, &self.params(loss), stop)?;
        if !model.is_finite() {
            return Err(StepError::Data(format!(
                "fm produced non-finite parameters (learning_rate {}): lower `learning_rate`",
                self.learning_rate
            )));
        }
        Ok(Fit {
            model: Box::new(model),
            report: json!({
                "loss": report.losses,
                "item_features": items.n_cols,
                "items_without_interactions": m.n_cols - negatives.len(),
            }),
        })
    }
}

/// Whether each item (column of `m`) has an interaction.
fn with_interactions(m: &Csr) -> Vec<bool> {
    let mut has = vec![false; m.n_cols];
    m.indices.iter().for_each(|&i| has[i as usize] = true);
    has
}

fn identity(n: usize) -> Csr {
    let idx: Vec<u32> = (0..n as u32).collect();
    Csr::from_triplets(n, n, &idx, &idx, &vec![1.0; n])
}

impl Trained for FmModel {
    fn similarity(&self) -> Option<Box<dyn Recommender + '_>> {
        Some(Box::new(CosineSimilarity::new(
            &self.item_embeddings(),
            self.factors,
        )))
    }

    fn columns(&self) -> Result<Columns, StepError> {
        Ok(Columns {
            users: vec![("factors", factors_array(&self.users, self.width())?)],
            items: vec![("factors", factors_array(&self.items, self.width())?)],
            files: Vec::new(),
        })
    }
}
