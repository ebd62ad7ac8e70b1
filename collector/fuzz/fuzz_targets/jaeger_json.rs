//! The Jaeger query-API JSON decoder (`decode::jaeger_json::decode`: `{"data": [...]}`, a bare
//! trace, or `{"trace": ...}`).
//!
//! Invariants, on every input:
//! - the batch is valid and within the limits, and the limits only truncate (see the crate docs);
//! - every span object of the body is accounted for exactly once: accepted or rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtrace_collector::decode::jaeger_json;
use meshtrace_collector_fuzz::{
    check_batch, check_limits_only_truncate, report, small_limits, unbounded,
};
use serde_json::Value;

/// The span objects of a body the decoder accepted, counted the way it reads them.
fn span_count(root: &Value) -> usize {
    let spans = |trace: &Value| {
        trace
            .get("spans")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    };
    match root {
        Value::Object(o) if o.contains_key("data") => o["data"]
            .as_array()
            .map_or(0, |ts| ts.iter().map(spans).sum()),
        Value::Object(o) if o.contains_key("trace") => spans(&o["trace"]),
        other => spans(other),
    }
}

fuzz_target!(|data: &[u8]| {
    let small = small_limits();
    let result = jaeger_json::decode(data, &small);
    report(
        "jaeger_json",
        data.len(),
        result.as_ref().map_err(|e| e as _),
    );
    let Ok(bounded) = result else { return };
    check_batch(&bounded, &small);
    let full = jaeger_json::decode(data, &unbounded()).expect("limits changed acceptance");
    check_limits_only_truncate(&bounded, &full, &small);

    let root: Value = serde_json::from_slice(data).expect("accepted body is JSON");
    assert_eq!(
        bounded.spans.len() + bounded.rejected.len(),
        span_count(&root),
        "span objects lost or counted twice"
    );
});
