//! How much one sender may weigh in a class's samples. Ingest stamps the spans of an
//! authenticated request with the name of the token that sent them (`meshtrace.sender` on the
//! resource, see `meshtrace_model::class::SENDER_KEY`); a trace is its entry span's sender's.
//! With `max_sender_share` below 1, a sample (a trace's end-to-end latency, or its self time at
//! one hop position) is recorded only while its sender holds at most that share of the
//! position's samples in the step, so one sender, a compromised proxy or a stolen token,
//! cannot outweigh the others however many traces it sends. When fewer senders are seen than
//! the share allows (two senders under a share of 0.25), each may hold an equal part instead
//! (1/2): the share only ever bounds a sender against the others, never a sole sender.
//! Traces with no sender (no tokens configured) count as one sender.
//!
//! Counts are per step bucket (a step's shares bound the window's), kept beside the sketches
//! and never merged with another node's: each node holds each sender to the share among the
//! traces it records, which bounds the sender's share of their sum too. Senders are token
//! names, so their number is bounded by the configuration.

use std::sync::Arc;

/// Samples admitted per sender at one position in one step.
#[derive(Clone, Debug, Default)]
pub(crate) struct SenderCounts {
    senders: Vec<(Option<Arc<str>>, u64)>,
    total: u64,
}

impl SenderCounts {
    /// Whether `sender` is within `share` of the samples counted so far (or within an equal
    /// part, when fewer senders are seen than `share` allows), so that it may add one more;
    /// counts the sample when it may. A share of 1 or more admits everything without counting.
    pub(crate) fn admit(&mut self, sender: Option<&Arc<str>>, share: f64) -> bool {
        if share >= 1.0 {
            return true;
        }
        let at = match self
            .senders
            .iter()
            .position(|(s, _)| s.as_deref() == sender.map(|s| &**s))
        {
            Some(at) => at,
            None => {
                self.senders.push((sender.cloned(), 0));
                self.senders.len() - 1
            }
        };
        let limit = share.max(1.0 / self.senders.len() as f64);
        // At or under its share, a sender may add one more sample (so the first samples of a
        // step are not refused for want of others yet).
        if self.senders[at].1 as f64 > limit * self.total as f64 + 1e-9 {
            return false;
        }
        self.senders[at].1 += 1;
        self.total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Option<Arc<str>> {
        Some(Arc::from(s))
    }

    #[test]
    fn a_sole_sender_is_never_held_back() {
        let mut c = SenderCounts::default();
        let gw = name("gateway");
        assert!((0..1000).all(|_| c.admit(gw.as_ref(), 0.2)));
        assert!(
            (0..1000).all(|_| c.admit(None, 1.0)),
            "share 1 admits everything"
        );
    }

    #[test]
    fn a_flooding_sender_keeps_its_share_and_the_others_theirs() {
        let mut c = SenderCounts::default();
        let honest: Vec<_> = (0..4).map(|i| name(&format!("gw-{i}"))).collect();
        let mallory = name("mallory");
        let (mut kept_honest, mut kept_mallory) = (0, 0);
        for round in 0..1000 {
            for h in &honest {
                kept_honest += u64::from(c.admit(h.as_ref(), 0.25));
            }
            // Mallory sends ten traces for each of an honest sender's.
            for _ in 0..10 {
                kept_mallory += u64::from(c.admit(mallory.as_ref(), 0.25));
            }
            if round == 0 {
                assert!(kept_honest == 4, "the first senders are admitted");
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
    fn fewer_senders_than_the_share_allows_split_equally() {
        let mut c = SenderCounts::default();
        let (a, b) = (name("a"), name("b"));
        for _ in 0..100 {
            assert!(c.admit(a.as_ref(), 0.1));
        }
        let mut kept_b = 0;
        for _ in 0..1000 {
            kept_b += u64::from(c.admit(b.as_ref(), 0.1));
        }
        assert_eq!(kept_b, 101, "b catches up with a, and one sample further");
        assert!(c.admit(a.as_ref(), 0.1), "then a may send again");
    }
}
