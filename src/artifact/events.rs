//! Events, the input of `estimate`: one row per impression (`item_id`,
//! `converted` 0/1) or pre-aggregated counts (`item_id`, `trials`, `successes`),
//! with an optional group column and feature columns. Read here into per-item
//! counts ([`read_counts`]) or, for a regression, row by row ([`read_rows`]),
//! every value checked: a bad row is an error naming its column and row, never
//! a guess.

use std::borrow::Cow;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use rustc_hash::FxHashMap;

use super::{ArtifactError, for_each_batch};
use std::path::Path;

/// Per-item counts, items in first-seen order.
#[derive(Debug, Default)]
pub struct ItemCounts {
    pub ids: Vec<IdValue>,
    /// The group of each item (the group column's value), when one was asked for.
    pub groups: Option<Vec<String>>,
    pub trials: Vec<u64>,
    pub successes: Vec<u64>,
    pub rows: u64,
    /// Time spent counting, as opposed to decoding the file.
    pub count_seconds: f64,
    /// Trials of all items together.
    pub total: u64,
}

/// The most trials read in all: counts stay exact in f64 (2^53), and no sum of
/// them can overflow.
pub const MAX_TRIALS: u64 = 1 << 50;

/// Ids below this index a table directly while counting (16 MB at most).
const DENSE_IDS: usize = 1 << 22;

/// An item id as the data has it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdValue {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for IdValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdValue::Int(v) => write!(f, "{v}"),
            IdValue::Str(s) => f.write_str(s),
        }
    }
}

/// Which shape the events have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Impressions,
    Counts,
}

fn bad(path: &Path, message: String) -> ArtifactError {
    ArtifactError::Invalid(format!("{}: {message}", path.display()))
}

/// Column `name` cast to `to`, or an error naming it.
fn column(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
    to: &DataType,
) -> Result<ArrayRef, ArtifactError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| bad(path, format!("no `{name}` column")))?;
    cast(col, to).map_err(|e| bad(path, format!("column `{name}`: {e}")))
}

/// The first null row of `col`, if any (a check per row only when there are nulls).
fn first_null(col: &dyn Array) -> Option<usize> {
    match col.null_count() {
        0 => None,
        _ => (0..col.len()).find(|&i| col.is_null(i)),
    }
}

/// The values of an integer column, read directly (borrowed when they are
/// i64): a loop over the typed values is several times faster than arrow's
/// cast, which counts for 1M-row events.
fn ints(col: &ArrayRef) -> Option<Cow<'_, [i64]>> {
    use arrow::array::AsArray;
    use arrow::datatypes::{
        Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    };
    macro_rules! widen {
        ($t:ty) => {
            col.as_primitive::<$t>()
                .values()
                .iter()
                .map(|&v| v as i64)
                .collect::<Vec<_>>()
                .into()
        };
    }
    Some(match col.data_type() {
        DataType::Int8 => widen!(Int8Type),
        DataType::Int16 => widen!(Int16Type),
        DataType::Int32 => widen!(Int32Type),
        DataType::Int64 => Cow::Borrowed(col.as_primitive::<Int64Type>().values()),
        DataType::UInt8 => widen!(UInt8Type),
        DataType::UInt16 => widen!(UInt16Type),
        DataType::UInt32 => widen!(UInt32Type),
        _ => return None,
    })
}

/// Item ids to dense indices, items in first-seen order.
#[derive(Default)]
struct IdIndex {
    ids: Vec<IdValue>,
    ints: FxHashMap<i64, u32>,
    dense: Vec<u32>,
    strs: FxHashMap<String, u32>,
}

impl IdIndex {
    fn add(&mut self, id: IdValue) -> u32 {
        self.ids.push(id);
        (self.ids.len() - 1) as u32
    }

    /// Each row's item index; a new item is appended in row order.
    fn rows(
        &mut self,
        path: &Path,
        batch: &RecordBatch,
        id: &str,
        at: &dyn Fn(usize) -> u64,
    ) -> Result<Vec<u32>, ArtifactError> {
        let ids = batch
            .column_by_name(id)
            .ok_or_else(|| bad(path, format!("no `{id}` column")))?;
        let null_id = |i: usize| bad(path, format!("row {}: `{id}` is null", at(i)));
        let mut idx: Vec<u32> = Vec::with_capacity(batch.num_rows());
        match ids.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let s = column(path, batch, id, &DataType::Utf8)?;
                let s = s.as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..s.len() {
                    if s.is_null(i) {
                        return Err(null_id(i));
                    }
                    let k = match self.strs.get(s.value(i)) {
                        Some(&k) => k,
                        None => {
                            let k = self.add(IdValue::Str(s.value(i).to_string()));
                            self.strs.insert(s.value(i).to_string(), k);
                            k
                        }
                    };
                    idx.push(k);
                }
            }
            _ => {
                if let Some(i) = first_null(ids.as_ref()) {
                    return Err(null_id(i));
                }
                let v = match ints(ids) {
                    Some(v) => v,
                    None => {
                        let v = column(path, batch, id, &DataType::Int64)?;
                        Cow::Owned(
                            v.as_any()
                                .downcast_ref::<Int64Array>()
                                .unwrap()
                                .values()
                                .to_vec(),
                        )
                    }
                };
                for &id in v.iter() {
                    // Small non-negative ids (the usual case) index a table directly.
                    let slot = match usize::try_from(id) {
                        Ok(d) if d < DENSE_IDS => {
                            if self.dense.len() <= d {
                                self.dense.resize(d + 1, u32::MAX);
                            }
                            Some(d)
                        }
                        _ => None,
                    };
                    let known = match slot {
                        Some(d) => (self.dense[d] != u32::MAX).then_some(self.dense[d]),
                        None => self.ints.get(&id).copied(),
                    };
                    let k = match known {
                        Some(k) => k,
                        None => {
                            let k = self.add(IdValue::Int(id));
                            match slot {
                                Some(d) => self.dense[d] = k,
                                None => {
                                    self.ints.insert(id, k);
                                }
                            }
                            k
                        }
                    };
                    idx.push(k);
                }
            }
        }
        Ok(idx)
    }
}

/// Which shape `batch` has: impressions or counts.
fn shape_of(path: &Path, batch: &RecordBatch) -> Result<Shape, ArtifactError> {
    let schema = batch.schema();
    let has = |c: &str| schema.column_with_name(c).is_some();
    match (has("converted"), has("trials") && has("successes")) {
        (true, false) => Ok(Shape::Impressions),
        (false, true) => Ok(Shape::Counts),
        (true, true) => Err(bad(path, "has both `converted` and `trials`/`successes`: give one row per impression (`converted`) or counts per item (`trials`, `successes`)".into())),
        (false, false) => Err(bad(path, "needs `converted` (0/1 per impression) or `trials` and `successes` (counts per item)".into())),
    }
}

/// Each row's trials (`None`: one each, an impression) and successes, checked.
type RowOutcome = (Option<Vec<u64>>, Vec<u64>);

fn outcome(
    path: &Path,
    batch: &RecordBatch,
    shape: Shape,
    at: &dyn Fn(usize) -> u64,
) -> Result<RowOutcome, ArtifactError> {
    match shape {
        Shape::Impressions => {
            let col = batch.column_by_name("converted").unwrap();
            if let Some(i) = first_null(col.as_ref()) {
                return Err(bad(
                    path,
                    format!("row {}: `converted` is null; it must be 0 or 1", at(i)),
                ));
            }
            // 0/1 integers are taken as they are; anything else through f64,
            // so that 0.5 or NaN is named as it is.
            let not_binary = |i: usize, v: &dyn std::fmt::Display| {
                bad(
                    path,
                    format!("row {}: `converted` is {v}; it must be 0 or 1", at(i)),
                )
            };
            let values: Vec<u64> = match ints(col) {
                Some(v) => match v.iter().position(|&x| x != 0 && x != 1) {
                    Some(i) => return Err(not_binary(i, &v[i])),
                    None => v.iter().map(|&x| x as u64).collect(),
                },
                None => {
                    let conv = column(path, batch, "converted", &DataType::Float64)?;
                    let v = conv
                        .as_any()
                        .downcast_ref::<arrow::array::Float64Array>()
                        .unwrap()
                        .values();
                    if let Some(i) = v.iter().position(|&x| !(x == 0.0 || x == 1.0)) {
                        return Err(not_binary(i, &v[i]));
                    }
                    v.iter().map(|&x| x as u64).collect()
                }
            };
            Ok((None, values))
        }
        Shape::Counts => {
            let counts = |name: &str| -> Result<Vec<u64>, ArtifactError> {
                let c = column(path, batch, name, &DataType::Int64)?;
                let c = c.as_any().downcast_ref::<Int64Array>().unwrap();
                match (0..c.len()).find(|&i| c.is_null(i) || c.value(i) < 0) {
                    Some(i) => Err(bad(
                        path,
                        format!(
                            "row {}: `{name}` is {}; counts must be 0 or more",
                            at(i),
                            if c.is_null(i) {
                                "null".into()
                            } else {
                                c.value(i).to_string()
                            }
                        ),
                    )),
                    None => Ok(c.values().iter().map(|&v| v as u64).collect()),
                }
            };
            let (t, s) = (counts("trials")?, counts("successes")?);
            if let Some(i) = (0..t.len()).find(|&i| s[i] > t[i]) {
                return Err(bad(
                    path,
                    format!(
                        "row {}: `successes` ({}) is more than `trials` ({})",
                        at(i),
                        s[i],
                        t[i]
                    ),
                ));
            }
            Ok((Some(t), s))
        }
    }
}

/// Adds `batch`'s trials to `total`, refusing more than [`MAX_TRIALS`].
fn add_trials(
    path: &Path,
    total: &mut u64,
    trials: &Option<Vec<u64>>,
    rows: usize,
    at: &dyn Fn(usize) -> u64,
) -> Result<(), ArtifactError> {
    let too_many = |i: usize| {
        bad(
            path,
            format!(
                "row {}: more than {MAX_TRIALS} trials in all; counts this large are not trials of one experiment",
                at(i)
            ),
        )
    };
    match trials {
        None => {
            *total += rows as u64;
            if *total > MAX_TRIALS {
                return Err(too_many(rows - 1));
            }
        }
        Some(t) => {
            for (i, &n) in t.iter().enumerate() {
                *total += n;
                if *total > MAX_TRIALS {
                    return Err(too_many(i));
                }
            }
        }
    }
    Ok(())
}

/// Reads the events at `path` into counts per `id` (`item_id`, or `arm_id`
/// for an experiment), grouped by `group` if given.
pub fn read_counts(
    path: &Path,
    id: &str,
    group: Option<&str>,
) -> Result<ItemCounts, ArtifactError> {
    let mut out = ItemCounts {
        groups: group.map(|_| Vec::new()),
        ..Default::default()
    };
    let mut index = IdIndex::default();
    let mut shape = None;
    for_each_batch(path, |batch| {
        let started = std::time::Instant::now();
        let this = shape_of(path, &batch)?;
        shape = Some(this);
        let first_row = out.rows;
        let at = |i: usize| first_row + i as u64 + 1;
        let (trials, successes) = outcome(path, &batch, this, &at)?;
        add_trials(path, &mut out.total, &trials, batch.num_rows(), &at)?;
        let group_values = match group {
            Some(g) => {
                let col = column(path, &batch, g, &DataType::Utf8)?;
                let col = col.as_any().downcast_ref::<StringArray>().unwrap().clone();
                if let Some(i) = (0..col.len()).find(|&i| col.is_null(i) || col.value(i).is_empty())
                {
                    return Err(bad(
                        path,
                        format!(
                            "row {}: the group column `{g}` is empty; every item needs a group",
                            at(i)
                        ),
                    ));
                }
                Some(col)
            }
            None => None,
        };
        let idx = index.rows(path, &batch, id, &at)?;
        out.trials.resize(index.ids.len(), 0);
        out.successes.resize(index.ids.len(), 0);
        if let (None, None) = (group, &trials) {
            // Impressions without groups, the common case: one tight loop.
            for (&k, &c) in idx.iter().zip(&successes) {
                out.trials[k as usize] += 1;
                out.successes[k as usize] += c;
            }
            out.rows += batch.num_rows() as u64;
            out.count_seconds += started.elapsed().as_secs_f64();
            return Ok(());
        }
        for (i, &k) in idx.iter().enumerate() {
            let k = k as usize;
            if let (Some(groups), Some(col), Some(g)) = (&mut out.groups, &group_values, group) {
                if k == groups.len() {
                    groups.push(col.value(i).to_string());
                } else if groups[k] != col.value(i) {
                    return Err(bad(
                        path,
                        format!(
                            "row {}: item {:?} is in group `{}` here and `{}` before (column `{g}`); an item has one group",
                            at(i),
                            index.ids[k],
                            col.value(i),
                            groups[k]
                        ),
                    ));
                }
            }
            out.trials[k] += trials.as_ref().map_or(1, |t| t[i]);
            out.successes[k] += successes[i];
        }
        out.rows += batch.num_rows() as u64;
        out.count_seconds += started.elapsed().as_secs_f64();
        Ok(())
    })?;
    out.ids = index.ids;
    if shape.is_none() || out.rows == 0 {
        return Err(bad(path, "has no rows: nothing to estimate".into()));
    }
    Ok(out)
}

/// Events row by row, for a regression: each row's item, outcome and time, and
/// the feature columns asked for.
#[derive(Debug, Default)]
pub struct EventRows {
    /// Items in first-seen order.
    pub ids: Vec<IdValue>,
    /// Each row's item (an index into `ids`).
    pub item: Vec<u32>,
    pub trials: Vec<f64>,
    pub successes: Vec<f64>,
    /// `ts` (microseconds), when the events have it.
    pub time: Option<Vec<i64>>,
    /// Per numeric column asked for, its values.
    pub numeric: Vec<Vec<f64>>,
    /// Per categorical column asked for, its values coded.
    pub categorical: Vec<Levels>,
}

/// A categorical column: each row's code, an index into `names`.
#[derive(Debug, Default, Clone)]
pub struct Levels {
    pub codes: Vec<u32>,
    pub names: Vec<String>,
    /// Set when the column holds integers: levels sort as numbers, not text.
    pub numbers: Option<Vec<i64>>,
}

impl Levels {
    /// Level codes in their natural order (numbers by value, text by text).
    pub fn sorted(&self, codes: &mut [u32]) {
        match &self.numbers {
            Some(n) => codes.sort_by_key(|&c| n[c as usize]),
            None => codes.sort_by(|&a, &b| self.names[a as usize].cmp(&self.names[b as usize])),
        }
    }

    /// Codes `col`'s values, adding levels not seen before.
    fn push(
        &mut self,
        path: &Path,
        name: &str,
        col: &ArrayRef,
        at: &dyn Fn(usize) -> u64,
        index: &mut (FxHashMap<String, u32>, FxHashMap<i64, u32>),
    ) -> Result<(), ArtifactError> {
        if let Some(i) = first_null(col.as_ref()) {
            return Err(bad(
                path,
                format!(
                    "row {}: `{name}` is null; give every row a level (e.g. \"unknown\")",
                    at(i)
                ),
            ));
        }
        if let Some(values) = ints(col) {
            let numbers = self.numbers.get_or_insert_with(Vec::new);
            for &v in values.iter() {
                let code = *index.1.entry(v).or_insert_with(|| {
                    self.names.push(v.to_string());
                    numbers.push(v);
                    (self.names.len() - 1) as u32
                });
                self.codes.push(code);
            }
            return Ok(());
        }
        let text =
            cast(col, &DataType::Utf8).map_err(|e| bad(path, format!("column `{name}`: {e}")))?;
        let text = text.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..text.len() {
            let v = text.value(i);
            let code = match index.0.get(v) {
                Some(&c) => c,
                None => {
                    self.names.push(v.to_string());
                    let c = (self.names.len() - 1) as u32;
                    index.0.insert(v.to_string(), c);
                    c
                }
            };
            self.codes.push(code);
        }
        Ok(())
    }
}

/// Reads the events at `path` row by row with the `numeric` and `categorical`
/// columns: a null or non-finite number is an error naming its column and row.
pub fn read_rows(
    path: &Path,
    numeric: &[String],
    categorical: &[String],
) -> Result<EventRows, ArtifactError> {
    let mut out = EventRows {
        numeric: vec![Vec::new(); numeric.len()],
        categorical: vec![Levels::default(); categorical.len()],
        ..Default::default()
    };
    let mut index = IdIndex::default();
    let mut level_index: Vec<(FxHashMap<String, u32>, FxHashMap<i64, u32>)> =
        vec![Default::default(); categorical.len()];
    let mut total = 0u64;
    for_each_batch(path, |batch| {
        let this = shape_of(path, &batch)?;
        let first_row = out.item.len() as u64;
        let at = |i: usize| first_row + i as u64 + 1;
        let (trials, successes) = outcome(path, &batch, this, &at)?;
        add_trials(path, &mut total, &trials, batch.num_rows(), &at)?;
        match trials {
            Some(t) => out.trials.extend(t.iter().map(|&v| v as f64)),
            None => out
                .trials
                .extend(std::iter::repeat_n(1.0, batch.num_rows())),
        }
        out.successes.extend(successes.iter().map(|&v| v as f64));
        out.item.extend(index.rows(path, &batch, "item_id", &at)?);
        if batch.column_by_name("ts").is_some() {
            let ts = column(path, &batch, "ts", &DataType::Int64)?;
            if let Some(i) = first_null(ts.as_ref()) {
                return Err(bad(path, format!("row {}: `ts` is null", at(i))));
            }
            let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap();
            out.time
                .get_or_insert_with(Vec::new)
                .extend(ts.values().iter());
        }
        for (name, values) in numeric.iter().zip(&mut out.numeric) {
            let col = column(path, &batch, name, &DataType::Float64)?;
            let col = col
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .unwrap();
            if let Some(i) = (0..col.len()).find(|&i| col.is_null(i) || !col.value(i).is_finite()) {
                let v = if col.is_null(i) {
                    "null".to_string()
                } else {
                    col.value(i).to_string()
                };
                return Err(bad(
                    path,
                    format!(
                        "row {}: `{name}` is {v}; a numeric feature must be a finite number",
                        at(i)
                    ),
                ));
            }
            values.extend(col.values().iter());
        }
        for ((name, levels), index) in categorical
            .iter()
            .zip(&mut out.categorical)
            .zip(&mut level_index)
        {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| bad(path, format!("no `{name}` column")))?;
            levels.push(path, name, col, &at, index)?;
        }
        Ok(())
    })?;
    out.ids = index.ids;
    if out.item.is_empty() {
        return Err(bad(path, "has no rows: nothing to estimate".into()));
    }
    if out.time.as_ref().is_some_and(|t| t.len() != out.item.len()) {
        return Err(bad(path, "`ts` is missing from part of the file".into()));
    }
    Ok(out)
}
