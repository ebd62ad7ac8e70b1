//! The OTLP/JSON reader: request text straight into validated [`Span`]s, in one pass.
//!
//! Parsing into a `serde_json::Value` first (a map, a `String` per key and a node per value)
//! cost more than everything else on the JSON ingest path. These visitors read the text as
//! `serde_json` tokenizes it: object keys are matched without being copied ([`Field`]), IDs
//! are borrowed from the body when they hold no escapes, and each span is built once from its
//! resource's and scope's fields.
//!
//! proto3's JSON mapping is read as parsers must: fields by their JSON (`startTimeUnixNano`) or
//! proto (`start_time_unix_nano`) name, `null` as the field's default, enums by name or number,
//! 64-bit integers as numbers or strings, unknown fields skipped. Leniencies real senders
//! need: IDs in hex of either case or base64 (Tempo), Jaeger api_v3's `{"result": ...}`
//! wrapper, Tempo's `batches`, and older senders' `instrumentationLibrarySpans`. A span with
//! bad IDs is rejected alone; a body that does not parse is refused with the path of the
//! field that failed (`resourceSpans[0].scopeSpans[1].spans[2].startTimeUnixNano: ...`).
//!
//! JSON objects have no field order, so a resource may come after its scopes and a scope after
//! its spans: those are then parsed into a `serde_json::Value` and read once what every span
//! starts from is known (rare: exporters write the resource and scope first). Nesting is bounded by `serde_json`'s recursion limit.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use meshtrace_model::{AttrValue, Event, KeyValue, Link, Span, SpanKind, StatusCode};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

use super::super::ids::decode_hex_or_base64;
use super::super::{duration, nanos, Base};
use crate::validate::{validate_raw, Position, RawIds};
use crate::{Batch, Limits, RejectReason};

/// Reads a whole body; on failure, the error message starts with the path of the field.
pub(super) fn read(body: &[u8], limits: &Limits) -> Result<Batch, String> {
    let mut st = State {
        limits,
        batch: Batch::default(),
        path: Path::default(),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = Root(&mut st).deserialize(&mut de).and_then(|()| de.end());
    match read {
        Ok(()) => Ok(st.batch),
        Err(e) => Err(format!("{}{e}", st.path)),
    }
}

/// What the visitors share: the limits, the spans read so far, and where the reader is.
struct State<'l> {
    limits: &'l Limits,
    batch: Batch,
    path: Path,
}

/// Where the reader is, for error messages; cleared as each level ends.
#[derive(Default)]
struct Path {
    resource: Option<usize>,
    scope: Option<usize>,
    span: Option<usize>,
    field: &'static str,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = self.resource {
            parts.push(format!("resourceSpans[{r}]"));
        }
        if let Some(s) = self.scope {
            parts.push(format!("scopeSpans[{s}]"));
        }
        if let Some(i) = self.span {
            parts.push(format!("spans[{i}]"));
        }
        if !self.field.is_empty() {
            parts.push(self.field.to_string());
        }
        match parts.is_empty() {
            true => Ok(()),
            false => write!(f, "{}: ", parts.join(".")),
        }
    }
}

/// Every object key the reader knows, under its JSON and proto names; `Other` is skipped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    ResourceSpans,
    Result,
    Resource,
    ScopeSpans,
    Scope,
    Spans,
    Attributes,
    TraceId,
    SpanId,
    ParentSpanId,
    TraceState,
    Name,
    Version,
    Kind,
    StartTime,
    EndTime,
    Status,
    Events,
    Links,
    Code,
    Message,
    Time,
    Key,
    Value,
    Values,
    StringValue,
    BoolValue,
    IntValue,
    DoubleValue,
    BytesValue,
    ArrayValue,
    KvlistValue,
    Other,
}

impl Field {
    fn of(key: &str) -> Field {
        use Field::*;
        match key {
            "resourceSpans" | "resource_spans" | "batches" => ResourceSpans,
            "result" => Result,
            "resource" => Resource,
            "scopeSpans"
            | "scope_spans"
            | "instrumentationLibrarySpans"
            | "instrumentation_library_spans" => ScopeSpans,
            "scope" | "instrumentationLibrary" | "instrumentation_library" => Scope,
            "spans" => Spans,
            "attributes" => Attributes,
            "traceId" | "trace_id" => TraceId,
            "spanId" | "span_id" => SpanId,
            "parentSpanId" | "parent_span_id" => ParentSpanId,
            "traceState" | "trace_state" => TraceState,
            "name" => Name,
            "version" => Version,
            "kind" => Kind,
            "startTimeUnixNano" | "start_time_unix_nano" => StartTime,
            "endTimeUnixNano" | "end_time_unix_nano" => EndTime,
            "status" => Status,
            "events" => Events,
            "links" => Links,
            "code" => Code,
            "message" => Message,
            "timeUnixNano" | "time_unix_nano" => Time,
            "key" => Key,
            "value" => Value,
            "values" => Values,
            "stringValue" | "string_value" => StringValue,
            "boolValue" | "bool_value" => BoolValue,
            "intValue" | "int_value" => IntValue,
            "doubleValue" | "double_value" => DoubleValue,
            "bytesValue" | "bytes_value" => BytesValue,
            "arrayValue" | "array_value" => ArrayValue,
            "kvlistValue" | "kvlist_value" => KvlistValue,
            _ => Other,
        }
    }

    /// The JSON name, for error paths.
    fn name(self) -> &'static str {
        use Field::*;
        match self {
            ResourceSpans => "resourceSpans",
            Result => "result",
            Resource => "resource",
            ScopeSpans => "scopeSpans",
            Scope => "scope",
            Spans => "spans",
            Attributes => "attributes",
            TraceId => "traceId",
            SpanId => "spanId",
            ParentSpanId => "parentSpanId",
            TraceState => "traceState",
            Name => "name",
            Version => "version",
            Kind => "kind",
            StartTime => "startTimeUnixNano",
            EndTime => "endTimeUnixNano",
            Status => "status",
            Events => "events",
            Links => "links",
            Code => "code",
            Message => "message",
            Time => "timeUnixNano",
            Key => "key",
            Value => "value",
            Values => "values",
            StringValue => "stringValue",
            BoolValue => "boolValue",
            IntValue => "intValue",
            DoubleValue => "doubleValue",
            BytesValue => "bytesValue",
            ArrayValue => "arrayValue",
            KvlistValue => "kvlistValue",
            Other => "",
        }
    }
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(Field::of(v))
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Reads a value with `T`'s visitor, `null` (or nothing) as `T`'s default.
fn nullable<'de, A, S>(map: &mut A, seed: S) -> Result<S::Value, A::Error>
where
    A: MapAccess<'de>,
    S: DeserializeSeed<'de>,
    S::Value: Default,
{
    Ok(map.next_value_seed(Nullable(seed))?.unwrap_or_default())
}

/// Skips a value this reader does not keep.
fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(|_| ())
}

/// A seed that reads `null` as `None` and anything else with the inner seed.
struct Nullable<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// The body: `TracesData` / `ExportTraceServiceRequest`, or api_v3's `{"result": ...}`.
struct Root<'s, 'l>(&'s mut State<'l>);

impl<'de> DeserializeSeed<'de> for Root<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Root<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an OTLP/JSON object with resourceSpans")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let st = self.0;
        // Spans are read from the first of `resourceSpans` (or an alias) and `result` that is
        // not null; a key repeated or another alias after it is skipped.
        let mut read = false;
        while let Some(key) = map.next_key::<Field>()? {
            st.path.field = key.name();
            match key {
                Field::ResourceSpans if !read => {
                    read = map
                        .next_value_seed(Nullable(Resources(&mut *st)))?
                        .is_some();
                }
                Field::Result if !read => {
                    read = map.next_value_seed(Nullable(Root(&mut *st)))?.is_some();
                }
                _ => skip(&mut map)?,
            }
            st.path.field = "";
        }
        Ok(())
    }
}

/// The `resourceSpans` array.
struct Resources<'s, 'l>(&'s mut State<'l>);

impl<'de> DeserializeSeed<'de> for Resources<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Resources<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of ResourceSpans")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let st = self.0;
        let mut r = 0;
        st.path.field = "";
        loop {
            st.path.resource = Some(r);
            if seq.next_element_seed(ResourceSpans(st, r))?.is_none() {
                break;
            }
            r += 1;
        }
        st.path.resource = None;
        Ok(())
    }
}

/// One `ResourceSpans`; `.1` is its index.
struct ResourceSpans<'s, 'l>(&'s mut State<'l>, usize);

impl<'de> DeserializeSeed<'de> for ResourceSpans<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResourceSpans<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a ResourceSpans object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (st, r) = (self.0, self.1);
        let mut base: Option<Base> = None;
        let mut early: Vec<Json> = Vec::new();
        let mut scopes_read = false;
        let mut scopes = Scopes {
            r,
            index: 0,
            count: 0,
        };
        while let Some(key) = map.next_key::<Field>()? {
            st.path.field = key.name();
            match key {
                // Only the first `resource` counts, and the first `scopeSpans` (or an alias)
                // that is not null.
                Field::Resource if base.is_none() => {
                    let attrs = nullable(&mut map, ResourceSeed)?;
                    let b = base.insert(Base::of_resource(attrs));
                    for raw in early.drain(..) {
                        scopes.read_raw(st, b, &raw).map_err(relocated)?;
                    }
                }
                Field::ScopeSpans if !scopes_read => match &base {
                    Some(b) => {
                        let seed = Nullable(ScopeList(st, b, &mut scopes));
                        scopes_read = map.next_value_seed(seed)?.is_some();
                    }
                    // Its resource is further on: read the scopes once it is known.
                    None => {
                        early.extend(map.next_value::<Option<Json>>()?);
                        scopes_read = !early.is_empty();
                    }
                },
                _ => skip(&mut map)?,
            }
            st.path.field = "";
        }
        let base = base.unwrap_or_default();
        for raw in early {
            scopes.read_raw(st, &base, &raw).map_err(relocated)?;
        }
        Ok(())
    }
}

/// Counters over a resource's scopes: its index, the next span's index inside the resource
/// (for rejection messages), and scopes read.
struct Scopes {
    r: usize,
    index: usize,
    count: usize,
}

impl Scopes {
    /// Reads a `scopeSpans` array kept aside.
    fn read_raw(&mut self, st: &mut State, base: &Base, raw: &Json) -> serde_json::Result<()> {
        Nullable(ScopeList(st, base, self)).deserialize(raw)?;
        st.path.field = "";
        Ok(())
    }
}

/// A `scopeSpans` array.
struct ScopeList<'s, 'l, 'b, 'c>(&'s mut State<'l>, &'b Base, &'c mut Scopes);

impl<'de> DeserializeSeed<'de> for ScopeList<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ScopeList<'_, '_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of ScopeSpans")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ScopeList(st, base, scopes) = self;
        st.path.field = "";
        loop {
            st.path.scope = Some(scopes.count);
            if seq
                .next_element_seed(ScopeSpans(st, base, scopes))?
                .is_none()
            {
                break;
            }
            scopes.count += 1;
        }
        st.path.scope = None;
        Ok(())
    }
}

/// One `ScopeSpans` object.
struct ScopeSpans<'s, 'l, 'b, 'c>(&'s mut State<'l>, &'b Base, &'c mut Scopes);

impl<'de> DeserializeSeed<'de> for ScopeSpans<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ScopeSpans<'_, '_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a ScopeSpans object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ScopeSpans(st, resource, scopes) = self;
        let mut base: Option<Base> = None;
        let mut early: Vec<Json> = Vec::new();
        let mut spans_read = false;
        while let Some(key) = map.next_key::<Field>()? {
            st.path.field = key.name();
            match key {
                // Only the first `scope` counts, and the first `spans` that is not null.
                Field::Scope if base.is_none() => {
                    let scope = nullable(&mut map, ScopeSeed)?;
                    let b = base.insert(Base {
                        scope_name: scope.0,
                        scope_version: scope.1,
                        scope_attributes: scope.2,
                        ..resource.clone()
                    });
                    for raw in early.drain(..) {
                        read_spans_raw(st, b, scopes, &raw).map_err(relocated)?;
                    }
                }
                Field::Spans if !spans_read => match &base {
                    Some(b) => {
                        spans_read = map
                            .next_value_seed(Nullable(SpanList(st, b, scopes)))?
                            .is_some();
                    }
                    // Its scope is further on: read the spans once it is known.
                    None => {
                        early.extend(map.next_value::<Option<Json>>()?);
                        spans_read = !early.is_empty();
                    }
                },
                _ => skip(&mut map)?,
            }
            st.path.field = "";
        }
        let base = base.unwrap_or_else(|| resource.clone());
        for raw in early {
            read_spans_raw(st, &base, scopes, &raw).map_err(relocated)?;
        }
        Ok(())
    }
}

/// An error from a value read apart, as an error of the enclosing reader (which adds its
/// position).
fn relocated<E: de::Error>(e: serde_json::Error) -> E {
    E::custom(without_position(&e.to_string()))
}

/// An error message without the `at line L column C` that `serde_json` ends it with, so that
/// an enclosing reader can add its own.
fn without_position(text: &str) -> &str {
    match text.rsplit_once(" at line ") {
        Some((head, tail))
            if tail.split(" column ").count() == 2
                && tail.split(" column ").all(|n| n.parse::<u64>().is_ok()) =>
        {
            head
        }
        _ => text,
    }
}

/// Reads a `spans` array kept aside.
fn read_spans_raw(
    st: &mut State,
    base: &Base,
    scopes: &mut Scopes,
    raw: &Json,
) -> serde_json::Result<()> {
    Nullable(SpanList(st, base, scopes)).deserialize(raw)?;
    st.path.field = "";
    Ok(())
}

/// An `InstrumentationScope`: name, version, attributes.
struct ScopeSeed;

impl<'de> DeserializeSeed<'de> for ScopeSeed {
    type Value = (String, String, Vec<KeyValue>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ScopeSeed {
    type Value = (String, String, Vec<KeyValue>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an InstrumentationScope object or null")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut scope = Self::Value::default();
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Name => scope.0 = nullable(&mut map, Text)?,
                Field::Version => scope.1 = nullable(&mut map, Text)?,
                Field::Attributes => scope.2 = nullable(&mut map, KeyValues)?,
                _ => skip(&mut map)?,
            }
        }
        Ok(scope)
    }
}

/// A `spans` array.
struct SpanList<'s, 'l, 'b, 'c>(&'s mut State<'l>, &'b Base, &'c mut Scopes);

impl<'de> DeserializeSeed<'de> for SpanList<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SpanList<'_, '_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of Span objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let SpanList(st, base, scopes) = self;
        st.path.field = "";
        let mut i = 0;
        loop {
            st.path.span = Some(i);
            let Some(fields) = seq.next_element_seed(SpanSeed(&mut st.path))? else {
                break;
            };
            let at = Position {
                resource: Some(scopes.r),
                span: scopes.index,
            };
            scopes.index += 1;
            i += 1;
            fields.finish(at, base, st);
        }
        st.path.span = None;
        Ok(())
    }
}

mod span;
use span::{KeyValues, ResourceSeed, SpanSeed, Text};
