//! Partition leases in a NATS KV bucket: each partition has at most one owner at a time, and
//! partitions spread evenly over the live nodes.
//!
//! The bucket `<cluster>_leases` keeps each key for `ttl` after its last write (the bucket's
//! `max_age`). A node writes `member.<node>` every tick (its heartbeat) and holds a partition
//! by owning `partition.<n>`: claimed with `create` (fails if anyone holds it) and renewed
//! with `update` at the revision it last wrote (fails if the key expired and someone else
//! claimed it: the lease is lost). A node that dies stops renewing; its keys expire after
//! `ttl` and the survivors claim its partitions at their next tick, so takeover takes at most
//! `ttl` plus one tick.
//!
//! Each tick a node counts the live members and aims for `ceil(partitions / members)`
//! partitions: it claims free ones, in an order of its own (rendezvous hashing of node and
//! partition, so nodes rarely race for the same key), or asks its caller to release the ones
//! it holds above its share once a node joined. A lease alone cannot stop a paused owner
//! from writing after it expired; the catalog's per-partition epoch does (see the store's
//! `cluster` module).
//!
//! The same bucket elects one leader (the `leader` key, taken with `create` and renewed like a
//! partition lease), which computes budgets and publishes priority versions for the cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;

use crate::names::{key_value_bucket, ClusterNames};
use crate::partition::fnv1a64;
use crate::ClusterError;

/// How leases are held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// This node's ID (letters, digits, `-`, `_`).
    pub node: String,
    pub partitions: u32,
    /// How long a lease or heartbeat lives unless renewed.
    pub ttl: Duration,
}

/// What a tick changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// This node now owns the partition.
    Claimed(u32),
    /// The lease expired and another node claimed the partition: stop consuming it at once.
    Lost(u32),
    /// Above this node's share: flush what was consumed, then call [`Leases::release`].
    Release(u32),
    /// This node now holds the `leader` key: it computes and publishes priorities.
    Elected,
    /// Another node took the `leader` key over.
    Deposed,
}

/// This node's leases.
pub struct Leases {
    kv: kv::Store,
    cfg: LeaseConfig,
    /// Held partitions and the revision of their key this node last wrote.
    held: BTreeMap<u32, u64>,
    /// The revision of the `leader` key this node last wrote, while it leads.
    leader: Option<u64>,
}

/// Whether `node` can name a node: a host name (FQDNs included) or any other run of up to 253
/// letters, digits, `-`, `_` and `.`, without empty dot-separated parts (it becomes part of KV
/// keys and segment names).
pub fn valid_node_id(node: &str) -> bool {
    (1..=253).contains(&node.len())
        && node.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The key the leader holds.
const LEADER_KEY: &str = "leader";

fn partition_key(p: u32) -> String {
    format!("partition.{p}")
}

impl Leases {
    /// Opens (creating if needed) the cluster's lease bucket.
    pub async fn open(
        js: &jetstream::Context,
        names: &ClusterNames,
        cfg: LeaseConfig,
    ) -> Result<Leases, ClusterError> {
        if !valid_node_id(&cfg.node) {
            return Err(ClusterError::Config(format!(
                "node id {:?}: use up to 253 letters, digits, '-', '_' or '.' (a host name)",
                cfg.node
            )));
        }
        let kv = key_value_bucket(js, &names.lease_bucket(), cfg.ttl).await?;
        Ok(Leases {
            kv,
            cfg,
            held: BTreeMap::new(),
            leader: None,
        })
    }

    /// The partitions held now.
    pub fn held(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    /// The nodes whose heartbeat has not expired, sorted.
    pub async fn members(&self) -> Result<Vec<String>, ClusterError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| ClusterError::nats("listing lease keys", e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| ClusterError::nats("listing lease keys", e))?;
            if let Some(node) = key.strip_prefix("member.") {
                out.push(node.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Heartbeats, renews held leases, and claims or gives up partitions to reach an even
    /// share. Call it well within `ttl` (a third of it or less).
    pub async fn tick(&mut self) -> Result<Vec<Change>, ClusterError> {
        let member = format!("member.{}", self.cfg.node);
        self.kv
            .put(member, Bytes::from(self.cfg.node.clone()))
            .await
            .map_err(|e| ClusterError::nats("writing the heartbeat", e))?;
        let mut changes = match self.elect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "leader key not renewed this round");
                Vec::new()
            }
        };
        let held: Vec<(u32, u64)> = self.held.iter().map(|(p, r)| (*p, *r)).collect();
        for (p, revision) in held {
            let node = Bytes::from(self.cfg.node.clone());
            match self.kv.update(partition_key(p), node, revision).await {
                Ok(r) => {
                    self.held.insert(p, r);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(partition = p, "partition lease lost to another node");
                    self.held.remove(&p);
                    changes.push(Change::Lost(p));
                }
                // NATS may be away: the lease may still be ours (the catalog's epoch settles
                // it). Keep it and try again next round.
                Err(e) => tracing::warn!(partition = p, error = %e, "lease not renewed this round"),
            }
        }
        let live = match self.members().await {
            Ok(m) => m.len().max(1) as u32,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count members; no claims this round");
                return Ok(changes);
            }
        };
        let share = self.cfg.partitions.div_ceil(live) as usize;
        let preference = self.preference();
        if self.held.len() < share {
            for &p in &preference {
                if self.held.len() >= share {
                    break;
                }
                if self.held.contains_key(&p) {
                    continue;
                }
                let node = Bytes::from(self.cfg.node.clone());
                if let Ok(revision) = self.kv.create(partition_key(p), node).await {
                    self.held.insert(p, revision);
                    changes.push(Change::Claimed(p));
                }
            }
        } else if self.held.len() > share {
            let surplus = self.held.len() - share;
            let least_wanted = preference
                .iter()
                .rev()
                .filter(|p| self.held.contains_key(p));
            changes.extend(least_wanted.take(surplus).map(|p| Change::Release(*p)));
        }
        Ok(changes)
    }

    /// Whether this node holds the `leader` key now.
    pub fn leading(&self) -> bool {
        self.leader.is_some()
    }

    /// Renews the `leader` key when held, or takes it when free: at most one node leads, and
    /// when it dies another takes over within `ttl` plus a tick.
    async fn elect(&mut self) -> Result<Vec<Change>, ClusterError> {
        let node = Bytes::from(self.cfg.node.clone());
        match self.leader {
            Some(revision) => match self.kv.update(LEADER_KEY, node, revision).await {
                Ok(r) => {
                    self.leader = Some(r);
                    Ok(Vec::new())
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.leader = None;
                    Ok(vec![Change::Deposed])
                }
                Err(e) => Err(ClusterError::nats("renewing the leader key", e)),
            },
            None => match self.kv.create(LEADER_KEY, node).await {
                Ok(r) => {
                    self.leader = Some(r);
                    Ok(vec![Change::Elected])
                }
                Err(_) => Ok(Vec::new()),
            },
        }
    }

    /// Gives the `leader` key up (a node that cannot lead), so another node is elected.
    pub async fn resign(&mut self) -> Result<(), ClusterError> {
        if let Some(revision) = self.leader.take() {
            self.kv
                .delete_expect_revision(LEADER_KEY, Some(revision))
                .await
                .map_err(|e| ClusterError::nats("releasing the leader key", e))?;
        }
        Ok(())
    }

    /// Gives a partition up (after its consumed spans were flushed), so another node may
    /// claim it at once.
    pub async fn release(&mut self, partition: u32) -> Result<(), ClusterError> {
        if let Some(revision) = self.held.remove(&partition) {
            self.kv
                .delete_expect_revision(partition_key(partition), Some(revision))
                .await
                .map_err(|e| ClusterError::nats("releasing a lease", e))?;
        }
        Ok(())
    }

    /// Releases every lease, the leader key and the heartbeat (a clean shutdown, after the
    /// final flush).
    pub async fn leave(&mut self) -> Result<(), ClusterError> {
        for p in self.held() {
            self.release(p).await?;
        }
        self.resign().await?;
        self.kv
            .delete(format!("member.{}", self.cfg.node))
            .await
            .map_err(|e| ClusterError::nats("removing the heartbeat", e))
    }

    /// Every partition, in this node's order of preference (rendezvous hashing).
    fn preference(&self) -> Vec<u32> {
        let rank = |p: u32| {
            let mut key = self.cfg.node.as_bytes().to_vec();
            key.extend_from_slice(&p.to_be_bytes());
            fnv1a64(&key)
        };
        let mut all: Vec<u32> = (0..self.cfg.partitions).collect();
        all.sort_by_key(|p| std::cmp::Reverse(rank(*p)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::valid_node_id;

    #[test]
    fn host_names_are_node_ids() {
        for ok in ["node-1", "n_2", "ip-10-0-0-1.ec2.internal", "a"] {
            assert!(valid_node_id(ok), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "a*", "a>b", &"x".repeat(254)] {
            assert!(!valid_node_id(bad), "{bad}");
        }
    }
}
