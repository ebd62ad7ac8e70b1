//! Read-only SQL over every table (`POST /api/v1/sql`): DataFusion runs the query under the
//! configured row and time limits; the result is rendered as columns and rows of JSON values,
//! binary columns (IDs) as lowercase hex, maps as JSON objects.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::QueryError;
use crate::Queries;

/// The answer to a SQL query.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct SqlResult {
    pub columns: Vec<String>,
    /// One list of values per row, in the order of `columns`.
    #[schema(value_type = Vec<Vec<Value>>)]
    pub rows: Vec<Vec<Value>>,
    /// Whether rows past the configured limit were left out.
    pub truncated: bool,
    /// Whether damaged segments (files missing or unreadable, their spans held nowhere else)
    /// were left out of the `spans` table: the answer may lack their rows.
    pub partial: bool,
    /// The paths of those segments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_segments: Vec<String>,
}

impl Queries {
    /// Runs one read-only query (anything else is an invalid argument).
    pub async fn sql(&self, sql: &str) -> Result<SqlResult, QueryError> {
        let max_rows = self.config.sql_max_rows;
        let batches = self
            .store
            .sql(sql, max_rows + 1, self.config.sql_timeout)
            .await?;
        let mut result = render(&batches, max_rows)?;
        result.skipped_segments = self
            .skipped_segments(None, None)
            .into_iter()
            .map(|d| d.path)
            .collect();
        result.partial = !result.skipped_segments.is_empty();
        Ok(result)
    }
}

/// Replaces binary columns with their hex rendering.
fn hex_binary(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let hexed: Option<StringArray> = match field.data_type() {
            DataType::FixedSizeBinary(_)
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView => {
                let arr = arrow::compute::cast(col, &DataType::Binary)?;
                let bin = arrow::array::AsArray::as_binary::<i32>(&arr);
                Some(bin.iter().map(|v| v.map(hex::encode)).collect())
            }
            _ => None,
        };
        match hexed {
            Some(h) => {
                fields.push(Field::new(field.name(), DataType::Utf8, true));
                columns.push(Arc::new(h));
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(col.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Renders at most `max_rows` rows of these batches.
pub fn render(batches: &[RecordBatch], max_rows: usize) -> Result<SqlResult, QueryError> {
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<Value>> = Vec::new();
    for batch in batches {
        if columns.is_empty() {
            columns = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
        }
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = hex_binary(batch)?;
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(Vec::new());
        writer.write(&batch)?;
        writer.finish()?;
        let objects: Vec<serde_json::Map<String, Value>> =
            serde_json::from_slice(&writer.into_inner()).map_err(|e| {
                QueryError::InvalidArgument(format!("the result cannot be shown as JSON: {e}"))
            })?;
        for mut obj in objects {
            rows.push(
                columns
                    .iter()
                    .map(|c| obj.remove(c).unwrap_or(Value::Null))
                    .collect(),
            );
        }
    }
    let truncated = rows.len() > max_rows;
    rows.truncate(max_rows);
    Ok(SqlResult {
        columns,
        rows,
        truncated,
        partial: false,
        skipped_segments: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{FixedSizeBinaryArray, Int64Array};
    use serde_json::json;

    #[test]
    fn renders_hex_ids_and_truncates() {
        let ids = FixedSizeBinaryArray::try_from_iter(
            vec![vec![0xab, 0x01], vec![0x00, 0xff]].into_iter(),
        )
        .unwrap();
        let n = Int64Array::from(vec![1, 2]);
        let schema = Schema::new(vec![
            Field::new("id", DataType::FixedSizeBinary(2), false),
            Field::new("n", DataType::Int64, false),
        ]);
        let batch =
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ids), Arc::new(n)]).unwrap();
        let v = render(&[batch], 1).unwrap();
        assert_eq!(v.columns, ["id", "n"]);
        assert_eq!(v.rows, [[json!("ab01"), json!(1)]]);
        assert!(v.truncated);
    }

    #[test]
    fn renders_whole_span_rows_with_events_and_links() {
        use meshtrace_model::{Event, KeyValue, Link, Span};
        let span = Span {
            name: "GET /".into(),
            events: vec![Event {
                time_unix_nano: 1_000,
                name: "retry".into(),
                attributes: vec![KeyValue::string("reason", "reset")],
            }],
            links: vec![Link {
                trace_id: [0xab; 16],
                span_id: [0xcd; 8],
                trace_state: String::new(),
                attributes: vec![],
            }],
            ..Span::default()
        };
        let batch = meshtrace_model::arrow_conv::spans_to_batch(&[span]).unwrap();
        let v = render(&[batch], 10).unwrap();
        let col = |name: &str| {
            let i = v.columns.iter().position(|c| c == name).unwrap();
            v.rows[0][i].clone()
        };
        assert_eq!(col("name"), json!("GET /"));
        assert_eq!(col("events")[0]["name"], json!("retry"));
        assert_eq!(col("events")[0]["attributes"], json!({"reason": "reset"}));
        assert_eq!(col("links")[0]["span_id"], json!("cdcdcdcdcdcdcdcd"));
    }
}
