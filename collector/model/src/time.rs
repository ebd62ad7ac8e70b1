//! The wall clock, read in one place: unix time in nanoseconds as the span model counts it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the unix epoch (0 if the clock is before 1970, `i64::MAX` past
/// 2262).
pub fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Unix nanoseconds as RFC 3339 in UTC with milliseconds (`2026-12-06T19:22:58.123Z`), the one
/// form every JSON API of meshtrace writes times in.
pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2020() {
        assert!(super::now_unix_nanos() > 1_577_836_800_000_000_000);
    }

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        assert_eq!(super::rfc3339(1_500_000_000), "1970-01-01T00:00:01.500Z");
    }
}
