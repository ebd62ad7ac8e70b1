//! The Nezha trace CSV decoder (`decode::nezha::decode`).
//!
//! Invariants, on every input:
//! - the batch is valid and within the limits, and the limits only truncate (see the crate docs);
//! - every accepted span carries its pod name as `k8s.pod.name` and a service that is a prefix
//!   of it (`nezha::service_of_pod`);
//! - its only span attributes are the `meshtrace.original_*` texts of hashed (non-hex) IDs: at
//!   most three.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtrace_collector::decode::nezha;
use meshtrace_collector_fuzz::{
    check_batch, check_limits_only_truncate, report, small_limits, unbounded,
};
use meshtrace_model::AttrValue;

fuzz_target!(|data: &[u8]| {
    let small = small_limits();
    let result = nezha::decode(data, &small);
    report("nezha", data.len(), result.as_ref().map_err(|e| e as _));
    let Ok(bounded) = result else { return };
    check_batch(&bounded, &small);
    let full = nezha::decode(data, &unbounded()).expect("limits changed acceptance");
    check_limits_only_truncate(&bounded, &full, &small);

    for span in &full.spans {
        let [pod] = span.resource_attributes.as_slice() else {
            panic!(
                "expected exactly the pod attribute: {:?}",
                span.resource_attributes
            );
        };
        assert_eq!(pod.key, "k8s.pod.name");
        let AttrValue::Str(pod) = &pod.value else {
            panic!("pod name is not a string");
        };
        if !pod.is_empty() {
            assert!(
                pod.starts_with(&span.service_name),
                "service {:?} of pod {pod:?}",
                span.service_name
            );
        }
        assert!(
            span.attributes.len() <= 3,
            "unexpected attributes: {:?}",
            span.attributes
        );
    }
});
