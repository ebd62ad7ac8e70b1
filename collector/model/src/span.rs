//! The in-memory span: what every receiver produces and what storage reads back.

use serde::{Deserialize, Serialize};

/// A 16-byte W3C trace ID.
pub type TraceId = [u8; 16];
/// An 8-byte span ID.
pub type SpanId = [u8; 8];

/// Attributes promoted to their own columns: (column name, attribute key, holds an integer).
///
/// A promoted attribute is removed from the attribute map when stored and put back when read,
/// so nothing is lost and nothing is stored twice. Only a value of the expected type is
/// promoted; any other stays in the map.
pub const PROMOTED: &[(&str, &str, bool)] = &[
    ("http_method", "http.method", false),
    ("http_route", "http.route", false),
    ("http_target", "http.target", false),
    ("http_url", "http.url", false),
    ("http_status_code", "http.status_code", true),
    ("rpc_service", "rpc.service", false),
    ("rpc_method", "rpc.method", false),
    ("peer_address", "peer.address", false),
    ("upstream_cluster", "upstream_cluster", false),
    ("node_id", "node_id", false),
    ("response_flags", "response_flags", false),
    ("canonical_service", "istio.canonical_service", false),
    ("component", "component", false),
    ("request_class", "mesh.class", false),
];

/// A typed attribute value, as OTLP defines them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttrValue {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttrValue>),
    KvList(Vec<KeyValue>),
}

/// Hashes exactly what `PartialEq` compares, doubles by their bits, so equal spans hash
/// alike (a double that is `NaN` hashes one way and equals nothing, which is harmless here).
impl std::hash::Hash for AttrValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            AttrValue::Str(s) => s.hash(state),
            AttrValue::Bool(b) => b.hash(state),
            AttrValue::Int(i) => i.hash(state),
            AttrValue::Double(d) => d.to_bits().hash(state),
            AttrValue::Bytes(b) => b.hash(state),
            AttrValue::Array(a) => a.hash(state),
            AttrValue::KvList(kv) => kv.hash(state),
        }
    }
}

impl AttrValue {
    /// The value as a string: strings as they are, numbers and booleans in their usual form,
    /// bytes in hex, arrays and key-value lists as JSON.
    pub fn to_display(&self) -> String {
        match self {
            AttrValue::Str(s) => s.clone(),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Double(d) => d.to_string(),
            AttrValue::Bytes(b) => hex::encode(b),
            AttrValue::Array(_) | AttrValue::KvList(_) => self.to_json().to_string(),
        }
    }

    /// The value as plain JSON (no type tags), as the Jaeger and OTLP JSON APIs show it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            AttrValue::Str(s) => s.clone().into(),
            AttrValue::Bool(b) => (*b).into(),
            AttrValue::Int(i) => (*i).into(),
            AttrValue::Double(d) => serde_json::Number::from_f64(*d)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| d.to_string().into()),
            AttrValue::Bytes(b) => hex::encode(b).into(),
            AttrValue::Array(a) => a.iter().map(AttrValue::to_json).collect(),
            AttrValue::KvList(kvs) => kvs
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }

    /// The type name stored beside a non-string value so that it can be rebuilt exactly.
    pub fn type_name(&self) -> &'static str {
        match self {
            AttrValue::Str(_) => "string",
            AttrValue::Bool(_) => "bool",
            AttrValue::Int(_) => "int64",
            AttrValue::Double(_) => "float64",
            AttrValue::Bytes(_) => "bytes",
            AttrValue::Array(_) => "array",
            AttrValue::KvList(_) => "kvlist",
        }
    }

    /// Rebuilds a value from its display form and type name (the inverse of the two above).
    pub fn from_display(type_name: &str, display: &str) -> AttrValue {
        let fallback = || AttrValue::Str(display.to_string());
        match type_name {
            "bool" => display
                .parse()
                .map(AttrValue::Bool)
                .unwrap_or_else(|_| fallback()),
            "int64" => display
                .parse()
                .map(AttrValue::Int)
                .unwrap_or_else(|_| fallback()),
            "float64" => display
                .parse()
                .map(AttrValue::Double)
                .unwrap_or_else(|_| fallback()),
            "bytes" => hex::decode(display)
                .map(AttrValue::Bytes)
                .unwrap_or_else(|_| fallback()),
            "array" | "kvlist" => serde_json::from_str::<serde_json::Value>(display)
                .map(|v| AttrValue::from_plain_json(&v))
                .unwrap_or_else(|_| fallback()),
            _ => fallback(),
        }
    }

    /// Converts plain JSON (as produced by [`AttrValue::to_json`]) back to a value.
    pub fn from_plain_json(v: &serde_json::Value) -> AttrValue {
        use serde_json::Value as J;
        match v {
            J::Null => AttrValue::Str(String::new()),
            J::Bool(b) => AttrValue::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => AttrValue::Int(i),
                None => AttrValue::Double(n.as_f64().unwrap_or_default()),
            },
            J::String(s) => AttrValue::Str(s.clone()),
            J::Array(a) => AttrValue::Array(a.iter().map(AttrValue::from_plain_json).collect()),
            J::Object(o) => AttrValue::KvList(
                o.iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), AttrValue::from_plain_json(v)))
                    .collect(),
            ),
        }
    }
}

/// One attribute.
#[derive(Clone, Debug, PartialEq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: AttrValue,
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: AttrValue) -> Self {
        KeyValue {
            key: key.into(),
            value,
        }
    }

    pub fn string(key: impl Into<String>, value: impl Into<String>) -> Self {
        KeyValue::new(key, AttrValue::Str(value.into()))
    }
}

/// The OTLP span kind.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    /// Parses the lowercase name, the OTLP enum name (`SPAN_KIND_SERVER`) or a Zipkin kind.
    pub fn parse(s: &str) -> Option<SpanKind> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_prefix("span_kind_").unwrap_or(&s);
        Some(match s {
            "unspecified" | "" => SpanKind::Unspecified,
            "internal" => SpanKind::Internal,
            "server" => SpanKind::Server,
            "client" => SpanKind::Client,
            "producer" => SpanKind::Producer,
            "consumer" => SpanKind::Consumer,
            _ => return None,
        })
    }

    /// From the OTLP numeric kind.
    pub fn from_otlp(v: i32) -> Option<SpanKind> {
        Some(match v {
            0 => SpanKind::Unspecified,
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => return None,
        })
    }

    pub fn to_otlp(self) -> i32 {
        self as i32
    }
}

/// The OTLP status code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }
    }

    pub fn parse(s: &str) -> StatusCode {
        match s {
            "ok" => StatusCode::Ok,
            "error" => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }

    pub fn from_otlp(v: i32) -> StatusCode {
        match v {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }

    pub fn to_otlp(self) -> i32 {
        self as i32
    }
}

/// A timed event inside a span (a log, in Jaeger's words).
#[derive(Clone, Debug, PartialEq, Hash, Serialize, Deserialize)]
pub struct Event {
    pub time_unix_nano: i64,
    pub name: String,
    #[serde(default)]
    pub attributes: Vec<KeyValue>,
}

/// A link from a span to another span, possibly in another trace.
#[derive(Clone, Debug, PartialEq, Hash, Serialize, Deserialize)]
pub struct Link {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    #[serde(default)]
    pub trace_state: String,
    #[serde(default)]
    pub attributes: Vec<KeyValue>,
}

/// The value of the first attribute with this key in a list, if any.
pub fn find_attribute<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AttrValue> {
    attrs.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
}

/// One span with its resource and scope, flattened.
#[derive(Clone, Debug, Default, PartialEq, Hash, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: i64,
    pub duration_nano: i64,
    pub status_code: StatusCode,
    pub status_message: String,
    /// The resource's `service.name` (kept out of `resource_attributes`).
    pub service_name: String,
    pub resource_attributes: Vec<KeyValue>,
    pub scope_name: String,
    pub scope_version: String,
    pub scope_attributes: Vec<KeyValue>,
    pub attributes: Vec<KeyValue>,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
}

impl Span {
    pub fn end_unix_nano(&self) -> i64 {
        self.start_unix_nano.saturating_add(self.duration_nano)
    }

    /// The span attribute with this key, if any.
    pub fn attribute(&self, key: &str) -> Option<&AttrValue> {
        find_attribute(&self.attributes, key)
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The trace ID as Jaeger prints it: see [`trace_id_text`].
    pub fn trace_id_text(&self) -> String {
        trace_id_text(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

/// A trace ID in hex as Jaeger prints it: 16 characters when its high 64 bits are zero (a
/// 64-bit ID, as Zipkin and Jaeger clients make them), else 32. Lookups accept both forms.
pub fn trace_id_text(id: &[u8; 16]) -> String {
    if id[..8].iter().all(|b| *b == 0) {
        hex::encode(&id[8..])
    } else {
        hex::encode(id)
    }
}

#[cfg(test)]
mod tests {
    use super::trace_id_text;

    #[test]
    fn a_64_bit_trace_id_prints_with_16_characters() {
        let mut id = [0u8; 16];
        id[15] = 0xab;
        assert_eq!(trace_id_text(&id), "00000000000000ab");
        id[7] = 1;
        assert_eq!(trace_id_text(&id), "000000000000000100000000000000ab");
    }
}
