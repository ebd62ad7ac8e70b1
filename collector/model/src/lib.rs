//! The span model every meshtrace crate shares, and its one Arrow schema.
//!
//! Receivers decode OTLP, Zipkin and the import formats into [`Span`]; the write-ahead log
//! stores spans in this form; storage turns a slice of spans into an Arrow
//! [`arrow_array::RecordBatch`] with [`schema::spans_schema`] and back. This crate does no I/O,
//! so analysis code (provenance, budgets) can depend on it without pulling in storage.

pub mod arrow_conv;
mod arrow_map;
mod arrow_nested;
pub mod class;
pub mod memory;
pub mod schema;
pub mod shared;
pub mod sketch;
pub mod span;
pub mod tenant;
pub mod time;

pub use shared::SpanRef;

pub use span::{
    find_attribute, trace_id_text, AttrValue, Event, KeyValue, Link, Span, SpanId, SpanKind,
    StatusCode, TraceId, PROMOTED,
};

/// Errors raised while converting between spans and Arrow batches.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("column {0} is missing or has the wrong type")]
    Column(&'static str),
}
