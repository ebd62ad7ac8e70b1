//! A latency sketch: DDSketch at 1% relative error over nanosecond values, with exact count,
//! sum, min and max. Quantile estimates are clamped to the exact [min, max], so a hop whose
//! samples are all equal reports exactly that value. Merging two sketches is exact: bins are
//! added, so merging equals recording every value into one sketch.

use sketches_ddsketch::{Config, DDSketch};

/// Relative accuracy of the sketch.
pub const RELATIVE_ERROR: f64 = 0.01;
/// Enough bins for 1 ns .. ~10^17 ns at 1% without collapsing (which would break exactness).
const MAX_BINS: u32 = 2048;
/// Values at or under 1 ns count as zero.
const MIN_VALUE_NS: f64 = 1.0;

/// A mergeable sketch of nanosecond latencies. Its serde form (bins, count, sum, min, max)
/// travels between cluster nodes, which merge it exactly.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Sketch(DDSketch);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("count", &self.count())
            .field("min", &self.0.min())
            .field("max", &self.0.max())
            .finish()
    }
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch(DDSketch::new(Config::new(
            RELATIVE_ERROR,
            MAX_BINS,
            MIN_VALUE_NS,
        )))
    }
}

impl Sketch {
    /// Records one value; negative values count as 0.
    pub fn add(&mut self, ns: i64) {
        self.0.add(ns.max(0) as f64);
    }

    /// Adds another sketch's values.
    pub fn merge(&mut self, other: &Sketch) {
        if let Err(e) = self.0.merge(&other.0) {
            // Unreachable: every sketch of this crate has the same configuration.
            tracing::error!(error = %e, "sketch merge refused");
        }
    }

    pub fn count(&self) -> u64 {
        self.0.count() as u64
    }

    /// Sum of the values (exact for integer nanoseconds below 2^53 in total).
    pub fn sum(&self) -> f64 {
        self.0.sum().unwrap_or(0.0)
    }

    /// The sketch as bytes (its JSON form) for storage; [`Sketch::from_bytes`] reads it back.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain numbers and vectors cannot fail.
        serde_json::to_vec(&self.0).unwrap_or_default()
    }

    /// Reads a sketch written by [`Sketch::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Sketch, serde_json::Error> {
        serde_json::from_slice(bytes).map(Sketch)
    }

    /// The estimated `q` quantile (0..=1), clamped to the exact min and max; None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let v = self.0.quantile(q.clamp(0.0, 1.0)).ok().flatten()?;
        Some(self.clamp(v))
    }

    fn clamp(&self, v: f64) -> f64 {
        match (self.0.min(), self.0.max()) {
            (Some(lo), Some(hi)) => v.clamp(lo, hi),
            _ => v,
        }
    }

    /// The estimated value of rank `r` (0-based, ascending); None past the end.
    pub fn value_at_rank(&self, r: u64) -> Option<f64> {
        let n = self.count();
        if r >= n {
            return None;
        }
        if r + 1 == n {
            return self.0.max();
        }
        // quantile(q) reads rank floor(q * (n - 1)); aim at the middle of rank r.
        let q = (r as f64 + 0.5) / (n - 1) as f64;
        self.quantile(if r == 0 { 0.0 } else { q })
    }

    /// How many values are estimated to be at or under `limit`.
    pub fn count_at_or_below(&self, limit: f64) -> u64 {
        // Ranks are ascending: find the first rank above the limit.
        let (mut lo, mut hi) = (0u64, self.count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.value_at_rank(mid) {
                Some(v) if v <= limit => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let mut s = Sketch::default();
        for v in [1_000_000, 2_000_000, 90_000_000] {
            s.add(v);
        }
        let back = Sketch::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back.count(), 3);
        assert_eq!(back.quantile(0.5), s.quantile(0.5));
        assert_eq!(back.quantile(1.0), Some(90_000_000.0));
        assert!(Sketch::from_bytes(b"{}").is_err());
    }

    #[test]
    fn equal_values_are_exact() {
        let mut s = Sketch::default();
        for _ in 0..10 {
            s.add(50_000_000);
        }
        assert_eq!(s.quantile(0.99), Some(50_000_000.0));
        assert_eq!(s.quantile(0.5), Some(50_000_000.0));
        assert_eq!(s.count(), 10);
        assert_eq!(s.sum(), 500_000_000.0);
    }

    #[test]
    fn quantile_within_relative_error() {
        let mut s = Sketch::default();
        for i in 1..=1000i64 {
            s.add(i * 1_000_000);
        }
        let p99 = s.quantile(0.99).unwrap();
        // Rank floor(0.99 * 999) = 989 -> the 990th value, 990 ms.
        assert!((p99 - 990e6).abs() <= 990e6 * RELATIVE_ERROR, "{p99}");
        assert_eq!(s.quantile(1.0), Some(1000e6));
        assert_eq!(s.quantile(0.0), Some(1e6));
    }

    #[test]
    fn count_at_or_below_splits_clear_groups() {
        let mut s = Sketch::default();
        for _ in 0..8 {
            s.add(200_000_000);
        }
        for _ in 0..2 {
            s.add(300_000_000);
        }
        assert_eq!(s.count_at_or_below(250e6), 8);
        assert_eq!(s.count_at_or_below(100e6), 0);
        assert_eq!(s.count_at_or_below(400e6), 10);
        assert_eq!(Sketch::default().count_at_or_below(1.0), 0);
    }

    #[test]
    fn zero_and_negative_values_are_zero() {
        let mut s = Sketch::default();
        s.add(-5);
        s.add(0);
        assert_eq!(s.quantile(0.99), Some(0.0));
        assert_eq!(s.count_at_or_below(0.0), 2);
    }
}
