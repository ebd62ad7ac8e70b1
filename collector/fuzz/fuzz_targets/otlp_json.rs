//! The OTLP/JSON decoder (`decode::otlp_json::decode`: `resourceSpans`, Tempo's `batches`,
//! Jaeger api_v3's `result` wrapper, hex or base64 IDs).
//!
//! Invariants, on every input:
//! - the batch is valid and within the limits, and the limits only truncate (see the crate docs);
//! - round trip: the accepted spans, encoded by `otlp_json::encode` as JSON text and decoded
//!   again, are the same spans.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtrace_collector::decode::otlp_json;
use meshtrace_collector_fuzz::{
    check_batch, check_limits_only_truncate, report, small_limits, span_set, unbounded,
};

fuzz_target!(|data: &[u8]| {
    let small = small_limits();
    let result = otlp_json::decode(data, &small);
    report("otlp_json", data.len(), result.as_ref().map_err(|e| e as _));
    let Ok(bounded) = result else { return };
    check_batch(&bounded, &small);
    let full = otlp_json::decode(data, &unbounded()).expect("limits changed acceptance");
    check_limits_only_truncate(&bounded, &full, &small);

    let text = serde_json::to_vec(&otlp_json::encode(&full.spans)).expect("encodes");
    let back = otlp_json::decode(&text, &unbounded()).expect("re-encoded json refused");
    assert!(
        back.rejected.is_empty(),
        "re-encoded spans rejected: {:?}",
        back.rejected
    );
    assert_eq!(
        span_set(&back.spans),
        span_set(&full.spans),
        "round trip changed spans"
    );
});
