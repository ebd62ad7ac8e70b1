//! `POST /api/v1/sql`: read-only DataFusion SQL with a row limit and a time limit. Binary
//! columns (IDs) are rendered as lowercase hex, maps as JSON objects.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiState;

#[derive(Deserialize)]
pub struct SqlRequest {
    pub sql: String,
}

fn error(status: StatusCode, msg: impl AsRef<str>) -> Response {
    (status, Json(json!({"error": msg.as_ref()}))).into_response()
}

pub async fn query(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    // Any content type is accepted: `curl -d` sends form encoding by default.
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("body must be a JSON object {{\"sql\": \"...\"}}: {e}");
            return error(StatusCode::BAD_REQUEST, msg);
        }
    };
    let started = Instant::now();
    let max_rows = state.query.sql_max_rows;
    let result = state
        .store
        .sql(&req.sql, max_rows + 1, state.query.sql_timeout)
        .await;
    state.observe(started);
    let batches = match result {
        Ok(b) => b,
        Err(e) => {
            let status = StatusCode::from_u16(e.code().http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, e.to_string());
        }
    };
    match render(&batches, max_rows) {
        Ok(body) => Json(body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Replaces binary columns with their hex rendering.
fn hex_binary(batch: &RecordBatch) -> Result<RecordBatch, String> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let hexed: Option<StringArray> = match field.data_type() {
            DataType::FixedSizeBinary(_)
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView => {
                let arr =
                    arrow::compute::cast(col, &DataType::Binary).map_err(|e| e.to_string())?;
                let bin = arr
                    .as_any()
                    .downcast_ref::<arrow::array::BinaryArray>()
                    .ok_or("binary column")?;
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
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Renders batches as `{"columns": [...], "rows": [[...]], "truncated": bool}`.
pub fn render(batches: &[RecordBatch], max_rows: usize) -> Result<Value, String> {
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<Value> = Vec::new();
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
        writer.write(&batch).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
        let objects: Vec<serde_json::Map<String, Value>> =
            serde_json::from_slice(&writer.into_inner()).map_err(|e| e.to_string())?;
        for mut obj in objects {
            rows.push(Value::Array(
                columns
                    .iter()
                    .map(|c| obj.remove(c).unwrap_or(Value::Null))
                    .collect(),
            ));
        }
    }
    let truncated = rows.len() > max_rows;
    rows.truncate(max_rows);
    Ok(json!({"columns": columns, "rows": rows, "truncated": truncated}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{FixedSizeBinaryArray, Int64Array};

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
        assert_eq!(v["columns"], json!(["id", "n"]));
        assert_eq!(v["rows"], json!([["ab01", 1]]));
        assert_eq!(v["truncated"], json!(true));
        let _ = Array::len(&Int64Array::from(vec![1]));
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
            let columns = v["columns"].as_array().unwrap();
            let i = columns.iter().position(|c| c == name).unwrap();
            v["rows"][0][i].clone()
        };
        assert_eq!(col("name"), json!("GET /"));
        assert_eq!(col("events")[0]["name"], json!("retry"));
        assert_eq!(col("events")[0]["attributes"], json!({"reason": "reset"}));
        assert_eq!(col("links")[0]["span_id"], json!("cdcdcdcdcdcdcdcd"));
    }
}
