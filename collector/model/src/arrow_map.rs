//! Attribute maps in Arrow: the `Map<Utf8, Utf8>` columns that hold span, resource, scope,
//! event and link attributes (values as display strings, their types kept beside), and the
//! string-column reader shared by the span conversions.

use std::collections::BTreeMap;

use arrow_array::builder::{MapBuilder, MapFieldNames, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{Array, MapArray};

use crate::span::{AttrValue, KeyValue};
use crate::ModelError;

pub(crate) type StringMapBuilder = MapBuilder<StringBuilder, StringBuilder>;

pub(crate) fn map_builder(capacity: usize) -> StringMapBuilder {
    let names = MapFieldNames {
        entry: "entries".into(),
        key: "keys".into(),
        value: "values".into(),
    };
    MapBuilder::with_capacity(
        Some(names),
        StringBuilder::new(),
        StringBuilder::new(),
        capacity,
    )
}

/// Appends one attribute map and returns the types of its non-string values.
pub(crate) fn append_map<'a>(
    builder: &mut StringMapBuilder,
    attrs: impl Iterator<Item = &'a KeyValue>,
) -> Result<BTreeMap<String, &'static str>, ModelError> {
    let mut types = BTreeMap::new();
    for kv in attrs {
        builder.keys().append_value(&kv.key);
        match &kv.value {
            AttrValue::Str(v) => builder.values().append_value(v),
            other => builder.values().append_value(other.to_display()),
        }
        if !matches!(kv.value, AttrValue::Str(_)) {
            types.insert(kv.key.clone(), kv.value.type_name());
        }
    }
    builder.append(true)?;
    Ok(types)
}

/// Reads a string column that may be `Utf8` or `Utf8View` (DataFusion may produce either).
pub(crate) struct Strings<'a>(pub(crate) &'a dyn Array);

impl<'a> Strings<'a> {
    pub(crate) fn get(&self, i: usize) -> Option<&'a str> {
        if self.0.is_null(i) {
            return None;
        }
        if let Some(a) = self.0.as_string_opt::<i32>() {
            return Some(a.value(i));
        }
        self.0.as_string_view_opt().map(|a| a.value(i))
    }
}

/// The attributes of one row of an attribute map, typed back by `types` (key -> type name).
pub(crate) fn read_map(
    map: &MapArray,
    row: usize,
    types: Option<&serde_json::Value>,
) -> Vec<KeyValue> {
    if map.is_null(row) {
        return Vec::new();
    }
    let entries = map.value(row);
    let keys = Strings(entries.column(0).as_ref());
    let values = Strings(entries.column(1).as_ref());
    (0..entries.len())
        .map(|i| {
            let key = keys.get(i).unwrap_or_default().to_string();
            let display = values.get(i).unwrap_or_default();
            let value = match types.and_then(|t| t.get(&key)).and_then(|t| t.as_str()) {
                Some(ty) => AttrValue::from_display(ty, display),
                None => AttrValue::Str(display.to_string()),
            };
            KeyValue { key, value }
        })
        .collect()
}
