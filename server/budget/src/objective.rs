//! Per-class latency objectives: a latency target at a quantile (e.g. p99 <= 250 ms), an
//! importance deciding which class yields to which, and an optional minimum share of capacity
//! for throughput classes. Parsing from the raw request body and validation, with errors that
//! name the offending field.

use serde::{Deserialize, Serialize};

/// Why an objective (or another input of this crate) was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// A field is out of range or of the wrong kind; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

impl BudgetError {
    fn field(field: &'static str, reason: impl Into<String>) -> Self {
        BudgetError::InvalidField {
            field,
            reason: reason.into(),
        }
    }

    /// The field an error is about.
    pub fn field_name(&self) -> &'static str {
        match self {
            BudgetError::InvalidField { field, .. } => field,
        }
    }
}

/// A class's latency objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// The quantile the target applies to, in (0, 1): 0.99 for p99.
    #[schema(exclusive_minimum = 0, exclusive_maximum = 1)]
    pub quantile: f64,
    /// The latency target at that quantile, milliseconds (> 0).
    #[schema(exclusive_minimum = 0)]
    pub latency_ms: f64,
    /// Higher is more important: a class yields to classes of higher importance.
    #[schema(value_type = u64, maximum = 4294967295_u64)]
    pub importance: u32,
    /// Minimum share of a shared hop's capacity for a throughput class, in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub min_share: Option<f64>,
}

/// The objective as it arrives in a request body, before validation: numbers are taken as
/// JSON numbers so that a negative or fractional importance gets an error naming the field
/// rather than a generic type error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveSpec {
    pub quantile: f64,
    pub latency_ms: f64,
    pub importance: f64,
    #[serde(default)]
    pub min_share: Option<f64>,
}

impl Objective {
    /// Checks every field; the first invalid one is reported.
    pub fn validate(&self) -> Result<(), BudgetError> {
        if !(self.quantile > 0.0 && self.quantile < 1.0) {
            return Err(BudgetError::field(
                "quantile",
                format!("must be in (0, 1), got {}", self.quantile),
            ));
        }
        if !(self.latency_ms.is_finite() && self.latency_ms > 0.0) {
            return Err(BudgetError::field(
                "latency_ms",
                format!("must be a finite number > 0, got {}", self.latency_ms),
            ));
        }
        if let Some(s) = self.min_share {
            if !(0.0..=1.0).contains(&s) {
                return Err(BudgetError::field(
                    "min_share",
                    format!("must be in [0, 1], got {s}"),
                ));
            }
        }
        Ok(())
    }

    /// The target in nanoseconds.
    pub fn latency_ns(&self) -> f64 {
        self.latency_ms * 1e6
    }

    /// "p99 <= 250 ms".
    pub fn describe(&self) -> String {
        format!("p{} <= {} ms", self.quantile * 100.0, self.latency_ms)
    }
}

impl TryFrom<ObjectiveSpec> for Objective {
    type Error = BudgetError;

    fn try_from(spec: ObjectiveSpec) -> Result<Self, Self::Error> {
        let imp = spec.importance;
        if !(imp.is_finite() && imp >= 0.0 && imp.fract() == 0.0 && imp <= f64::from(u32::MAX)) {
            return Err(BudgetError::field(
                "importance",
                format!("must be an integer >= 0, got {imp}"),
            ));
        }
        let objective = Objective {
            quantile: spec.quantile,
            latency_ms: spec.latency_ms,
            importance: imp as u32,
            min_share: spec.min_share,
        };
        objective.validate()?;
        Ok(objective)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Objective, BudgetError> {
        let spec: ObjectiveSpec = serde_json::from_str(json).expect("well-formed body");
        Objective::try_from(spec)
    }

    #[test]
    fn valid_body_parses() {
        let o =
            spec(r#"{"quantile": 0.99, "latency_ms": 250, "importance": 10, "min_share": 0.2}"#)
                .expect("valid");
        assert_eq!(
            o,
            Objective {
                quantile: 0.99,
                latency_ms: 250.0,
                importance: 10,
                min_share: Some(0.2)
            }
        );
        assert_eq!(o.describe(), "p99 <= 250 ms");
        let o = spec(r#"{"quantile": 0.5, "latency_ms": 1.5, "importance": 0}"#).expect("valid");
        assert_eq!(o.min_share, None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"quantile": 1.0, "latency_ms": 250, "importance": 1}"#,
                "quantile",
            ),
            (
                r#"{"quantile": 0, "latency_ms": 250, "importance": 1}"#,
                "quantile",
            ),
            (
                r#"{"quantile": 0.9, "latency_ms": 0, "importance": 1}"#,
                "latency_ms",
            ),
            (
                r#"{"quantile": 0.9, "latency_ms": -3, "importance": 1}"#,
                "latency_ms",
            ),
            (
                r#"{"quantile": 0.9, "latency_ms": 5, "importance": -1}"#,
                "importance",
            ),
            (
                r#"{"quantile": 0.9, "latency_ms": 5, "importance": 1.5}"#,
                "importance",
            ),
            (
                r#"{"quantile": 0.9, "latency_ms": 5, "importance": 1, "min_share": 1.2}"#,
                "min_share",
            ),
            (
                r#"{"quantile": 0.9, "latency_ms": 5, "importance": 1, "min_share": -0.1}"#,
                "min_share",
            ),
        ];
        for (body, field) in cases {
            let err = spec(body).expect_err(body);
            assert_eq!(err.field_name(), field, "{body}");
            assert!(
                err.to_string().starts_with(&format!("invalid {field}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn validate_rejects_nan() {
        let o = Objective {
            quantile: f64::NAN,
            latency_ms: 1.0,
            importance: 0,
            min_share: None,
        };
        assert_eq!(o.validate().unwrap_err().field_name(), "quantile");
    }
}
