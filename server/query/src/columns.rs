//! Typed access to the columns of a query's record batches. A column is cast to the type the
//! query reads (DataFusion may answer a string column as `Utf8View` or a dictionary, a count
//! as `UInt64`); a column that is missing or cannot be cast is a [`QueryError::Column`] naming
//! it, never a silent zero or empty string.

use std::collections::BTreeMap;

use arrow::array::{
    Array, AsArray, BooleanArray, FixedSizeBinaryArray, Int64Array, MapArray, RecordBatch,
    StringArray,
};
use arrow::compute::{cast, cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Int64Type};

use crate::error::QueryError;

/// The columns of one batch of one table (named in errors).
pub(crate) struct Columns<'a> {
    pub table: &'static str,
    pub batch: &'a RecordBatch,
}

impl Columns<'_> {
    /// The error for column `name`, which holds `found` instead of what was asked for.
    fn wrong(&self, name: &'static str, found: String) -> QueryError {
        QueryError::Column {
            table: self.table,
            column: name,
            found,
        }
    }

    /// Column `name` as it is stored, or an error naming it when it is missing.
    fn raw(&self, name: &'static str) -> Result<&arrow::array::ArrayRef, QueryError> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| self.wrong(name, "nothing (missing)".into()))
    }

    fn column(
        &self,
        name: &'static str,
        ty: &DataType,
    ) -> Result<arrow::array::ArrayRef, QueryError> {
        let missing = |found: String| self.wrong(name, found);
        let col = self.raw(name)?;
        if col.data_type() == ty {
            return Ok(col.clone());
        }
        if !compatible(col.data_type(), ty) {
            return Err(missing(col.data_type().to_string()));
        }
        let strict = CastOptions {
            safe: false,
            ..CastOptions::default()
        };
        cast_with_options(col, ty, &strict).map_err(|_| missing(col.data_type().to_string()))
    }

    pub fn strings(&self, name: &'static str) -> Result<StringArray, QueryError> {
        Ok(self
            .column(name, &DataType::Utf8)?
            .as_string::<i32>()
            .clone())
    }

    pub fn ints(&self, name: &'static str) -> Result<Int64Array, QueryError> {
        Ok(self
            .column(name, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .clone())
    }

    pub fn bools(&self, name: &'static str) -> Result<BooleanArray, QueryError> {
        Ok(self.column(name, &DataType::Boolean)?.as_boolean().clone())
    }

    /// A fixed-size binary column (trace and span IDs) of `size` bytes.
    pub fn ids(&self, name: &'static str, size: i32) -> Result<FixedSizeBinaryArray, QueryError> {
        Ok(self
            .column(name, &DataType::FixedSizeBinary(size))?
            .as_fixed_size_binary()
            .clone())
    }

    /// A string-to-string map column, as one map per row (empty where null).
    pub fn string_maps(
        &self,
        name: &'static str,
    ) -> Result<Vec<BTreeMap<String, String>>, QueryError> {
        let wrong = |found: String| self.wrong(name, found);
        let col = self.raw(name)?;
        let map: &MapArray = col
            .as_map_opt()
            .ok_or_else(|| wrong(col.data_type().to_string()))?;
        let keys = cast(map.keys(), &DataType::Utf8).map_err(|e| wrong(e.to_string()))?;
        let values = cast(map.values(), &DataType::Utf8).map_err(|e| wrong(e.to_string()))?;
        let (keys, values) = (keys.as_string::<i32>(), values.as_string::<i32>());
        let offsets = map.value_offsets();
        Ok((0..map.len())
            .map(|row| {
                if map.is_null(row) {
                    return BTreeMap::new();
                }
                let range = offsets[row] as usize..offsets[row + 1] as usize;
                range
                    .filter(|&i| keys.is_valid(i) && values.is_valid(i))
                    .map(|i| (keys.value(i).to_string(), values.value(i).to_string()))
                    .collect()
            })
            .collect())
    }
}

/// Whether a column of type `from` holds what a query reading `to` means: the same kind of
/// value in another width or encoding (never a string parsed as a number, say).
fn compatible(from: &DataType, to: &DataType) -> bool {
    use DataType as T;
    let from = match from {
        T::Dictionary(_, value) => value.as_ref(),
        other => other,
    };
    let string = |t: &T| matches!(t, T::Utf8 | T::LargeUtf8 | T::Utf8View);
    let integer = |t: &T| t.is_integer() || matches!(t, T::Timestamp(..) | T::Duration(_));
    match to {
        T::Utf8 => string(from),
        T::Int64 => integer(from),
        T::Float64 => integer(from) || from.is_floating(),
        T::Boolean => matches!(from, T::Boolean),
        T::FixedSizeBinary(n) => match from {
            T::FixedSizeBinary(m) => m == n,
            other => matches!(other, T::Binary | T::LargeBinary | T::BinaryView),
        },
        _ => false,
    }
}

/// The value at `i`, or `None` where null.
pub(crate) fn opt_int(a: &Int64Array, i: usize) -> Option<i64> {
    a.is_valid(i).then(|| a.value(i))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{StringViewArray, UInt64Array};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn columns_are_cast_and_missing_ones_named() {
        let schema = Schema::new(vec![
            Field::new("name", DataType::Utf8View, false),
            Field::new("n", DataType::UInt64, false),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringViewArray::from(vec!["a", "b"])),
                Arc::new(UInt64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let c = Columns {
            table: "t",
            batch: &batch,
        };
        assert_eq!(c.strings("name").unwrap().value(1), "b");
        assert_eq!(c.ints("n").unwrap().value(1), 2);
        let err = c.ints("missing").unwrap_err().to_string();
        assert!(err.contains("missing") && err.contains("of t"), "{err}");
        let err = c.bools("name").unwrap_err().to_string();
        assert!(err.contains("Utf8View"), "{err}");
    }
}
