//! Recommendation models: pure compute on CSR and dense arrays.
//!
//! Nothing here touches files, tokio or config. Long loops check a [`StopFlag`] so
//! a cancelled or timed-out run stops within one iteration.

pub mod als;
pub mod content;
pub mod csr;
pub mod dense;
pub mod ease;
pub mod fm;
pub mod ids;
pub mod item_item;
pub mod popular;
pub mod rp3beta;
pub mod similarity;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use csr::Csr;
pub use ids::IdMap;

/// Shared cancellation flag, set by the executor and polled by compute loops. A
/// child flag (one step of a run, one attempt of a step) is stopped by itself or
/// by any of its ancestors (the step, the run), however deep the chain.
#[derive(Debug, Clone, Default)]
pub struct StopFlag {
    own: Arc<AtomicBool>,
    ancestors: Arc<[Arc<AtomicBool>]>,
}

impl StopFlag {
    pub fn stop(&self) {
        self.own.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.own.load(Ordering::Relaxed) || self.ancestors.iter().any(|a| a.load(Ordering::Relaxed))
    }

    /// `Err(Stopped)` once stopped: for `?` between the phases of a job.
    pub fn check(&self) -> Result<(), Stopped> {
        match self.is_stopped() {
            true => Err(Stopped),
            false => Ok(()),
        }
    }

    /// A flag that stops with this one but can also be stopped alone.
    pub fn child(&self) -> StopFlag {
        let mut ancestors = self.ancestors.to_vec();
        ancestors.push(self.own.clone());
        StopFlag {
            own: Arc::new(AtomicBool::new(false)),
            ancestors: ancestors.into(),
        }
    }
}

/// Returned by compute that saw its [`StopFlag`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped: the run was cancelled or timed out")]
pub struct Stopped;

/// Scores items for a block of query rows: users for a recommender, items for a
/// similarity.
pub trait Recommender: Sync {
    fn n_items(&self) -> usize;

    /// Writes the scores of items `items` (a range of item indices) for each of
    /// `rows` into `out`, row-major (`out.len() == rows.len() * items.len()`);
    /// higher is better, −∞ means "never recommend".
    fn score_block(&self, rows: &[u32], items: std::ops::Range<usize>, out: &mut [f32]);

    /// How many items to score per call: dense models gain from tiles that keep
    /// the scores in cache; sparse ones would redo their work per tile.
    fn item_tile(&self) -> usize {
        usize::MAX
    }

    /// `Some((v, dim))` when the score of row `i` for item `j` is `v_i · v_j` over
    /// row-major vectors `v` (items × dim): lists for all items then need only
    /// the products on and above the diagonal.
    fn symmetric_vectors(&self) -> Option<(&[f32], usize)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_stops_with_parent_not_the_reverse() {
        let run = StopFlag::default();
        let a = run.child();
        let b = run.child();
        a.stop();
        assert!(a.is_stopped() && !b.is_stopped() && !run.is_stopped());
        run.stop();
        assert!(b.is_stopped());
    }

    #[test]
    fn a_grandchild_stops_with_the_run() {
        // The executor gives each step a child of the run, and each attempt a
        // child of the step: cancelling the run must reach the attempt.
        let run = StopFlag::default();
        let attempt = run.child().child();
        assert!(!attempt.is_stopped());
        run.stop();
        assert!(attempt.is_stopped());
    }
}
