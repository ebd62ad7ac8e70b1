//! What trace assembly keeps of a span: [`Slimmer`] turns a received span into a
//! [`SlimSpan`] holding the fields provenance reads — IDs, times, kind, status, service, name —
//! and only the attributes something here looks at: the class keys and the route keys
//! ([`crate::classes`]), `baggage`, the Zipkin shared-span marker ([`crate::tree`]), the peer,
//! database and dimension keys of the [`GraphConfig`], and the attribute of every class rule.
//!
//! Assembly holds each span for the idle window (5 s by default), hundreds of thousands of
//! them under load. Holding a slim span instead of the received one lets the full batch go as
//! soon as it is stored, so the memory of a full span is reused while it is still hot instead
//! of piling up, and what is held is a fraction of its size (under 140 bytes and no string of
//! its own). Service and operation names are interned: every span naming the same service
//! shares one [`Name`], so slim spans hold no strings of their own, the rows derived from them
//! share those names instead of copying them, and comparing names usually compares pointers.
//! The interner is bounded (names are client-controlled): past [`MAX_INTERNED`] names it starts
//! over, and names longer than [`MAX_INTERNED_LEN`] are not interned. Where the received spans
//! are owned (the ingest pipeline, once a batch is durable and converted to Arrow),
//! [`Slimmer::slim_all_owned`] moves the kept attributes out instead of copying them. When the
//! class rules change, a new slimmer with their keys (and the same interner) applies to spans
//! received from then on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use meshtrace_model::{KeyValue, Span};

use crate::classes::{ClassRule, CLASS_KEYS, ROUTE_KEYS};
use crate::graph::GraphConfig;
use crate::span::{Name, SlimSpan};
use crate::tree::ZIPKIN_SHARED;

/// How many distinct names the interner holds before it starts over.
pub const MAX_INTERNED: usize = 16_384;
/// Longer names are not interned (each span holding one gets its own copy).
pub const MAX_INTERNED_LEN: usize = 256;

/// Distinct names seen so far, each held once (see the module docs), and the last service
/// name asked for: the spans of a batch come grouped by resource, so most repeat it.
#[derive(Debug, Default)]
struct Interner {
    names: HashSet<Name, foldhash::fast::RandomState>,
    last_service: Name,
}

impl Interner {
    fn name(&mut self, s: &str) -> Name {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        let n: Name = Arc::from(s);
        if s.len() <= MAX_INTERNED_LEN {
            if self.names.len() >= MAX_INTERNED {
                self.names.clear();
            }
            self.names.insert(n.clone());
        }
        n
    }

    fn service(&mut self, s: &str) -> Name {
        if *self.last_service != *s {
            self.last_service = self.name(s);
        }
        self.last_service.clone()
    }
}

/// Turns received spans into [`SlimSpan`]s (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Slimmer {
    span_keys: Keys,
    resource_keys: Keys,
    names: Arc<Mutex<Interner>>,
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
            .chain(&[meshtrace_model::class::SENDER_KEY])
            .map(|k| k.to_string())
            .chain(graph.dimensions.iter().cloned())
            .collect();
        Slimmer {
            span_keys,
            resource_keys,
            names: Arc::default(),
        }
    }

    /// A slimmer for new rules that keeps sharing this one's interned names.
    pub fn renewed(&self, rules: &[ClassRule], graph: &GraphConfig) -> Slimmer {
        Slimmer {
            names: self.names.clone(),
            ..Slimmer::new(rules, graph)
        }
    }

    fn interner(&self) -> std::sync::MutexGuard<'_, Interner> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slim form of one span.
    pub fn slim(&self, s: &Span) -> SlimSpan {
        self.slim_all(std::slice::from_ref(s)).remove(0)
    }

    /// The slim forms of a batch (the interner is locked once per batch).
    pub fn slim_all(&self, spans: &[Span]) -> Vec<SlimSpan> {
        let mut names = self.interner();
        spans
            .iter()
            .map(|s| SlimSpan {
                resource_attributes: keep(&s.resource_attributes, &self.resource_keys),
                attributes: keep(&s.attributes, &self.span_keys),
                ..SlimSpan::with_names(s, names.service(&s.service_name), names.name(&s.name))
            })
            .collect()
    }

    /// The slim forms of a batch owned here: the kept attributes are moved, not copied, and
    /// the rest is freed.
    pub fn slim_all_owned(&self, spans: Vec<Span>) -> Vec<SlimSpan> {
        let mut names = self.interner();
        // Pushed into a new vector: a collected `into_iter` would reuse (and keep) the buffer
        // of the received spans, several times the size.
        let mut slim = Vec::with_capacity(spans.len());
        for mut s in spans {
            slim.push(SlimSpan {
                resource_attributes: keep_owned(&mut s.resource_attributes, &self.resource_keys),
                attributes: keep_owned(&mut s.attributes, &self.span_keys),
                ..SlimSpan::with_names(&s, names.service(&s.service_name), names.name(&s.name))
            });
        }
        slim
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
    use crate::tree::{build_tree, build_tree_slim};

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
        let from_slim = derive_tree(&build_tree_slim(slim.clone()), &[rule], &graph);
        assert_eq!(full, from_slim);
        assert_eq!(&*from_slim.trace.class, "gold");
        assert_eq!(
            slimmer.slim_all_owned(spans),
            slim,
            "moving the kept fields gives the same slim spans as copying them"
        );
        assert!(
            Arc::ptr_eq(&slim[0].service_name, &slim[1].service_name),
            "spans of one service share its name"
        );
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_slim_span_is_a_fraction_of_a_span() {
        let (slim, full) = (size_of::<SlimSpan>(), size_of::<Span>());
        assert!(slim < 140 && slim * 2 < full, "{slim} vs {full} bytes");
    }

    #[test]
    fn the_interner_is_bounded() {
        let slimmer = Slimmer::default();
        let span = |name: String| Span {
            name,
            ..Span::default()
        };
        let long = "x".repeat(MAX_INTERNED_LEN + 1);
        let a = slimmer.slim(&span(long.clone()));
        let b = slimmer.slim(&span(long));
        assert!(!Arc::ptr_eq(&a.name, &b.name), "long names are not kept");
        let first = slimmer.slim(&span("op-0".into()));
        for i in 1..=MAX_INTERNED {
            slimmer.slim(&span(format!("op-{i}")));
        }
        assert!(slimmer.interner().names.len() <= MAX_INTERNED);
        let again = slimmer.slim(&span("op-0".into()));
        assert_eq!(first.name, again.name);
        let renewed = slimmer.renewed(&[], &GraphConfig::default());
        assert!(Arc::ptr_eq(
            &renewed.slim(&span("op-0".into())).name,
            &again.name
        ));
    }
}
