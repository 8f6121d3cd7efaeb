//! Data contracts between steps (see DESIGN.md): which columns each artifact has,
//! and the checks an extracted table must pass before anything trains on it.
//!
//! Ids are Int64 or Utf8 (smaller ints and other string types are cast), `value`
//! is Float32 (1 when absent), `ts` an optional timestamp. Ids are never null and
//! values never NaN or infinite.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::Role;

/// The columns a role requires and may have.
fn required(role: Role) -> &'static [&'static str] {
    match role {
        Role::Interactions => &["user_id", "item_id"],
        Role::Items | Role::Filter | Role::Events => &["item_id"],
        Role::Arms => &["arm_id"],
    }
}

fn id_type(dt: &DataType) -> Option<DataType> {
    match dt {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            Some(DataType::Int64)
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => Some(DataType::Int64),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(DataType::Utf8),
        DataType::Dictionary(_, v) => id_type(v),
        _ => None,
    }
}

fn is_id_column(role: Role, name: &str) -> bool {
    match role {
        Role::Arms => name == "arm_id",
        _ => {
            name == "item_id"
                || (name == "user_id" && matches!(role, Role::Interactions | Role::Filter))
        }
    }
}

/// The schema an extracted table is stored with, or what is wrong with it.
pub fn conform_schema(role: Role, schema: &Schema) -> Result<SchemaRef, String> {
    let mut problems = Vec::new();
    for col in required(role) {
        if schema.field_with_name(col).is_err() {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            problems.push(format!(
                "missing column `{col}` (a `{}` table needs {}; the query returned {})",
                role.as_str(),
                required(role)
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if have.is_empty() {
                    "no columns".to_string()
                } else {
                    have.iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    let mut fields: Vec<Field> = Vec::new();
    for f in schema.fields() {
        let name = f.name().as_str();
        let dt = if is_id_column(role, name) {
            match id_type(f.data_type()) {
                Some(t) => t,
                None => {
                    problems.push(format!(
                        "column `{name}` is {}; ids must be integers or strings",
                        f.data_type()
                    ));
                    continue;
                }
            }
        } else if role == Role::Interactions && name == "value" {
            if !f.data_type().is_numeric() {
                problems.push(format!(
                    "column `value` is {}; it must be numeric",
                    f.data_type()
                ));
                continue;
            }
            DataType::Float32
        } else if matches!(role, Role::Interactions | Role::Events | Role::Arms) && name == "ts" {
            match f.data_type() {
                DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
                }
                other => {
                    problems.push(format!(
                        "column `ts` is {other}; it must be a timestamp or date (e.g. `to_timestamp(...)` in SQL)"
                    ));
                    continue;
                }
            }
        } else {
            f.data_type().clone()
        };
        let nullable =
            !(is_id_column(role, name) || (role == Role::Interactions && name == "value"));
        fields.push(Field::new(name, dt, nullable));
    }
    if role == Role::Interactions && schema.field_with_name("value").is_err() {
        fields.push(Field::new("value", DataType::Float32, false));
    }
    if problems.is_empty() {
        Ok(Arc::new(Schema::new(fields)))
    } else {
        Err(problems.join("; "))
    }
}

/// Casts `batch` to `target` and checks ids and values; `first_row` is the 0-based
/// row number of the batch's first row in the whole result, for messages.
pub fn conform_batch(
    role: Role,
    batch: &RecordBatch,
    target: &SchemaRef,
    first_row: u64,
) -> Result<RecordBatch, String> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let name = field.name().as_str();
        let column = match batch.column_by_name(name) {
            Some(c) => cast(c, field.data_type()).map_err(|e| {
                format!(
                    "column `{name}` cannot be read as {}: {e}",
                    field.data_type()
                )
            })?,
            // Only `value` may be absent; it defaults to 1.
            None => Arc::new(Float32Array::from(vec![1.0f32; batch.num_rows()])) as ArrayRef,
        };
        if !field.is_nullable() && column.null_count() > 0 {
            let row = (0..column.len()).find(|&i| column.is_null(i)).unwrap_or(0);
            return Err(format!(
                "column `{name}` is null at row {}; ids and values must not be null",
                first_row + row as u64 + 1
            ));
        }
        if name == "value" && role == Role::Interactions {
            let values = column
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| "column `value` is not Float32 after cast".to_string())?;
            if let Some(row) = values.values().iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "column `value` is {} at row {}; values must be finite numbers",
                    values.value(row),
                    first_row + row as u64 + 1
                ));
            }
        }
        columns.push(column);
    }
    RecordBatch::try_new(target.clone(), columns).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array, StringArray};

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    fn col(array: impl Array + 'static) -> ArrayRef {
        Arc::new(array)
    }

    #[test]
    fn interactions_are_cast_and_value_defaults_to_one() {
        let b = batch(vec![
            ("user_id", col(Int32Array::from(vec![1, 2]))),
            ("item_id", col(StringArray::from(vec!["a", "b"]))),
        ]);
        let target = conform_schema(Role::Interactions, &b.schema()).unwrap();
        let out = conform_batch(Role::Interactions, &b, &target, 0).unwrap();
        assert_eq!(out.schema().field(0).data_type(), &DataType::Int64);
        assert_eq!(out.schema().field(1).data_type(), &DataType::Utf8);
        let v = out.column_by_name("value").unwrap();
        assert_eq!(
            v.as_any().downcast_ref::<Float32Array>().unwrap().values(),
            &[1.0, 1.0]
        );
    }

    #[test]
    fn missing_column_is_named() {
        let b = batch(vec![("user", col(Int32Array::from(vec![1])))]);
        let e = conform_schema(Role::Interactions, &b.schema()).unwrap_err();
        assert!(e.contains("missing column `user_id`"), "{e}");
        assert!(e.contains("the query returned `user`"), "{e}");
    }

    #[test]
    fn nan_and_null_are_rejected_with_row() {
        let b = batch(vec![
            ("user_id", col(Int32Array::from(vec![1, 2]))),
            ("item_id", col(Int32Array::from(vec![1, 2]))),
            ("value", col(Float64Array::from(vec![1.0, f64::NAN]))),
        ]);
        let target = conform_schema(Role::Interactions, &b.schema()).unwrap();
        let e = conform_batch(Role::Interactions, &b, &target, 10).unwrap_err();
        assert_eq!(
            e,
            "column `value` is NaN at row 12; values must be finite numbers"
        );

        let b = batch(vec![(
            "item_id",
            col(Int32Array::from(vec![Some(1), None])),
        )]);
        let target = conform_schema(Role::Filter, &b.schema()).unwrap();
        let e = conform_batch(Role::Filter, &b, &target, 0).unwrap_err();
        assert!(e.starts_with("column `item_id` is null at row 2"), "{e}");
    }
}
