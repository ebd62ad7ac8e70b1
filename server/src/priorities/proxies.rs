//! The registry of proxies that polled or watched their priorities (`GET /api/v1/proxies`),
//! bounded: anyone may poll with a made-up node name, so entries not seen for
//! `[budgets] proxy_ttl` age out (in memory and in the catalog), and past
//! `[budgets] max_proxies` new entries are not recorded (counted in
//! `meshtrace_proxies_refused_total`); the proxy is still served its priorities.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use meshtrace_model::time::{now_unix_nanos, rfc3339};
use meshtrace_storage::StoredProxy;

use super::ProxyInfo;

type Key = (String, String);

/// Proxies by (service, node), with the keys changed since the last write to the catalog.
#[derive(Debug)]
pub struct ProxyRegistry {
    entries: Mutex<BTreeMap<Key, ProxyInfo>>,
    dirty: Mutex<Vec<Key>>,
    max: usize,
    ttl: Duration,
    refused: AtomicU64,
}

impl ProxyRegistry {
    /// The registry with the proxies stored in the catalog.
    pub fn new(stored: Vec<StoredProxy>, max: usize, ttl: Duration) -> ProxyRegistry {
        let entries = stored
            .into_iter()
            .map(|p| {
                let info = ProxyInfo {
                    last_seen: rfc3339(p.last_seen_ns),
                    service: p.service,
                    node: p.node,
                    via: p.via,
                    last_seen_ns: p.last_seen_ns,
                    version: p.version,
                };
                ((info.service.clone(), info.node.clone()), info)
            })
            .collect();
        ProxyRegistry {
            entries: Mutex::new(entries),
            dirty: Mutex::default(),
            max: max.max(1),
            ttl,
            refused: AtomicU64::new(0),
        }
    }

    /// Records a poll or watch; a new proxy past the limit (after aging out) is not recorded.
    pub fn record(&self, service: &str, node: &str, via: &str, version: u64) {
        let now = now_unix_nanos();
        let key = (service.to_string(), node.to_string());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if !entries.contains_key(&key) && entries.len() >= self.max {
            let oldest_kept = self.oldest_kept(now);
            entries.retain(|_, p| p.last_seen_ns >= oldest_kept);
            if entries.len() >= self.max {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let info = ProxyInfo {
            service: service.to_string(),
            node: node.to_string(),
            via: via.to_string(),
            last_seen: rfc3339(now),
            last_seen_ns: now,
            version,
        };
        entries.insert(key.clone(), info);
        drop(entries);
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key);
    }

    /// Proxies seen within the TTL, by service and node.
    pub fn list(&self) -> Vec<ProxyInfo> {
        let oldest_kept = self.oldest_kept(now_unix_nanos());
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .values()
            .filter(|p| p.last_seen_ns >= oldest_kept)
            .cloned()
            .collect()
    }

    /// Drops aged-out entries and answers (the rows changed since the last call, the time
    /// before which catalog rows are aged out).
    pub fn take_changes(&self) -> (Vec<StoredProxy>, i64) {
        let oldest_kept = self.oldest_kept(now_unix_nanos());
        let mut keys =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        keys.sort();
        keys.dedup();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, p| p.last_seen_ns >= oldest_kept);
        let rows = keys
            .iter()
            .filter_map(|k| entries.get(k))
            .map(|p| StoredProxy {
                service: p.service.clone(),
                node: p.node.clone(),
                via: p.via.clone(),
                last_seen_ns: p.last_seen_ns,
                version: p.version,
            })
            .collect();
        (rows, oldest_kept)
    }

    /// New proxies not recorded because the registry was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn oldest_kept(&self, now: i64) -> i64 {
        let ttl = i64::try_from(self.ttl.as_nanos()).unwrap_or(i64::MAX);
        now.saturating_sub(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_nodes_past_the_limit_are_not_recorded_and_stale_ones_age_out() {
        let registry = ProxyRegistry::new(Vec::new(), 3, Duration::from_secs(3600));
        for i in 0..10 {
            registry.record("reviews", &format!("node-{i}"), "http", 1);
        }
        assert_eq!(registry.list().len(), 3);
        assert_eq!(registry.refused(), 7);
        registry.record("reviews", "node-0", "grpc", 2);
        assert_eq!(registry.refused(), 7, "a known proxy is always updated");
        let stale = StoredProxy {
            service: "old".into(),
            node: "gone".into(),
            via: "http".into(),
            last_seen_ns: 1,
            version: 1,
        };
        let registry = ProxyRegistry::new(vec![stale], 1, Duration::from_secs(60));
        assert!(registry.list().is_empty(), "aged out");
        registry.record("reviews", "fresh", "http", 1);
        assert_eq!(registry.list().len(), 1);
        let (rows, oldest_kept) = registry.take_changes();
        assert_eq!(rows.len(), 1);
        assert!(oldest_kept > 1);
    }
}
