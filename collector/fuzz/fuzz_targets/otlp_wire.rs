//! The OTLP protobuf wire reader (`decode::otlp_wire`, behind `decode::otlp::decode_protobuf`).
//!
//! Invariants, on every input:
//! - differential: whenever prost decodes the bytes as an `ExportTraceServiceRequest`, the wire
//!   reader accepts them too and gives exactly the batch of prost + the reference conversion
//!   (`otlp_wire/reference.rs`): spans, rejections and truncation count;
//! - the batch is valid and within the limits, and the limits only truncate (see the crate docs);
//! - `decode_protobuf` agrees with `otlp_wire::decode`;
//! - round trip: the accepted spans, encoded by `otlp::to_request` and read again, are the same
//!   spans.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtrace_collector::decode::{otlp, otlp_wire};
use meshtrace_collector::fuzzing::otlp_reference_decode;
use meshtrace_collector_fuzz::{
    check_batch, check_limits_only_truncate, report, small_limits, span_set, unbounded,
};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let small = small_limits();
    let wire = otlp_wire::decode(data, &small);
    report("otlp_wire", data.len(), wire.as_ref().map_err(|e| e as _));
    if let Some(reference) = otlp_reference_decode(data, &small) {
        let Ok(wire) = &wire else {
            panic!("prost accepts the bytes, the wire reader refuses them: {wire:?}");
        };
        assert_eq!(
            format!("{wire:?}"),
            format!("{reference:?}"),
            "differs from prost"
        );
    }
    assert_eq!(
        otlp::decode_protobuf(data, &small).is_ok(),
        wire.is_ok(),
        "decode_protobuf and otlp_wire::decode disagree"
    );
    let Ok(bounded) = wire else { return };
    check_batch(&bounded, &small);
    let full = otlp_wire::decode(data, &unbounded()).expect("limits changed acceptance");
    check_limits_only_truncate(&bounded, &full, &small);

    let again = otlp::to_request(&full.spans).encode_to_vec();
    let back = otlp_wire::decode(&again, &unbounded()).expect("re-encoded request refused");
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
