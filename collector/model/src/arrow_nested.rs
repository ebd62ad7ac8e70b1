//! The nested `events` and `links` columns of the `spans` table: building them from spans and
//! reading them back.
//!
//! Each is a `List<Struct>` ([`crate::schema::events_type`], [`crate::schema::links_type`]),
//! null for a span without any. Every struct holds its attributes the way a span row does: a
//! string map plus an `attribute_types` JSON object (`{"key": "int64"}`) for the values that
//! are not strings, so a read gives back exactly what was written. The lists are built from
//! flat child columns in one pass over the spans rather than through nested builders.

use std::sync::Arc;

use arrow_array::builder::{FixedSizeBinaryBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampNanosecondType;
use arrow_array::{Array, ArrayRef, ListArray, MapArray, StructArray, TimestampNanosecondArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, FieldRef};

use crate::arrow_map::{append_map, map_builder, read_map, StringMapBuilder, Strings};
use crate::schema::{events_type, links_type};
use crate::span::{Event, KeyValue, Link, Span};
use crate::ModelError;

/// Appends the attributes of one event or link: the map entry and its type record.
fn append_attributes(
    map: &mut StringMapBuilder,
    types: &mut StringBuilder,
    attrs: &[KeyValue],
) -> Result<(), ModelError> {
    let t = append_map(map, attrs.iter())?;
    if t.is_empty() {
        types.append_null();
    } else {
        types.append_value(serde_json::to_string(&t).unwrap_or_default());
    }
    Ok(())
}

/// The `events` column for these spans.
pub(crate) fn events_array(spans: &[Span]) -> Result<ArrayRef, ModelError> {
    let total = spans.iter().map(|s| s.events.len()).sum();
    let mut time = Vec::with_capacity(total);
    let mut name = StringBuilder::new();
    let mut attrs = map_builder(total);
    let mut types = StringBuilder::new();
    for event in spans.iter().flat_map(|s| &s.events) {
        time.push(event.time_unix_nano);
        name.append_value(&event.name);
        append_attributes(&mut attrs, &mut types, &event.attributes)?;
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampNanosecondArray::from(time).with_timezone("UTC")),
        Arc::new(name.finish()),
        Arc::new(attrs.finish()),
        Arc::new(types.finish()),
    ];
    list(events_type(), spans.iter().map(|s| s.events.len()), columns)
}

/// The `links` column for these spans.
pub(crate) fn links_array(spans: &[Span]) -> Result<ArrayRef, ModelError> {
    let total = spans.iter().map(|s| s.links.len()).sum();
    let mut trace_id = FixedSizeBinaryBuilder::with_capacity(total, 16);
    let mut span_id = FixedSizeBinaryBuilder::with_capacity(total, 8);
    let mut trace_state = StringBuilder::new();
    let mut attrs = map_builder(total);
    let mut types = StringBuilder::new();
    for link in spans.iter().flat_map(|s| &s.links) {
        trace_id.append_value(link.trace_id)?;
        span_id.append_value(link.span_id)?;
        trace_state.append_option((!link.trace_state.is_empty()).then_some(&link.trace_state));
        append_attributes(&mut attrs, &mut types, &link.attributes)?;
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(trace_state.finish()),
        Arc::new(attrs.finish()),
        Arc::new(types.finish()),
    ];
    list(links_type(), spans.iter().map(|s| s.links.len()), columns)
}

/// A list column of `lengths` items per row (null where a row has none) over struct columns.
fn list(
    ty: DataType,
    lengths: impl Iterator<Item = usize>,
    columns: Vec<ArrayRef>,
) -> Result<ArrayRef, ModelError> {
    let item = list_item(&ty)?;
    let DataType::Struct(fields) = item.data_type() else {
        return Err(ModelError::Column("list item"));
    };
    let values = StructArray::try_new(fields.clone(), columns, None)?;
    let lengths: Vec<usize> = lengths.collect();
    let nulls = NullBuffer::from(lengths.iter().map(|&l| l > 0).collect::<Vec<bool>>());
    let array = ListArray::try_new(
        item,
        OffsetBuffer::from_lengths(lengths),
        Arc::new(values),
        Some(nulls),
    )?;
    Ok(Arc::new(array))
}

fn list_item(ty: &DataType) -> Result<FieldRef, ModelError> {
    match ty {
        DataType::List(item) => Ok(item.clone()),
        _ => Err(ModelError::Column("list")),
    }
}

/// The struct children of a nested column, looked up once per batch.
pub(crate) struct Nested<'a> {
    list: &'a ListArray,
    items: &'a StructArray,
    column: &'static str,
}

impl<'a> Nested<'a> {
    pub(crate) fn new(array: &'a ArrayRef, column: &'static str) -> Result<Self, ModelError> {
        let list = array
            .as_list_opt::<i32>()
            .ok_or(ModelError::Column(column))?;
        let items = list
            .values()
            .as_struct_opt()
            .ok_or(ModelError::Column(column))?;
        Ok(Nested {
            list,
            items,
            column,
        })
    }

    fn child(&self, name: &str) -> Result<&'a ArrayRef, ModelError> {
        self.items
            .column_by_name(name)
            .ok_or(ModelError::Column(self.column))
    }

    /// The item indexes of one row (empty when the row is null).
    fn range(&self, row: usize) -> std::ops::Range<usize> {
        if self.list.is_null(row) {
            return 0..0;
        }
        let offsets = self.list.value_offsets();
        offsets[row] as usize..offsets[row + 1] as usize
    }

    fn attributes(&self) -> Result<(&'a MapArray, Strings<'a>), ModelError> {
        let map = self
            .child("attributes")?
            .as_map_opt()
            .ok_or(ModelError::Column(self.column))?;
        Ok((map, Strings(self.child("attribute_types")?.as_ref())))
    }

    /// The events of one row of the `events` column.
    pub(crate) fn events(&self, row: usize) -> Result<Vec<Event>, ModelError> {
        let range = self.range(row);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let time = self
            .child("time")?
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or(ModelError::Column(self.column))?;
        let name = Strings(self.child("name")?.as_ref());
        let (attrs, types) = self.attributes()?;
        Ok(range
            .map(|i| Event {
                time_unix_nano: time.value(i),
                name: name.get(i).unwrap_or_default().to_string(),
                attributes: read_attributes(attrs, &types, i),
            })
            .collect())
    }

    /// The links of one row of the `links` column.
    pub(crate) fn links(&self, row: usize) -> Result<Vec<Link>, ModelError> {
        let range = self.range(row);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let ids = |name| {
            self.child(name)?
                .as_fixed_size_binary_opt()
                .ok_or(ModelError::Column(self.column))
        };
        let (trace_id, span_id) = (ids("trace_id")?, ids("span_id")?);
        let trace_state = Strings(self.child("trace_state")?.as_ref());
        let (attrs, types) = self.attributes()?;
        range
            .map(|i| {
                Ok(Link {
                    trace_id: trace_id
                        .value(i)
                        .try_into()
                        .map_err(|_| ModelError::Column(self.column))?,
                    span_id: span_id
                        .value(i)
                        .try_into()
                        .map_err(|_| ModelError::Column(self.column))?,
                    trace_state: trace_state.get(i).unwrap_or_default().to_string(),
                    attributes: read_attributes(attrs, &types, i),
                })
            })
            .collect()
    }
}

fn read_attributes(map: &MapArray, types: &Strings<'_>, i: usize) -> Vec<KeyValue> {
    let types: Option<serde_json::Value> = types.get(i).and_then(|t| serde_json::from_str(t).ok());
    read_map(map, i, types.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow_conv::{batch_to_spans, spans_to_batch};
    use crate::span::AttrValue;

    #[test]
    fn events_and_links_round_trip_with_their_attribute_types() {
        let with = Span {
            events: vec![
                Event {
                    time_unix_nano: 10,
                    name: "retry".into(),
                    attributes: vec![
                        KeyValue::new("attempt", AttrValue::Int(2)),
                        KeyValue::string("reason", "reset"),
                    ],
                },
                Event {
                    time_unix_nano: 20,
                    name: "done".into(),
                    attributes: vec![],
                },
            ],
            links: vec![Link {
                trace_id: [9; 16],
                span_id: [8; 8],
                trace_state: "k=v".into(),
                attributes: vec![KeyValue::new("sampled", AttrValue::Bool(true))],
            }],
            ..Span::default()
        };
        let spans = vec![Span::default(), with, Span::default()];
        let batch = spans_to_batch(&spans).unwrap();
        let events = batch.column_by_name("events").unwrap();
        assert!(events.is_null(0) && !events.is_null(1) && events.is_null(2));
        assert_eq!(batch_to_spans(&batch).unwrap(), spans);
    }
}
