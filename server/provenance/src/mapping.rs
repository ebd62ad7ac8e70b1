//! Provenance without propagation: learns, from complete traces, which (caller service, callee
//! service, operation) call signatures carry which trace classes and in what share.
//!
//! Each complete trace counts once per signature it contains, for its class (a trace calling
//! the same signature ten times still counts once). Partial traces are not learned from. When
//! the assembler hands out a replacement, [`ClassMapping::forget`] the earlier rows and
//! [`ClassMapping::learn`] the new ones so nothing is counted twice.
//!
//! Signatures are names clients chose, so the mapping holds at most
//! [`ClassMapping::with_limit`] of them (default [`DEFAULT_MAX_SIGNATURES`]): a new signature
//! past it is not learned, and counted ([`ClassMapping::refused`]). Signatures age out: one no
//! complete trace has made for the mapping's maximum age ([`ClassMapping::with_max_age`],
//! default [`DEFAULT_MAX_AGE`]) is dropped by [`ClassMapping::expire`], so names a flood of
//! made-up spans once filled it with make room again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::derive::{Derived, Name};

/// A call signature: (caller service, callee service, operation).
pub type Signature = (Name, Name, Name);

/// One row of the learned mapping.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MappingEntry {
    pub caller: String,
    pub callee: String,
    pub operation: String,
    pub class: String,
    /// Complete traces of this class that made this call.
    pub count: u64,
    /// `count` over all traces making this call (0..=1).
    pub share: f64,
}

/// What one trace taught the mapping: its class and its call signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    class: Name,
    signatures: BTreeSet<Signature>,
    /// When it was learned (the clock of [`ClassMapping::learn`]).
    at_ns: i64,
}

/// Learned signature → class counts. Hashed (foldhash, seeded per process: names come from
/// clients) rather than ordered: every complete trace looks up each of its signatures, and
/// only the API lists them in order.
#[derive(Clone, Debug)]
pub struct ClassMapping {
    counts: HashMap<Signature, Counts, foldhash::fast::RandomState>,
    traces: u64,
    max_signatures: usize,
    refused: u64,
    max_age: Duration,
    expired: u64,
}

/// One signature's traces per class, and when a complete trace last made it.
#[derive(Clone, Debug, Default)]
struct Counts {
    classes: BTreeMap<Name, u64>,
    /// On the caller's clock (see [`ClassMapping::learn`]), in nanoseconds.
    last_seen_ns: i64,
    /// When the signature was (last) added: counts of traces learned before it are not in
    /// it (it expired in between).
    since_ns: i64,
}

/// Signatures a mapping holds unless told otherwise.
pub const DEFAULT_MAX_SIGNATURES: usize = 100_000;

/// How long a signature no complete trace makes stays in a mapping, unless told otherwise.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

impl Default for ClassMapping {
    fn default() -> Self {
        ClassMapping::with_limit(DEFAULT_MAX_SIGNATURES)
    }
}

fn signatures(d: &Derived) -> BTreeSet<Signature> {
    d.edges
        .iter()
        .map(|e| {
            (
                e.caller_service.clone(),
                e.callee_service.clone(),
                e.operation.clone(),
            )
        })
        .collect()
}

impl ClassMapping {
    pub fn new() -> Self {
        ClassMapping::default()
    }

    /// A mapping of at most `max_signatures` signatures.
    pub fn with_limit(max_signatures: usize) -> Self {
        ClassMapping {
            counts: HashMap::default(),
            traces: 0,
            max_signatures,
            refused: 0,
            max_age: DEFAULT_MAX_AGE,
            expired: 0,
        }
    }

    /// The same mapping, whose signatures unseen for `max_age` are dropped by
    /// [`ClassMapping::expire`].
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Drops the signatures no complete trace has made since `now_ns - max_age` (same clock
    /// as [`ClassMapping::learn`]); returns how many.
    pub fn expire(&mut self, now_ns: i64) -> usize {
        let age = i64::try_from(self.max_age.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = now_ns.saturating_sub(age);
        let before = self.counts.len();
        self.counts.retain(|_, c| c.last_seen_ns >= cutoff);
        let dropped = before - self.counts.len();
        self.expired += dropped as u64;
        dropped
    }

    /// Signatures dropped by [`ClassMapping::expire`] so far.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Signatures held.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Signatures of complete traces not learned because the mapping was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Learns from one trace's rows at `now_ns` (any monotonic clock, the one
    /// [`ClassMapping::expire`] is given); returns what it learned (to
    /// [`ClassMapping::forget`] it if the trace is replaced), or None (learning nothing) for
    /// a partial trace.
    pub fn learn(&mut self, d: &Derived, now_ns: i64) -> Option<Learned> {
        if !d.trace.complete {
            return None;
        }
        let mut learned = Learned {
            class: d.trace.class.clone(),
            signatures: signatures(d),
            at_ns: now_ns,
        };
        let before = learned.signatures.len();
        let mut room = self.max_signatures.saturating_sub(self.counts.len());
        learned.signatures.retain(|sig| {
            if self.counts.contains_key(sig) {
                return true;
            }
            let fits = room > 0;
            room = room.saturating_sub(1);
            fits
        });
        self.refused += (before - learned.signatures.len()) as u64;
        for sig in &learned.signatures {
            let counts = self.counts.entry(sig.clone()).or_insert_with(|| Counts {
                since_ns: now_ns,
                ..Counts::default()
            });
            counts.last_seen_ns = counts.last_seen_ns.max(now_ns);
            match counts.classes.get_mut(&learned.class) {
                Some(n) => *n += 1,
                None => {
                    counts.classes.insert(learned.class.clone(), 1);
                }
            }
        }
        self.traces += 1;
        Some(learned)
    }

    /// Undoes an earlier [`ClassMapping::learn`].
    pub fn forget(&mut self, learned: &Learned) {
        for sig in &learned.signatures {
            // A signature added again after `learned` (it expired in between) does not hold
            // its count.
            let counts = self
                .counts
                .get_mut(sig)
                .filter(|c| c.since_ns <= learned.at_ns);
            if let Some(counts) = counts {
                let classes = &mut counts.classes;
                if let Some(n) = classes.get_mut(&learned.class) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        classes.remove(&learned.class);
                    }
                }
                if classes.is_empty() {
                    self.counts.remove(sig);
                }
            }
        }
        self.traces = self.traces.saturating_sub(1);
    }

    /// Complete traces learned from.
    pub fn traces(&self) -> u64 {
        self.traces
    }

    /// Every (signature, class) with its count and share, sorted by signature then class.
    pub fn entries(&self) -> Vec<MappingEntry> {
        let mut sorted: Vec<_> = self.counts.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sorted
            .into_iter()
            .flat_map(|((caller, callee, operation), counts)| {
                let classes = &counts.classes;
                let total: u64 = classes.values().sum();
                classes.iter().map(move |(class, &count)| MappingEntry {
                    caller: caller.to_string(),
                    callee: callee.to_string(),
                    operation: operation.to_string(),
                    class: class.to_string(),
                    count,
                    share: count as f64 / total.max(1) as f64,
                })
            })
            .collect()
    }

    /// The classes seen on one signature with their shares, most frequent first.
    pub fn classes_for(&self, caller: &str, callee: &str, operation: &str) -> Vec<(String, f64)> {
        let key: Signature = (caller.into(), callee.into(), operation.into());
        let Some(classes) = self.counts.get(&key).map(|c| &c.classes) else {
            return Vec::new();
        };
        let total: u64 = classes.values().sum();
        let mut out: Vec<(String, f64)> = classes
            .iter()
            .map(|(c, &n)| (c.to_string(), n as f64 / total.max(1) as f64))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}
