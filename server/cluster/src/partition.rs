//! Which partition a trace belongs to: FNV-1a (64-bit) of the 16 trace-ID bytes, modulo the
//! partition count. All spans of a trace land in one partition, so one node assembles it.
//!
//! The function is part of the cluster's on-disk contract: every node and every version must
//! agree, or one trace's spans would be consumed by two owners. It is spelled out here rather
//! than taken from a hasher whose output may change between releases, and tests pin its values.

use meshtrace_model::TraceId;

/// Partitions of a new cluster unless configured.
pub const DEFAULT_PARTITIONS: u32 = 32;

/// The partition of `trace_id` among `partitions` (at least 1).
pub fn partition_of(trace_id: &TraceId, partitions: u32) -> u32 {
    (fnv1a64(trace_id) % u64::from(partitions.max(1))) as u32
}

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv_matches_its_published_test_vectors() {
        // From the FNV reference test suite (Fowler, Noll, Vo).
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn partitions_are_pinned() {
        // Changing these breaks running clusters: the same trace must map to the same
        // partition on every node and every version.
        let id = |hex_str: &str| -> TraceId { hex::decode(hex_str).unwrap().try_into().unwrap() };
        let pinned = [
            ("4bf92f3577b34da6a3ce929d0e0e4736", 32, PINNED[0]),
            ("00000000000000000000000000000001", 32, PINNED[1]),
            ("5b8efff798038103d269b633813fc60c", 32, PINNED[2]),
            ("5b8efff798038103d269b633813fc60c", 7, PINNED[3]),
        ];
        for (trace, partitions, want) in pinned {
            assert_eq!(
                partition_of(&id(trace), partitions),
                want,
                "{trace} of {partitions}"
            );
        }
    }
    // Computed with an independent FNV-1a written in Python, not by this code.
    const PINNED: [u32; 4] = [29, 18, 15, 5];

    #[test]
    fn random_trace_ids_spread_evenly() {
        let mut counts = [0u32; 32];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..64_000 {
            let mut id = [0u8; 16];
            for chunk in id.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            counts[partition_of(&id, 32) as usize] += 1;
        }
        // 2,000 expected in each; a 15 % band is far outside chance for a uniform hash.
        for (p, n) in counts.iter().enumerate() {
            assert!((1700..=2300).contains(n), "partition {p} got {n}");
        }
    }

    #[test]
    fn sequential_ids_spread_too() {
        // Some tracers make IDs from a counter or pad 64-bit IDs with zeros.
        let mut seen = std::collections::HashSet::new();
        for i in 0u64..256 {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&i.to_be_bytes());
            seen.insert(partition_of(&id, 32));
        }
        assert_eq!(seen.len(), 32);
    }

    proptest! {
        #[test]
        fn in_range_and_deterministic(id in proptest::array::uniform16(any::<u8>()), partitions in 1u32..4096) {
            let p = partition_of(&id, partitions);
            prop_assert!(p < partitions);
            prop_assert_eq!(p, partition_of(&id, partitions));
        }
    }
}
