//! `similar_items`: the most similar items of every item (item→item lists) from a
//! model artifact, filtered items removed. The lists follow `item_id,
//! similar_item_id, rank, score, run_id, generated_at`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kind::{CheckContext, Inputs, Problem, StepKind};
use super::recommend::{
    Candidates, ListArgs, RecommendJob, default_min_coverage, default_top_n, list_output,
    list_problems, one, shard_problem, write_lists,
};
use super::{StepContext, StepError, StepOutput, StepResult, StepRun, model};
use crate::artifact::ArtifactKind;
use crate::artifact::filters;
use crate::artifact::lists::ITEM_LIST;
use crate::models::StopFlag;
use crate::topn::Selection;

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
    /// As for `recommend`: parts run by their own processes.
    #[serde(default = "one")]
    pub shards: usize,
}

impl StepKind for SimilarItemsSpec {
    const NAME: &'static str = "similar_items";
    const INPUTS: Inputs = Some(&[
        (ArtifactKind::Model, 1, 1),
        (ArtifactKind::Filter, 0, usize::MAX),
    ]);
    type Args = ListArgs;

    fn output(&self) -> ArtifactKind {
        ArtifactKind::ItemRecs
    }

    fn check(&self, _: &CheckContext) -> Vec<Problem> {
        let mut problems = list_problems(self.top_n, self.min_score, self.min_coverage);
        problems.extend(shard_problem(self.shards));
        problems
    }

    fn describe(&self) -> String {
        format!("top {} similar items per item", self.top_n)
    }

    fn shards(&self) -> usize {
        self.shards
    }

    async fn run(&self, step: &StepRun<'_>) -> StepResult {
        let job = RecommendJob::of_step(
            step,
            self.top_n,
            self.min_score,
            self.min_coverage,
            self.allow_empty,
        )?;
        let out = list_output(step);
        step.cx.compute(move |stop| similar(&job, &out, stop)).await
    }

    async fn run_alone(a: ListArgs, _project_dir: &Path, cx: &StepContext) -> StepResult {
        let (job, out) = RecommendJob::of_args(a)?;
        cx.compute(move |stop| similar(&job, &out, stop)).await
    }
}

/// Item→item lists: the most similar items of every item, itself excluded and
/// filtered items (their `item_id` rows; pair rows do not apply) removed.
pub fn similar(
    job: &RecommendJob,
    output: &Path,
    stop: &StopFlag,
) -> Result<StepOutput, StepError> {
    if job.candidates != Candidates::All {
        return Err(StepError::Data(
            "--candidates is for `recommend`; restrict similar items with an allow list".into(),
        ));
    }
    let loaded = model::load(&job.model_dir)?;
    let similarity = loaded.fitted.similarity().ok_or_else(|| {
        StepError::Data(format!(
            "model `{}` has no item similarity; train `als`, `item_item`, `rp3beta`, `fm` or `content` for similar items",
            loaded.meta.model
        ))
    })?;
    let filters = filters::load(&job.filters, &loaded.users, &loaded.items)?;
    let selection = Selection {
        k: job.top_n,
        blocked_items: &filters.blocked_items,
        exclude_self: true,
        min_score: job.min_score,
        groups: filters.groups.as_ref(),
        ..Selection::default()
    };
    let lists = (&ITEM_LIST, &loaded.items, &loaded.items);
    let written = write_lists(job, similarity.as_ref(), lists, &selection, output, stop)?;
    Ok(StepOutput {
        rows: written.rows,
        details: json!({
            "items": loaded.items.len(),
            "items_covered": written.covered,
            "top_n": job.top_n,
            "denied_items": filters.blocked_items.len(),
            "filters": filters.provenance,
        }),
        files: vec![written.file],
    })
}
