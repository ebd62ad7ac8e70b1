//! Entry points for the fuzz targets in `collector/fuzz` (see its `run.sh`); not an API.
//!
//! The targets call the real decoders through their public paths; this module only reaches
//! what is crate-private: the write-ahead log's segment scan and the reference OTLP decoder
//! (prost, then the conversion the wire reader is checked against).

pub use crate::wal::format::{scan as wal_scan, Gap, Scan, SeqBounds, HEADER_LEN};

use crate::decode::otlp_wire::reference;
use crate::{Batch, Limits};

/// prost's decoding of an `ExportTraceServiceRequest` followed by the reference conversion to
/// validated spans; `None` when prost refuses the bytes.
pub fn otlp_reference_decode(body: &[u8], limits: &Limits) -> Option<Batch> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let request = ExportTraceServiceRequest::decode(body).ok()?;
    Some(reference::from_request(request, limits))
}
