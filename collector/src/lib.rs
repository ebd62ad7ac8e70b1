//! The ingest side of meshtrace: protocol receivers, decoding, validation and the write-ahead log.
//!
//! Receivers ([`receiver`]) speak OTLP gRPC, OTLP HTTP (protobuf and JSON) and Zipkin v2 JSON.
//! They decode requests into [`meshtrace_model::Span`]s ([`decode`]), validate and bound them
//! ([`validate`]), and hand each batch to a [`sink::SpanSink`]: protocol code never reaches into
//! storage. The server's sink appends to the write-ahead log ([`wal`]) and acknowledges only once
//! the batch is durable. Every receiver first checks who is calling ([`auth`]).

pub mod auth;
pub mod decode;
pub mod dedup;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod peer;
pub mod receiver;
pub mod sink;
pub mod validate;
pub mod wal;

pub use error::{Error, ErrorCode};
pub use sink::SpanSink;
pub use validate::{Batch, Limits, RejectReason, Rejection};
