//! The span as provenance holds it: [`SlimSpan`], the fields of a received span that trees,
//! classes, critical paths and the service graph read, with service and operation names as
//! shared [`Name`]s. What is kept and how names are interned is [`crate::slim`]'s business;
//! this module only defines the type, so every analysis module can use it without depending
//! on the slimmer (which depends on them for the attribute keys they read).

use std::sync::Arc;

use meshtrace_model::{
    find_attribute, AttrValue, KeyValue, Span, SpanId, SpanKind, StatusCode, TraceId,
};

/// A class, service or operation name, shared by the spans and rows that repeat it.
pub type Name = Arc<str>;

/// What provenance reads of a span: the fields of [`Span`] it uses, with the same names, and
/// only the kept attributes (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub kind: SpanKind,
    pub status_code: StatusCode,
    pub start_unix_nano: i64,
    pub duration_nano: i64,
    pub service_name: Name,
    pub name: Name,
    pub resource_attributes: Vec<KeyValue>,
    pub attributes: Vec<KeyValue>,
}

impl SlimSpan {
    pub fn end_unix_nano(&self) -> i64 {
        self.start_unix_nano.saturating_add(self.duration_nano)
    }

    /// The span attribute with this key, if any.
    pub fn attribute(&self, key: &str) -> Option<&AttrValue> {
        find_attribute(&self.attributes, key)
    }

    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }

    /// The fields of `s` with these names and no attributes.
    pub(crate) fn with_names(s: &Span, service_name: Name, name: Name) -> SlimSpan {
        SlimSpan {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            kind: s.kind,
            status_code: s.status_code,
            start_unix_nano: s.start_unix_nano,
            duration_nano: s.duration_nano,
            service_name,
            name,
            resource_attributes: Vec::new(),
            attributes: Vec::new(),
        }
    }
}

/// Every attribute kept: for spans read back from the store (APIs, re-derivation, tests).
impl From<&Span> for SlimSpan {
    fn from(s: &Span) -> SlimSpan {
        SlimSpan {
            resource_attributes: s.resource_attributes.clone(),
            attributes: s.attributes.clone(),
            ..SlimSpan::with_names(s, s.service_name.as_str().into(), s.name.as_str().into())
        }
    }
}
