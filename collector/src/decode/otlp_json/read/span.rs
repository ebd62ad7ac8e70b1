//! The OTLP/JSON reader's leaves: a span's fields, attributes and their values, events, links,
//! status, kinds and the lenient number forms (see the parent module).

use super::*;

/// A span's fields as read, before its IDs are checked.
#[derive(Default)]
pub(super) struct SpanFields<'de> {
    ids: [Cow<'de, str>; 3],
    trace_state: String,
    name: String,
    kind: SpanKind,
    start: u64,
    end: u64,
    status: (StatusCode, String),
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    links: Vec<Link>,
}

impl SpanFields<'_> {
    /// Decodes the IDs (a bad one rejects this span alone) and hands the span to validation.
    pub(super) fn finish(self, at: Position, base: &Base, st: &mut State) {
        const NAMES: [&str; 3] = ["traceId", "spanId", "parentSpanId"];
        const REASONS: [RejectReason; 3] = [
            RejectReason::InvalidTraceId,
            RejectReason::InvalidSpanId,
            RejectReason::InvalidParentSpanId,
        ];
        let mut ids: [Vec<u8>; 3] = Default::default();
        for k in 0..3 {
            match decode_hex_or_base64(&self.ids[k]) {
                Ok(bytes) => ids[k] = bytes,
                Err(e) => {
                    let problem = format!("{}: {e}", NAMES[k]);
                    return st.batch.reject(REASONS[k], at, problem);
                }
            }
        }
        let start = nanos(self.start);
        let span = Span {
            trace_state: self.trace_state,
            name: self.name,
            kind: self.kind,
            start_unix_nano: start,
            duration_nano: duration(start, nanos(self.end)),
            status_code: self.status.0,
            status_message: self.status.1,
            attributes: self.attributes,
            events: self.events,
            links: self.links,
            ..base.span()
        };
        let raw = RawIds {
            trace_id: &ids[0],
            span_id: &ids[1],
            parent_span_id: &ids[2],
        };
        validate_raw(at, raw, span, st.limits, &mut st.batch);
    }
}

/// Declares a seed type whose value is read with `deserialize_$how` and the visitor that follows.
macro_rules! seed {
    ($seed:ident, $value:ty, $how:ident) => {
        impl<'de> DeserializeSeed<'de> for $seed {
            type Value = $value;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
                d.$how(self)
            }
        }
    };
}

/// One `Span` object; it names the field it reads in the path.
pub(super) struct SpanSeed<'p>(pub(super) &'p mut Path);

impl<'de> DeserializeSeed<'de> for SpanSeed<'_> {
    type Value = SpanFields<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SpanFields<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SpanSeed<'_> {
    type Value = SpanFields<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Span object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpanFields<'de>, A::Error> {
        let mut s = SpanFields::default();
        while let Some(key) = map.next_key::<Field>()? {
            self.0.field = key.name();
            match key {
                // `null` under one name does not erase the value under the other.
                Field::TraceId => set(&mut s.ids[0], map.next_value_seed(Nullable(Id))?),
                Field::SpanId => set(&mut s.ids[1], map.next_value_seed(Nullable(Id))?),
                Field::ParentSpanId => set(&mut s.ids[2], map.next_value_seed(Nullable(Id))?),
                Field::TraceState => set(&mut s.trace_state, map.next_value_seed(Nullable(Text))?),
                Field::Name => s.name = nullable(&mut map, Text)?,
                Field::Kind => s.kind = nullable(&mut map, Kind)?,
                Field::StartTime => set(&mut s.start, map.next_value_seed(Nullable(Unsigned))?),
                Field::EndTime => set(&mut s.end, map.next_value_seed(Nullable(Unsigned))?),
                Field::Status => s.status = nullable(&mut map, StatusSeed)?,
                Field::Attributes => s.attributes = nullable(&mut map, KeyValues)?,
                Field::Events => s.events = nullable(&mut map, Events)?,
                Field::Links => s.links = nullable(&mut map, Links)?,
                _ => skip(&mut map)?,
            }
            self.0.field = "";
        }
        Ok(s)
    }
}

/// Sets a field read under one of its names, unless it was `null` there.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// An ID as text, borrowed from the body when it has no escapes.
struct Id;

impl<'de> DeserializeSeed<'de> for Id {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Id {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an ID as a hex or base64 string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// A string field.
pub(super) struct Text;
seed!(Text, String, deserialize_string);

impl Visitor<'_> for Text {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// A `uint64`/`fixed64` field: a number or a decimal string (`""` is 0).
struct Unsigned;
seed!(Unsigned, u64, deserialize_any);

impl Visitor<'_> for Unsigned {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an unsigned integer as a number or a string")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        match v {
            "" => Ok(0),
            _ => v
                .parse()
                .map_err(|_| E::custom(format!("{v:?} is not an unsigned integer"))),
        }
    }
}

/// An `int64` attribute value: a number or a decimal string.
struct Signed;
seed!(Signed, i64, deserialize_any);

impl Visitor<'_> for Signed {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer as a number or a string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("intValue {v} is not an int64")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.parse()
            .map_err(|_| E::custom(format!("intValue {v:?} is not an int64")))
    }
}

/// A `double` attribute value: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"` or a
/// number as a string.
struct Double;
seed!(Double, f64, deserialize_any);

impl Visitor<'_> for Double {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, or NaN, Infinity or -Infinity as a string")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => v
                .parse()
                .map_err(|_| E::custom(format!("doubleValue {v:?} is not a number"))),
        }
    }
}

/// A bool attribute value.
struct Bool;
seed!(Bool, bool, deserialize_bool);

impl Visitor<'_> for Bool {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
}

/// `kind`: the enum's number or name (`SPAN_KIND_SERVER`, `server`); unknown ones are
/// unspecified.
struct Kind;
seed!(Kind, SpanKind, deserialize_any);

impl Visitor<'_> for Kind {
    type Value = SpanKind;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a span kind as a number or a name")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SpanKind, E> {
        let kind = i32::try_from(v).ok().and_then(SpanKind::from_otlp);
        Ok(kind.unwrap_or_default())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SpanKind, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(-1))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<SpanKind, E> {
        Ok(SpanKind::parse(v).unwrap_or_default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<SpanKind, E> {
        Ok(SpanKind::default())
    }
}

/// `status`: `code` (number or name) and `message`.
struct StatusSeed;
seed!(StatusSeed, (StatusCode, String), deserialize_map);

impl<'de> Visitor<'de> for StatusSeed {
    type Value = (StatusCode, String);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Status object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut status = (StatusCode::Unset, String::new());
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Code => status.0 = nullable(&mut map, Code)?,
                Field::Message => status.1 = nullable(&mut map, Text)?,
                _ => skip(&mut map)?,
            }
        }
        Ok(status)
    }
}

/// A status code: its number or its name (`STATUS_CODE_ERROR`, `error`).
struct Code;
seed!(Code, StatusCode, deserialize_any);

impl Visitor<'_> for Code {
    type Value = StatusCode;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a status code as a number or a name")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusCode, E> {
        Ok(StatusCode::from_otlp(i32::try_from(v).unwrap_or(0)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusCode, E> {
        Ok(StatusCode::from_otlp(i32::try_from(v).unwrap_or(0)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusCode, E> {
        let v = v.to_ascii_lowercase();
        Ok(StatusCode::parse(
            v.strip_prefix("status_code_").unwrap_or(&v),
        ))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<StatusCode, E> {
        Ok(StatusCode::Unset)
    }
}

/// A `Resource`: its attributes.
pub(super) struct ResourceSeed;
seed!(ResourceSeed, Vec<KeyValue>, deserialize_map);

impl<'de> Visitor<'de> for ResourceSeed {
    type Value = Vec<KeyValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Resource object or null")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<KeyValue>, A::Error> {
        let mut attrs = Vec::new();
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Attributes => attrs = nullable(&mut map, KeyValues)?,
                _ => skip(&mut map)?,
            }
        }
        Ok(attrs)
    }
}

/// A list of `KeyValue`s.
pub(super) struct KeyValues;
seed!(KeyValues, Vec<KeyValue>, deserialize_seq);

impl<'de> Visitor<'de> for KeyValues {
    type Value = Vec<KeyValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of KeyValue objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<KeyValue>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(kv) = seq.next_element_seed(KeyValueSeed)? {
            out.push(kv);
        }
        Ok(out)
    }
}

struct KeyValueSeed;
seed!(KeyValueSeed, KeyValue, deserialize_map);

impl<'de> Visitor<'de> for KeyValueSeed {
    type Value = KeyValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a KeyValue object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyValue, A::Error> {
        let mut kv = KeyValue::new(String::new(), AttrValue::Str(String::new()));
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Key => kv.key = nullable(&mut map, Text)?,
                Field::Value => {
                    let value = map.next_value_seed(Nullable(AnyValue));
                    let value = value.map_err(|e| de::Error::custom(attribute(&kv.key, e)))?;
                    kv.value = value.unwrap_or(AttrValue::Str(String::new()));
                }
                _ => skip(&mut map)?,
            }
        }
        Ok(kv)
    }
}

/// Names the attribute whose value failed (when its key came first).
fn attribute(key: &str, e: impl fmt::Display) -> String {
    let e = e.to_string();
    match key {
        "" => e,
        _ => format!("attribute {key:?}: {}", without_position(&e)),
    }
}

/// An `AnyValue`: the first of its fields present and not `null`; none is an empty string.
struct AnyValue;
seed!(AnyValue, AttrValue, deserialize_map);

impl<'de> Visitor<'de> for AnyValue {
    type Value = AttrValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AnyValue object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttrValue, A::Error> {
        let mut value = None;
        while let Some(key) = map.next_key::<Field>()? {
            if value.is_some() {
                skip(&mut map)?;
                continue;
            }
            value = match key {
                Field::StringValue => map.next_value_seed(Nullable(Text))?.map(AttrValue::Str),
                Field::BoolValue => map.next_value_seed(Nullable(Bool))?.map(AttrValue::Bool),
                Field::IntValue => map.next_value_seed(Nullable(Signed))?.map(AttrValue::Int),
                Field::DoubleValue => map
                    .next_value_seed(Nullable(Double))?
                    .map(AttrValue::Double),
                Field::BytesValue => map.next_value_seed(Nullable(Bytes))?.map(AttrValue::Bytes),
                Field::ArrayValue => map
                    .next_value_seed(Nullable(Values(ValuesOf::Array)))?
                    .map(|v| AttrValue::Array(v.into_iter().map(value_of).collect())),
                Field::KvlistValue => map
                    .next_value_seed(Nullable(Values(ValuesOf::KvList)))?
                    .map(|v| AttrValue::KvList(v.into_iter().map(kv_of).collect())),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    None
                }
            };
        }
        Ok(value.unwrap_or(AttrValue::Str(String::new())))
    }
}

/// `bytesValue`: base64.
struct Bytes;
seed!(Bytes, Vec<u8>, deserialize_str);

impl Visitor<'_> for Bytes {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("base64 text")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| E::custom(format!("bytesValue is not base64: {e}")))
    }
}

/// What an `arrayValue` or `kvlistValue` object's `values` holds.
#[derive(Clone, Copy)]
enum ValuesOf {
    Array,
    KvList,
}

/// An element of `values`: an `AnyValue` or a `KeyValue`.
enum Element {
    Value(AttrValue),
    Pair(KeyValue),
}

fn value_of(e: Element) -> AttrValue {
    match e {
        Element::Value(v) => v,
        Element::Pair(kv) => kv.value,
    }
}

fn kv_of(e: Element) -> KeyValue {
    match e {
        Element::Pair(kv) => kv,
        Element::Value(v) => KeyValue::new(String::new(), v),
    }
}

/// An `ArrayValue` or `KeyValueList` object: its `values`.
struct Values(ValuesOf);
seed!(Values, Vec<Element>, deserialize_map);

impl<'de> Visitor<'de> for Values {
    type Value = Vec<Element>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Element>, A::Error> {
        let mut values = Vec::new();
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Values => values = nullable(&mut map, List(self.0))?,
                _ => skip(&mut map)?,
            }
        }
        Ok(values)
    }
}

/// The `values` array itself.
struct List(ValuesOf);
seed!(List, Vec<Element>, deserialize_seq);

impl<'de> Visitor<'de> for List {
    type Value = Vec<Element>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of values")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Element>, A::Error> {
        let mut out = Vec::new();
        loop {
            let next = match self.0 {
                ValuesOf::Array => seq
                    .next_element_seed(Nullable(AnyValue))?
                    .map(|v| Element::Value(v.unwrap_or(AttrValue::Str(String::new())))),
                ValuesOf::KvList => seq.next_element_seed(KeyValueSeed)?.map(Element::Pair),
            };
            match next {
                Some(e) => out.push(e),
                None => return Ok(out),
            }
        }
    }
}

/// `events`.
struct Events;
seed!(Events, Vec<Event>, deserialize_seq);

impl<'de> Visitor<'de> for Events {
    type Value = Vec<Event>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of Event objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Event>, A::Error> {
        let mut out = Vec::new();
        while let Some(e) = seq.next_element_seed(EventSeed)? {
            out.push(e);
        }
        Ok(out)
    }
}

struct EventSeed;
seed!(EventSeed, Event, deserialize_map);

impl<'de> Visitor<'de> for EventSeed {
    type Value = Event;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an Event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let mut e = Event {
            time_unix_nano: 0,
            name: String::new(),
            attributes: Vec::new(),
        };
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Time => e.time_unix_nano = nanos(nullable(&mut map, Unsigned)?),
                Field::Name => e.name = nullable(&mut map, Text)?,
                Field::Attributes => e.attributes = nullable(&mut map, KeyValues)?,
                _ => skip(&mut map)?,
            }
        }
        Ok(e)
    }
}

/// `links`; a link whose IDs do not decode to 16 and 8 bytes is dropped.
struct Links;
seed!(Links, Vec<Link>, deserialize_seq);

impl<'de> Visitor<'de> for Links {
    type Value = Vec<Link>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of Link objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Link>, A::Error> {
        let mut out = Vec::new();
        while let Some(link) = seq.next_element_seed(LinkSeed)? {
            match link {
                Some(link) => out.push(link),
                None => tracing::debug!("dropping otlp json link with malformed ids"),
            }
        }
        Ok(out)
    }
}

struct LinkSeed;

impl<'de> DeserializeSeed<'de> for LinkSeed {
    type Value = Option<Link>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Link>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LinkSeed {
    type Value = Option<Link>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Link object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Link>, A::Error> {
        let (mut trace, mut span) = (Cow::Borrowed(""), Cow::Borrowed(""));
        let (mut trace_state, mut attributes) = (String::new(), Vec::new());
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::TraceId => set(&mut trace, map.next_value_seed(Nullable(Id))?),
                Field::SpanId => set(&mut span, map.next_value_seed(Nullable(Id))?),
                Field::TraceState => set(&mut trace_state, map.next_value_seed(Nullable(Text))?),
                Field::Attributes => attributes = nullable(&mut map, KeyValues)?,
                _ => skip(&mut map)?,
            }
        }
        let trace_id = decode_hex_or_base64(&trace)
            .ok()
            .and_then(|t| t.try_into().ok());
        let span_id = decode_hex_or_base64(&span)
            .ok()
            .and_then(|s| s.try_into().ok());
        Ok(trace_id.zip(span_id).map(|(trace_id, span_id)| Link {
            trace_id,
            span_id,
            trace_state,
            attributes,
        }))
    }
}
