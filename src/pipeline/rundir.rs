//! The run directory `<state_dir>/runs/<pipeline>/<run_id>/`: one folder per step
//! holding its artifact files and `manifest.json`, plus `run.json` for the run.
//!
//! Invariant: a step is done exactly when its `manifest.json` exists. The manifest
//! is written last, atomically, after every file it lists is complete; a folder
//! without one is debris of an interrupted attempt and is cleared before a retry.

pub use crate::config::diagnostic::is_valid_run_id;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::artifact::ArtifactKind;
use crate::artifact::lists::Shard;
use crate::artifact::{self, ArtifactError, FileEntry};
use crate::steps::ErrorClass;

pub const MANIFEST: &str = "manifest.json";
pub const RUN_RECORD: &str = "run.json";
/// One line per step event, for the API's and UI's log tail.
pub const EVENT_LOG: &str = "events.log";

/// The file name of a step's manifest in its folder; a part's sits beside its
/// file (`part-….parquet`, `part-….json`).
pub fn manifest_name(shard: Option<Shard>) -> String {
    match shard {
        Some(s) => format!("{}.json", s.stem()),
        None => MANIFEST.to_string(),
    }
}

/// Everything known about a finished step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepManifest {
    pub step: String,
    pub kind: String,
    pub output: ArtifactKind,
    /// Hash of the step's definition (and SQL text); a different hash means the
    /// step changed since it ran and is not reused on resume.
    pub spec_hash: String,
    pub inputs: Vec<InputRef>,
    pub files: Vec<FileEntry>,
    pub rows: u64,
    pub attempts: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    pub step: String,
    pub kind: ArtifactKind,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Not started: the previous run was still going (`concurrency = "forbid"`).
    Skipped,
    /// Found running at startup: the process stopped under it.
    Interrupted,
}

impl RunStatus {
    /// The lowercase name used in the API, the history and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
            Self::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Ran in this invocation and succeeded.
    Succeeded,
    /// Done by an earlier invocation of the same run id; its artifact was reused.
    Reused,
    Failed,
    /// Not run because a step it needs failed or the run was cancelled.
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Reused => "reused",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub kind: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub duration_ms: u64,
    pub rows: u64,
    pub error: Option<String>,
    /// What kind of failure `error` is; it decides the exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
}

/// `run.json`: the outcome of one invocation of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub pipeline: String,
    pub run_id: String,
    pub logical_date: DateTime<Utc>,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepRecord>,
    /// Why the run ended as it did when its steps do not say it: interrupted by
    /// a shutdown, given up after crashes, waiting for its pipeline to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many times the process died while this run was in progress; the
    /// daemon stops resuming a run that has taken it down twice.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crashes: u32,
}

impl RunRecord {
    /// A run of `pipeline` that started at `started_at` and is running.
    pub fn started(
        pipeline: &str,
        run_id: &str,
        logical_date: DateTime<Utc>,
        started_at: DateTime<Utc>,
    ) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            run_id: run_id.to_string(),
            logical_date,
            status: RunStatus::Running,
            started_at,
            finished_at: None,
            steps: Vec::new(),
            reason: None,
            crashes: 0,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The advisory lock of a run directory: one process at a time runs a run.
pub const LOCK_FILE: &str = ".lock";

/// Holds a run directory's lock; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: fs::File,
}

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(state_dir: &Path, pipeline: &str, run_id: &str) -> Self {
        Self {
            root: state_dir.join("runs").join(pipeline).join(run_id),
        }
    }

    pub fn step_dir(&self, step: &str) -> PathBuf {
        self.root.join(step)
    }

    /// The manifest of a finished step; `None` if the step has not finished (or
    /// its manifest is unreadable, which is treated the same: run it again).
    pub fn manifest(&self, step: &str) -> Option<StepManifest> {
        artifact::read_json(&self.step_dir(step).join(MANIFEST)).ok()
    }

    /// Writes a finished step's manifest, or a finished part's beside its file.
    pub fn write_manifest(
        &self,
        manifest: &StepManifest,
        shard: Option<Shard>,
    ) -> Result<(), ArtifactError> {
        let path = self.step_dir(&manifest.step).join(manifest_name(shard));
        artifact::write_json(&path, manifest).map(|_| ())
    }

    /// The manifest of one finished part of a split step.
    pub fn shard_manifest(&self, step: &str, shard: Shard) -> Option<StepManifest> {
        artifact::read_json(&self.shard_manifest_path(step, shard)).ok()
    }

    fn shard_manifest_path(&self, step: &str, shard: Shard) -> PathBuf {
        self.step_dir(step).join(manifest_name(Some(shard)))
    }

    /// What a step that needs `step` reads: its manifest, or, for a step split
    /// into `shards` parts, the parts' manifests taken together once every part
    /// has finished with one definition (rows summed, times spanning them all).
    pub fn finished(&self, step: &str, shards: usize) -> Option<StepManifest> {
        if let Some(m) = self.manifest(step) {
            return Some(m);
        }
        if shards < 2 {
            return None;
        }
        let parts: Option<Vec<StepManifest>> = (0..shards)
            .map(|index| {
                self.shard_manifest(
                    step,
                    Shard {
                        index,
                        count: shards,
                    },
                )
            })
            .collect();
        let parts = parts?;
        let first = parts.first()?.clone();
        if parts.iter().any(|p| p.spec_hash != first.spec_hash) {
            return None;
        }
        Some(StepManifest {
            files: parts.iter().flat_map(|p| p.files.clone()).collect(),
            rows: parts.iter().map(|p| p.rows).sum(),
            attempts: parts.iter().map(|p| p.attempts).max().unwrap_or(1),
            started_at: parts.iter().map(|p| p.started_at).min()?,
            finished_at: parts.iter().map(|p| p.finished_at).max()?,
            duration_ms: parts.iter().map(|p| p.duration_ms).sum(),
            details: serde_json::json!({ "shards": shards }),
            ..first
        })
    }

    /// Clears one part's files for a fresh attempt of it, and a whole list an
    /// unsplit run left (the parts replace it); the other parts stay.
    pub fn reset_shard(&self, step: &str, shard: Shard) -> Result<PathBuf, ArtifactError> {
        let dir = self.step_dir(step);
        fs::create_dir_all(&dir).map_err(ArtifactError::io(&dir))?;
        let stem = shard.stem();
        for name in [
            format!("{stem}.parquet"),
            format!("{stem}.json"),
            artifact::DATA_FILE.to_string(),
            MANIFEST.to_string(),
        ] {
            match fs::remove_file(dir.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArtifactError::io(&dir.join(name))(e)),
            }
        }
        Ok(dir)
    }

    /// Empties a step's folder for a fresh attempt.
    pub fn reset_step(&self, step: &str) -> Result<PathBuf, ArtifactError> {
        let dir = self.step_dir(step);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArtifactError::io(&dir)(e)),
        }
        fs::create_dir_all(&dir).map_err(ArtifactError::io(&dir))?;
        Ok(dir)
    }

    /// Appends one line to the run's event log (best effort: the log is for
    /// people, the manifests are the record).
    pub fn append_log(&self, line: &str) {
        use std::io::Write;
        let _ = fs::create_dir_all(&self.root);
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(EVENT_LOG))
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// The last `n` lines of the event log (none if there is no log).
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        let text = fs::read_to_string(self.root.join(EVENT_LOG)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.to_string())
            .collect()
    }

    /// Takes the run's advisory lock (`flock` on `.lock`), held until the
    /// returned guard drops, or `None` if another process (or another runner in
    /// this one) holds it. The lock dies with its process, so a killed runner
    /// never leaves a run locked.
    pub fn try_lock(&self) -> Result<Option<RunLock>, ArtifactError> {
        self.lock_file(LOCK_FILE)
    }

    /// Takes one step's lock (`.<step>.lock`), as [`RunDir::try_lock`] does the
    /// run's: `recpipe step run` runs the steps of one run in separate processes
    /// (Argo pods), and two attempts of one step must never write its folder at
    /// once.
    pub fn try_lock_step(&self, step: &str) -> Result<Option<RunLock>, ArtifactError> {
        self.lock_file(&format!(".{step}.lock"))
    }

    fn lock_file(&self, name: &str) -> Result<Option<RunLock>, ArtifactError> {
        use std::io::Write;
        fs::create_dir_all(&self.root).map_err(ArtifactError::io(&self.root))?;
        let Some(mut file) = artifact::lock(&self.root.join(name), false)? else {
            return Ok(None);
        };
        // Who holds it, for the message a waiting runner prints.
        let _ = file.set_len(0);
        let _ = write!(file, "pid {}", std::process::id());
        Ok(Some(RunLock { _file: file }))
    }

    /// What the lock file says about its holder (`pid N`), for messages.
    pub fn lock_holder(&self) -> String {
        fs::read_to_string(self.root.join(LOCK_FILE))
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "another runner".to_string())
    }

    pub fn write_record(&self, record: &RunRecord) -> Result<(), ArtifactError> {
        fs::create_dir_all(&self.root).map_err(ArtifactError::io(&self.root))?;
        artifact::write_json(&self.root.join(RUN_RECORD), record).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_their_json() {
        use RunStatus::*;
        for s in [Running, Succeeded, Failed, Cancelled, Skipped, Interrupted] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in [
            StepStatus::Succeeded,
            StepStatus::Reused,
            StepStatus::Failed,
            StepStatus::Skipped,
            StepStatus::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn run_ids() {
        assert!(is_valid_run_id("manual-20261128T004612Z"));
        assert!(!is_valid_run_id("../etc"));
        assert!(!is_valid_run_id(""));
        assert!(!is_valid_run_id(&"x".repeat(65)));
    }
}
