//! Files that steps hand each other: Parquet read/write and the atomic-file rule,
//! the kinds of artifact, and the contracts extracted tables must meet
//! ([`contract`]).
//!
//! Invariant: a file appears under its final name only when it is complete. It is
//! written to a temporary name in the same folder, fsynced, renamed, and the folder
//! fsynced, so a crash leaves either the old file, the new file, or a stray temp.

pub mod allocation;
pub mod contract;
pub mod estimates;
pub mod events;
pub mod features;
pub mod filters;
pub mod interactions;
pub mod lists;
pub mod model;

/// The file name of table artifacts (extracts and lists).
pub const DATA_FILE: &str = "data.parquet";

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    // The cause is part of the message, and deliberately not a `source`: a
    // report that prints the chain would print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: {error}")]
    Parquet {
        path: PathBuf,
        error: parquet::errors::ParquetError,
    },
    #[error("{path}: {error}")]
    Arrow {
        path: PathBuf,
        error: arrow::error::ArrowError,
    },
    /// The file is there but breaks its contract: a missing column, a null id,
    /// a NaN value …
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
}

impl ArtifactError {
    pub fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| ArtifactError::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }
}

/// A finished file of an artifact, as recorded in the step manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    /// `column: type` for Parquet files; empty otherwise.
    pub schema: Vec<String>,
}

/// Streams record batches into a Parquet file that becomes visible at `finish`.
pub struct ParquetWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    rows: u64,
}

impl ParquetWriter {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self, ArtifactError> {
        let tmp = temp_path(path);
        let file = File::create(&tmp).map_err(ArtifactError::io(&tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|source| {
            ArtifactError::Parquet {
                path: path.to_path_buf(),
                error: source,
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            writer,
            schema,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ArtifactError> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .map_err(|source| ArtifactError::Parquet {
                path: self.path.clone(),
                error: source,
            })
    }

    /// Closes, fsyncs and renames the file into place.
    pub fn finish(self) -> Result<FileEntry, ArtifactError> {
        let schema = schema_strings(&self.schema);
        let file = self
            .writer
            .into_inner()
            .map_err(|source| ArtifactError::Parquet {
                path: self.path.clone(),
                error: source,
            })?;
        file.sync_all().map_err(ArtifactError::io(&self.tmp))?;
        drop(file);
        rename_durable(&self.tmp, &self.path)?;
        let mut entry = describe(&self.path)?;
        entry.rows = self.rows;
        entry.schema = schema;
        Ok(entry)
    }
}

/// Writes `batches` to `path` atomically.
pub fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<FileEntry, ArtifactError> {
    let mut sink = ParquetWriter::create(path, schema)?;
    for b in batches {
        sink.write(b)?;
    }
    sink.finish()
}

/// Reads a whole Parquet file.
pub fn read_parquet(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), ArtifactError> {
    let mut batches = Vec::new();
    let schema = for_each_batch(path, |batch| {
        batches.push(batch);
        Ok(())
    })?;
    Ok((schema, batches))
}

/// A Parquet file's schema (read from its footer) and a reader of its batches.
pub(crate) fn open_parquet(
    path: &Path,
) -> Result<
    (
        SchemaRef,
        parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    ),
    ArtifactError,
> {
    let parquet = |source| ArtifactError::Parquet {
        path: path.to_path_buf(),
        error: source,
    };
    let file = File::open(path).map_err(ArtifactError::io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?;
    let schema = builder.schema().clone();
    let reader = builder.with_batch_size(65_536).build().map_err(parquet)?;
    Ok((schema, reader))
}

/// Streams the batches of a Parquet file to `each`, one at a time, and returns
/// its schema (also for a file with no rows).
pub fn for_each_batch(
    path: &Path,
    mut each: impl FnMut(RecordBatch) -> Result<(), ArtifactError>,
) -> Result<SchemaRef, ArtifactError> {
    let (schema, reader) = open_parquet(path)?;
    for batch in reader {
        let batch = batch.map_err(|source| ArtifactError::Arrow {
            path: path.to_path_buf(),
            error: source,
        })?;
        each(batch)?;
    }
    Ok(schema)
}

/// Writes `value` as pretty JSON atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<FileEntry, ArtifactError> {
    let text = serde_json::to_vec_pretty(value).map_err(|source| ArtifactError::Json {
        path: path.to_path_buf(),
        error: source,
    })?;
    write_bytes(path, &text)?;
    describe(path)
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ArtifactError> {
    let text = fs::read(path).map_err(ArtifactError::io(path))?;
    serde_json::from_slice(&text).map_err(|source| ArtifactError::Json {
        path: path.to_path_buf(),
        error: source,
    })
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    let tmp = temp_path(path);
    let mut file = File::create(&tmp).map_err(ArtifactError::io(&tmp))?;
    file.write_all(bytes).map_err(ArtifactError::io(&tmp))?;
    file.sync_all().map_err(ArtifactError::io(&tmp))?;
    drop(file);
    rename_durable(&tmp, path)
}

/// Renames and fsyncs the parent folder so the rename itself survives a crash.
/// Takes an advisory lock (`flock`) on the file at `path`, created if missing,
/// held until the returned file drops (or its process dies). `wait`: block until
/// it is free; otherwise `None` if another holder has it.
pub fn lock(path: &Path, wait: bool) -> Result<Option<File>, ArtifactError> {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(ArtifactError::io(path))?;
    let mode = match wait {
        true => libc::LOCK_EX,
        false => libc::LOCK_EX | libc::LOCK_NB,
    };
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), mode) } != 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(ArtifactError::io(path)(e)),
        };
    }
    Ok(Some(file))
}

pub fn rename_durable(from: &Path, to: &Path) -> Result<(), ArtifactError> {
    fs::rename(from, to).map_err(ArtifactError::io(to))?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> Result<(), ArtifactError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ArtifactError::io(dir))
}

/// Size and SHA-256 of a finished file.
pub fn describe(path: &Path) -> Result<FileEntry, ArtifactError> {
    let mut file = File::open(path).map_err(ArtifactError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(ArtifactError::io(path))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(FileEntry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rows: 0,
        bytes,
        sha256: format!("{:x}", hasher.finalize()),
        schema: Vec::new(),
    })
}

pub fn schema_strings(schema: &SchemaRef) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect()
}

/// `dir/.name.tmp-<pid>-<nanos>`: same folder (so rename is atomic), hidden, unique.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    path.with_file_name(format!(".{name}.tmp-{}-{nanos}", std::process::id()))
}

/// The kind of artifact a step leaves in its run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Interactions,
    Items,
    ItemFeatures,
    Filter,
    Model,
    UserRecs,
    ItemRecs,
    Metrics,
    Published,
    /// Impressions or per-item counts of an outcome, for `estimate`.
    Events,
    /// Per-item rates with their uncertainty.
    Estimates,
    /// A logistic regression's coefficients and per-item predicted rates.
    Coefficients,
    /// An experiment's trials and successes per arm, for `allocate`.
    Arms,
    /// An experiment's arm weights with P(best) and the posteriors.
    Allocation,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Interactions => "interactions",
            ArtifactKind::Items => "items",
            ArtifactKind::ItemFeatures => "item_features",
            ArtifactKind::Filter => "filter",
            ArtifactKind::Model => "model",
            ArtifactKind::UserRecs => "user_recs",
            ArtifactKind::ItemRecs => "item_recs",
            ArtifactKind::Metrics => "metrics",
            ArtifactKind::Published => "published",
            ArtifactKind::Events => "events",
            ArtifactKind::Estimates => "estimates",
            ArtifactKind::Coefficients => "coefficients",
            ArtifactKind::Arms => "arms",
            ArtifactKind::Allocation => "allocation",
        }
    }
}

/// What an extracted table is, which fixes the columns it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `user_id`, `item_id`, optional `value` and `ts`.
    Interactions,
    /// `item_id` plus feature columns.
    Items,
    /// `item_id`, optional `user_id`: items (or user–item pairs) never to recommend.
    Filter,
    /// `item_id` with `converted` (0/1, one row per impression) or `trials` and
    /// `successes` (counts per item), optional `ts` and attribute columns.
    Events,
    /// `arm_id` with `converted` or `trials` and `successes`: an experiment's logs.
    Arms,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Interactions => "interactions",
            Role::Items => "items",
            Role::Filter => "filter",
            Role::Events => "events",
            Role::Arms => "arms",
        }
    }
}
