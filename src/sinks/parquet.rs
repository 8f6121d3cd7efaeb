//! The Parquet sink: each published version is its own folder, and a `CURRENT`
//! file (plus a `current` symlink) names the one readers should use.
//!
//! Layout under the sink's `path`:
//! ```text
//! <table>/versions/<version>/data.parquet   complete versions
//! <table>/versions/<version>/version.json   its SHA-256 and row count
//! <table>/versions/.staging-<version>/      a version being written
//! <table>/CURRENT                            the current version's name
//! <table>/current -> versions/<version>      the same, for readers that want a path
//! <table>/.lock                              held while a pointer moves
//! ```
//! Both pointers are replaced by rename, which is atomic on POSIX file systems, so a
//! reader sees the old version or the new one. The last `keep_versions` versions are
//! kept so a reader that resolved the pointer just before a swap can finish.
//!
//! A swap switches only if `CURRENT` still names the version it named at staging,
//! checked and switched under the table's lock (`flock`, so on one machine or a
//! shared file system that honours it): of two publishers racing, the second to
//! switch fails instead of silently replacing the first's list.
//!
//! A complete version folder is never changed: a reader that resolved `current`
//! keeps reading the same bytes. So a publish of run `r` whose list differs from
//! the one already kept as `versions/r` (a rerun after an edit) is stored as the
//! next free name `r-2`, `r-3`, … and that becomes current. A version whose
//! SHA-256 equals the list's is reused instead of copied again; if it is already
//! current, the publish does nothing and says so (`unchanged`).
//!
//! Tables published together (`publish_group`) are all staged first, then switched
//! one after another: each switch is atomic, the group is not. For the moment
//! between two switches a reader can see one table's new list next to another's
//! old one; a failure between them leaves the earlier tables switched and fails the
//! step, whose retry (or rerun) switches the rest, or `rollback` undoes them.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Published, Sink, SinkError, Staged};
use crate::artifact;
use crate::config::settings::ParquetSinkConfig;
use crate::failpoint;

pub const DATA_FILE: &str = "data.parquet";
/// Next to each version's data: its run id, SHA-256 and row count.
pub const VERSION_FILE: &str = "version.json";

#[derive(Debug, Clone)]
pub struct ParquetSink {
    name: String,
    config: ParquetSinkConfig,
}

impl ParquetSink {
    pub fn new(name: &str, config: ParquetSinkConfig) -> Self {
        Self {
            name: name.to_string(),
            config,
        }
    }

    fn table_dir(&self, table: &str) -> PathBuf {
        self.config.path.join(table)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> SinkError {
        SinkError::Io {
            sink: self.name.clone(),
            message: format!("{what}: {e}"),
        }
    }

    /// An error retrying cannot fix (nothing to roll back to, …).
    fn rejected(&self, message: String) -> SinkError {
        SinkError::Rejected {
            sink: self.name.clone(),
            message,
        }
    }

    /// The SHA-256 of the list kept as `version`: recorded in `version.json`, or
    /// computed for versions published before the record existed.
    fn sha256_of_version(&self, table: &str, version: &str) -> Result<String, SinkError> {
        let dir = self.table_dir(table).join("versions").join(version);
        match artifact::read_json::<VersionRecord>(&dir.join(VERSION_FILE)) {
            Ok(record) => Ok(record.sha256),
            Err(_) => super::sha256_of(&self.name, &dir.join(DATA_FILE)),
        }
    }

    /// The name to keep run `version`'s list (SHA-256 `sha256`) under, and whether
    /// a complete version of that name already holds exactly this list: `version`
    /// itself, or `version-2`, `version-3` … when earlier publishes of the run kept
    /// other lists (a complete version is never rewritten).
    fn version_name(
        &self,
        table: &str,
        version: &str,
        sha256: &str,
    ) -> Result<(String, bool), SinkError> {
        let versions_dir = self.table_dir(table).join("versions");
        for name in version_names(version) {
            match fs::metadata(versions_dir.join(&name).join(DATA_FILE)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((name, false)),
                Err(e) => return Err(self.err(&format!("cannot read version `{name}`"), e)),
                Ok(_) if self.sha256_of_version(table, &name)? == sha256 => {
                    return Ok((name, true));
                }
                Ok(_) => {}
            }
        }
        unreachable!("version_names never ends")
    }

    /// The version `CURRENT` names, if any.
    pub fn current(&self, table: &str) -> Result<Option<String>, SinkError> {
        let path = self.table_dir(table).join("CURRENT");
        match fs::read_to_string(&path) {
            Ok(v) => Ok(Some(v.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(&format!("cannot read {}", path.display()), e)),
        }
    }

    /// Complete versions, newest first.
    fn versions(&self, table: &str) -> Result<Vec<String>, SinkError> {
        let versions_dir = self.table_dir(table).join("versions");
        let mut versions = Vec::new();
        let entries = fs::read_dir(&versions_dir)
            .map_err(|e| self.err(&format!("cannot list {}", versions_dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.err("cannot list versions", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".staging-") {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(|e| self.err("cannot stat version", e))?;
            versions.push((modified, name));
        }
        versions.sort_by(|a, b| b.cmp(a));
        Ok(versions.into_iter().map(|(_, name)| name).collect())
    }

    /// Deletes the oldest complete versions beyond `keep_versions`, never the
    /// current one, and leftover staging folders of other versions.
    fn prune(&self, table: &str, current: &str) -> Result<Vec<String>, SinkError> {
        let versions_dir = self.table_dir(table).join("versions");
        let entries = fs::read_dir(&versions_dir)
            .map_err(|e| self.err(&format!("cannot list {}", versions_dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.err("cannot list versions", e))?;
            if entry.file_name().to_string_lossy().starts_with(".staging-") {
                fs::remove_dir_all(entry.path())
                    .map_err(|e| self.err("cannot remove staging", e))?;
            }
        }
        // The current version counts as one of the kept.
        let mut pruned = Vec::new();
        for name in self
            .versions(table)?
            .into_iter()
            .filter(|v| v != current)
            .skip(self.config.keep_versions.saturating_sub(1))
        {
            fs::remove_dir_all(versions_dir.join(&name))
                .map_err(|e| self.err(&format!("cannot remove version {name}"), e))?;
            pruned.push(name);
        }
        pruned.sort();
        Ok(pruned)
    }

    /// The table's publish lock (`<table>/.lock`), held while its pointer moves.
    fn lock(&self, table: &str) -> Result<fs::File, SinkError> {
        let path = self.table_dir(table).join(".lock");
        artifact::lock(&path, true)
            .map_err(|e| self.err("cannot lock the table", e))?
            .ok_or_else(|| self.err("cannot lock the table", "busy"))
    }

    /// Points `CURRENT` and `current` at `version`, each replaced by rename.
    fn point_to(&self, table: &str, version: &str) -> Result<PathBuf, SinkError> {
        let dir = self.table_dir(table);
        artifact::write_bytes(&dir.join("CURRENT"), format!("{version}\n").as_bytes())
            .map_err(|e| self.err("cannot switch CURRENT", e))?;
        let link_tmp = dir.join(format!(".current-{version}"));
        let _ = fs::remove_file(&link_tmp);
        std::os::unix::fs::symlink(Path::new("versions").join(version), &link_tmp)
            .map_err(|e| self.err("cannot link current", e))?;
        artifact::rename_durable(&link_tmp, &dir.join("current"))
            .map_err(|e| self.err("cannot switch current", e))?;
        Ok(dir.join("current").join(DATA_FILE))
    }
}

impl Sink for ParquetSink {
    fn healthcheck(&self) -> Result<(), SinkError> {
        fs::create_dir_all(&self.config.path)
            .map_err(|e| self.err(&format!("cannot create {}", self.config.path.display()), e))?;
        // A name of its own: write steps of one run check the same sink at once.
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = self
            .config
            .path
            .join(format!(".healthcheck-{}-{n}", std::process::id()));
        artifact::write_bytes(&probe, b"ok").map_err(|e| self.err("not writable", e))?;
        fs::remove_file(&probe).map_err(|e| self.err("not writable", e))
    }

    fn write_staging(&self, table: &str, version: &str, input: &Path) -> Result<Staged, SinkError> {
        if failpoint::armed("parquet.write_staging") {
            return Err(self.err("staging", "failure point `parquet.write_staging` armed"));
        }
        let versions_dir = self.table_dir(table).join("versions");
        let rows = parquet_rows(input).map_err(|e| self.err("cannot read input", e))?;
        let sha256 = super::sha256_of(&self.name, input)?;
        let current = self.current(table)?;
        let (name, kept) = self.version_name(table, version, &sha256)?;
        let staged = |unchanged| Staged {
            table: table.to_string(),
            version: name.clone(),
            rows,
            sha256: sha256.clone(),
            unchanged,
            pruned: Vec::new(),
            replaces: current.clone(),
        };
        if kept {
            // An earlier publish stored this very list under this name (the rename
            // below made it complete): use it as it is.
            return Ok(staged(current.as_deref() == Some(name.as_str())));
        }
        let final_dir = versions_dir.join(&name);
        let staging = versions_dir.join(format!(".staging-{name}"));
        if fs::metadata(&staging).is_ok() {
            fs::remove_dir_all(&staging).map_err(|e| self.err("cannot clear old staging", e))?;
        }
        fs::create_dir_all(&staging)
            .map_err(|e| self.err(&format!("cannot create {}", staging.display()), e))?;
        let staged_file = staging.join(DATA_FILE);
        fs::copy(input, &staged_file).map_err(|e| self.err("cannot copy list", e))?;
        fs::File::open(&staged_file)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.err("cannot sync list", e))?;
        let record = VersionRecord {
            run_id: version.to_string(),
            sha256: sha256.clone(),
            rows,
            staged_at: Some(chrono::Utc::now()),
        };
        artifact::write_json(&staging.join(VERSION_FILE), &record)
            .map_err(|e| self.err("cannot record the version", e))?;
        artifact::rename_durable(&staging, &final_dir).map_err(|e| self.err("cannot stage", e))?;
        Ok(staged(false))
    }

    fn swap(&self, staged: &Staged) -> Result<Published, SinkError> {
        if failpoint::armed("parquet.before_swap") {
            return Err(SinkError::FailPoint {
                sink: self.name.clone(),
                point: "parquet.before_swap",
            });
        }
        let (location, pruned) = match staged.unchanged {
            true => (
                self.table_dir(&staged.table)
                    .join("current")
                    .join(DATA_FILE),
                Vec::new(),
            ),
            false => {
                // Compare and swap under the table's lock: of two publishers that
                // staged against one version, the second to switch fails.
                let _lock = self.lock(&staged.table)?;
                let now = self.current(&staged.table)?;
                if now != staged.replaces {
                    return Err(super::lost_race(&self.name, staged, now.as_deref()));
                }
                let location = self.point_to(&staged.table, &staged.version)?;
                (location, self.prune(&staged.table, &staged.version)?)
            }
        };
        // What a reader opening `current` now gets, not what was asked for.
        let rows = parquet_rows(&location).map_err(|e| self.err("cannot read version", e))?;
        Ok(Published {
            table: staged.table.clone(),
            version: staged.version.clone(),
            rows,
            location: location.display().to_string(),
            pruned,
            sha256: staged.sha256.clone(),
            unchanged: staged.unchanged,
        })
    }

    fn rollback(&self, table: &str) -> Result<Published, SinkError> {
        let versions_dir = self.table_dir(table).join("versions");
        if fs::metadata(&versions_dir).is_err() {
            return Err(self.rejected(format!(
                "table `{table}` has never been published here (no {}): nothing to roll back; publish a list first",
                versions_dir.display()
            )));
        }
        let _lock = self.lock(table)?;
        let current = self.current(table)?;
        let previous =
            rollback_target(&self.name, table, self.versions(table)?, current.as_deref())?;
        let location = self.point_to(table, &previous)?;
        let rows = parquet_rows(&location).map_err(|e| self.err("cannot read version", e))?;
        let sha256 = self.sha256_of_version(table, &previous)?;
        Ok(Published {
            table: table.to_string(),
            version: previous,
            rows,
            location: location.display().to_string(),
            pruned: Vec::new(),
            sha256,
            unchanged: false,
        })
    }
}

/// The names run `version`'s list may be kept under, in the order tried:
/// `version`, then `version-2`, `version-3` … (a complete version is never
/// rewritten, so a changed list of the same run takes the next name).
pub(super) fn version_names(version: &str) -> impl Iterator<Item = String> + '_ {
    (1u32..).map(move |n| match n {
        1 => version.to_string(),
        n => format!("{version}-{n}"),
    })
}

/// The version a rollback makes current: the newest complete one (of
/// `newest_first`) other than `current`. After a rollback that is the one rolled
/// back from, so a second rollback undoes the first.
pub(super) fn rollback_target(
    sink: &str,
    table: &str,
    newest_first: Vec<String>,
    current: Option<&str>,
) -> Result<String, SinkError> {
    newest_first
        .into_iter()
        .find(|v| Some(v.as_str()) != current)
        .ok_or_else(|| SinkError::Rejected {
            sink: sink.to_string(),
            message: format!(
                "table `{table}` has no version before `{}` to roll back to; a rollback needs two published versions",
                current.unwrap_or("?")
            ),
        })
}

/// What `version.json` records about a complete version.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct VersionRecord {
    /// The run that published it (the folder may be `<run_id>-2` …).
    pub run_id: String,
    pub sha256: String,
    pub rows: u64,
    /// When it was staged: object storage orders versions by it (an object's
    /// modification time has one-second resolution on S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub fn parquet_rows(path: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    let file = fs::File::open(path)?;
    let reader = parquet::file::reader::SerializedFileReader::new(file)?;
    use parquet::file::reader::FileReader;
    Ok(reader.metadata().file_metadata().num_rows() as u64)
}
