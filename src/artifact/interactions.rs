//! Reading interaction and filter artifacts into dense indices: the bridge between
//! Arrow columns with external ids and the CSR matrices the models use.

use std::path::Path;

use arrow::array::{Array, Float32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;

use super::{ArtifactError, read_parquet};
use crate::models::ids::{IdRef, Ids};
use crate::models::{Csr, IdMap};

/// Interactions mapped to dense indices.
pub struct Interactions {
    pub users: IdMap,
    pub items: IdMap,
    pub matrix: Csr,
}

/// An id column of a batch: Int64 or Utf8, as the contract fixes them.
pub enum IdColumn<'a> {
    Int(&'a Int64Array),
    Str(&'a StringArray),
}

impl<'a> IdColumn<'a> {
    pub fn of(batch: &'a RecordBatch, name: &str, file: &Path) -> Result<Self, ArtifactError> {
        let col = batch.column_by_name(name).ok_or_else(|| {
            ArtifactError::Invalid(format!("{}: no column `{name}`", file.display()))
        })?;
        if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
            Ok(IdColumn::Int(a))
        } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
            Ok(IdColumn::Str(a))
        } else {
            Err(ArtifactError::Invalid(format!(
                "{}: column `{name}` is {}, not Int64 or Utf8",
                file.display(),
                col.data_type()
            )))
        }
    }

    pub fn get(&self, row: usize) -> IdRef<'a> {
        match self {
            IdColumn::Int(a) => IdRef::Int(a.value(row)),
            IdColumn::Str(a) => IdRef::Str(a.value(row)),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            IdColumn::Int(_) => "Int64",
            IdColumn::Str(_) => "Utf8",
        }
    }

    pub fn collect_into(&self, ids: &mut Option<Ids>) {
        match (self, ids) {
            (IdColumn::Int(a), Some(Ids::Int(v))) => v.extend(a.values().iter().copied()),
            (IdColumn::Str(a), Some(Ids::Str(v))) => {
                v.extend(a.iter().map(|s| s.unwrap_or_default().to_string()))
            }
            (IdColumn::Int(a), slot @ None) => *slot = Some(Ids::Int(a.values().to_vec())),
            (IdColumn::Str(a), slot @ None) => {
                *slot = Some(Ids::Str(
                    a.iter()
                        .map(|s| s.unwrap_or_default().to_string())
                        .collect(),
                ))
            }
            // Parquet files have one schema, so the type cannot change between batches.
            _ => {}
        }
    }
}

/// The type name of an id map's ids, for mismatch messages.
pub fn ids_type_name(map: &IdMap) -> &'static str {
    match map.ids() {
        Ids::Int(_) => "Int64",
        Ids::Str(_) => "Utf8",
    }
}

/// Reads an interactions artifact and maps its ids (sorted) to dense indices.
pub fn load(path: &Path) -> Result<Interactions, ArtifactError> {
    let (_, batches) = read_parquet(path)?;
    let mut user_ids = None;
    let mut item_ids = None;
    for b in &batches {
        IdColumn::of(b, "user_id", path)?.collect_into(&mut user_ids);
        IdColumn::of(b, "item_id", path)?.collect_into(&mut item_ids);
    }
    let (Some(user_ids), Some(item_ids)) = (user_ids, item_ids) else {
        return Err(ArtifactError::Invalid(format!(
            "{}: no interactions",
            path.display()
        )));
    };
    let users = IdMap::from_ids(user_ids);
    let items = IdMap::from_ids(item_ids);
    let matrix = matrix(path, &batches, &users, &items)?;
    Ok(Interactions {
        users,
        items,
        matrix,
    })
}

/// Reads an interactions artifact as a user × item matrix in the dense indices of
/// an existing model; rows with unknown users or items are left out.
pub fn load_with(path: &Path, users: &IdMap, items: &IdMap) -> Result<Csr, ArtifactError> {
    let (_, batches) = read_parquet(path)?;
    matrix(path, &batches, users, items)
}

fn matrix(
    path: &Path,
    batches: &[RecordBatch],
    users: &IdMap,
    items: &IdMap,
) -> Result<Csr, ArtifactError> {
    let mut rows = Vec::new();
    let mut cols = Vec::new();
    let mut vals = Vec::new();
    for b in batches {
        let u = IdColumn::of(b, "user_id", path)?;
        let i = IdColumn::of(b, "item_id", path)?;
        check_type(&u, users, "user_id", path)?;
        check_type(&i, items, "item_id", path)?;
        let value = b
            .column_by_name("value")
            .and_then(|c| c.as_any().downcast_ref::<Float32Array>());
        for row in 0..b.num_rows() {
            if let (Some(r), Some(c)) = (users.index(u.get(row)), items.index(i.get(row))) {
                rows.push(r);
                cols.push(c);
                vals.push(value.map_or(1.0, |v| v.value(row)));
            }
        }
    }
    finite(
        Csr::from_triplets(users.len(), items.len(), &rows, &cols, &vals),
        path,
    )
}

/// `m` if all its values are finite.
pub fn finite(m: Csr, path: &Path) -> Result<Csr, ArtifactError> {
    // Each value passed the extract's contract, but duplicates are summed here and
    // a sum can overflow f32: an infinite value would turn every factor into NaN.
    if let Some(at) = m.data.iter().position(|v| !v.is_finite()) {
        let row = m.indptr.partition_point(|&p| p <= at) - 1;
        return Err(ArtifactError::Invalid(format!(
            "{}: the values of user #{row} and item #{} sum to {} (duplicate pairs are summed); \
             keep `value` well below 1e38, e.g. scale or cap it in the SQL",
            path.display(),
            m.indices[at],
            m.data[at]
        )));
    }
    Ok(m)
}

/// Ids of different types never match; say so instead of silently matching nothing.
pub fn check_type(
    col: &IdColumn<'_>,
    map: &IdMap,
    name: &str,
    path: &Path,
) -> Result<(), ArtifactError> {
    let expected = ids_type_name(map);
    if map.is_empty() || col.type_name() == expected {
        Ok(())
    } else {
        Err(ArtifactError::Invalid(format!(
            "{}: column `{name}` is {} but the model's ids are {expected}; cast it in the SQL",
            path.display(),
            col.type_name()
        )))
    }
}
