//! Exactly once as queries see it: a span sent twice (a client retrying a request whose answer
//! it never got, or a request simply sent twice) is stored once.
//!
//! A span's *fingerprint* is a 64-bit hash of its whole content (trace and span IDs, names,
//! times, status, attributes, events, links: everything `PartialEq` compares), keyed with a
//! random seed per process, so a sender cannot aim a collision at someone else's span. Two
//! spans that share trace and span IDs but differ in anything else (Zipkin's shared client and
//! server spans) have different fingerprints and are both kept.
//!
//! The [`Dedup`] window remembers the fingerprints of the most recent spans, up to a
//! configured count, in four generations: when the newest is full the oldest is dropped, so it
//! always holds between three quarters of the count and the count (about 11 bytes a span:
//! 2,000,000 spans take ~22 MiB). The server checks each batch after the write-ahead log made
//! it durable and before it is buffered, in sequence order, so of two copies logged at the same
//! time the first in the log is kept; replay at start-up passes through the same window, so a
//! retry of a request logged before a crash is recognised. A copy that arrives after its
//! original left the window (much later, or past a restart that had flushed the original) is
//! stored again: the window is a bound on memory, not on correctness of what is stored.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;

use meshtrace_model::Span;

/// How many generations the window keeps; see the module docs.
const GENERATIONS: usize = 4;

/// The fingerprints of recently stored spans. Not synchronized: the caller holds it under the
/// lock that orders batches.
#[derive(Debug)]
pub struct Dedup {
    hasher: foldhash::quality::RandomState,
    generations: VecDeque<HashSet<u64, foldhash::fast::RandomState>>,
    per_generation: usize,
    /// Spans found to be copies since the window was made.
    pub duplicates: u64,
}

impl Dedup {
    /// A window over the last `spans` spans (0 turns deduplication off).
    pub fn new(spans: usize) -> Dedup {
        Dedup {
            hasher: foldhash::quality::RandomState::default(),
            generations: VecDeque::new(),
            per_generation: spans.div_ceil(GENERATIONS),
            duplicates: 0,
        }
    }

    /// Whether the window is on.
    pub fn enabled(&self) -> bool {
        self.per_generation > 0
    }

    /// A hasher with this window's seed, for computing fingerprints away from the lock.
    pub fn fingerprinter(&self) -> Fingerprinter {
        Fingerprinter(self.hasher.clone())
    }

    /// Records `fingerprints` and returns, when some of them were seen before (in the window
    /// or earlier in the same slice), which ones to keep; `None` keeps them all.
    pub fn admit(&mut self, fingerprints: &[u64]) -> Option<Vec<bool>> {
        if !self.enabled() {
            return None;
        }
        let mut keep: Option<Vec<bool>> = None;
        for (i, &fp) in fingerprints.iter().enumerate() {
            let seen = self.generations.iter().any(|g| g.contains(&fp));
            if seen {
                keep.get_or_insert_with(|| vec![true; fingerprints.len()])[i] = false;
                self.duplicates += 1;
            } else {
                self.insert(fp);
            }
        }
        keep
    }

    /// Records fingerprints of spans already stored (replay of records below the checkpoint).
    pub fn remember(&mut self, fingerprints: &[u64]) {
        if self.enabled() {
            for &fp in fingerprints {
                self.insert(fp);
            }
        }
    }

    fn insert(&mut self, fp: u64) {
        let full = self
            .generations
            .back()
            .is_none_or(|g| g.len() >= self.per_generation);
        if full {
            if self.generations.len() == GENERATIONS {
                self.generations.pop_front();
            }
            let set = HashSet::with_capacity_and_hasher(
                self.per_generation.min(1 << 16),
                foldhash::fast::RandomState::default(),
            );
            self.generations.push_back(set);
        }
        if let Some(g) = self.generations.back_mut() {
            g.insert(fp);
        }
    }
}

/// Computes span fingerprints with a window's seed; cheap to clone and send to other threads.
#[derive(Debug, Clone)]
pub struct Fingerprinter(foldhash::quality::RandomState);

impl Fingerprinter {
    /// The fingerprint of every span, in order.
    pub fn of(&self, spans: &[Span]) -> Vec<u64> {
        spans.iter().map(|s| self.0.hash_one(s)).collect()
    }
}

/// Keeps the items whose flag is set.
pub fn retain_flagged<T: Clone>(items: &[T], keep: &[bool]) -> Vec<T> {
    items
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(t, _)| t.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::{AttrValue, KeyValue};

    fn span(id: u8, name: &str) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [id; 8],
            name: name.into(),
            service_name: "svc".into(),
            attributes: vec![KeyValue::new("x", AttrValue::Double(1.5))],
            ..Span::default()
        }
    }

    #[test]
    fn a_span_sent_again_is_dropped_and_a_different_one_with_the_same_ids_kept() {
        let mut d = Dedup::new(100);
        let f = d.fingerprinter();
        assert_eq!(d.admit(&f.of(&[span(1, "a"), span(2, "a")])), None);
        let again = [span(1, "a"), span(1, "b"), span(3, "a"), span(3, "a")];
        assert_eq!(d.admit(&f.of(&again)), Some(vec![false, true, true, false]));
        assert_eq!(d.duplicates, 2);
        let mut changed = span(2, "a");
        changed.attributes[0].value = AttrValue::Double(1.25);
        assert_eq!(d.admit(&f.of(&[changed])), None);
    }

    #[test]
    fn the_window_forgets_the_oldest_generation_and_stays_bounded() {
        let mut d = Dedup::new(8);
        let fps: Vec<u64> = (0..20).collect();
        assert_eq!(d.admit(&fps), None);
        let held: usize = d.generations.iter().map(HashSet::len).sum();
        assert!((6..=8).contains(&held), "{held}");
        // The newest are remembered, the oldest forgotten.
        assert_eq!(d.admit(&[19]), Some(vec![false]));
        assert_eq!(d.admit(&[0]), None);
    }

    #[test]
    fn off_keeps_everything() {
        let mut d = Dedup::new(0);
        assert!(!d.enabled());
        assert_eq!(d.admit(&[1, 1]), None);
    }
}
