//! A bound on the distinct classes traces get. A class claimed on an entry span
//! (`mesh.class`) is a name any sender may choose, and every class costs state downstream
//! (budget windows and priorities per class, graph and mapping rows, a derived column's
//! cardinality). Classes the rules name, those the caller keeps (classes with an objective
//! or an override), [`DEFAULT_CLASS`] and [`OTHER_CLASS`] are always kept; other classes are kept while at most `max` of them were seen within `max_age`, and
//! beyond that a trace's class folds into [`OTHER_CLASS`] (counted). A class no trace had for
//! `max_age` leaves the count ([`ClassLimit::expire`]), so the room a flood took comes back.
//! The limit applies where traces are derived (the derived tables, budgets, the graph and the
//! mapping); the query API's on-the-fly classification of a trace's spans (open traces in
//! search, a trace's provenance) still shows the class as claimed.

use std::collections::HashMap;
use std::time::Duration;

use crate::classes::{ClassRule, DEFAULT_CLASS};
use crate::derive::Derived;
use crate::span::Name;

/// The class of traces whose claimed class is past the limit.
pub const OTHER_CLASS: &str = "other";

/// Classes kept, unless told otherwise.
pub const DEFAULT_MAX_CLASSES: usize = 256;

/// The classes seen (other than those always kept) and when each last was.
#[derive(Clone, Debug)]
pub struct ClassLimit {
    seen: HashMap<Name, i64, foldhash::fast::RandomState>,
    max: usize,
    max_age: Duration,
    folded: u64,
    other: Name,
}

impl ClassLimit {
    /// At most `max` classes besides those always kept; one unseen for `max_age` leaves.
    pub fn new(max: usize, max_age: Duration) -> Self {
        ClassLimit {
            seen: HashMap::default(),
            max,
            max_age,
            folded: 0,
            other: OTHER_CLASS.into(),
        }
    }

    /// Gives `d` the class it may have at `now_ns` (any monotonic clock, the one
    /// [`ClassLimit::expire`] is given): its own, or [`OTHER_CLASS`] when the limit is full.
    /// A class the rules name or `kept` says yes to is always its own. Returns whether it was
    /// folded.
    pub fn apply(
        &mut self,
        d: &mut Derived,
        rules: &[ClassRule],
        kept: impl Fn(&str) -> bool,
        now_ns: i64,
    ) -> bool {
        let class = &d.trace.class;
        let always = &**class == DEFAULT_CLASS
            || &**class == OTHER_CLASS
            || rules.iter().any(|r| *r.class == **class)
            || kept(class);
        if always {
            return false;
        }
        if let Some(last) = self.seen.get_mut(class) {
            *last = (*last).max(now_ns);
            return false;
        }
        if self.seen.len() < self.max {
            self.seen.insert(class.clone(), now_ns);
            return false;
        }
        self.folded += 1;
        d.set_class(self.other.clone());
        true
    }

    /// Forgets the classes no trace had since `now_ns - max_age`; returns how many.
    pub fn expire(&mut self, now_ns: i64) -> usize {
        let age = i64::try_from(self.max_age.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = now_ns.saturating_sub(age);
        let before = self.seen.len();
        self.seen.retain(|_, last| *last >= cutoff);
        before - self.seen.len()
    }

    /// Traces whose class was folded into [`OTHER_CLASS`] so far.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Classes counted towards the limit now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}
