//! The models a train or evaluate step can name, each one module here with its
//! keys and defaults, bounds, fit and artifact columns, listed once in
//! `model_kinds!` below; the compute itself is in `crate::models`.
//!
//! The artifact format is in [`crate::artifact::model`].

pub mod als;
pub mod content;
pub mod ease;
pub mod fm;
pub mod item_item;
pub mod popular;
pub mod rp3beta;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StepError;
use super::spec::{Problem, ReadTable};
use crate::artifact::FileEntry;
use crate::artifact::model::{self, Columns, ModelFiles, ModelMeta};
use crate::config::introspect::fields;
use crate::models::{Csr, IdMap, Recommender, StopFlag};

/// One model: its spec is what a pipeline file's model keys deserialize into.
pub trait ModelKind: Sized + Clone + Serialize + DeserializeOwned {
    /// The `model` key's value.
    const NAME: &'static str;

    /// Every value outside the range the model can run with (it would panic,
    /// exhaust memory, run for days or give NaN), by key.
    fn problems(&self) -> Vec<Problem> {
        Vec::new()
    }

    /// Whether it learns from item features (a `vectorize` step among its needs).
    const ITEM_FEATURES: FeatureUse = FeatureUse::No;

    /// Fits the model; the report (training facts) goes into the step's
    /// manifest. Blocking and CPU-heavy: runs on the compute pool.
    fn fit(&self, data: &TrainData, stop: &StopFlag) -> Result<Fit, StepError>;

    /// Reads the fitted model back from its artifact.
    fn load(artifact: &ModelFiles) -> Result<Fitted, StepError>;
}

/// How a model uses item features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureUse {
    No,
    Optional,
    Required,
}

/// What a model is fitted on.
pub struct TrainData<'a> {
    /// Users × items.
    pub matrix: &'a Csr,
    /// Items × features in the matrix's item indices, when the step has them;
    /// the items include those with features but no interactions.
    pub item_features: Option<&'a Csr>,
}

/// A fitted model and the facts of its training.
pub struct Fit {
    pub model: Fitted,
    pub report: serde_json::Value,
}

/// A fitted model of any kind.
pub type Fitted = Box<dyn Trained>;

/// What a fitted model offers besides scoring users.
pub trait Trained: Recommender + Send {
    /// Item→item similarity, for models that have one.
    fn similarity(&self) -> Option<Box<dyn Recommender + '_>> {
        None
    }

    /// What the artifact stores of it beside the ids.
    fn columns(&self) -> Result<Columns, StepError>;
}

/// Declares the models, each as `Variant(SpecType)`, and generates [`ModelSpec`]
/// and its dispatch.
macro_rules! model_kinds {
    ($($variant:ident($spec:ty),)*) => {
        /// Which model a step fits; the `model` key picks the variant.
        #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
        #[serde(tag = "model", rename_all = "snake_case")]
        pub enum ModelSpec {
            $($variant($spec),)*
        }

        impl ModelSpec {
            /// Every model's name, in the order of the list.
            pub const MODELS: &[&str] = &[$(<$spec as ModelKind>::NAME,)*];

            /// The keys of `model`, or `None` for an unknown model.
            pub fn keys_of(model: &str) -> Option<&'static [&'static str]> {
                $(if model == <$spec as ModelKind>::NAME {
                    return Some(fields::<$spec>());
                })*
                None
            }

            /// The spec of a `model` from its keys.
            pub fn read(model: &str, table: &mut impl ReadTable) -> Option<Self> {
                $(if model == <$spec as ModelKind>::NAME {
                    return table.own::<$spec>().map(ModelSpec::$variant);
                })*
                None
            }

            pub fn model(&self) -> &'static str {
                match self { $(ModelSpec::$variant(_) => <$spec as ModelKind>::NAME,)* }
            }

            pub fn problems(&self) -> Vec<Problem> {
                match self { $(ModelSpec::$variant(s) => s.problems(),)* }
            }

            pub fn fit(&self, data: &TrainData, stop: &StopFlag) -> Result<Fit, StepError> {
                match self { $(ModelSpec::$variant(s) => s.fit(data, stop),)* }
            }

            pub fn item_features(&self) -> FeatureUse {
                match self { $(ModelSpec::$variant(_) => <$spec as ModelKind>::ITEM_FEATURES,)* }
            }

            fn load(artifact: &ModelFiles) -> Result<Fitted, StepError> {
                let name = artifact.meta.model.as_str();
                $(if name == <$spec as ModelKind>::NAME {
                    return <$spec as ModelKind>::load(artifact);
                })*
                Err(StepError::Data(format!(
                    "{}: unknown model `{name}`",
                    artifact.dir.display()
                )))
            }
        }
    };
}

model_kinds! {
    Popular(popular::PopularSpec),
    Als(als::AlsSpec),
    ItemItem(item_item::ItemItemSpec),
    Rp3beta(rp3beta::Rp3BetaSpec),
    Ease(ease::EaseSpec),
    Fm(fm::FmSpec),
    Content(content::ContentSpec),
}

/// A model read back from its artifact.
pub struct LoadedModel {
    pub meta: ModelMeta,
    pub users: IdMap,
    pub items: IdMap,
    pub fitted: Fitted,
}

/// Writes a fitted model and its id maps.
pub fn save(
    dir: &Path,
    meta: &ModelMeta,
    users: &IdMap,
    items: &IdMap,
    fitted: &dyn Trained,
) -> Result<Vec<FileEntry>, StepError> {
    Ok(model::write(dir, meta, users, items, fitted.columns()?)?)
}

/// Reads a model artifact written by `train`.
pub fn load(dir: &Path) -> Result<LoadedModel, StepError> {
    let files = model::read(dir)?;
    let fitted = ModelSpec::load(&files)?;
    Ok(LoadedModel {
        meta: files.meta,
        users: files.users,
        items: files.items,
        fitted,
    })
}
