//! What the assignment API serves: the latest allocation of each experiment
//! (an `allocate` step of a loaded pipeline, from its latest successful run),
//! held in memory so that an assignment never touches disk or waits for
//! compute, and the deterministic choice of an arm for a unit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Daemon;
use crate::artifact::allocation::{self, State};
use crate::pipeline::history::RunFilter;
use crate::pipeline::{RunDir, RunRecord, RunStatus, StepStatus};
use crate::steps::StepSpec;
use crate::steps::allocate::AllocateSpec;

/// How long a loaded allocation is served before the history is asked again
/// (in the background: requests keep the one they have meanwhile).
const FRESH: Duration = Duration::from_secs(1);

/// One experiment's allocation as served.
#[derive(Debug, Clone)]
pub struct Served {
    pub experiment: String,
    pub pipeline: String,
    pub run_id: String,
    pub state: State,
    pub winner: Option<String>,
    /// Arms and their weights, in the configured order.
    pub arms: Vec<(String, f64)>,
    /// A hash of the weights: a unit keeps its arm while they do not change.
    pub version: String,
    loaded: Instant,
}

/// The arm a unit gets, and the probability with which it was chosen: what a
/// service logs so that later evaluation of the experiment is unbiased.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Assignment {
    pub arm: String,
    pub probability: f64,
}

impl Served {
    /// The arm of `unit`: a uniform from a hash of the experiment, the weights'
    /// version and the unit, placed on the cumulative weights. The same unit
    /// gets the same arm until the weights change; across units the arms
    /// follow the weights.
    pub fn assign(&self, unit: &str) -> Assignment {
        if let Some(w) = &self.winner {
            return Assignment {
                arm: w.clone(),
                probability: 1.0,
            };
        }
        let digest = Sha256::new()
            .chain_update(self.experiment.as_bytes())
            .chain_update([0])
            .chain_update(self.version.as_bytes())
            .chain_update([0])
            .chain_update(unit.as_bytes())
            .finalize();
        let bits = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
        let u = (bits >> 11) as f64 / (1u64 << 53) as f64;
        let mut cumulative = 0.0;
        let last = self.arms.iter().rposition(|(_, w)| *w > 0.0).unwrap_or(0);
        for (i, (arm, w)) in self.arms.iter().enumerate() {
            cumulative += w;
            if u < cumulative || i == last {
                return Assignment {
                    arm: arm.clone(),
                    probability: *w,
                };
            }
        }
        Assignment {
            arm: self.arms[last].0.clone(),
            probability: self.arms[last].1,
        }
    }
}

/// Why there is no assignment.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no experiment `{0}` in the loaded pipelines")]
    Unknown(String),
    #[error("experiment `{0}` has no published allocation yet (pipeline `{1}` has not succeeded)")]
    NotYet(String, String),
    #[error("experiment `{0}`: {1}")]
    Unreadable(String, String),
}

/// The allocations served, by experiment.
#[derive(Default)]
pub struct Experiments {
    served: Mutex<HashMap<String, Arc<Served>>>,
    refreshing: Mutex<std::collections::HashSet<String>>,
}

impl Daemon {
    /// The allocation of `experiment` to serve. A fresh one comes from memory;
    /// a stale one is served while a background task reloads it; the first is
    /// loaded on a blocking thread.
    pub async fn allocation(self: &Arc<Self>, experiment: &str) -> Result<Arc<Served>, ServeError> {
        let cached = self
            .experiments
            .served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(experiment)
            .cloned();
        if let Some(s) = &cached
            && s.loaded.elapsed() < FRESH
        {
            return Ok(s.clone());
        }
        let d = self.clone();
        let name = experiment.to_string();
        let load = move || {
            let served = d.load_allocation(&name).map(Arc::new);
            let mut cache = d
                .experiments
                .served
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &served {
                Ok(s) => {
                    cache.insert(name.clone(), s.clone());
                }
                // An experiment removed from the pipelines (or whose runs were
                // pruned) stops being served; an unreadable file keeps the last
                // good allocation in service.
                Err(ServeError::Unknown(_) | ServeError::NotYet(..)) => {
                    cache.remove(&name);
                }
                Err(ServeError::Unreadable(..)) => {}
            }
            drop(cache);
            d.experiments
                .refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&name);
            served
        };
        match cached {
            Some(stale) => {
                let first = self
                    .experiments
                    .refreshing
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(experiment.to_string());
                if first {
                    tokio::task::spawn_blocking(load);
                }
                Ok(stale)
            }
            None => tokio::task::spawn_blocking(load)
                .await
                .map_err(|e| ServeError::Unreadable(experiment.into(), e.to_string()))?,
        }
    }

    /// The pipeline and `allocate` step that run `experiment`.
    pub fn find_experiment(&self, experiment: &str) -> Option<(String, String, AllocateSpec)> {
        self.pipelines().values().find_map(|p| {
            p.steps.iter().find_map(|s| match &s.spec {
                StepSpec::Allocate(a) if a.experiment == experiment => {
                    Some((p.name.clone(), s.id.clone(), a.clone()))
                }
                _ => None,
            })
        })
    }

    /// The last `limit` runs of `pipeline` that published `step`'s
    /// allocation, newest first. Published means the whole run succeeded: its
    /// write steps too.
    pub fn published_runs(
        &self,
        pipeline: &str,
        step: &str,
        limit: usize,
    ) -> Result<Vec<RunRecord>, String> {
        let runs = self
            .history
            .runs(&RunFilter {
                pipeline: Some(pipeline.to_string()),
                status: Some(RunStatus::Succeeded),
                limit,
            })
            .map_err(|e| e.to_string())?;
        Ok(runs
            .into_iter()
            .filter(|r| {
                r.steps.iter().any(|s| {
                    s.id == step && matches!(s.status, StepStatus::Succeeded | StepStatus::Reused)
                })
            })
            .collect())
    }

    /// Reads the latest published allocation of `experiment`. Blocking.
    fn load_allocation(&self, experiment: &str) -> Result<Served, ServeError> {
        let (pipeline, step, _) = self
            .find_experiment(experiment)
            .ok_or_else(|| ServeError::Unknown(experiment.into()))?;
        let unreadable = |e: String| ServeError::Unreadable(experiment.into(), e);
        let run = self
            .published_runs(&pipeline, &step, 50)
            .map_err(unreadable)?
            .into_iter()
            .next()
            .ok_or_else(|| ServeError::NotYet(experiment.into(), pipeline.clone()))?;
        let dir = RunDir::new(&self.settings.state_dir, &pipeline, &run.run_id).step_dir(&step);
        let (record, rows) = allocation::read(&dir).map_err(|e| unreadable(e.to_string()))?;
        let arms: Vec<(String, f64)> = rows
            .into_iter()
            .map(|r| (r.id.to_string(), r.weight))
            .collect();
        let total: f64 = arms.iter().map(|a| a.1).sum();
        if arms.is_empty()
            || (total - 1.0).abs() > 1e-9
            || arms.iter().any(|a| a.1.is_nan() || a.1 < 0.0)
        {
            return Err(unreadable(format!(
                "run {}: weights that do not sum to 1",
                run.run_id
            )));
        }
        let mut hash = Sha256::new();
        for (arm, w) in &arms {
            hash.update(arm.as_bytes());
            hash.update(w.to_bits().to_be_bytes());
        }
        let version = hash
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Served {
            experiment: experiment.into(),
            pipeline,
            run_id: run.run_id.clone(),
            state: record.state,
            winner: record.winner,
            arms,
            version,
            loaded: Instant::now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(arms: &[(&str, f64)], winner: Option<&str>) -> Served {
        Served {
            experiment: "e".into(),
            pipeline: "p".into(),
            run_id: "r".into(),
            state: State::Running,
            winner: winner.map(str::to_string),
            arms: arms.iter().map(|(a, w)| (a.to_string(), *w)).collect(),
            version: "v1".into(),
            loaded: Instant::now(),
        }
    }

    #[test]
    fn assignments_follow_the_weights_and_stick() {
        let s = served(&[("a", 0.2), ("b", 0.5), ("c", 0.3)], None);
        let n = 30_000;
        let mut counts = HashMap::new();
        for u in 0..n {
            let a = s.assign(&format!("user-{u}"));
            assert_eq!(a, s.assign(&format!("user-{u}")), "sticky");
            *counts.entry(a.arm).or_insert(0usize) += 1;
        }
        // Pearson's chi-square with 2 degrees of freedom: 13.8 is its 0.1%
        // upper quantile.
        let chi2: f64 = s
            .arms
            .iter()
            .map(|(arm, w)| {
                let expected = w * n as f64;
                (counts[arm] as f64 - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 13.8, "chi-square {chi2}: {counts:?}");
        // A zero weight is never assigned; a winner takes all.
        let s = served(&[("a", 0.0), ("b", 1.0)], None);
        assert!((0..1000).all(|u| s.assign(&u.to_string()).arm == "b"));
        let s = served(&[("a", 0.5), ("b", 0.5)], Some("a"));
        assert_eq!(
            s.assign("x"),
            Assignment {
                arm: "a".into(),
                probability: 1.0
            }
        );
    }
}
