//! The Nezha dataset's trace CSV (`TraceID,SpanID,ParentID,PodName,OperationName,
//! StartTimeUnixNano,EndTimeUnixNano,Duration`) decoded into spans, for bulk import.
//!
//! The service is the pod name minus its last two `-` segments (`frontend-579b9bff58-t2dbm` →
//! `frontend`), and the pod name is kept as the resource attribute `k8s.pod.name`. IDs are
//! taken as hex when they are hex (as in the published files); any other text is mapped to an
//! ID by hashing and the original is kept in the `meshtrace.original_*` attributes. A parent of
//! `root` (or empty) marks a root span. The duration comes from the two nanosecond timestamps;
//! the `Duration` column (µs) is not needed.

use std::io::Read;

use meshtrace_model::{KeyValue, Span};

use super::ids::{
    span_id_from_text, trace_id_from_text, ORIGINAL_PARENT_ID, ORIGINAL_SPAN_ID, ORIGINAL_TRACE_ID,
};
use crate::validate::{validate_at, Position};
use crate::{Batch, Error, Limits, RejectReason};

const COLUMNS: [&str; 7] = [
    "TraceID",
    "SpanID",
    "ParentID",
    "PodName",
    "OperationName",
    "StartTimeUnixNano",
    "EndTimeUnixNano",
];

/// Decodes a Nezha trace CSV with its header row.
pub fn decode<R: Read>(reader: R, limits: &Limits) -> Result<Batch, Error> {
    let invalid = |m: String| Error::InvalidArgument(format!("invalid nezha csv: {m}"));
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let headers = csv.headers().map_err(|e| invalid(e.to_string()))?.clone();
    let mut index = [0usize; 7];
    for (slot, name) in index.iter_mut().zip(COLUMNS) {
        *slot = headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| invalid(format!("missing column {name:?} in header {headers:?}")))?;
    }
    let mut batch = Batch::default();
    let mut record = csv::StringRecord::new();
    let mut row = 0;
    loop {
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(invalid(e.to_string())),
        }
        let field = |i: usize| record.get(index[i]).unwrap_or_default().trim();
        let at = Position {
            resource: None,
            span: row,
        };
        row += 1;
        let fields: [&str; 7] = std::array::from_fn(field);
        convert(at, fields, limits, &mut batch);
    }
    Ok(batch)
}

/// The service of a Kubernetes pod: its name minus the last two `-` segments.
pub fn service_of_pod(pod: &str) -> &str {
    let mut parts = pod.rsplitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(service)) if !service.is_empty() => service,
        _ => pod,
    }
}

fn convert(at: Position, f: [&str; 7], limits: &Limits, batch: &mut Batch) {
    let [trace, span_text, parent, pod, operation, start, end] = f;
    if trace.is_empty() {
        return batch.reject(RejectReason::InvalidTraceId, at, "TraceID is empty");
    }
    if span_text.is_empty() {
        return batch.reject(RejectReason::InvalidSpanId, at, "SpanID is empty");
    }
    let Ok(start) = start.parse::<i64>() else {
        let problem = format!("StartTimeUnixNano {start:?} is not an integer");
        return batch.reject(RejectReason::MissingTimestamp, at, problem);
    };
    let Ok(end) = end.parse::<i64>() else {
        let problem = format!("EndTimeUnixNano {end:?} is not an integer");
        return batch.reject(RejectReason::EndBeforeStart, at, problem);
    };
    let (trace_id, trace_hashed) = trace_id_from_text(trace);
    let (span_id, span_hashed) = span_id_from_text(span_text);
    let mut attributes = Vec::new();
    if trace_hashed {
        attributes.push(KeyValue::string(ORIGINAL_TRACE_ID, trace));
    }
    if span_hashed {
        attributes.push(KeyValue::string(ORIGINAL_SPAN_ID, span_text));
    }
    let parent_span_id = if parent.is_empty() || parent.eq_ignore_ascii_case("root") {
        None
    } else {
        let (id, hashed) = span_id_from_text(parent);
        if hashed {
            attributes.push(KeyValue::string(ORIGINAL_PARENT_ID, parent));
        }
        Some(id)
    };
    let span = Span {
        trace_id,
        span_id,
        parent_span_id,
        name: operation.to_string(),
        start_unix_nano: start,
        duration_nano: super::duration(start, end),
        service_name: service_of_pod(pod).to_string(),
        resource_attributes: vec![KeyValue::string("k8s.pod.name", pod)],
        attributes,
        ..Span::default()
    };
    validate_at(at, span, limits, batch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::AttrValue;
    use std::collections::{BTreeSet, HashSet};

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/nezha");

    fn fixture(name: &str) -> Batch {
        let file = std::fs::File::open(format!("{DIR}/{name}")).unwrap();
        decode(std::io::BufReader::new(file), &Limits::default()).unwrap()
    }

    #[test]
    fn fixtures_decode_with_the_stated_counts() {
        let cases = [
            ("ob_2022-08-22_05_29_trace.csv", 14045, 309, 10),
            ("ob_2022-08-23_14_49_trace.csv", 6908, 494, 10),
            ("tt_2023-01-29_08_50_faultfree_trace.csv", 4890, 71, 25),
            ("tt_2023-01-29_13_33_trace.csv", 4063, 52, 28),
        ];
        for (name, spans, traces, services) in cases {
            let b = fixture(name);
            assert!(b.rejected.is_empty(), "{name}: {:?}", b.rejected.first());
            assert_eq!(b.spans.len(), spans, "{name}");
            let t: HashSet<_> = b.spans.iter().map(|s| s.trace_id).collect();
            assert_eq!(t.len(), traces, "{name}");
            let svc: BTreeSet<_> = b.spans.iter().map(|s| s.service_name.as_str()).collect();
            assert_eq!(svc.len(), services, "{name}: {svc:?}");
            let roots = b
                .spans
                .iter()
                .filter(|s| s.parent_span_id.is_none())
                .count();
            assert_eq!(roots, traces, "{name}: one root per trace");
        }
    }

    #[test]
    fn first_row_of_online_boutique() {
        let b = fixture("ob_2022-08-22_05_29_trace.csv");
        let s = &b.spans[0];
        assert_eq!(s.trace_id_hex(), "003835e342fda7ef19a10193855ee701");
        assert_eq!(s.span_id_hex(), "9b8df5616c7d37d3");
        assert_eq!(s.service_name, "frontend");
        assert_eq!(s.name, "hipstershop.Frontend/Recv.");
        assert_eq!(s.start_unix_nano, 1_661_146_136_229_965_282);
        assert_eq!(s.duration_nano, 1_261_192_224);
        assert_eq!(
            s.resource_attributes,
            vec![KeyValue::string(
                "k8s.pod.name",
                "frontend-579b9bff58-t2dbm"
            )]
        );
        assert_eq!(b.spans[1].parent_span_id, Some(s.span_id));
    }

    #[test]
    fn service_of_pod_strips_two_segments() {
        assert_eq!(
            service_of_pod("ts-gateway-service-6f6cfc45b-h5m2n"),
            "ts-gateway-service"
        );
        assert_eq!(service_of_pod("frontend-579b9bff58-t2dbm"), "frontend");
        assert_eq!(service_of_pod("solo"), "solo");
        assert_eq!(service_of_pod("a-b"), "a-b");
    }

    const HEADER: &str =
        "TraceID,SpanID,ParentID,PodName,OperationName,StartTimeUnixNano,EndTimeUnixNano,Duration\n";

    #[test]
    fn non_hex_ids_are_hashed_and_kept() {
        let body =
            format!("{HEADER}t-1,s-1,root,p-a-b,op,100,200,0\nt-1,s-2,s-1,p-a-b,op,150,160,0\n");
        let b = decode(body.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(b.spans[0].trace_id, b.spans[1].trace_id);
        assert_eq!(b.spans[1].parent_span_id, Some(b.spans[0].span_id));
        assert_eq!(
            b.spans[0].attribute(ORIGINAL_SPAN_ID),
            Some(&AttrValue::Str("s-1".into()))
        );
        assert_eq!(
            b.spans[1].attribute(ORIGINAL_PARENT_ID),
            Some(&AttrValue::Str("s-1".into()))
        );
    }

    #[test]
    fn bad_rows_are_rejected_and_bad_files_fail() {
        let body = format!("{HEADER}aa,bb,root,p,op,x,200,0\naa,bb,root,p,op,300,200,0\naa,bb,root,p,op,100,200,0\n");
        let b = decode(body.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(b.spans.len(), 1);
        let reasons: Vec<_> = b.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [RejectReason::MissingTimestamp, RejectReason::EndBeforeStart]
        );
        let err = decode(&b"a,b,c\n1,2,3\n"[..], &Limits::default()).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("missing column \"TraceID\""))
        );
        let ragged = format!("{HEADER}aa,bb\n");
        let err = decode(ragged.as_bytes(), &Limits::default()).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.starts_with("invalid nezha csv: ")));
    }
}
