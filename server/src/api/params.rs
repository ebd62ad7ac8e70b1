//! Query parameters, read once for every handler: [`Params`] (the query string as pairs,
//! repeated keys kept, with typed getters whose errors name the parameter) and the value
//! parsers the APIs share: Go-style durations (`1.5s`, `300ms`, `4500ns`), RFC 3339 times,
//! times as RFC 3339 or microseconds, and trace IDs.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;

/// The query string of a request as (key, value) pairs, repeated keys kept, in order.
#[derive(Clone, Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Params, Infallible> {
        Ok(Params::parse(parts.uri.query().unwrap_or_default()))
    }
}

impl Params {
    /// Parses a query string (`a=1&b=2&a=3`).
    pub fn parse(query: &str) -> Params {
        Params(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// Every (key, value) pair, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The first non-empty value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_any(&[key])
    }

    /// The first non-empty value of any of `keys` (a parameter's spellings).
    pub fn get_any(&self, keys: &[&str]) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| keys.contains(&k.as_str()) && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, empty ones included.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error naming it.
    pub fn required(&self, key: &str) -> Result<&str, ApiError> {
        self.get(key)
            .ok_or_else(|| ApiError::invalid(key, format!("parameter '{key}' is required")))
    }

    /// The value of `key` parsed by `parse`; a value it refuses is an error naming `key`.
    pub fn parsed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ApiError> {
        self.get(key)
            .map(|v| {
                parse(v).map_err(|e| {
                    ApiError::invalid(key, format!("malformed parameter '{key}': {e}"))
                })
            })
            .transpose()
    }

    /// The value of `key` as a number (`FromStr`).
    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        self.parsed(key, |v| {
            v.parse().map_err(|_| format!("{v:?} is not a number"))
        })
    }

    /// Whether `key` is `true` or `1` (`false`, `0` or absent: no; anything else is a 400).
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(ApiError::invalid(
                key,
                format!("invalid {key}: {other:?} is not true or false"),
            )),
        }
    }
}

/// A time as microseconds since the epoch, or RFC 3339; in nanoseconds.
pub fn parse_time_us_or_rfc3339(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(us) => Ok(us.saturating_mul(1000)),
        Err(_) => parse_rfc3339(text),
    }
}

/// Parses a Go `time.Duration` string (`1h2m`, `1.5s`, `300ms`, `10us`, `4500ns`) into
/// nanoseconds. A bare number is taken as microseconds, as Jaeger does for `minDuration`.
pub fn parse_go_duration(text: &str) -> Result<i64, String> {
    parse_duration(text, false)
}

/// A search's `lookback`: [`parse_go_duration`]'s forms plus days (`2d`) and weeks (`1w`),
/// which bookmarked Jaeger UI searches carry.
pub fn parse_lookback(text: &str) -> Result<i64, String> {
    parse_duration(text, true)
}

fn parse_duration(text: &str, days: bool) -> Result<i64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(us) = s.parse::<f64>() {
        return Ok((us * 1_000.0) as i64);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} is missing a unit"))?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" if days => 86_400e9,
            "w" if days => 7.0 * 86_400e9,
            _ => return Err(format!("invalid duration unit {unit:?} in {text:?}")),
        };
        total += value * scale;
        rest = next;
    }
    Ok(total.round() as i64)
}

/// Parses an RFC 3339 time into nanoseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map_err(|e| format!("invalid time {text:?}: {e}"))
        .and_then(|t| {
            t.timestamp_nanos_opt()
                .ok_or_else(|| format!("time {text:?} out of range"))
        })
}

/// Parses a hex trace ID of up to 32 characters, left-padding shorter (64-bit, or odd-length)
/// IDs with zeros.
pub fn parse_trace_id(text: &str) -> Result<[u8; 16], String> {
    let t = text.trim();
    if t.is_empty() || t.len() > 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid trace id {text:?}: want up to 32 hex characters"
        ));
    }
    let padded = format!("{t:0>32}");
    let mut id = [0u8; 16];
    hex::decode_to_slice(padded, &mut id).map_err(|e| format!("invalid trace id {text:?}: {e}"))?;
    Ok(id)
}

/// The OpenAPI schema of a trace ID parameter: hex, up to 32 characters.
pub struct TraceIdHex;

/// The pattern of [`TraceIdHex`].
pub const TRACE_ID_PATTERN: &str = "^[0-9a-fA-F]{1,32}$";

impl utoipa::PartialSchema for TraceIdHex {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(TRACE_ID_PATTERN))
            .into()
    }
}

impl utoipa::ToSchema for TraceIdHex {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("4500ns").unwrap(), 4500);
        assert_eq!(parse_go_duration("1.5s").unwrap(), 1_500_000_000);
        assert_eq!(parse_go_duration("1h2m").unwrap(), 3_720_000_000_000);
        assert_eq!(parse_go_duration("10us").unwrap(), 10_000);
        assert_eq!(parse_go_duration("250").unwrap(), 250_000);
        assert!(parse_go_duration("5 parsecs").is_err());
        assert!(parse_go_duration("2d").is_err(), "days only in a lookback");
        assert_eq!(parse_lookback("2d").unwrap(), 2 * 86_400_000_000_000);
        assert_eq!(
            parse_lookback("1w2h").unwrap(),
            7 * 86_400_000_000_000 + 7_200_000_000_000
        );
        assert_eq!(
            parse_lookback("1h").unwrap(),
            parse_go_duration("1h").unwrap()
        );
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn trace_ids() {
        assert_eq!(parse_trace_id("abc").unwrap()[15], 0xbc);
        assert_eq!(parse_trace_id("ABC").unwrap()[14], 0x0a);
        assert!(parse_trace_id("xyz").is_err());
        assert!(parse_trace_id(&"a".repeat(33)).is_err());
        let id31 = "3ba55609c3cde49649cd77d1f9dcd93";
        assert_eq!(parse_trace_id(id31).unwrap()[0], 0x03);
    }

    #[test]
    fn params_keep_repeats_and_name_bad_values() {
        let p = Params::parse("traceID=a&traceID=b&limit=x&service=&lookback=1h");
        assert_eq!(p.all("traceID").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(p.get("service"), None, "empty values are absent");
        let err = p.number::<usize>("limit").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("limit"));
        assert!(err.message.contains("'limit'"), "{}", err.message);
        assert_eq!(
            p.required("service").unwrap_err().field.as_deref(),
            Some("service")
        );
        assert_eq!(
            p.parsed("lookback", parse_go_duration).unwrap(),
            Some(3_600_000_000_000)
        );
        assert_eq!(parse_time_us_or_rfc3339("1000").unwrap(), 1_000_000);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:01Z").unwrap(),
            1_000_000_000
        );
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
