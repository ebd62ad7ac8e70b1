//! Reads OTLP protobuf `ExportTraceServiceRequest` bytes straight into model spans.
//!
//! prost would first build the generated message types (a `Vec` per ID, a `String` per key and
//! per value, an `AnyValue` per attribute, vectors grown one push at a time) that a conversion
//! would then move and clone into [`Span`]s. This reader walks the wire format once and builds
//! the spans from the bytes: IDs are checked as slices in place,
//! a span's attribute, event and link vectors are counted before they fill, and nothing is
//! built that is thrown away. It keeps protobuf's rules as prost applies them: fields in any
//! order, unknown fields skipped, the last value of a scalar field wins, a message field sent
//! twice is merged, strings must be UTF-8, nesting is bounded; the tests check it against
//! prost's decoding followed by the conversion in `reference.rs` (tests and fuzzing only). Fields meshtrace does not keep (schema URLs, dropped counts, flags,
//! entity references) are skipped without being looked into.

use meshtrace_model::{AttrValue, Event, KeyValue, Link, Span, SpanKind, StatusCode};

use super::{duration, nanos, Base};
use crate::validate::{validate_raw, Position, RawIds};
use crate::{Batch, Limits};

/// Nested messages deeper than this are refused (prost's recursion limit).
const MAX_DEPTH: u32 = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// Why the bytes are not an `ExportTraceServiceRequest`: the message (and field) and problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, WireError>;

fn err<T>(msg: &str, problem: &str) -> Result<T> {
    Err(WireError(format!("{msg}: {problem}")))
}

/// A cursor over one message's bytes; `msg` names the message in errors.
struct Reader<'a> {
    buf: &'a [u8],
    msg: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], msg: &'static str) -> Self {
        Reader { buf, msg }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        err(self.msg, "invalid varint")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return err(self.msg, "buffer underflow");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field's number and wire type, or `None` at the end of the message.
    fn field(&mut self) -> Result<Option<(u32, u8)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        if number == 0 || number > u64::from(u32::MAX >> 3) || wire > FIXED32 {
            return err(self.msg, "invalid key");
        }
        Ok(Some((number as u32, wire)))
    }

    fn expect(&self, wire: u8, want: u8, field: &str) -> Result<()> {
        if wire == want {
            Ok(())
        } else {
            Err(WireError(format!(
                "{}.{field}: invalid wire type",
                self.msg
            )))
        }
    }

    fn len(&mut self, wire: u8, field: &str) -> Result<&'a [u8]> {
        self.expect(wire, LEN, field)?;
        let n = self.varint()?;
        self.take(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn string(&mut self, wire: u8, field: &str) -> Result<String> {
        let bytes = self.len(wire, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(WireError(format!("{}.{field}: invalid utf-8", self.msg))),
        }
    }

    fn uvarint(&mut self, wire: u8, field: &str) -> Result<u64> {
        self.expect(wire, VARINT, field)?;
        self.varint()
    }

    fn fixed64(&mut self, wire: u8, field: &str) -> Result<u64> {
        self.expect(wire, FIXED64, field)?;
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// Skips a field this reader does not keep (after checking its wire type, if known).
    fn skip(&mut self, number: u32, wire: u8) -> Result<()> {
        self.skip_nested(number, wire, 0)
    }

    /// Skips a field inside `depth` groups; groups nest no deeper than [`MAX_DEPTH`], so a
    /// body of group tags cannot exhaust the stack.
    fn skip_nested(&mut self, number: u32, wire: u8, depth: u32) -> Result<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.len(LEN, "").map(drop),
            FIXED32 => self.take(4).map(drop),
            START_GROUP if depth >= MAX_DEPTH => err(self.msg, "recursion limit reached"),
            START_GROUP => loop {
                match self.field()? {
                    Some((n, END_GROUP)) if n == number => return Ok(()),
                    Some((n, w)) => self.skip_nested(n, w, depth + 1)?,
                    None => return err(self.msg, "unterminated group"),
                }
            },
            _ => err(self.msg, "unexpected end group"),
        }
    }

    /// Skips a known field of a type this reader does not keep, checking its wire type.
    fn ignore(&mut self, number: u32, wire: u8, want: u8, field: &str) -> Result<()> {
        self.expect(wire, want, field)?;
        self.skip(number, wire)
    }
}

/// Decodes a request body into validated spans (see the module documentation).
pub fn decode(body: &[u8], limits: &Limits) -> Result<Batch> {
    let mut batch = Batch::default();
    let mut r = Reader::new(body, "ExportTraceServiceRequest");
    let mut resource = 0;
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => {
                let bytes = r.len(wire, "resource_spans")?;
                resource_spans(bytes, resource, limits, &mut batch)?;
                resource += 1;
            }
            _ => r.skip(number, wire)?,
        }
    }
    Ok(batch)
}

/// One `ResourceSpans`; its resource is read first wherever it sits in the bytes.
fn resource_spans(bytes: &[u8], at: usize, limits: &Limits, batch: &mut Batch) -> Result<()> {
    let mut attrs = Vec::new();
    let mut r = Reader::new(bytes, "ResourceSpans");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => resource(r.len(wire, "resource")?, &mut attrs)?,
            2 => drop(r.len(wire, "scope_spans")?),
            _ => r.skip(number, wire)?,
        }
    }
    let base = Base::of_resource(attrs);
    let mut index = 0;
    let mut r = Reader::new(bytes, "ResourceSpans");
    while let Some((number, wire)) = r.field()? {
        match number {
            2 => {
                let scope = r.len(wire, "scope_spans")?;
                scope_spans(scope, &base, at, &mut index, limits, batch)?;
            }
            _ => r.skip(number, wire)?,
        }
    }
    Ok(())
}

fn resource(bytes: &[u8], attrs: &mut Vec<KeyValue>) -> Result<()> {
    let mut r = Reader::new(bytes, "Resource");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => attrs.push(key_value(r.len(wire, "attributes")?, 3)?),
            2 => r.ignore(number, wire, VARINT, "dropped_attributes_count")?,
            _ => r.skip(number, wire)?,
        }
    }
    Ok(())
}

/// One `ScopeSpans`: its scope first, then its spans in order.
fn scope_spans(
    bytes: &[u8],
    resource_base: &Base,
    resource: usize,
    index: &mut usize,
    limits: &Limits,
    batch: &mut Batch,
) -> Result<()> {
    let mut base = resource_base.clone();
    let mut spans = 0;
    let mut r = Reader::new(bytes, "ScopeSpans");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => scope(r.len(wire, "scope")?, &mut base)?,
            2 => {
                r.len(wire, "spans")?;
                spans += 1;
            }
            _ => r.skip(number, wire)?,
        }
    }
    // Spans are moved in once, not again each time the vector grows.
    batch.spans.reserve(spans);
    let mut r = Reader::new(bytes, "ScopeSpans");
    while let Some((number, wire)) = r.field()? {
        if number == 2 {
            let at = Position {
                resource: Some(resource),
                span: *index,
            };
            *index += 1;
            span(r.len(wire, "spans")?, &base, at, limits, batch)?;
        } else {
            r.skip(number, wire)?;
        }
    }
    Ok(())
}

fn scope(bytes: &[u8], base: &mut Base) -> Result<()> {
    let mut r = Reader::new(bytes, "InstrumentationScope");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => base.scope_name = r.string(wire, "name")?,
            2 => base.scope_version = r.string(wire, "version")?,
            3 => base
                .scope_attributes
                .push(key_value(r.len(wire, "attributes")?, 4)?),
            4 => r.ignore(number, wire, VARINT, "dropped_attributes_count")?,
            _ => r.skip(number, wire)?,
        }
    }
    Ok(())
}

/// How many attributes, events and links a span holds, to size its vectors.
fn count_repeated(bytes: &[u8]) -> Result<[usize; 3]> {
    let mut counts = [0; 3];
    let mut r = Reader::new(bytes, "Span");
    while let Some((number, wire)) = r.field()? {
        match number {
            9 => counts[0] += 1,
            11 => counts[1] += 1,
            13 => counts[2] += 1,
            _ => {}
        }
        r.skip(number, wire)?;
    }
    Ok(counts)
}

fn span(bytes: &[u8], base: &Base, at: Position, limits: &Limits, batch: &mut Batch) -> Result<()> {
    let [attributes, events, links] = count_repeated(bytes)?;
    let mut s = Span {
        attributes: Vec::with_capacity(attributes),
        events: Vec::with_capacity(events),
        links: Vec::with_capacity(links),
        ..base.span()
    };
    let mut ids = RawIds {
        trace_id: &[],
        span_id: &[],
        parent_span_id: &[],
    };
    let (mut start, mut end) = (0, 0);
    let mut r = Reader::new(bytes, "Span");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => ids.trace_id = r.len(wire, "trace_id")?,
            2 => ids.span_id = r.len(wire, "span_id")?,
            3 => s.trace_state = r.string(wire, "trace_state")?,
            4 => ids.parent_span_id = r.len(wire, "parent_span_id")?,
            5 => s.name = r.string(wire, "name")?,
            6 => s.kind = SpanKind::from_otlp(r.uvarint(wire, "kind")? as i32).unwrap_or_default(),
            7 => start = r.fixed64(wire, "start_time_unix_nano")?,
            8 => end = r.fixed64(wire, "end_time_unix_nano")?,
            9 => s.attributes.push(key_value(r.len(wire, "attributes")?, 4)?),
            11 => s.events.push(event(r.len(wire, "events")?)?),
            13 => {
                if let Some(link) = link(r.len(wire, "links")?)? {
                    s.links.push(link);
                }
            }
            15 => status(r.len(wire, "status")?, &mut s)?,
            10 | 12 | 14 => r.ignore(number, wire, VARINT, "dropped count")?,
            16 => r.ignore(number, wire, FIXED32, "flags")?,
            _ => r.skip(number, wire)?,
        }
    }
    s.start_unix_nano = nanos(start);
    s.duration_nano = duration(s.start_unix_nano, nanos(end));
    validate_raw(at, ids, s, limits, batch);
    Ok(())
}

fn status(bytes: &[u8], s: &mut Span) -> Result<()> {
    let mut r = Reader::new(bytes, "Status");
    while let Some((number, wire)) = r.field()? {
        match number {
            2 => s.status_message = r.string(wire, "message")?,
            3 => s.status_code = StatusCode::from_otlp(r.uvarint(wire, "code")? as i32),
            _ => r.skip(number, wire)?,
        }
    }
    Ok(())
}

fn event(bytes: &[u8]) -> Result<Event> {
    let mut e = Event {
        time_unix_nano: 0,
        name: String::new(),
        attributes: Vec::new(),
    };
    let mut r = Reader::new(bytes, "Event");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => e.time_unix_nano = nanos(r.fixed64(wire, "time_unix_nano")?),
            2 => e.name = r.string(wire, "name")?,
            3 => e.attributes.push(key_value(r.len(wire, "attributes")?, 5)?),
            4 => r.ignore(number, wire, VARINT, "dropped_attributes_count")?,
            _ => r.skip(number, wire)?,
        }
    }
    Ok(e)
}

/// A link with IDs of the wrong size is dropped (it cannot point anywhere).
fn link(bytes: &[u8]) -> Result<Option<Link>> {
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    let (mut trace_state, mut attributes) = (String::new(), Vec::new());
    let mut r = Reader::new(bytes, "Link");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => trace_id = r.len(wire, "trace_id")?,
            2 => span_id = r.len(wire, "span_id")?,
            3 => trace_state = r.string(wire, "trace_state")?,
            4 => attributes.push(key_value(r.len(wire, "attributes")?, 5)?),
            5 => r.ignore(number, wire, VARINT, "dropped_attributes_count")?,
            6 => r.ignore(number, wire, FIXED32, "flags")?,
            _ => r.skip(number, wire)?,
        }
    }
    let (Ok(trace_id), Ok(span_id)) = (trace_id.try_into(), span_id.try_into()) else {
        tracing::debug!("dropping otlp link with malformed ids");
        return Ok(None);
    };
    Ok(Some(Link {
        trace_id,
        span_id,
        trace_state,
        attributes,
    }))
}

/// One `KeyValue` at nesting `depth`; a missing value is an empty string.
fn key_value(bytes: &[u8], depth: u32) -> Result<KeyValue> {
    if depth > MAX_DEPTH {
        return err("KeyValue", "recursion limit reached");
    }
    let mut key = String::new();
    let mut value: Option<AttrValue> = None;
    let mut r = Reader::new(bytes, "KeyValue");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => key = r.string(wire, "key")?,
            2 => any_value(r.len(wire, "value")?, depth + 1, &mut value)?,
            _ => r.skip(number, wire)?,
        }
    }
    Ok(KeyValue::new(
        key,
        value.unwrap_or_else(|| AttrValue::Str(String::new())),
    ))
}

/// Merges one `AnyValue` into `into`: a scalar replaces it; an array or key-value list
/// extends one of the same kind and replaces anything else.
fn any_value(bytes: &[u8], depth: u32, into: &mut Option<AttrValue>) -> Result<()> {
    if depth > MAX_DEPTH {
        return err("AnyValue", "recursion limit reached");
    }
    let mut r = Reader::new(bytes, "AnyValue");
    while let Some((number, wire)) = r.field()? {
        let v = match number {
            1 => AttrValue::Str(r.string(wire, "string_value")?),
            2 => AttrValue::Bool(r.uvarint(wire, "bool_value")? != 0),
            3 => AttrValue::Int(r.uvarint(wire, "int_value")? as i64),
            4 => AttrValue::Double(f64::from_bits(r.fixed64(wire, "double_value")?)),
            5 => {
                let mut values = match into.take() {
                    Some(AttrValue::Array(values)) => values,
                    _ => Vec::new(),
                };
                array(r.len(wire, "array_value")?, depth + 1, &mut values)?;
                AttrValue::Array(values)
            }
            6 => {
                let mut kvs = match into.take() {
                    Some(AttrValue::KvList(kvs)) => kvs,
                    _ => Vec::new(),
                };
                kv_list(r.len(wire, "kvlist_value")?, depth + 1, &mut kvs)?;
                AttrValue::KvList(kvs)
            }
            7 => AttrValue::Bytes(r.len(wire, "bytes_value")?.to_vec()),
            8 => {
                r.uvarint(wire, "string_value_strindex")?;
                AttrValue::Str(String::new())
            }
            _ => {
                r.skip(number, wire)?;
                continue;
            }
        };
        *into = Some(v);
    }
    if into.is_none() {
        *into = Some(AttrValue::Str(String::new()));
    }
    Ok(())
}

fn array(bytes: &[u8], depth: u32, values: &mut Vec<AttrValue>) -> Result<()> {
    let mut r = Reader::new(bytes, "ArrayValue");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => {
                let mut v = None;
                any_value(r.len(wire, "values")?, depth + 1, &mut v)?;
                values.push(v.unwrap_or_else(|| AttrValue::Str(String::new())));
            }
            _ => r.skip(number, wire)?,
        }
    }
    Ok(())
}

fn kv_list(bytes: &[u8], depth: u32, kvs: &mut Vec<KeyValue>) -> Result<()> {
    let mut r = Reader::new(bytes, "KeyValueList");
    while let Some((number, wire)) = r.field()? {
        match number {
            1 => kvs.push(key_value(r.len(wire, "values")?, depth + 1)?),
            _ => r.skip(number, wire)?,
        }
    }
    Ok(())
}

pub(crate) mod reference;
#[cfg(test)]
mod tests;
