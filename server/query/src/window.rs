//! A time window of a query: `[start, end)` in unix nanoseconds.

use meshtrace_storage::ScalarValue;

use crate::error::QueryError;

/// `[start_ns, end_ns)`, unix nanoseconds; `start_ns < end_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub start_ns: i64,
    pub end_ns: i64,
}

impl TimeRange {
    /// The window `[start_ns, end_ns)`; an empty or inverted one is an invalid argument.
    pub fn new(start_ns: i64, end_ns: i64) -> Result<TimeRange, QueryError> {
        if start_ns >= end_ns {
            return Err(QueryError::InvalidArgument(
                "the window's start must be before its end".into(),
            ));
        }
        Ok(TimeRange { start_ns, end_ns })
    }

    /// The window's length in seconds.
    pub fn seconds(&self) -> f64 {
        // In i128: the bounds come from clients and may be as far apart as i64 allows.
        (i128::from(self.end_ns) - i128::from(self.start_ns)) as f64 / 1e9
    }

    /// The bounds as SQL parameters: UTC nanosecond timestamps, comparable with `start_time`.
    pub(crate) fn params(&self) -> [ScalarValue; 2] {
        let ts = |ns| ScalarValue::TimestampNanosecond(Some(ns), Some("UTC".into()));
        [ts(self.start_ns), ts(self.end_ns)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_must_not_be_empty() {
        assert!(TimeRange::new(5, 5).is_err());
        assert!(TimeRange::new(6, 5).is_err());
        assert_eq!(TimeRange::new(0, 2_000_000_000).unwrap().seconds(), 2.0);
        let widest = TimeRange::new(i64::MIN, i64::MAX).unwrap();
        assert!(widest.seconds() > 1.8e10);
    }
}
