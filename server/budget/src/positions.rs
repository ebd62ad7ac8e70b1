//! Hop positions interned to small IDs.
//!
//! A position is the path of hops from a trace's entry down to one hop. Recording a trace
//! visits one position per critical-path hop; keyed by the whole path, that costs a copy and
//! comparisons of every path prefix, quadratic in the trace's depth. Here a position is
//! (parent position, hop) and gets a `u32` once; recording looks each hop up by its parent's
//! ID, and the full [`HopPath`] is rebuilt only when a window is read.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A (service, operation) pair. The names are shared: a trace's derived rows hand theirs over
/// without copying them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HopKey {
    pub service: Arc<str>,
    pub operation: Arc<str>,
}

impl HopKey {
    pub fn new(service: impl Into<Arc<str>>, operation: impl Into<Arc<str>>) -> Self {
        HopKey {
            service: service.into(),
            operation: operation.into(),
        }
    }
}

impl std::fmt::Display for HopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.operation)
    }
}

/// Path from the entry down to a hop (the hop last).
pub type HopPath = Vec<HopKey>;

/// A map hashed with foldhash: seeded per process (the names come from clients) and several
/// times cheaper than the default SipHash, looked up for every hop of every trace recorded.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The parent of a top-level position.
pub const TOP: u32 = u32::MAX;

/// The interner: IDs in order of first appearance.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    /// Hop, then parent position, to the position's ID (looked up without copying the hop).
    ids: Map<HopKey, Map<u32, u32>>,
    /// Per ID: parent position and hop.
    nodes: Vec<(u32, HopKey)>,
}

impl Positions {
    /// Number of positions interned.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The ID of `hop` under `parent` ([`TOP`] for a top-level hop), if interned.
    pub fn get(&self, parent: u32, hop: &HopKey) -> Option<u32> {
        self.ids.get(hop).and_then(|m| m.get(&parent)).copied()
    }

    /// The ID of `hop` under `parent` ([`TOP`] for a top-level hop), interning it if new.
    pub fn intern(&mut self, parent: u32, hop: &HopKey) -> u32 {
        if let Some(id) = self.get(parent, hop) {
            return id;
        }
        let id = u32::try_from(self.nodes.len()).unwrap_or(TOP - 1);
        self.nodes.push((parent, hop.clone()));
        self.ids.entry(hop.clone()).or_default().insert(parent, id);
        id
    }

    /// The ID of a whole path, interning every prefix.
    pub fn intern_path(&mut self, path: &[HopKey]) -> u32 {
        path.iter()
            .fold(TOP, |parent, hop| self.intern(parent, hop))
    }

    /// The path of a position, entry first.
    pub fn path(&self, id: u32) -> HopPath {
        let mut out = Vec::new();
        let mut at = id;
        while let Some((parent, hop)) = self.nodes.get(at as usize) {
            out.push(hop.clone());
            at = *parent;
        }
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_path_same_id_and_paths_rebuild() {
        let mut p = Positions::default();
        let (a, b) = (HopKey::new("a", "x"), HopKey::new("b", "y"));
        let a_id = p.intern(TOP, &a);
        let ab = p.intern(a_id, &b);
        let again = p.intern(TOP, &a);
        assert_eq!(p.intern(again, &b), ab);
        assert_ne!(
            p.intern(TOP, &b),
            ab,
            "the same hop at the top is another position"
        );
        assert_eq!(p.path(ab), vec![a.clone(), b.clone()]);
        assert_eq!(p.intern_path(&[a, b]), ab);
        assert_eq!(p.len(), 3);
    }
}
