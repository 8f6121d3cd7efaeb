//! Retention: removes finished run directories beyond `retention.keep_runs` per
//! pipeline or older than `retention.keep_days`, and temporary files that a
//! killed process left behind (`.<name>.tmp-<pid>-<nanos>` from atomic writes,
//! `.healthcheck-<pid>-<n>` from sink checks). Called after every run by the
//! daemon and by `recpipe run`, so a frequent schedule cannot fill the disk.
//!
//! Invariants: a run whose `run.json` says `running` or `interrupted` is never
//! removed (one is in progress, possibly in another process; the other is to be
//! resumed), nor one the caller says is in progress; a directory without a
//! readable `run.json` is only removed once it is older than [`STALE_AFTER`]
//! (it may be a run that is just starting); a temporary file is only removed
//! once it is older than [`STALE_AFTER`] (a write may be under way).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::rundir::{RUN_RECORD, RunRecord, RunStatus};
use crate::config::Settings;
use crate::config::settings::{RetentionSettings, SinkConfig};

/// Age after which a leftover is certainly not being written any more: longer
/// than any single file write or health check takes.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// How deep temporary files are looked for below a root: run, step, artifact
/// folders and a sink's table and version folders.
const TEMP_DEPTH: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("retention: cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("retention: cannot remove `{path}`: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What is kept.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Newest finished runs kept per pipeline.
    pub keep_runs: usize,
    /// Finished runs older than this are removed; `None` keeps any age.
    pub max_age: Option<Duration>,
}

impl From<&RetentionSettings> for Policy {
    fn from(r: &RetentionSettings) -> Self {
        Self {
            keep_runs: r.keep_runs,
            max_age: (r.keep_days > 0)
                .then(|| Duration::from_secs(u64::from(r.keep_days) * 86_400)),
        }
    }
}

/// What was removed.
#[derive(Debug, Default)]
pub struct Pruned {
    pub runs: Vec<PathBuf>,
    pub temp_files: Vec<PathBuf>,
    /// Bytes freed (of the files seen; best effort).
    pub bytes: u64,
}

impl Pruned {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.temp_files.is_empty()
    }

    pub fn absorb(&mut self, other: Pruned) {
        self.runs.extend(other.runs);
        self.temp_files.extend(other.temp_files);
        self.bytes += other.bytes;
    }
}

/// A run directory and what its record says.
struct RunEntry {
    dir: PathBuf,
    /// When the run started (from `run.json`), else the folder's modification time.
    when: SystemTime,
    status: Option<RunStatus>,
}

/// After a run of `pipeline`: prunes its runs by the settings' policy and the
/// stale temporary files of the state dir and the Parquet sinks, and logs what
/// went (a failure to prune is logged, never an error of the run).
pub fn after_run(settings: &Settings, pipeline: &str, in_progress: &dyn Fn(&str) -> bool) {
    let now = SystemTime::now();
    let policy = Policy::from(&settings.retention);
    let mut roots = vec![settings.state_dir.clone()];
    roots.extend(settings.sinks.values().filter_map(|s| match s {
        SinkConfig::Parquet(p) => Some(p.path.clone()),
        _ => None,
    }));
    let result = prune_runs(&settings.state_dir, pipeline, &policy, now, in_progress).and_then(
        |mut pruned| {
            pruned.absorb(prune_temp_files(&roots, now)?);
            Ok(pruned)
        },
    );
    match result {
        Ok(p) if p.is_empty() => {}
        Ok(p) => tracing::info!(
            pipeline,
            runs = p.runs.len(),
            temp_files = p.temp_files.len(),
            bytes = p.bytes,
            "pruned old runs"
        ),
        Err(e) => tracing::warn!(pipeline, error = %e, "cannot prune old runs"),
    }
}

/// Removes the finished runs of `pipeline` that `policy` does not keep.
/// `in_progress(run_id)` names runs the caller is running.
pub fn prune_runs(
    state_dir: &Path,
    pipeline: &str,
    policy: &Policy,
    now: SystemTime,
    in_progress: &dyn Fn(&str) -> bool,
) -> Result<Pruned, RetentionError> {
    let root = state_dir.join("runs").join(pipeline);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pruned::default()),
        Err(source) => return Err(RetentionError::Read { path: root, source }),
    };
    let mut runs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| RetentionError::Read {
            path: root.clone(),
            source,
        })?;
        let dir = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let run_id = entry.file_name().to_string_lossy().into_owned();
        if in_progress(&run_id) {
            continue;
        }
        let record: Option<RunRecord> = std::fs::read(dir.join(RUN_RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(now);
        runs.push(RunEntry {
            when: record
                .as_ref()
                .map_or(modified, |r| SystemTime::from(r.started_at)),
            status: record.map(|r| r.status),
            dir,
        });
    }
    // Newest first; the first `keep_runs` finished ones stay.
    runs.sort_by_key(|r| std::cmp::Reverse(r.when));
    let mut pruned = Pruned::default();
    let mut kept = 0;
    for run in runs {
        let age = now.duration_since(run.when).unwrap_or_default();
        let removable = match run.status {
            Some(RunStatus::Running | RunStatus::Interrupted) => false,
            Some(_) => true,
            None => age > STALE_AFTER,
        };
        if !removable {
            continue;
        }
        let too_old = policy.max_age.is_some_and(|max| age > max);
        if kept < policy.keep_runs && !too_old {
            kept += 1;
            continue;
        }
        pruned.bytes += size_of_tree(&run.dir);
        remove_dir(&run.dir)?;
        pruned.runs.push(run.dir);
    }
    Ok(pruned)
}

/// Removes stale temporary files below each of `roots`.
pub fn prune_temp_files(roots: &[PathBuf], now: SystemTime) -> Result<Pruned, RetentionError> {
    let mut pruned = Pruned::default();
    for root in roots {
        walk(root, TEMP_DEPTH, &mut |path, meta| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let stale = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > STALE_AFTER);
            if meta.is_file() && stale && name.as_deref().is_some_and(is_leftover) {
                match std::fs::remove_file(path) {
                    Ok(()) => {
                        pruned.bytes += meta.len();
                        pruned.temp_files.push(path.to_path_buf());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(RetentionError::Remove {
                            path: path.to_path_buf(),
                            source,
                        });
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(pruned)
}

/// Names written by `artifact`'s atomic writes and the sinks' health checks.
fn is_leftover(name: &str) -> bool {
    name.starts_with(".healthcheck-") || (name.starts_with('.') && name.contains(".tmp-"))
}

fn walk(
    dir: &Path,
    depth: usize,
    visit: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<(), RetentionError>,
) -> Result<(), RetentionError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // Gone meanwhile, or not there yet: nothing to prune.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RetentionError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // symlink_metadata: a link is never followed out of the state folder.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth > 0 {
                walk(&path, depth - 1, visit)?;
            }
        } else {
            visit(&path, &meta)?;
        }
    }
    Ok(())
}

fn size_of_tree(dir: &Path) -> u64 {
    let mut total = 0;
    let _ = walk(dir, 8, &mut |_, meta| {
        total += meta.len();
        Ok(())
    });
    total
}

fn remove_dir(dir: &Path) -> Result<(), RetentionError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RetentionError::Remove {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_recognised_by_name() {
        assert!(is_leftover(".healthcheck-12-0"));
        assert!(is_leftover(".part-0.parquet.tmp-12-345"));
        assert!(!is_leftover("part-0.parquet"));
        assert!(!is_leftover("manifest.json"));
        assert!(!is_leftover("tmp-notes"));
    }

    #[test]
    fn policy_from_settings() {
        let p = Policy::from(&RetentionSettings {
            keep_runs: 3,
            keep_days: 0,
        });
        assert_eq!(p.max_age, None);
        let p = Policy::from(&RetentionSettings {
            keep_runs: 3,
            keep_days: 2,
        });
        assert_eq!(p.max_age, Some(Duration::from_secs(2 * 86_400)));
    }
}
