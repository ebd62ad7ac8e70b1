//! Parsing of query parameters shared by the query APIs: Go-style durations (`1.5s`, `300ms`,
//! `4500ns`), protobuf JSON durations (`0.1s`), RFC 3339 times and trace IDs.

/// Parses a Go `time.Duration` string (`1h2m`, `1.5s`, `300ms`, `10us`, `4500ns`) into
/// nanoseconds. A bare number is taken as microseconds, as Jaeger does for `minDuration`.
pub fn parse_go_duration(text: &str) -> Result<i64, String> {
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
    fn rfc3339() {
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:01Z").unwrap(),
            1_000_000_000
        );
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
