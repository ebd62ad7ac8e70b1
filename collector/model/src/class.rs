//! The trace class a span claims for itself: the attributes [`CLASS_KEYS`] on the span, then on
//! its resource, then inside a W3C `baggage` attribute (`k=v,k2=v2;prop`). Provenance reads
//! the claim of a trace's entry span ([`explicit_class`]); ingest strips claims a sender may
//! not make ([`strip_class_claims`]), since a class steers priorities. Ingest also names the
//! token a span came with on its resource ([`SENDER_KEY`], [`set_sender`]), so that budgets can
//! hold each sender to a share of a class's samples.

use crate::span::{find_attribute, AttrValue, KeyValue, Span};

/// Attribute keys that carry an explicit class, in priority order.
pub const CLASS_KEYS: &[&str] = &["mesh.class", "request.class"];

/// The resource attribute naming the ingest token a span came with. Only ingest sets it: a
/// client's own is removed.
pub const SENDER_KEY: &str = "meshtrace.sender";

/// Names `sender` on a span's resource (the token it came with), replacing any the client set;
/// with no sender (no tokens configured) only removes the client's. Answers whether the span
/// changed.
pub fn set_sender(span: &mut Span, sender: Option<&str>) -> bool {
    let forged = span
        .resource_attributes
        .iter()
        .any(|kv| kv.key == SENDER_KEY);
    if forged {
        span.resource_attributes.retain(|kv| kv.key != SENDER_KEY);
    }
    if let Some(sender) = sender {
        let value = AttrValue::Str(sender.to_string());
        span.resource_attributes
            .push(KeyValue::new(SENDER_KEY, value));
    }
    forged || sender.is_some()
}

/// The attribute holding a W3C baggage header value.
pub const BAGGAGE_KEY: &str = "baggage";

/// The class claimed by a span's attributes or, failing those, its resource's or its baggage.
pub fn explicit_class(attributes: &[KeyValue], resource: &[KeyValue]) -> Option<String> {
    let in_list = |attrs: &[KeyValue]| {
        CLASS_KEYS.iter().find_map(|k| {
            find_attribute(attrs, k)
                .map(|v| v.to_display())
                .filter(|v| !v.is_empty())
        })
    };
    in_list(attributes)
        .or_else(|| in_list(resource))
        .or_else(|| {
            find_attribute(attributes, BAGGAGE_KEY).and_then(|b| from_baggage(&b.to_display()))
        })
}

/// Reads a class key from a W3C baggage header value.
fn from_baggage(baggage: &str) -> Option<String> {
    let members: Vec<(&str, &str)> = baggage
        .split(',')
        .filter_map(|m| {
            let kv = m.split(';').next()?;
            let (k, v) = kv.split_once('=')?;
            Some((k.trim(), v.trim()))
        })
        .collect();
    CLASS_KEYS
        .iter()
        .find_map(|k| {
            members
                .iter()
                .find(|(mk, _)| mk == k)
                .map(|(_, v)| v.to_string())
        })
        .filter(|v| !v.is_empty())
}

/// Removes every class claim from a span unless `allowed` accepts the class it claims;
/// answers whether something was removed.
pub fn strip_class_claims(span: &mut Span, allowed: impl Fn(&str) -> bool) -> bool {
    match explicit_class(&span.attributes, &span.resource_attributes) {
        Some(class) if !allowed(&class) => {}
        _ => return false,
    }
    let claims = |kv: &KeyValue| CLASS_KEYS.contains(&kv.key.as_str());
    span.attributes
        .retain(|kv| !claims(kv) && kv.key != BAGGAGE_KEY);
    span.resource_attributes.retain(|kv| !claims(kv));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::AttrValue;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue::new(k, AttrValue::Str(v.into()))
    }

    #[test]
    fn claims_are_read_in_order_and_stripped_when_not_allowed() {
        let mut span = Span {
            attributes: vec![
                kv("baggage", "user=7,mesh.class=interactive;p=1"),
                kv("http.route", "/"),
            ],
            resource_attributes: vec![kv("request.class", "batch")],
            ..Span::default()
        };
        assert_eq!(
            explicit_class(&span.attributes, &span.resource_attributes).as_deref(),
            Some("batch")
        );
        assert!(!strip_class_claims(&mut span, |c| c == "batch"));
        assert!(strip_class_claims(&mut span, |c| c == "interactive"));
        assert_eq!(
            explicit_class(&span.attributes, &span.resource_attributes),
            None
        );
        assert_eq!(span.attributes, vec![kv("http.route", "/")]);
        let only_baggage = vec![kv("baggage", "mesh.class=interactive")];
        assert_eq!(
            explicit_class(&only_baggage, &[]).as_deref(),
            Some("interactive")
        );
    }

    #[test]
    fn only_ingest_names_the_sender() {
        let forged = || Span {
            resource_attributes: vec![kv("zone", "a"), kv(SENDER_KEY, "gateway-0")],
            ..Span::default()
        };
        let mut span = forged();
        assert!(set_sender(&mut span, Some("mallory")));
        assert_eq!(
            span.resource_attributes,
            vec![kv("zone", "a"), kv(SENDER_KEY, "mallory")]
        );
        let mut anonymous = forged();
        assert!(set_sender(&mut anonymous, None));
        assert!(!set_sender(&mut anonymous, None), "nothing to remove");
        assert_eq!(anonymous.resource_attributes, vec![kv("zone", "a")]);
    }
}
