//! Cluster mode, the parts that need no storage: how spans are split into partitions by trace
//! ID ([`partition`]), how a partition's spans travel as JetStream messages ([`codec`]), the
//! ingest sink that publishes them and acknowledges clients once JetStream has ([`publish`]),
//! the stream's and buckets' names and set-up ([`names`]), and the leases that give each
//! partition one owner at a time ([`lease`]). The server's `cluster` module consumes owned
//! partitions into the store.
//!
//! Design and failure cases: `docs/scaling.md`.

pub mod codec;
pub mod error;
pub mod lease;
pub mod names;
pub mod partition;
pub mod publish;

pub use error::ClusterError;
pub use names::ClusterNames;
