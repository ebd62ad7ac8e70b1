//! Which minutes of derived data changed, and in what order: the validity record that lets a
//! reader cache what it computed from the derived tables per minute (the query layer's
//! per-minute service graphs) and know when a cached minute went stale.
//!
//! Every change to derived rows (rows appended to the buffer, segments removed by retention,
//! segments a peer committed or removed, seen at a refresh) bumps an *epoch* and records it
//! against each minute of `start_time` the change covers. A reader notes the epoch before it
//! reads (its SQL snapshot is taken after), and what it read of minute `m` stays valid while
//! no change to `m` has a later epoch ([`Touches::changed_since`]). A flush moves rows from
//! the buffer to a segment without changing them, so it touches nothing. The record is
//! bounded: past [`MAX_TOUCHED_MINUTES`] minutes, or for a change spanning more, it is cleared
//! and everything read before is stale.

use std::collections::BTreeMap;

/// The width of one minute (ns).
pub const MINUTE_NS: i64 = 60_000_000_000;
/// Minutes the record keeps at most.
pub const MAX_TOUCHED_MINUTES: usize = 200_000;

/// The start of the minute holding `ns` (`i64::MIN` for the first, partial one).
pub fn minute_of(ns: i64) -> i64 {
    ns.div_euclid(MINUTE_NS).saturating_mul(MINUTE_NS)
}

/// The epochs of the last change per minute.
#[derive(Debug, Default)]
pub(crate) struct Touches {
    epoch: u64,
    /// Anything read before this epoch is stale, whatever minute.
    floor: u64,
    minutes: BTreeMap<i64, u64>,
}

impl Touches {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records a change to rows started within `[min_ns, max_ns]`.
    pub(crate) fn touch(&mut self, min_ns: i64, max_ns: i64) {
        self.epoch += 1;
        let (first, last) = (minute_of(min_ns), minute_of(max_ns.max(min_ns)));
        let span = (i128::from(last) - i128::from(first)) / i128::from(MINUTE_NS) + 1;
        if span > MAX_TOUCHED_MINUTES as i128
            || self.minutes.len() + span as usize > MAX_TOUCHED_MINUTES
        {
            self.minutes.clear();
            self.floor = self.epoch;
            return;
        }
        let mut m = first;
        loop {
            self.minutes.insert(m, self.epoch);
            match m.checked_add(MINUTE_NS) {
                Some(next) if next <= last => m = next,
                _ => break,
            }
        }
    }

    /// Whether minute `minute_ns` changed after `epoch` was read.
    pub(crate) fn changed_since(&self, minute_ns: i64, epoch: u64) -> bool {
        epoch < self.floor || self.minutes.get(&minute_ns).is_some_and(|t| *t > epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_is_stale_after_a_later_change_to_it() {
        let mut t = Touches::default();
        t.touch(5, MINUTE_NS + 5); // minutes 0 and 1
        let read = t.epoch();
        assert!(!t.changed_since(0, read) && !t.changed_since(MINUTE_NS, read));
        t.touch(2 * MINUTE_NS, 2 * MINUTE_NS); // minute 2 only
        assert!(!t.changed_since(0, read));
        assert!(t.changed_since(2 * MINUTE_NS, read));
        assert!(
            t.changed_since(MINUTE_NS, 0),
            "read before the first change"
        );
        assert_eq!(minute_of(-1), -MINUTE_NS);
        assert_eq!(minute_of(i64::MIN), i64::MIN);
        assert_eq!(minute_of(i64::MAX) % MINUTE_NS, 0);
    }

    #[test]
    fn a_change_too_wide_to_record_makes_everything_stale() {
        let mut t = Touches::default();
        t.touch(0, 0);
        let read = t.epoch();
        t.touch(i64::MIN, i64::MAX);
        assert!(t.changed_since(0, read));
        assert!(t.changed_since(123 * MINUTE_NS, read));
        let after = t.epoch();
        assert!(!t.changed_since(0, after));
    }
}
