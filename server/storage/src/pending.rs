//! Segments whose catalog state is in between, as the store remembers them: a commit whose
//! outcome is not known yet ([`Unresolved`], see `commit.rs`) and damaged segments the
//! write-ahead log is rebuilding ([`Rebuild`], see `check.rs`).

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
