//! `fm`: the hybrid factorization model of [`crate::models::fm`], on the
//! interactions and, when the step needs a `vectorize` step, its item features.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{FeatureUse, Fit, Fitted, ModelKind, TrainData, Trained};
use crate::artifact::model::{Columns, ModelFiles, factors_array};
use crate::models::fm::{self, FmInput, FmModel, FmParams, Loss};
use crate::models::similarity::CosineSimilarity;
use crate::models::{Csr, Recommender, StopFlag};
use crate::steps::spec::{Problem, between, whole};
use crate::steps::{StepError, memory};

pub const MAX_FACTORS: usize = 1024;
pub const MAX_EPOCHS: usize = 10_000;
pub const MAX_SAMPLED: usize = 10_000;

/// LightFM's WARP setup at the components of the cold-start benchmark
/// (`bench/coldstart.sh`), with fewer epochs: on a validation split carved
/// from the warm training rows 10 epochs beat 30 (nDCG@10 0.213 against
/// 0.185; LightFM falls off the same way, 0.210 against 0.191), and on the
/// cold validation split they tied (0.050 against 0.051).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FmSpec {
    pub factors: usize,
    pub epochs: usize,
    pub learning_rate: f32,
    pub loss: FmLoss,
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
            epochs: 10,
            learning_rate: 0.05,
            loss: FmLoss::Warp,
            max_sampled: 10,
            user_alpha: 0.0,
            item_alpha: 0.0,
            identity: true,
            normalize: FmNormalize::None,
            seed: 42,
        }
    }
}

/// Chosen on validation splits carved from the training rows (issue 13's
/// note): `none` ranks new items best, and scaled content makes features help
/// the lists of known items, where unscaled title words hurt them:
///
/// | `normalize` | cold nDCG@10, 4 seeds | warm nDCG@10, genres + decade + titles |
/// |---|---|---|
/// | `none` | 0.0506 | 0.198 (identity alone: 0.211) |
/// | `content_l1` | 0.0475 | 0.222 |
/// | `content_l2` | 0.0501 | 0.219 |
///
/// On the benchmark's five cold draws the gap is wider (0.194 against 0.179
/// for `content_l2`), so a pipeline with both kinds of list trains one `fm`
/// per kind.
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
    #[default]
    Warp,
    Bpr,
}

impl FmSpec {
    fn params(&self) -> FmParams {
        FmParams {
            factors: self.factors,
            epochs: self.epochs,
            learning_rate: self.learning_rate,
            loss: match self.loss {
                FmLoss::Warp => Loss::Warp,
                FmLoss::Bpr => Loss::Bpr,
            },
            max_sampled: self.max_sampled,
            user_alpha: self.user_alpha,
            item_alpha: self.item_alpha,
            seed: self.seed,
        }
    }

    /// Items × [identity of the items with interactions | content features].
    fn item_features(&self, data: &TrainData) -> Result<Csr, StepError> {
        let m = data.matrix;
        let mut has = vec![false; m.n_cols];
        for &i in &m.indices {
            has[i as usize] = true;
        }
        let content = data.item_features;
        let offset = if self.identity { m.n_cols } else { 0 };
        let n_cols = offset + content.map_or(0, |c| c.n_cols);
        if n_cols == 0 {
            return Err(StepError::Data(
                "fm with `identity = false` needs item features: add a `vectorize` step to `needs`"
                    .into(),
            ));
        }
        let (mut r, mut c, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for (item, &has) in has.iter().enumerate() {
            let start = r.len();
            if self.identity && has {
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
        [
            whole("factors", self.factors, MAX_FACTORS),
            whole("epochs", self.epochs, MAX_EPOCHS),
            whole("max_sampled", self.max_sampled, MAX_SAMPLED),
            between("learning_rate", self.learning_rate, 1e-9, 10.0),
            between("user_alpha", self.user_alpha, 0.0, 1e3),
            between("item_alpha", self.item_alpha, 0.0, 1e3),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn fit(&self, data: &TrainData, stop: &StopFlag) -> Result<Fit, StepError> {
        let m = data.matrix;
        let items = self.item_features(data)?;
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
        let negatives: Vec<u32> = {
            let mut seen = vec![false; m.n_cols];
            m.indices.iter().for_each(|&i| seen[i as usize] = true);
            (0..m.n_cols as u32).filter(|&i| seen[i as usize]).collect()
        };
        let input = FmInput {
            positives: m,
            user_features: &users,
            item_features: &items,
            negatives: &negatives,
        };
        let (model, report) = fm::fit(&input, &self.params(), stop)?;
        if !model.is_finite() {
            return Err(StepError::Data(format!(
                "fm produced non-finite parameters (learning_rate {}): lower `learning_rate`",
                self.learning_rate
            )));
        }
        let cold = m.n_cols - negatives.len();
        Ok(Fit {
            model: Box::new(model),
            report: json!({
                "loss": report.losses,
                "item_features": items.n_cols,
                "items_without_interactions": cold,
            }),
        })
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
