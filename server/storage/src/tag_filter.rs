//! Jaeger tag conditions (`tags={"http.status_code":"503"}`) evaluated on the columns of span
//! batches, so a tag search decodes only the columns that can hold a tag instead of whole
//! spans. A tag `key=value` holds for a span when any of its attribute sets (span, resource,
//! scope, any event's, any link's) has `key` with a value whose display string is `value`:
//! the promoted column of `key` (see [`meshtrace_model::PROMOTED`]), else the string maps,
//! which store every other value as its display string.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, BooleanArray, MapArray, RecordBatch, StringArray};
use arrow_schema::ArrowError;
use meshtrace_model::PROMOTED;

/// The attribute map columns, top level.
const MAP_COLUMNS: [&str; 3] = ["attributes", "resource_attributes", "scope_attributes"];
/// The list columns whose structs carry an `attributes` map.
const NESTED_COLUMNS: [&str; 2] = ["events", "links"];

/// One `key=value` condition and the promoted column that may hold it.
#[derive(Clone, Debug)]
struct Tag {
    key: String,
    value: String,
    /// (column, value as an integer when the column holds integers and `value` is one
    /// written as `to_string` writes it).
    promoted: Option<(&'static str, Option<i64>, bool)>,
}

/// Every tag of a search; a span must meet all of them.
#[derive(Clone, Debug, Default)]
pub(crate) struct TagFilter {
    tags: Vec<Tag>,
}

impl TagFilter {
    pub(crate) fn new(tags: &[(String, String)]) -> TagFilter {
        let tags = tags
            .iter()
            .map(|(key, value)| {
                let promoted =
                    PROMOTED
                        .iter()
                        .find(|(_, k, _)| k == key)
                        .map(|(col, _, is_int)| {
                            let int = value
                                .parse::<i64>()
                                .ok()
                                .filter(|i| i.to_string() == *value);
                            (*col, int, *is_int)
                        });
                Tag {
                    key: key.clone(),
                    value: value.clone(),
                    promoted,
                }
            })
            .collect();
        TagFilter { tags }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The columns [`TagFilter::mask`] reads.
    pub(crate) fn columns(&self) -> Vec<&'static str> {
        let mut cols: Vec<&'static str> = self
            .tags
            .iter()
            .filter_map(|t| t.promoted.map(|p| p.0))
            .collect();
        cols.sort_unstable();
        cols.dedup();
        cols.extend(MAP_COLUMNS);
        cols.extend(NESTED_COLUMNS);
        cols
    }

    /// Which rows of `batch` (holding at least [`TagFilter::columns`]) meet every tag.
    pub(crate) fn mask(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let mut keep = vec![true; batch.num_rows()];
        for tag in &self.tags {
            let hits = tag_hits(batch, tag)?;
            keep.iter_mut().zip(hits).for_each(|(k, h)| *k &= h);
        }
        Ok(BooleanArray::from(keep))
    }
}

/// Per row, whether any attribute set holds the tag.
fn tag_hits(batch: &RecordBatch, tag: &Tag) -> Result<Vec<bool>, ArrowError> {
    let n = batch.num_rows();
    let mut hits = vec![false; n];
    if let Some((column, int, is_int)) = tag.promoted {
        let col = column_of(batch, column)?;
        if is_int {
            let ints = col
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| wrong_type(column))?;
            if let Some(want) = int {
                for (i, h) in hits.iter_mut().enumerate() {
                    *h = ints.is_valid(i) && ints.value(i) == want;
                }
            }
        } else {
            let strs = strings(col, column)?;
            for (i, h) in hits.iter_mut().enumerate() {
                *h = strs.is_valid(i) && strs.value(i) == tag.value;
            }
        }
    }
    for column in MAP_COLUMNS {
        let map = column_of(batch, column)?
            .as_map_opt()
            .ok_or_else(|| wrong_type(column))?;
        or_into(&mut hits, &map_hits(map, tag)?);
    }
    for column in NESTED_COLUMNS {
        let list = column_of(batch, column)?
            .as_list_opt::<i32>()
            .ok_or_else(|| wrong_type(column))?;
        let items = list
            .values()
            .as_struct_opt()
            .ok_or_else(|| wrong_type(column))?;
        let map = items
            .column_by_name("attributes")
            .and_then(|c| c.as_map_opt())
            .ok_or_else(|| wrong_type(column))?;
        let item_hits = map_hits(map, tag)?;
        let offsets = list.value_offsets();
        for (i, h) in hits.iter_mut().enumerate() {
            if !*h && list.is_valid(i) {
                let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
                *h = item_hits[a..b].iter().any(|x| *x);
            }
        }
    }
    Ok(hits)
}

/// Per row of the map array, whether one of its entries is the tag.
fn map_hits(map: &MapArray, tag: &Tag) -> Result<Vec<bool>, ArrowError> {
    let keys = strings(map.keys(), "map keys")?;
    let values = strings(map.values(), "map values")?;
    let offsets = map.value_offsets();
    Ok((0..map.len())
        .map(|i| {
            let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
            (a..b).any(|j| {
                keys.value(j) == tag.key && values.is_valid(j) && values.value(j) == tag.value
            })
        })
        .collect())
}

fn or_into(hits: &mut [bool], more: &[bool]) {
    hits.iter_mut().zip(more).for_each(|(h, m)| *h |= *m);
}

fn column_of<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, ArrowError> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| ArrowError::SchemaError(format!("column {name} is missing")))
}

fn strings<'a>(col: &'a dyn Array, name: &str) -> Result<&'a StringArray, ArrowError> {
    col.as_string_opt::<i32>().ok_or_else(|| wrong_type(name))
}

fn wrong_type(name: &str) -> ArrowError {
    ArrowError::SchemaError(format!("column {name} has an unexpected type"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::arrow_conv::spans_to_batch;
    use meshtrace_model::{AttrValue, Event, KeyValue, Link, Span};

    fn tag(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    /// The column mask agrees, span by span, with matching on decoded spans.
    #[test]
    fn agrees_with_the_attributes_of_decoded_spans() {
        let spans = vec![
            Span {
                attributes: vec![KeyValue::new("http.status_code", AttrValue::Int(503))],
                ..Default::default()
            },
            Span {
                // Not an integer: stored in the map as a string, still "503" on display.
                attributes: vec![KeyValue::string("http.status_code", "503")],
                resource_attributes: vec![KeyValue::string("k8s.namespace", "prod")],
                ..Default::default()
            },
            Span {
                events: vec![Event {
                    time_unix_nano: 1,
                    name: "retry".into(),
                    attributes: vec![KeyValue::new("attempt", AttrValue::Int(2))],
                }],
                links: vec![Link {
                    trace_id: [1; 16],
                    span_id: [2; 8],
                    trace_state: String::new(),
                    attributes: vec![KeyValue::new("sampled", AttrValue::Bool(true))],
                }],
                scope_attributes: vec![KeyValue::string("lib", "envoy")],
                attributes: vec![KeyValue::string("http.method", "GET")],
                ..Default::default()
            },
        ];
        let batch = spans_to_batch(&spans).unwrap();
        type Case = (Vec<(String, String)>, [bool; 3]);
        let cases: Vec<Case> = vec![
            (vec![tag("http.status_code", "503")], [true, true, false]),
            (vec![tag("http.status_code", "0503")], [false, false, false]),
            (
                vec![tag("http.status_code", "503"), tag("k8s.namespace", "prod")],
                [false, true, false],
            ),
            (vec![tag("attempt", "2")], [false, false, true]),
            (vec![tag("sampled", "true")], [false, false, true]),
            (
                vec![tag("lib", "envoy"), tag("http.method", "GET")],
                [false, false, true],
            ),
            (vec![tag("http.method", "POST")], [false, false, false]),
            (vec![], [true, true, true]),
        ];
        for (tags, want) in cases {
            let got = TagFilter::new(&tags).mask(&batch).unwrap();
            let got: Vec<bool> = got.iter().map(|b| b.unwrap_or(false)).collect();
            assert_eq!(got, want, "tags {tags:?}");
        }
    }
}
