//! How much one sender may weigh in a class's samples. Ingest stamps the spans of an
//! authenticated request with the name of the token that sent them (`meshtrace.sender` on the
//! resource, see `meshtrace_model::class::SENDER_KEY`); a trace is its entry span's sender's.
//! With `max_sender_share` below 1, a sample (a trace's end-to-end latency, or its self time at
//! one hop position) is recorded only while its sender holds at most that share of the
//! position's samples in the step (a sender at or under it may add one more), so one sender, a
//! compromised proxy or a stolen token, cannot outweigh the others however many traces it
//! sends: not by sending first in a step, and not at hop positions only its traces visit
//! (those get one sample a step). When the class has fewer senders in the window than the
//! share allows (two senders under a share of 0.25), each may hold an equal part instead
//! (1/2); a class with one sender is not bounded. Traces with no sender (no tokens configured)
//! count as one sender.
//!
//! The price: a sender whose honest traffic is more than the share of its class's (one busy
//! gateway beside a quiet one), or whose traces alone visit some hops, loses samples there, so
//! the share is for classes that several senders carry evenly. Counts are per step bucket (a
//! step's shares bound the window's), kept beside the sketches and never merged with another
//! node's: each node holds each sender to the share among the traces it records, which bounds
//! the sender's share of their sum too. Senders are token names, so their number is bounded
//! by the configuration; counting is linear in the senders of a position.

use std::sync::Arc;

/// Samples admitted per sender at one position in one step.
#[derive(Clone, Debug, Default)]
pub(crate) struct SenderCounts {
    senders: Vec<(Option<Arc<str>>, u64)>,
    total: u64,
}

/// The share one sender may hold, given the class's senders in the window.
pub(crate) fn limit(share: f64, senders: usize) -> f64 {
    share.max(1.0 / senders.max(1) as f64)
}

impl SenderCounts {
    /// Whether `sender` holds at most `limit` of the samples counted so far, so that it may
    /// add one more; counts the sample when it may.
    pub(crate) fn admit(&mut self, sender: Option<&str>, limit: f64) -> bool {
        let at = match self.position(sender) {
            Some(at) => at,
            None => {
                self.senders.push((sender.map(Arc::from), 0));
                self.senders.len() - 1
            }
        };
        if self.senders[at].1 as f64 > limit * self.total as f64 + 1e-9 {
            return false;
        }
        self.senders[at].1 += 1;
        self.total += 1;
        true
    }

    fn position(&self, sender: Option<&str>) -> Option<usize> {
        self.senders
            .iter()
            .position(|(s, _)| s.as_deref() == sender)
    }

    /// The senders counted here.
    pub(crate) fn senders(&self) -> impl Iterator<Item = Option<&str>> {
        self.senders.iter().map(|(s, _)| s.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn a_sole_sender_is_never_held_back() {
        let mut c = SenderCounts::default();
        let gw = name("gateway");
        assert!((0..1000).all(|_| c.admit(gw.as_deref(), limit(0.2, 1))));
        assert!((0..1000).all(|_| c.admit(None, limit(1.0, 5))));
        assert_eq!(c.senders().count(), 2, "both counted");
    }

    #[test]
    fn a_flooding_sender_keeps_its_share_and_the_others_theirs() {
        let mut c = SenderCounts::default();
        let honest: Vec<_> = (0..4).map(|i| name(&format!("gw-{i}"))).collect();
        let mallory = name("mallory");
        let l = limit(0.25, 5);
        let (mut kept_honest, mut kept_mallory) = (0, 0);
        for _ in 0..1000 {
            for h in &honest {
                kept_honest += u64::from(c.admit(h.as_deref(), l));
            }
            // Mallory sends ten traces for each of an honest sender's.
            for _ in 0..10 {
                kept_mallory += u64::from(c.admit(mallory.as_deref(), l));
            }
        }
        assert_eq!(
            kept_honest, 4000,
            "honest senders under the share lose nothing"
        );
        let share = kept_mallory as f64 / (kept_honest + kept_mallory) as f64;
        assert!((0.24..=0.251).contains(&share), "mallory's share {share}");
    }

    #[test]
    fn sending_first_in_a_step_gains_one_sample() {
        // Mallory floods at the start of a step, before the window's honest sender sends.
        let mut c = SenderCounts::default();
        let (mallory, honest) = (name("mallory"), name("gw"));
        let l = limit(0.5, 2);
        let kept: u64 = (0..1000)
            .map(|_| u64::from(c.admit(mallory.as_deref(), l)))
            .sum();
        assert_eq!(kept, 1);
        let (mut kept_honest, mut kept_mallory) = (0, 0);
        for _ in 0..100 {
            kept_honest += u64::from(c.admit(honest.as_deref(), l));
            for _ in 0..10 {
                kept_mallory += u64::from(c.admit(mallory.as_deref(), l));
            }
        }
        assert_eq!(kept_honest, 100);
        assert_eq!(
            kept_mallory, 100,
            "then as many as the honest sender, no more"
        );
    }

    #[test]
    fn fewer_senders_than_the_share_allows_split_equally() {
        let mut c = SenderCounts::default();
        let (a, b) = (name("a"), name("b"));
        let l = limit(0.1, 2);
        assert_eq!(l, 0.5);
        let mut kept_a = 0;
        let mut kept_b = 0;
        for _ in 0..100 {
            kept_a += u64::from(c.admit(a.as_deref(), l));
            for _ in 0..10 {
                kept_b += u64::from(c.admit(b.as_deref(), l));
            }
        }
        assert_eq!(kept_a, 100, "a, under its half, loses nothing");
        assert!(
            (100..=101).contains(&kept_b),
            "b keeps about as many: {kept_b}"
        );
    }
}
