//! Decoders from wire formats to [`meshtrace_model::Span`]s, and the OTLP encoders.
//!
//! Each decoder turns a whole request body into a [`crate::Batch`]: a body that does not parse
//! at all is an [`crate::Error::InvalidArgument`] naming the format and the failure, while a
//! span with bad IDs or times is only rejected (see [`crate::validate`]) and the valid spans of
//! the same body are kept. Formats: OTLP protobuf ([`otlp`], read by [`otlp_wire`]), OTLP/JSON ([`otlp_json`]),
//! Zipkin v2 JSON ([`zipkin`]), Jaeger query-API JSON ([`jaeger_json`]) and the Nezha CSV
//! dataset ([`nezha`]). [`ids`] holds the ID parsing shared by them.

use meshtrace_model::{KeyValue, Span};

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
pub(crate) fn take_service_name(attrs: &mut Vec<KeyValue>) -> String {
    match attrs.iter().position(|kv| kv.key == SERVICE_NAME) {
        Some(i) => attrs.remove(i).value.to_display(),
        None => String::new(),
    }
}

/// What every span of an OTLP scope starts from: its resource's and scope's fields.
#[derive(Clone, Debug, Default)]
pub(crate) struct Base {
    pub service_name: String,
    pub resource_attributes: Vec<KeyValue>,
    pub scope_name: String,
    pub scope_version: String,
    pub scope_attributes: Vec<KeyValue>,
}

impl Base {
    /// A resource's fields: its `service.name` taken out of its attributes.
    pub fn of_resource(mut attrs: Vec<KeyValue>) -> Base {
        Base {
            service_name: take_service_name(&mut attrs),
            resource_attributes: attrs,
            ..Base::default()
        }
    }

    /// A span holding these fields, the rest its defaults.
    pub fn span(&self) -> Span {
        Span {
            service_name: self.service_name.clone(),
            resource_attributes: self.resource_attributes.clone(),
            scope_name: self.scope_name.clone(),
            scope_version: self.scope_version.clone(),
            scope_attributes: self.scope_attributes.clone(),
            ..Span::default()
        }
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
