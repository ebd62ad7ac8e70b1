//! Segments whose catalog state is in between, as the store remembers them: a commit whose
//! outcome is not known yet ([`Unresolved`], see `commit.rs`), damaged segments the
//! write-ahead log is rebuilding ([`Rebuild`], see `check.rs`), and span merges of unknown
//! outcome or failed ([`Merges`], see `compact.rs`).

use std::collections::HashSet;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;

use crate::catalog::{PartitionMark, SegmentInfo};

/// A written segment whose commit may or may not have gone through.
#[derive(Debug)]
pub(crate) struct Unresolved {
    pub object: ObjectPath,
    pub info: SegmentInfo,
    pub marks: Vec<PartitionMark>,
    pub checkpoint: u64,
    /// The damaged segments it replaces (see [`crate::check`]).
    pub replaces: Vec<i64>,
}

/// A damaged segment the log can rebuild: its row and sequence numbers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rebuild {
    pub id: i64,
    pub seq_min: u64,
    pub seq_max: u64,
}

/// What span compaction ([`crate::compact`]) remembers between passes.
#[derive(Debug, Default)]
pub(crate) struct Merges {
    /// A merge whose commit outcome is not known: settled before any other pass.
    pub unresolved: Option<UnresolvedMerge>,
    /// Segments of runs whose merge failed: not merged again until a restart.
    pub failed: HashSet<i64>,
}

/// A span merge whose commit outcome is not known yet.
#[derive(Debug)]
pub(crate) struct UnresolvedMerge {
    pub info: SegmentInfo,
    pub old: Vec<Arc<SegmentInfo>>,
}
