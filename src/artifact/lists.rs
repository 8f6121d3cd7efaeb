//! List artifacts: user→item lists (`user_id, item_id, rank, score, run_id,
//! generated_at`) and item→item lists (`item_id, similar_item_id, rank, score,
//! run_id, generated_at`), ranks from 1, ids typed as the model's.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Array, Int32Array, Int64Array, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};

use super::ArtifactError;
use crate::models::IdMap;
use crate::models::ids::Ids;
use crate::topn::Scored;

/// Names of the two id columns of a list.
pub struct ListShape {
    pub row_column: &'static str,
    pub item_column: &'static str,
}

pub const USER_LIST: ListShape = ListShape {
    row_column: "user_id",
    item_column: "item_id",
};
pub const ITEM_LIST: ListShape = ListShape {
    row_column: "item_id",
    item_column: "similar_item_id",
};

fn id_type(map: &IdMap) -> DataType {
    match map.ids() {
        Ids::Int(_) => DataType::Int64,
        Ids::Str(_) => DataType::Utf8,
    }
}

pub fn schema(shape: &ListShape, rows: &IdMap, items: &IdMap) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(shape.row_column, id_type(rows), false),
        Field::new(shape.item_column, id_type(items), false),
        Field::new("rank", DataType::Int32, false),
        Field::new("score", DataType::Float32, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new(
            "generated_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

fn gather(map: &IdMap, indices: impl Iterator<Item = u32>) -> ArrayRef {
    match map.ids() {
        Ids::Int(v) => Arc::new(Int64Array::from_iter_values(indices.map(|i| v[i as usize]))),
        // A builder: `from_iter_values` needs an exact size hint, which the
        // flattened list iterators do not give.
        Ids::Str(v) => {
            let mut ids = StringBuilder::new();
            for i in indices {
                ids.append_value(&v[i as usize]);
            }
            Arc::new(ids.finish())
        }
    }
}

pub fn to_batch(
    schema: &SchemaRef,
    users: &[u32],
    lists: &[Vec<Scored>],
    user_ids: &IdMap,
    item_ids: &IdMap,
    (run_id, generated_at): (&str, DateTime<Utc>),
) -> Result<RecordBatch, ArtifactError> {
    let n: usize = lists.iter().map(Vec::len).sum();
    let user_idx = users
        .iter()
        .zip(lists)
        .flat_map(|(&u, l)| std::iter::repeat_n(u, l.len()));
    let item_idx = lists.iter().flatten().map(|s| s.item);
    let ranks = lists.iter().flat_map(|l| 1..=l.len() as i32);
    let scores = lists.iter().flatten().map(|s| s.score);
    let ts = generated_at.timestamp_micros();
    let columns: Vec<ArrayRef> = vec![
        gather(user_ids, user_idx),
        gather(item_ids, item_idx),
        Arc::new(Int32Array::from_iter_values(ranks)),
        Arc::new(Float32Array::from_iter_values(scores)),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            run_id, n,
        ))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(ts, n))
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| ArtifactError::Invalid(e.to_string()))
}

/// The most parts a list step may be split into (`shards`).
pub const MAX_SHARDS: usize = 1024;

/// One part of a list step split into `count` (`shards = count`): part `index`
/// holds the lists of the query rows (users, or items) in
/// [`Shard::rows`], so the parts in order are the unsplit list row for row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `k/N`, as `recpipe step run --shard` and Argo's fan-out write it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a shard: write `k/N` with 0 ≤ k < N ≤ {MAX_SHARDS}");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index >= count || count > MAX_SHARDS {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Its slice of `n` query rows: contiguous, sizes differing by at most one.
    pub fn rows(&self, n: usize) -> std::ops::Range<usize> {
        n * self.index / self.count..n * (self.index + 1) / self.count
    }

    /// Its file's name in the step's folder, without the extension.
    pub fn stem(&self) -> String {
        format!("part-{:05}-of-{:05}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The data files of a list folder in row order: its `data.parquet`, or the
/// parts its shards wrote.
pub fn files(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, ArtifactError> {
    let whole = dir.join(super::DATA_FILE);
    match std::fs::metadata(&whole) {
        Ok(_) => return Ok(vec![whole]),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArtifactError::io(&whole)(e)),
    }
    let mut parts: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(ArtifactError::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        })
        .collect();
    parts.sort();
    Ok(parts)
}

/// The one file a list folder's rows are in: its `data.parquet`, or its parts
/// copied in order into `joined` (a sink publishes one file).
pub fn joined(
    dir: &std::path::Path,
    joined: &std::path::Path,
) -> Result<std::path::PathBuf, ArtifactError> {
    let parts = files(dir)?;
    match parts.as_slice() {
        [one] => return Ok(one.clone()),
        [] => return Ok(dir.join(super::DATA_FILE)),
        _ => {}
    }
    // Every part of one step has one schema: the first part's opens the file.
    let (schema, _) = super::open_parquet(&parts[0])?;
    let mut writer = super::ParquetWriter::create(joined, schema)?;
    for part in &parts {
        super::for_each_batch(part, |batch| writer.write(&batch))?;
    }
    writer.finish()?;
    Ok(joined.to_path_buf())
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    #[test]
    fn shards_split_rows_in_order_and_parse_strictly() {
        for (n, count) in [(10, 3), (3, 4), (0, 2), (1_000_003, 7)] {
            let mut next = 0;
            for index in 0..count {
                let r = Shard { index, count }.rows(n);
                assert_eq!(r.start, next);
                assert!(r.len() <= n / count + 1);
                next = r.end;
            }
            assert_eq!(next, n);
        }
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        for bad in ["4/4", "1", "-1/4", "1/0", "a/b", "1/2000"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
