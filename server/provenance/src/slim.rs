//! What trace assembly keeps of a span: [`Slimmer`] copies the fields provenance reads — IDs,
//! times, kind, status, service, name — and only the attributes something here looks at: the
//! class keys and the route keys ([`crate::classes`]), `baggage`, the Zipkin shared-span
//! marker ([`crate::tree`]), the peer, database and dimension keys of the [`GraphConfig`], and
//! the attribute of every class rule.
//!
//! Assembly holds each span for the idle window (5 s by default), hundreds of thousands of
//! them under load. Holding a slim copy instead of the received span lets the full batch go
//! as soon as it is stored, so the memory of a full span is reused while it is still hot
//! instead of piling up, and what is held is a fraction of its size. Where the received spans
//! are owned (the ingest pipeline, once a batch is durable and converted to Arrow),
//! [`Slimmer::slim_owned`] moves the kept strings and attributes out instead of copying them.
//! When the class rules change, a new slimmer with their keys applies to spans received from
//! then on.

use meshtrace_model::{KeyValue, Span};

use crate::classes::{ClassRule, CLASS_KEYS, ROUTE_KEYS};
use crate::graph::GraphConfig;
use crate::tree::ZIPKIN_SHARED;

/// Copies the part of spans that provenance reads (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Slimmer {
    span_keys: Keys,
    resource_keys: Keys,
}

/// A small set of attribute keys grouped by length: most keys of a span are ruled out by
/// their length alone, without hashing them.
#[derive(Clone, Debug, Default)]
struct Keys(Vec<Vec<String>>);

impl FromIterator<String> for Keys {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Keys {
        let mut by_len: Vec<Vec<String>> = Vec::new();
        for key in iter {
            if by_len.len() <= key.len() {
                by_len.resize(key.len() + 1, Vec::new());
            }
            if !by_len[key.len()].contains(&key) {
                by_len[key.len()].push(key);
            }
        }
        Keys(by_len)
    }
}

impl Keys {
    fn contains(&self, key: &str) -> bool {
        self.0
            .get(key.len())
            .is_some_and(|same_len| same_len.iter().any(|k| k == key))
    }
}

impl Slimmer {
    /// A slimmer keeping what these rules and this graph configuration read.
    pub fn new(rules: &[ClassRule], graph: &GraphConfig) -> Slimmer {
        let fixed = CLASS_KEYS
            .iter()
            .chain(ROUTE_KEYS)
            .chain(&["baggage", ZIPKIN_SHARED])
            .map(|k| k.to_string());
        let rule_keys = rules.iter().filter_map(|r| r.attribute.as_ref());
        let span_keys = fixed
            .chain(graph.peer_attributes.iter().cloned())
            .chain(graph.database_name_attributes.iter().cloned())
            .chain(graph.dimensions.iter().cloned())
            .chain(rule_keys.map(|(k, _)| k.clone()))
            .collect();
        let resource_keys = CLASS_KEYS
            .iter()
            .map(|k| k.to_string())
            .chain(graph.dimensions.iter().cloned())
            .collect();
        Slimmer {
            span_keys,
            resource_keys,
        }
    }

    /// The slim copy of one span.
    pub fn slim(&self, s: &Span) -> Span {
        Span {
            name: s.name.clone(),
            service_name: s.service_name.clone(),
            resource_attributes: keep(&s.resource_attributes, &self.resource_keys),
            attributes: keep(&s.attributes, &self.span_keys),
            ..scalars(s)
        }
    }

    /// The slim copies of a batch.
    pub fn slim_all(&self, spans: &[Span]) -> Vec<Span> {
        spans.iter().map(|s| self.slim(s)).collect()
    }

    /// The slim form of a span owned here: the kept strings and attributes are moved, not
    /// copied, and the rest is freed.
    pub fn slim_owned(&self, mut s: Span) -> Span {
        Span {
            name: std::mem::take(&mut s.name),
            service_name: std::mem::take(&mut s.service_name),
            resource_attributes: keep_owned(&mut s.resource_attributes, &self.resource_keys),
            attributes: keep_owned(&mut s.attributes, &self.span_keys),
            ..scalars(&s)
        }
    }

    /// The slim forms of a batch owned here.
    pub fn slim_all_owned(&self, spans: Vec<Span>) -> Vec<Span> {
        spans.into_iter().map(|s| self.slim_owned(s)).collect()
    }
}

/// A span with only the IDs, times, kind and status of `s`.
fn scalars(s: &Span) -> Span {
    Span {
        trace_id: s.trace_id,
        span_id: s.span_id,
        parent_span_id: s.parent_span_id,
        kind: s.kind,
        start_unix_nano: s.start_unix_nano,
        duration_nano: s.duration_nano,
        status_code: s.status_code,
        ..Span::default()
    }
}

/// Moves the attributes with a kept key out of `attrs`.
fn keep_owned(attrs: &mut Vec<KeyValue>, keys: &Keys) -> Vec<KeyValue> {
    // Pushed one by one: collecting a filtered `into_iter` would keep the whole buffer.
    let mut kept = Vec::new();
    for kv in std::mem::take(attrs) {
        if keys.contains(&kv.key) {
            kept.push(kv);
        }
    }
    kept
}

fn keep(attrs: &[KeyValue], keys: &Keys) -> Vec<KeyValue> {
    attrs
        .iter()
        .filter(|kv| keys.contains(&kv.key))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use meshtrace_model::{AttrValue, SpanKind};

    use super::*;
    use crate::derive::derive_tree;
    use crate::tree::build_tree;

    #[test]
    fn slim_spans_derive_the_same_rows() {
        let rule = ClassRule {
            class: "gold".into(),
            attribute: Some(("tenant".into(), "acme".into())),
            ..ClassRule::default()
        };
        let graph = GraphConfig {
            dimensions: vec!["zone".into()],
            ..GraphConfig::default()
        };
        let mut root = Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            name: "GET /".into(),
            kind: SpanKind::Server,
            duration_nano: 100,
            service_name: "front".into(),
            ..Span::default()
        };
        root.attributes = vec![
            KeyValue::string("tenant", "acme"),
            KeyValue::string("http.route", "/"),
            KeyValue::string("node_id", "sidecar~10.0.0.1"),
        ];
        root.resource_attributes = vec![KeyValue::string("zone", "b")];
        let client = Span {
            span_id: [2; 8],
            parent_span_id: Some([1; 8]),
            name: "query".into(),
            kind: SpanKind::Client,
            start_unix_nano: 10,
            duration_nano: 50,
            attributes: vec![
                KeyValue::string("db.system", "redis"),
                KeyValue::new("http.status_code", AttrValue::Int(200)),
            ],
            ..root.clone()
        };
        let spans = vec![root, client];
        let slimmer = Slimmer::new(std::slice::from_ref(&rule), &graph);
        let slim = slimmer.slim_all(&spans);
        assert_eq!(
            slim[0].attributes,
            [
                KeyValue::string("tenant", "acme"),
                KeyValue::string("http.route", "/")
            ]
        );
        assert_eq!(slim[0].resource_attributes, spans[0].resource_attributes);
        assert_eq!(slim[1].attributes, [KeyValue::string("db.system", "redis")]);
        let full = derive_tree(&build_tree(&spans), std::slice::from_ref(&rule), &graph);
        let from_slim = derive_tree(&build_tree(&slim), &[rule], &graph);
        assert_eq!(full, from_slim);
        assert_eq!(&*from_slim.trace.class, "gold");
        assert_eq!(
            slimmer.slim_all_owned(spans),
            slim,
            "moving the kept fields gives the same slim spans as copying them"
        );
    }
}
