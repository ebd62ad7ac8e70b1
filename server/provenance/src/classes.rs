//! Trace classes: every trace gets one, decided on its entry (root) span, and every span of the
//! trace inherits it.
//!
//! Order of decision:
//! 1. an explicit class carried by the entry span: the span attributes [`CLASS_KEYS`]
//!    (`mesh.class`, then `request.class`), then the same keys in its resource attributes, then
//!    the same keys inside a W3C `baggage` attribute (`k=v,k2=v2;prop`);
//! 2. else the first [`ClassRule`] (in configuration order) matching the entry service and
//!    route — the route is `http.route`, else `http.target`, else `rpc.method`, else the span
//!    name;
//! 3. else [`DEFAULT_CLASS`].

use serde::{Deserialize, Serialize};

use crate::span::SlimSpan;

/// The class of traces that match no rule.
pub const DEFAULT_CLASS: &str = "default";

pub use meshtrace_model::class::CLASS_KEYS;

/// Attribute keys giving the route of an entry span, in priority order (else the span name).
pub const ROUTE_KEYS: &[&str] = &["http.route", "http.target", "rpc.method"];

/// One classification rule; every condition that is set must hold (a rule with none set
/// matches every trace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClassRule {
    /// The class given to matching traces.
    #[schema(required = true, min_length = 1, max_length = 256, pattern = r"\S")]
    pub class: String,
    /// The entry service, exactly.
    #[schema(min_length = 1, max_length = 256)]
    pub service: Option<String>,
    /// A prefix of the entry route (see [`route_of`]).
    #[schema(min_length = 1, max_length = 256)]
    pub route_prefix: Option<String>,
    /// The entry span name, exactly.
    #[schema(min_length = 1, max_length = 256)]
    pub operation: Option<String>,
    /// An attribute `[key, value]` on the entry span, compared as displayed text.
    #[schema(schema_with = attribute_schema)]
    pub attribute: Option<(String, String)>,
}

/// `[key, value]`: two non-empty strings, or null.
fn attribute_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    let text = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(256));
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(text)
        .min_items(Some(2))
        .max_items(Some(2))
        .into()
}

impl ClassRule {
    /// Whether the rule matches this entry span.
    pub fn matches(&self, root: &SlimSpan) -> bool {
        let service_ok = self
            .service
            .as_deref()
            .is_none_or(|s| s == &*root.service_name);
        let route_ok = self
            .route_prefix
            .as_deref()
            .is_none_or(|p| route_of(root).starts_with(p));
        let op_ok = self.operation.as_deref().is_none_or(|o| o == &*root.name);
        let attr_ok = self
            .attribute
            .as_ref()
            .is_none_or(|(k, v)| root.attribute(k).is_some_and(|a| a.to_display() == *v));
        service_ok && route_ok && op_ok && attr_ok
    }
}

/// The route of a span: the first of [`ROUTE_KEYS`] present, else the span name.
pub fn route_of(span: &SlimSpan) -> String {
    ROUTE_KEYS
        .iter()
        .find_map(|k| span.attribute(k).map(|v| v.to_display()))
        .unwrap_or_else(|| span.name.to_string())
}

/// The class carried explicitly by a span, if any (see the module docs).
pub fn explicit_class(span: &SlimSpan) -> Option<String> {
    meshtrace_model::class::explicit_class(&span.attributes, &span.resource_attributes)
}

/// The class of a trace whose entry span is `root`.
pub fn classify(root: &SlimSpan, rules: &[ClassRule]) -> String {
    if let Some(c) = explicit_class(root) {
        return c;
    }
    rules
        .iter()
        .find(|r| r.matches(root))
        .map(|r| r.class.clone())
        .unwrap_or_else(|| DEFAULT_CLASS.to_string())
}
