//! The Zipkin v2 JSON decoder (`decode::zipkin::decode`, with its fragment merge).
//!
//! Invariants, on every input:
//! - the batch is valid and within the limits, and the limits only truncate (see the crate docs);
//! - every record of the body's array is accounted for exactly once: accepted, rejected or
//!   merged into another record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtrace_collector::decode::zipkin;
use meshtrace_collector_fuzz::{
    check_batch, check_limits_only_truncate, report, small_limits, unbounded,
};
use serde::de::IgnoredAny;

fuzz_target!(|data: &[u8]| {
    let small = small_limits();
    let result = zipkin::decode(data, &small);
    report("zipkin", data.len(), result.as_ref().map_err(|e| e as _));
    let Ok(bounded) = result else { return };
    check_batch(&bounded, &small);
    let full = zipkin::decode(data, &unbounded()).expect("limits changed acceptance");
    check_limits_only_truncate(&bounded, &full, &small);

    // Counted as serde_json reads the body: like the decoder, it skips the members it ignores
    // without checking that their strings are UTF-8, so a body can decode yet not be JSON.
    let records = serde_json::from_slice::<Vec<IgnoredAny>>(data)
        .expect("zipkin accepted a body that is not an array")
        .len();
    let seen = bounded.spans.len() + bounded.rejected.len() + bounded.merged as usize;
    assert_eq!(seen, records, "records lost or counted twice");
});
