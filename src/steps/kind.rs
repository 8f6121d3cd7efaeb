//! What a step kind is: the [`StepKind`] trait each kind's module implements,
//! and the `step_kinds!` macro that turns the one list of kinds in
//! `steps/mod.rs` into the pipeline's [`StepSpec`](super::StepSpec) and the
//! `recpipe step` subcommands. Loading, validation, planning, runs and the CLI
//! all go through these, so a kind is one file plus one line in that list.

use std::future::Future;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::ModelSpec;
pub use super::spec::{Problem, ReadTable};
use super::{StepContext, StepError, StepResult, StepRun};
use crate::artifact::ArtifactKind;
use crate::config::Settings;
use crate::config::introspect::fields;
use crate::sources::ParamValue;

/// One step kind. The spec type is what a pipeline file's `[steps.<id>]` table
/// deserializes into; the other items say how the kind fits in a pipeline and how
/// it runs there and alone.
pub trait StepKind: Sized + Clone + Serialize + DeserializeOwned {
    /// The `kind` key's value.
    const NAME: &'static str;
    /// The artifacts it reads from its `needs`.
    const INPUTS: Inputs;
    /// `recpipe step <kind>`'s arguments.
    type Args: clap::Args;

    /// The keys of its table besides `kind` and the common ones. A kind whose
    /// keys include `model` also takes that model's keys.
    fn keys() -> &'static [&'static str] {
        fields::<Self>()
    }

    /// The spec from its table.
    fn read(table: &mut impl SpecReader) -> Option<Self> {
        table.own()
    }

    /// The artifact it leaves.
    fn output(&self) -> ArtifactKind;

    /// What is wrong with its values in this project: bounds, unknown names,
    /// missing files. Each problem is refused at validation with file:line.
    fn check(&self, _cx: &CheckContext) -> Vec<Problem> {
        Vec::new()
    }

    /// What is wrong with what its needs give (`(step, artifact)`), where
    /// [`Self::INPUTS`]'s counts do not say it all.
    fn input_problems(&self, _given: &[(&str, ArtifactKind)]) -> Option<Vec<String>> {
        None
    }

    /// The tables it publishes to, for the check that no two steps publish one.
    fn publishes(&self) -> Vec<Target<'_>> {
        Vec::new()
    }

    /// Files outside the run whose content is part of its fingerprint.
    fn hashed_files(&self) -> Vec<&Path> {
        Vec::new()
    }

    /// One line for `recpipe plan`.
    fn describe(&self) -> String;

    /// How many parts it may be split into (`shards`), each run by its own
    /// process; 1 for kinds that cannot be split.
    fn shards(&self) -> usize {
        1
    }

    /// Runs it in a pipeline: reads its inputs, writes its artifact.
    fn run(&self, step: &StepRun<'_>) -> impl Future<Output = StepResult> + Send;

    /// Runs it alone from `recpipe step <kind>`'s arguments, file in, file out;
    /// `project_dir` holds the settings of the sources and sinks it may name.
    fn run_alone(
        args: Self::Args,
        project_dir: &Path,
        cx: &StepContext,
    ) -> impl Future<Output = StepResult> + Send;
}

/// The artifacts a kind reads from its `needs`, as `(kind, min, max)`; `None`
/// means its needs only order it.
pub type Inputs = Option<&'static [(ArtifactKind, usize, usize)]>;

/// The inputs of the kinds that fit on the interactions (train, evaluate).
pub const ON_INTERACTIONS: Inputs = Some(&[(ArtifactKind::Interactions, 1, 1)]);

/// A step's table as the pipeline loader hands it to [`StepKind::read`]; the
/// loader keeps the spans, so an error still points at its line.
pub trait SpecReader: ReadTable {
    /// The model the table names with `model`, from that model's keys.
    fn model(&mut self) -> Option<ModelSpec>;
}

/// What a kind's checks may look at besides its spec.
pub struct CheckContext<'a> {
    pub settings: &'a Settings,
    /// The step's `needs`.
    pub needs: &'a [String],
    /// The kind of each step among `needs`.
    pub need_kinds: &'a std::collections::BTreeMap<&'a str, &'static str>,
}

/// A table a step publishes; `key` is the step key that names it.
pub struct Target<'a> {
    pub key: &'static str,
    pub sink: &'a str,
    pub table: &'a str,
}

/// Every problem at once as one invalid-input error, each key named by its
/// command-line flag (`top_n` is `--top-n`).
pub fn refuse_flags(problems: Vec<Problem>) -> Result<(), StepError> {
    refuse(problems, |key| format!("--{}", key.replace('_', "-")))
}

/// Every problem at once as one invalid-input error; `flag` names the argument
/// of a key.
pub fn refuse(problems: Vec<Problem>, flag: impl Fn(&str) -> String) -> Result<(), StepError> {
    let lines: Vec<String> = problems
        .into_iter()
        .map(|p| format!("{}: {}", flag(&p.key), p.message))
        .collect();
    match lines.is_empty() {
        true => Ok(()),
        false => Err(StepError::Data(lines.join("\n"))),
    }
}

/// The settings of the project a `recpipe step` command runs in, for the
/// commands that name a source or a sink.
pub fn settings_of(project_dir: &Path) -> Result<Settings, StepError> {
    Settings::load(project_dir).map_err(|e| StepError::Data(e.to_string()))
}

/// The output folder of a command that writes a folder (a model, filters, metrics).
pub fn create_output(dir: &Path) -> Result<(), StepError> {
    std::fs::create_dir_all(dir)
        .map_err(crate::artifact::ArtifactError::io(dir))
        .map_err(StepError::from)
}

/// `key=value` command-line arguments.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not `key=value`"))
}

/// Command-line params are text unless they read as a number or boolean.
pub fn typed_param(v: &str) -> ParamValue {
    if let Ok(i) = v.parse::<i64>() {
        ParamValue::Int(i)
    } else if let Ok(f) = v.parse::<f64>() {
        ParamValue::Float(f)
    } else if let Ok(b) = v.parse::<bool>() {
        ParamValue::Bool(b)
    } else {
        ParamValue::Text(v.to_string())
    }
}

/// `s` as a TOML string literal.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Declares the step kinds, each as `Variant(SpecType)` with the doc line of its
/// `recpipe step` subcommand, and generates [`StepSpec`](super::StepSpec),
/// [`StepCommand`](super::StepCommand) and their dispatch.
macro_rules! step_kinds {
    ($( $(#[$about:meta])* $variant:ident($spec:ty), )*) => {
        /// What a step does; the `kind` key picks the variant.
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum StepSpec {
            $($variant($spec),)*
        }

        /// `recpipe step <kind>`: one kind alone, file in, file out.
        #[derive(clap::Subcommand)]
        pub enum StepCommand {
            $($(#[$about])* $variant(<$spec as StepKind>::Args),)*
        }

        impl StepSpec {
            /// Every kind's name, in the order of the list.
            pub const KINDS: &[&str] = &[$(<$spec as StepKind>::NAME,)*];

            /// The keys of `kind`'s table, or `None` for an unknown kind.
            pub fn keys_of(kind: &str) -> Option<&'static [&'static str]> {
                $(if kind == <$spec as StepKind>::NAME {
                    return Some(<$spec as StepKind>::keys());
                })*
                None
            }

            /// The spec of a `kind` step from its table.
            pub fn read(kind: &str, table: &mut impl SpecReader) -> Option<Self> {
                $(if kind == <$spec as StepKind>::NAME {
                    return <$spec as StepKind>::read(table).map(StepSpec::$variant);
                })*
                None
            }

            pub fn kind(&self) -> &'static str {
                match self { $(StepSpec::$variant(_) => <$spec as StepKind>::NAME,)* }
            }

            pub fn inputs(&self) -> Inputs {
                match self { $(StepSpec::$variant(_) => <$spec as StepKind>::INPUTS,)* }
            }

            pub fn output(&self) -> ArtifactKind {
                match self { $(StepSpec::$variant(s) => s.output(),)* }
            }

            pub fn check(&self, cx: &CheckContext) -> Vec<Problem> {
                match self { $(StepSpec::$variant(s) => s.check(cx),)* }
            }

            pub fn input_problems(&self, given: &[(&str, ArtifactKind)]) -> Option<Vec<String>> {
                match self { $(StepSpec::$variant(s) => s.input_problems(given),)* }
            }

            pub fn publishes(&self) -> Vec<Target<'_>> {
                match self { $(StepSpec::$variant(s) => s.publishes(),)* }
            }

            pub fn hashed_files(&self) -> Vec<&Path> {
                match self { $(StepSpec::$variant(s) => s.hashed_files(),)* }
            }

            pub fn describe(&self) -> String {
                match self { $(StepSpec::$variant(s) => s.describe(),)* }
            }

            pub fn shards(&self) -> usize {
                match self { $(StepSpec::$variant(s) => s.shards(),)* }
            }

            /// Runs the step: reads `inputs`, writes its artifact into `out_dir`.
            pub async fn run(
                &self,
                inputs: &[Input],
                out_dir: &Path,
                cx: &StepContext,
                resources: &Resources,
            ) -> StepResult {
                let step = StepRun { inputs, out_dir, cx, resources };
                match self { $(StepSpec::$variant(s) => s.run(&step).await,)* }
            }
        }

        impl StepCommand {
            /// The kind's name, as the command line writes it (`similar-items`).
            pub fn name(&self) -> String {
                let kind = match self { $(StepCommand::$variant(_) => <$spec as StepKind>::NAME,)* };
                kind.replace('_', "-")
            }

            /// Runs the kind alone from its arguments.
            pub async fn run(self, project_dir: &Path, cx: &StepContext) -> StepResult {
                match self { $(StepCommand::$variant(a) => <$spec as StepKind>::run_alone(a, project_dir, cx).await,)* }
            }
        }
    };
}
pub(crate) use step_kinds;
