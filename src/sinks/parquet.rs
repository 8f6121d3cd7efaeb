//! The Parquet sink: each published version is its own folder, and a `CURRENT`
//! file (plus a `current` symlink) names the one readers should use.
//!
//! Layout under the sink's `path`:
//! ```text
//! <table>/versions/<version>/data.parquet   complete versions
//! <table>/versions/.staging-<version>/      a version being written
//! <table>/CURRENT                            the current version's name
//! <table>/current -> versions/<version>      the same, for readers that want a path
//! ```
//! Both pointers are replaced by rename, which is atomic on POSIX file systems, so a
//! reader sees the old version or the new one. The last `keep_versions` versions are
//! kept so a reader that resolved the pointer just before a swap can finish.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Published, Sink, SinkError, Staged};
use crate::artifact;
use crate::config::settings::ParquetSinkConfig;
use crate::failpoint;

pub const DATA_FILE: &str = "data.parquet";

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
        let final_dir = versions_dir.join(version);
        let rows = parquet_rows(input).map_err(|e| self.err("cannot read input", e))?;
        let data = final_dir.join(DATA_FILE);
        if fs::metadata(&data).is_ok() {
            // Staged by an earlier attempt of this run: the rename below made it complete.
            return Ok(Staged {
                table: table.to_string(),
                version: version.to_string(),
                rows,
            });
        }
        let staging = versions_dir.join(format!(".staging-{version}"));
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
        artifact::rename_durable(&staging, &final_dir).map_err(|e| self.err("cannot stage", e))?;
        Ok(Staged {
            table: table.to_string(),
            version: version.to_string(),
            rows,
        })
    }

    fn swap(&self, staged: &Staged) -> Result<Published, SinkError> {
        if failpoint::armed("parquet.before_swap") {
            return Err(SinkError::FailPoint {
                sink: self.name.clone(),
                point: "parquet.before_swap",
            });
        }
        let location = self.point_to(&staged.table, &staged.version)?;
        let pruned = self.prune(&staged.table, &staged.version)?;
        Ok(Published {
            table: staged.table.clone(),
            version: staged.version.clone(),
            rows: staged.rows,
            location: location.display().to_string(),
            pruned,
        })
    }

    fn rollback(&self, table: &str) -> Result<Published, SinkError> {
        let current = self.current(table)?;
        // The newest other version: after a rollback that is the one rolled back
        // from, so a second rollback undoes the first.
        let previous = self
            .versions(table)?
            .into_iter()
            .find(|v| Some(v) != current.as_ref())
            .ok_or_else(|| self.err(&format!("table `{table}`"), "no earlier version kept"))?;
        let location = self.point_to(table, &previous)?;
        let rows = parquet_rows(&location).map_err(|e| self.err("cannot read version", e))?;
        Ok(Published {
            table: table.to_string(),
            version: previous,
            rows,
            location: location.display().to_string(),
            pruned: Vec::new(),
        })
    }
}

pub(super) fn parquet_rows(path: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    let file = fs::File::open(path)?;
    let reader = parquet::file::reader::SerializedFileReader::new(file)?;
    use parquet::file::reader::FileReader;
    Ok(reader.metadata().file_metadata().num_rows() as u64)
}
