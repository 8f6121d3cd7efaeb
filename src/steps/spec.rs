//! What each step kind does, as a pipeline file writes it: the serde structs of
//! every kind and model, with their defaults, the artifacts each kind reads and
//! leaves, and the bounds that keep a value from exhausting memory or time.
//! `recpipe step <kind>` reads the same structs, so a flag and a key are checked
//! alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::artifact::{ArtifactKind, Role};
use crate::config::Settings;
use crate::config::introspect::fields;
use crate::models::als::{AlsParams, Solver};
use crate::sources::ParamValue;

/// What a step does; the `kind` key picks the variant.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepSpec {
    Extract(ExtractSpec),
    Train(TrainSpec),
    Recommend(RecommendSpec),
    SimilarItems(SimilarItemsSpec),
    MergeFilters(MergeFiltersSpec),
    Evaluate(EvaluateSpec),
    Write(WriteSpec),
}

/// Runs an SQL file against a named source and checks the result against `role`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    pub source: String,
    pub sql: PathBuf,
    pub role: Role,
    /// Bound as query parameters (`$name` in DataFusion SQL), never pasted into text.
    #[serde(default)]
    pub params: BTreeMap<String, ParamValue>,
    /// An empty result is an error for interactions and items unless this is set;
    /// an empty filter list is normal.
    #[serde(default)]
    pub allow_empty: Option<bool>,
}
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

/// Top-N items per user from a trained model.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendSpec {
    #[serde(default = "default_top_n")]
    pub top_n: usize,
    /// Leave out the items each user already interacted with.
    #[serde(default = "yes")]
    pub exclude_seen: bool,
    /// Leave out items scoring below this.
    #[serde(default)]
    pub min_score: Option<f32>,
    /// The step fails when fewer than this share of users get a list, so a
    /// degenerate model never replaces a good list.
    #[serde(default = "default_min_coverage")]
    pub min_coverage: f64,
    /// An empty list is a failure unless this is set.
    #[serde(default)]
    pub allow_empty: bool,
}

/// Top-N similar items per item from a trained model (item→item lists).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarItemsSpec {
    #[serde(default = "default_top_n")]
    pub top_n: usize,
    #[serde(default)]
    pub min_score: Option<f32>,
    /// As for `recommend`, the share of items that must get a list.
    #[serde(default = "default_min_coverage")]
    pub min_coverage: f64,
    #[serde(default)]
    pub allow_empty: bool,
}

fn default_min_coverage() -> f64 {
    0.5
}

fn default_top_n() -> usize {
    10
}

fn yes() -> bool {
    true
}

/// Merges filter lists into one filter artifact: every `filter` input is a deny
/// list (items, or user–item pairs where `user_id` is set) unless named in `allow`;
/// `groups` caps how many items of one group (company, category …) a list holds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MergeFiltersSpec {
    /// Inputs that are allow lists: only their items may be recommended.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub groups: Option<GroupsSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsSpec {
    /// The input (an `items` or `filter` extract) that maps `item_id` to a group.
    pub from: String,
    /// Its column holding the group.
    pub column: String,
    /// At most this many items of one group per list.
    pub cap: usize,
}

/// Holds out part of the interactions, fits `model` (any train model, with its
/// keys) and the popularity baseline on the rest, and records precision, recall,
/// nDCG, MAP and coverage at `k` of both in the run manifest.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// `random` cells, or each user's latest (`time`, by `ts`).
    #[serde(default)]
    pub split: SplitKind,
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    #[serde(default = "default_top_n")]
    pub k: usize,
    #[serde(default)]
    pub seed: u64,
    /// Set from the step's `model` key and that model's keys.
    #[serde(skip_deserializing, default = "default_model")]
    pub model: TrainSpec,
}

fn default_test_fraction() -> f64 {
    0.2
}

fn default_model() -> TrainSpec {
    TrainSpec::Popular(PopularSpec::default())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    #[default]
    Random,
    Time,
}

/// Publishes a list to a named sink as `table`, atomically; or several lists
/// together, `tables = { <need> = "<table>", … }`, switched as one where the
/// sink can (PostgreSQL: one transaction).
///
/// Keys absent from a file are not serialized, so adding them did not change the
/// fingerprint (`spec_hash`) of existing write steps.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WriteSpec {
    pub sink: String,
    /// The table of the step's one list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The table of each list, by the step (in `needs`) that makes it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, String>,
    /// Publish an empty list too; by default an empty list fails the step and
    /// the previous list stays current.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_empty: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl WriteSpec {
    /// `(list step, table)` for each list this step publishes; `list_steps` are
    /// the steps among its needs that make a list (for the `table` form, the one).
    pub fn targets<'a>(&'a self, list_steps: &[&'a str]) -> Vec<(&'a str, &'a str)> {
        match &self.table {
            Some(table) => list_steps.iter().map(|s| (*s, table.as_str())).collect(),
            None => self
                .tables
                .iter()
                .map(|(s, t)| (s.as_str(), t.as_str()))
                .collect(),
        }
    }

    /// The tables this step publishes, in the order they are published.
    pub fn table_names(&self) -> Vec<&str> {
        match &self.table {
            Some(table) => vec![table.as_str()],
            None => self.tables.values().map(String::as_str).collect(),
        }
    }
}

impl StepSpec {
    pub const KINDS: &[&str] = &[
        "extract",
        "train",
        "recommend",
        "similar_items",
        "merge_filters",
        "evaluate",
        "write",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            StepSpec::Extract(_) => "extract",
            StepSpec::Train(_) => "train",
            StepSpec::Recommend(_) => "recommend",
            StepSpec::SimilarItems(_) => "similar_items",
            StepSpec::MergeFilters(_) => "merge_filters",
            StepSpec::Evaluate(_) => "evaluate",
            StepSpec::Write(_) => "write",
        }
    }

    pub fn output(&self) -> ArtifactKind {
        match self {
            StepSpec::Extract(e) => match e.role {
                Role::Interactions => ArtifactKind::Interactions,
                Role::Items => ArtifactKind::Items,
                Role::Filter => ArtifactKind::Filter,
            },
            StepSpec::Train(_) => ArtifactKind::Model,
            StepSpec::Recommend(_) => ArtifactKind::UserRecs,
            StepSpec::SimilarItems(_) => ArtifactKind::ItemRecs,
            StepSpec::MergeFilters(_) => ArtifactKind::Filter,
            StepSpec::Evaluate(_) => ArtifactKind::Metrics,
            StepSpec::Write(_) => ArtifactKind::Published,
        }
    }

    /// How many artifacts of each kind the step reads from its `needs`:
    /// `(kind, min, max)`; `None` means any needs are only for ordering.
    pub fn inputs(&self) -> Option<&'static [(ArtifactKind, usize, usize)]> {
        use ArtifactKind::*;
        match self {
            StepSpec::Extract(_) => None,
            StepSpec::Train(_) => Some(&[(Interactions, 1, 1)]),
            StepSpec::Recommend(_) => {
                Some(&[(Model, 1, 1), (Interactions, 0, 1), (Filter, 0, usize::MAX)])
            }
            StepSpec::SimilarItems(_) => Some(&[(Model, 1, 1), (Filter, 0, usize::MAX)]),
            StepSpec::MergeFilters(_) => Some(&[(Filter, 0, usize::MAX), (Items, 0, 1)]),
            StepSpec::Evaluate(_) => Some(&[(Interactions, 1, 1)]),
            // One list: user→item or item→item (checked in `input_problems`).
            StepSpec::Write(_) => Some(&[(UserRecs, 0, 1), (ItemRecs, 0, 1)]),
        }
    }

    /// The kind-specific keys of `kind`, or `None` for an unknown kind.
    pub fn fields_of(kind: &str) -> Option<&'static [&'static str]> {
        match kind {
            "extract" => Some(fields::<ExtractSpec>()),
            "train" => Some(&["model"]),
            "recommend" => Some(fields::<RecommendSpec>()),
            "similar_items" => Some(fields::<SimilarItemsSpec>()),
            "merge_filters" => Some(fields::<MergeFiltersSpec>()),
            "evaluate" => Some(EVALUATE_KEYS),
            "write" => Some(fields::<WriteSpec>()),
            _ => None,
        }
    }
}

/// The evaluate step's own keys; its model's keys are added like a train step's.
pub const EVALUATE_KEYS: &[&str] = &["split", "test_fraction", "k", "seed", "model"];
/// The largest model values the bounds below accept. They are far above any
/// useful setting; what they keep out are values that would exhaust memory or
/// time.
pub const MAX_FACTORS: usize = 1024;
pub const MAX_ITERATIONS: usize = 1000;
pub const MAX_CG_STEPS: usize = 100;
pub const MAX_NEIGHBORS: usize = 10_000;

/// The longest list a list step makes.
pub const MAX_TOP_N: usize = 10_000;
/// The deepest cut-off an evaluation scores.
pub const MAX_K: usize = 1000;

/// Bounds of a list step's `top_n`, `min_score` and `min_coverage` (pipeline
/// files and `recpipe step recommend|similar-items` check the same).
pub fn list_problems(
    top_n: usize,
    min_score: Option<f32>,
    min_coverage: f64,
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if !(1..=MAX_TOP_N).contains(&top_n) {
        problems.push((
            "top_n",
            format!("must be between 1 and {MAX_TOP_N}, not {top_n}"),
        ));
    }
    if let Some(m) = min_score.filter(|m| !m.is_finite()) {
        problems.push(("min_score", format!("must be a finite number, not {m}")));
    }
    if !(0.0..=1.0).contains(&min_coverage) {
        problems.push((
            "min_coverage",
            format!("must be between 0 and 1, not {min_coverage}"),
        ));
    }
    problems
}

/// Bounds of an evaluation's own keys and of its model's.
pub fn evaluate_problems(spec: &EvaluateSpec) -> Vec<(&'static str, String)> {
    let mut problems = model_problems(&spec.model);
    if !(spec.test_fraction > 0.0 && spec.test_fraction < 1.0) {
        problems.push((
            "test_fraction",
            format!(
                "must be between 0 and 1 (exclusive), not {}",
                spec.test_fraction
            ),
        ));
    }
    if !(1..=MAX_K).contains(&spec.k) {
        problems.push((
            "k",
            format!("must be between 1 and {MAX_K}, not {}", spec.k),
        ));
    }
    problems
}

/// `(key, message)` for every model parameter outside the range the model can
/// run with: each would panic, exhaust memory, run for days or give NaN factors.
pub fn model_problems(spec: &TrainSpec) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let mut whole = |key, value: usize, max: usize| {
        if !(1..=max).contains(&value) {
            problems.push((key, format!("must be between 1 and {max}, not {value}")));
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
                    problems.push((key, format!("must be between 0 and 1000000, not {value}")));
                }
            }
            if let Some(eps) = a.log_epsilon
                && !(eps.is_finite() && eps > 0.0)
            {
                problems.push((
                    "log_epsilon",
                    format!("must be a finite number above 0, not {eps}"),
                ));
            }
        }
        TrainSpec::ItemItem(i) => {
            whole("neighbors", i.neighbors, MAX_NEIGHBORS);
            if !(i.bm25_k1.is_finite() && (0.0..=100.0).contains(&i.bm25_k1)) {
                problems.push((
                    "bm25_k1",
                    format!("must be between 0 and 100, not {}", i.bm25_k1),
                ));
            }
            if !(0.0..=1.0).contains(&i.bm25_b) {
                problems.push((
                    "bm25_b",
                    format!("must be between 0 and 1, not {}", i.bm25_b),
                ));
            }
        }
    }
    problems
}

/// The SQL file of an extract, inside the project dir: a pipeline may name only
/// files of its own project (`../../etc/passwd` or `/etc/passwd` would let a
/// pipeline file read, and echo, anything the process can read).
pub fn sql_path(settings: &Settings, sql: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let outside = || {
        format!(
            "`{}` is outside the project dir {}; name an SQL file inside it, relative to it (e.g. `sql/ratings.sql`)",
            sql.display(),
            settings.project_dir.display()
        )
    };
    let mut depth = 0usize;
    for part in sql.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside());
            }
        }
    }
    let path = settings.resolve(sql);
    // A symlink inside the project may still point out of it.
    if let (Ok(real), Ok(root)) = (
        std::fs::canonicalize(&path),
        std::fs::canonicalize(&settings.project_dir),
    ) && !real.starts_with(&root)
    {
        return Err(outside());
    }
    Ok(path)
}
