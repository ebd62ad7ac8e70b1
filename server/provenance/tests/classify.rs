//! Trace classes: an explicit `mesh.class` wins; else the first matching rule by service and
//! route; else `default`.

use meshtrace_model::{AttrValue, KeyValue, Span};
use meshtrace_provenance::{derive, ClassRule, SlimSpan, DEFAULT_CLASS};

/// The class of a trace entered through `root`.
fn class_of(root: &Span, rules: &[ClassRule]) -> String {
    meshtrace_provenance::classify(&SlimSpan::from(root), rules)
}

fn entry(service: &str, name: &str, attrs: &[(&str, &str)]) -> Span {
    Span {
        service_name: service.into(),
        name: name.into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| KeyValue::string(*k, *v))
            .collect(),
        duration_nano: 10,
        ..Span::default()
    }
}

fn rules() -> Vec<ClassRule> {
    vec![
        ClassRule {
            class: "checkout".into(),
            service: Some("frontend".into()),
            route_prefix: Some("/cart/checkout".into()),
            ..Default::default()
        },
        ClassRule {
            class: "browse".into(),
            service: Some("frontend".into()),
            ..Default::default()
        },
        ClassRule {
            class: "grpc-convert".into(),
            route_prefix: Some("Convert".into()),
            ..Default::default()
        },
    ]
}

#[test]
fn explicit_class_wins_over_rules() {
    let s = entry(
        "frontend",
        "GET",
        &[("http.route", "/cart/checkout"), ("mesh.class", "gold")],
    );
    assert_eq!(class_of(&s, &rules()), "gold");
    let s = entry("frontend", "GET", &[("request.class", "silver")]);
    assert_eq!(class_of(&s, &rules()), "silver");
    let s = entry(
        "frontend",
        "GET",
        &[("baggage", "user=1,mesh.class=bronze;p=1")],
    );
    assert_eq!(class_of(&s, &rules()), "bronze");
    let mut s = entry("frontend", "GET", &[]);
    s.resource_attributes.push(KeyValue::new(
        "mesh.class",
        AttrValue::Str("tenant-a".into()),
    ));
    assert_eq!(class_of(&s, &rules()), "tenant-a");
}

#[test]
fn rules_by_service_and_route_in_order() {
    let checkout = entry("frontend", "POST", &[("http.route", "/cart/checkout/{id}")]);
    assert_eq!(class_of(&checkout, &rules()), "checkout");
    let target = entry("frontend", "POST", &[("http.target", "/cart/checkout?x=1")]);
    assert_eq!(
        class_of(&target, &rules()),
        "checkout",
        "http.target when there is no route"
    );
    let home = entry("frontend", "GET /", &[("http.route", "/")]);
    assert_eq!(
        class_of(&home, &rules()),
        "browse",
        "the first matching rule wins"
    );
    let rpc = entry("currency", "grpc.x", &[("rpc.method", "Convert")]);
    assert_eq!(class_of(&rpc, &rules()), "grpc-convert");
    let by_name = entry("currency", "ConvertMany", &[]);
    assert_eq!(
        class_of(&by_name, &rules()),
        "grpc-convert",
        "the span name is the last resort"
    );
    let other = entry("cart", "GetCart", &[]);
    assert_eq!(class_of(&other, &rules()), DEFAULT_CLASS);
    assert_eq!(class_of(&other, &[]), DEFAULT_CLASS);
}

#[test]
fn every_span_row_inherits_the_class() {
    let mut root = entry("frontend", "GET", &[("http.route", "/cart/checkout")]);
    root.span_id = [0, 0, 0, 0, 0, 0, 0, 1];
    let mut child = entry("cart", "GetCart", &[]);
    child.span_id = [0, 0, 0, 0, 0, 0, 0, 2];
    child.parent_span_id = Some(root.span_id);
    child.duration_nano = 5;
    let d = derive(&[root, child], &rules());
    assert_eq!(&*d.trace.class, "checkout");
    assert_eq!(d.edges.len(), 1);
    assert_eq!(&*d.edges[0].class, "checkout");
    assert_eq!(d.critical_path.len(), 2);
    assert!(d.critical_path.iter().all(|r| &*r.class == "checkout"));
}

#[test]
fn rules_load_from_config() {
    let r: Vec<ClassRule> =
        serde_json::from_str(r#"[{"class":"x","service":"a","route_prefix":"/v1"},{"class":"y"}]"#)
            .unwrap();
    assert_eq!(r[0].service.as_deref(), Some("a"));
    assert_eq!(class_of(&entry("b", "op", &[]), &r), "y");
}
