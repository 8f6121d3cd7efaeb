//! The Parquet sink on object storage (`path = "s3://bucket/lists"` or `gs://…`):
//! the layout of the local Parquet sink, with the pointer switched by a
//! compare-and-swap instead of a rename.
//!
//! ```text
//! <table>/versions/<version>/data.parquet   the list
//! <table>/versions/<version>/version.json   written last: the version is complete
//! <table>/CURRENT                           the current version's name
//! ```
//! A reader gets `CURRENT`, then `versions/<name>/data.parquet`. A version, once
//! complete, is never rewritten (a changed list of the same run is `<run>-2`, …),
//! so a reader that resolved the pointer keeps reading the same bytes.
//!
//! `CURRENT` is written only if it still names the version it named when the list
//! was staged (`If-Match` on S3, a generation match on GCS): of two publishers
//! racing, one switches and the other fails, naming the version that won, instead
//! of both reporting success with one list silently lost. There is no `current`
//! symlink here, and leftovers of an upload cut short (a `data.parquet` with no
//! `version.json`) stay until a publish of the same version overwrites them.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::PutMode;

use super::parquet::{
    DATA_FILE, VERSION_FILE, VersionRecord, parquet_rows, rollback_target, version_names,
};
use super::{Published, Sink, SinkError, Staged};
use crate::config::settings::ParquetSinkConfig;
use crate::failpoint;
use crate::store::{Remote, StorageError};

#[derive(Debug, Clone)]
pub struct ObjectParquetSink {
    name: String,
    url: String,
    keep_versions: usize,
}

impl ObjectParquetSink {
    pub fn new(name: &str, config: &ParquetSinkConfig) -> Self {
        Self {
            name: name.to_string(),
            url: config.path.to_string_lossy().into_owned(),
            keep_versions: config.keep_versions,
        }
    }

    fn err(&self, e: StorageError) -> SinkError {
        let (sink, message) = (self.name.clone(), e.to_string());
        match e.is_retryable() {
            true => SinkError::Io { sink, message },
            false => SinkError::Rejected { sink, message },
        }
    }

    /// Runs the store's async client to completion from the blocking thread the
    /// write step runs on, as the database sinks do.
    fn block_on<T>(
        &self,
        work: impl AsyncFnOnce(Remote) -> Result<T, StorageError>,
    ) -> Result<T, SinkError> {
        let remote = Remote::open(&self.url).map_err(|e| self.err(e))?;
        crate::sources::engine()
            .block_on(work(remote))
            .map_err(|e| self.err(e))
    }
}

/// `CURRENT` of `table`: the version it names and the object's version, for a
/// conditional write.
async fn current(
    remote: &Remote,
    table: &str,
) -> Result<Option<(String, object_store::UpdateVersion)>, StorageError> {
    Ok(remote
        .get(&format!("{table}/CURRENT"))
        .await?
        .map(|(bytes, version)| (String::from_utf8_lossy(&bytes).trim().to_string(), version)))
}

/// The record of complete version `version`, if it is complete.
async fn record(
    remote: &Remote,
    table: &str,
    version: &str,
) -> Result<Option<VersionRecord>, StorageError> {
    let rel = format!("{table}/versions/{version}/{VERSION_FILE}");
    Ok(remote
        .get(&rel)
        .await?
        .and_then(|(bytes, _)| serde_json::from_slice(&bytes).ok()))
}

/// Complete versions of `table`, newest first, with their keys.
async fn versions(
    remote: &Remote,
    table: &str,
) -> Result<Vec<(String, Vec<String>)>, StorageError> {
    let mut folders: BTreeMap<String, (Vec<String>, Option<DateTime<Utc>>)> = BTreeMap::new();
    for (key, modified) in remote.list(&format!("{table}/versions")).await? {
        let rest = key.split_once("/versions/").map_or("", |(_, r)| r);
        let Some((version, file)) = rest.split_once('/') else {
            continue;
        };
        let entry = folders.entry(version.to_string()).or_default();
        entry.0.push(key.clone());
        if file == VERSION_FILE {
            entry.1 = Some(modified);
        }
    }
    let mut complete = Vec::new();
    for (version, (keys, modified)) in folders {
        if let Some(modified) = modified {
            let staged_at = record(remote, table, &version)
                .await?
                .and_then(|r| r.staged_at)
                .unwrap_or(modified);
            complete.push((staged_at, version, keys));
        }
    }
    complete.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    Ok(complete.into_iter().map(|(_, v, keys)| (v, keys)).collect())
}

/// Points `CURRENT` at `version` if it still names `expected`.
async fn switch(
    remote: &Remote,
    table: &str,
    version: &str,
    expected: Option<&(String, object_store::UpdateVersion)>,
) -> Result<(), StorageError> {
    let mode = match expected {
        Some((_, v)) => PutMode::Update(v.clone()),
        None => PutMode::Create,
    };
    let body = Bytes::from(format!("{version}\n"));
    remote.put(&format!("{table}/CURRENT"), body, mode).await
}

impl Sink for ObjectParquetSink {
    fn healthcheck(&self) -> Result<(), SinkError> {
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = format!(".healthcheck-{}-{n}", std::process::id());
        self.block_on(async |remote| {
            remote
                .put(&probe, Bytes::from_static(b"ok"), PutMode::Overwrite)
                .await?;
            remote.delete(&probe).await
        })
    }

    fn write_staging(&self, table: &str, version: &str, input: &Path) -> Result<Staged, SinkError> {
        if failpoint::armed("parquet.write_staging") {
            return Err(SinkError::FailPoint {
                sink: self.name.clone(),
                point: "parquet.write_staging",
            });
        }
        let rows = parquet_rows(input).map_err(|e| SinkError::Rejected {
            sink: self.name.clone(),
            message: format!("cannot read list: {e}"),
        })?;
        let sha256 = super::sha256_of(&self.name, input)?;
        self.block_on(async |remote| {
            let current = current(&remote, table).await?.map(|(v, _)| v);
            // The first free name, or one holding this very list already.
            let mut names = version_names(version);
            let (name, kept) = loop {
                let name = names.next().expect("version_names never ends");
                match record(&remote, table, &name).await? {
                    None => break (name, false),
                    Some(r) if r.sha256 == sha256 => break (name, true),
                    Some(_) => {}
                }
            };
            if !kept {
                let dir = format!("{table}/versions/{name}");
                remote.upload(input, &format!("{dir}/{DATA_FILE}")).await?;
                let record = VersionRecord {
                    run_id: version.to_string(),
                    sha256: sha256.clone(),
                    rows,
                    staged_at: Some(Utc::now()),
                };
                let body = Bytes::from(serde_json::to_vec_pretty(&record).unwrap_or_default());
                remote
                    .put(&format!("{dir}/{VERSION_FILE}"), body, PutMode::Overwrite)
                    .await?;
            }
            Ok(Staged {
                table: table.to_string(),
                unchanged: kept && current.as_deref() == Some(name.as_str()),
                version: name,
                rows,
                sha256: sha256.clone(),
                pruned: Vec::new(),
                replaces: current,
            })
        })
    }

    fn swap(&self, staged: &Staged) -> Result<Published, SinkError> {
        if failpoint::armed("parquet.before_swap") {
            return Err(SinkError::FailPoint {
                sink: self.name.clone(),
                point: "parquet.before_swap",
            });
        }
        let table = &staged.table;
        // Ok(Err(winner)) when another publisher moved `CURRENT` first.
        let switched = self.block_on(async |remote| {
            let now = current(&remote, table).await?;
            let name = |c: Option<(String, _)>| c.map(|(v, _)| v);
            if now.as_ref().map(|(v, _)| v) != staged.replaces.as_ref() {
                return Ok(Err(name(now)));
            }
            if staged.unchanged {
                return Ok(Ok(()));
            }
            match switch(&remote, table, &staged.version, now.as_ref()).await {
                Err(StorageError::Conflict { .. }) => Ok(Err(name(current(&remote, table).await?))),
                other => other.map(Ok),
            }
        })?;
        if let Err(winner) = switched {
            return Err(super::lost_race(&self.name, staged, winner.as_deref()));
        }
        let pruned = match staged.unchanged {
            true => Vec::new(),
            false => self.prune(table, &staged.version)?,
        };
        Ok(Published {
            table: table.clone(),
            version: staged.version.clone(),
            rows: staged.rows,
            location: self.location(table, &staged.version),
            pruned,
            sha256: staged.sha256.clone(),
            unchanged: staged.unchanged,
        })
    }

    fn rollback(&self, table: &str) -> Result<Published, SinkError> {
        let (now, versions) = self.block_on(async |remote| {
            Ok((
                current(&remote, table).await?,
                versions(&remote, table).await?,
            ))
        })?;
        let current_name = now.as_ref().map(|(v, _)| v.as_str());
        if versions.is_empty() {
            return Err(SinkError::Rejected {
                sink: self.name.clone(),
                message: format!(
                    "table `{table}` has never been published to {}: nothing to roll back; publish a list first",
                    self.url
                ),
            });
        }
        let names = versions.into_iter().map(|(v, _)| v).collect();
        let previous = rollback_target(&self.name, table, names, current_name)?;
        let record = self.block_on(async |remote| {
            switch(&remote, table, &previous, now.as_ref()).await?;
            record(&remote, table, &previous).await
        })?;
        let record = record.ok_or_else(|| SinkError::Io {
            sink: self.name.clone(),
            message: format!("version `{previous}` of `{table}` vanished during the rollback"),
        })?;
        Ok(Published {
            table: table.to_string(),
            location: self.location(table, &previous),
            version: previous,
            rows: record.rows,
            pruned: Vec::new(),
            sha256: record.sha256,
            unchanged: false,
        })
    }
}

impl ObjectParquetSink {
    fn location(&self, table: &str, version: &str) -> String {
        format!(
            "{}/{table}/versions/{version}/{DATA_FILE}",
            self.url.trim_end_matches('/')
        )
    }

    /// Deletes the oldest complete versions beyond `keep_versions`, never the
    /// current one.
    fn prune(&self, table: &str, current: &str) -> Result<Vec<String>, SinkError> {
        let keep = self.keep_versions.saturating_sub(1);
        self.block_on(async |remote| {
            let mut pruned = Vec::new();
            let old = versions(&remote, table).await?;
            for (version, keys) in old.into_iter().filter(|(v, _)| v != current).skip(keep) {
                // The record first: the version stops being complete before its
                // data goes.
                let (records, data): (Vec<_>, Vec<_>) =
                    keys.into_iter().partition(|k| k.ends_with(VERSION_FILE));
                for key in records.iter().chain(&data) {
                    remote.delete(key).await?;
                }
                pruned.push(version);
            }
            pruned.sort();
            Ok(pruned)
        })
    }
}
