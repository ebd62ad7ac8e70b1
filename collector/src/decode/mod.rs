//! Decoders from wire formats to [`meshtrace_model::Span`]s, and the OTLP encoders.
//!
//! Each decoder turns a whole request body into a [`crate::Batch`]: a body that does not parse
//! at all is an [`crate::Error::InvalidArgument`] naming the format and the failure, while a
//! span with bad IDs or times is only rejected (see [`crate::validate`]) and the valid spans of
//! the same body are kept. Formats: OTLP protobuf ([`otlp`], read by [`otlp_wire`]), OTLP/JSON ([`otlp_json`]),
//! Zipkin v2 JSON ([`zipkin`]), Jaeger query-API JSON ([`jaeger_json`]) and the Nezha CSV
//! dataset ([`nezha`]). [`ids`] holds the ID parsing shared by them.

pub mod ids;
pub mod jaeger_json;
pub mod nezha;
pub mod otlp;
pub mod otlp_json;
pub mod otlp_wire;
pub mod zipkin;

/// The resource attribute carried in [`meshtrace_model::Span::service_name`].
pub const SERVICE_NAME: &str = "service.name";

/// Takes the `service.name` attribute out of a resource's attributes, as the span's service
/// name (empty when there is none).
pub(crate) fn take_service_name(attrs: &mut Vec<meshtrace_model::KeyValue>) -> String {
    match attrs.iter().position(|kv| kv.key == SERVICE_NAME) {
        Some(i) => attrs.remove(i).value.to_display(),
        None => String::new(),
    }
}

/// Converts unsigned unix nanoseconds to the model's `i64`, saturating far-future times.
pub(crate) fn nanos(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The duration from `start` to `end` in ns; negative when `end` is before `start`.
pub(crate) fn duration(start: i64, end: i64) -> i64 {
    end.saturating_sub(start)
}
