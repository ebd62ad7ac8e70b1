//! The Arrow schema of the `spans` table, the one schema used in memory, in Parquet and in SQL.
//!
//! Fixed columns hold IDs, names, kind, status, time and the promoted mesh/HTTP attributes
//! ([`crate::PROMOTED`]); three `Map<Utf8, Utf8>` columns hold the remaining span, resource and
//! scope attributes as strings; `attribute_types` records the type of every non-string
//! attribute (JSON, null when all are strings) so values are rebuilt exactly. Events and links
//! are `List<Struct>` columns (null when a span has none) whose structs carry their own
//! attribute map and type record, so SQL can reach into them (`events[1]['name']`,
//! `unnest(links)`).

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::PROMOTED;

/// The data type of a string-to-string map column.
pub fn string_map_type() -> DataType {
    let entries = Fields::from(vec![
        Field::new("keys", DataType::Utf8, false),
        Field::new("values", DataType::Utf8, true),
    ]);
    DataType::Map(
        Arc::new(Field::new("entries", DataType::Struct(entries), false)),
        false,
    )
}

/// The data type of the `events` column: a list of (time, name, attributes, attribute_types).
pub fn events_type() -> DataType {
    list_of(vec![
        Field::new("time", timestamp_type(), false),
        Field::new("name", DataType::Utf8, false),
        Field::new("attributes", string_map_type(), false),
        Field::new("attribute_types", DataType::Utf8, true),
    ])
}

/// The data type of the `links` column: a list of (trace_id, span_id, trace_state,
/// attributes, attribute_types).
pub fn links_type() -> DataType {
    list_of(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("trace_state", DataType::Utf8, true),
        Field::new("attributes", string_map_type(), false),
        Field::new("attribute_types", DataType::Utf8, true),
    ])
}

fn list_of(fields: Vec<Field>) -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(Fields::from(fields)),
        false,
    )))
}

/// The timestamp type of `start_time`: nanoseconds since the epoch, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The schema of the `spans` table.
pub fn spans_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = vec![
                Field::new("trace_id", DataType::FixedSizeBinary(16), false),
                Field::new("span_id", DataType::FixedSizeBinary(8), false),
                Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
                Field::new("trace_state", DataType::Utf8, true),
                Field::new("service_name", DataType::Utf8, false),
                Field::new("name", DataType::Utf8, false),
                Field::new("kind", DataType::Utf8, false),
                Field::new("start_time", timestamp_type(), false),
                Field::new("duration_ns", DataType::Int64, false),
                Field::new("status_code", DataType::Utf8, false),
                Field::new("status_message", DataType::Utf8, true),
                Field::new("scope_name", DataType::Utf8, true),
                Field::new("scope_version", DataType::Utf8, true),
            ];
            for (column, _, is_int) in PROMOTED {
                let ty = if *is_int {
                    DataType::Int64
                } else {
                    DataType::Utf8
                };
                fields.push(Field::new(*column, ty, true));
            }
            fields.extend([
                Field::new("attributes", string_map_type(), false),
                Field::new("resource_attributes", string_map_type(), false),
                Field::new("scope_attributes", string_map_type(), false),
                Field::new("attribute_types", DataType::Utf8, true),
                Field::new("events", events_type(), true),
                Field::new("links", links_type(), true),
            ]);
            Arc::new(Schema::new(fields))
        })
        .clone()
}
