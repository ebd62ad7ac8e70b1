//! The partitions a cluster node owns, as the store tracks them (see [`crate::cluster`]).

use std::collections::HashMap;

/// One owned partition.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Partition {
    pub epoch: i64,
    /// Highest stream sequence number in a committed segment.
    pub committed: u64,
    /// Highest stream sequence number appended (buffered or committed).
    pub appended: u64,
}

/// The partitions this node owns, by number.
#[derive(Debug, Default)]
pub(crate) struct Owned(pub HashMap<u32, Partition>);
