//! Cluster mode: one elected node (the leader, see `meshtrace_cluster::lease`) computes
//! priority sets and stores each version in the catalog; every other node follows the catalog
//! and publishes the leader's versions to its own watchers, so a proxy gets the same version
//! from any node. Every node records every trace's observation (they are forwarded between
//! nodes), so a new leader computes from the same window at once.
//!
//! Versions stay monotonic across leader changes: a node that becomes leader continues from
//! the newest stored version of each service, and starts its prioritizer afresh, so its first
//! update republishes every set with a higher version.

use std::sync::atomic::Ordering;

use anyhow::Context;
use meshtrace_budget::Prioritizer;

use super::publish::SetJson;
use super::{lock, priority_config, Priorities};

impl Priorities {
    /// Whether this node publishes priority sets.
    pub fn leading(&self) -> bool {
        self.inner.leading.load(Ordering::Acquire)
    }

    /// This node was elected: continue every service's versions from the catalog and update
    /// now.
    pub async fn lead(&self) -> anyhow::Result<()> {
        let stored = self
            .inner
            .store
            .priority_sets()
            .await
            .context("reading priority sets")?;
        // The newer of the stored version and the one this node's watchers hold (a set it
        // published as leader before may not have been stored).
        *lock(&self.inner.base_versions) = stored
            .iter()
            .map(|s| {
                let held = self.inner.board.current(&s.service).version;
                (s.service.clone(), s.version.max(held))
            })
            .collect();
        *lock(&self.inner.prioritizer) = Prioritizer::new(priority_config(&self.inner.settings));
        self.inner.leading.store(true, Ordering::Release);
        tracing::info!("elected: this node now computes and publishes priorities");
        self.wake();
        Ok(())
    }

    /// Another node leads now: stop publishing, follow the catalog.
    pub fn step_down(&self) {
        if self.inner.leading.swap(false, Ordering::AcqRel) {
            tracing::warn!("no longer the leader: following the published priorities");
        }
    }

    /// Publishes to this node's watchers every stored set newer than the one they have
    /// (followers call it every second).
    pub async fn follow(&self) -> anyhow::Result<()> {
        if self.leading() {
            return Ok(());
        }
        let stored = self.inner.store.priority_sets().await?;
        for s in stored {
            if s.version <= self.inner.board.current(&s.service).version {
                continue;
            }
            match serde_json::from_str::<SetJson>(&s.body) {
                Ok(j) => self.inner.board.publish(j.into_set(s.generated_at_ns)),
                Err(e) => tracing::warn!(service = %s.service, error = %e, "bad stored set"),
            }
        }
        Ok(())
    }
}
