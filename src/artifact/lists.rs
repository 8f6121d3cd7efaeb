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
