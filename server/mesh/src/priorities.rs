//! The priority assignments a sidecar applies, and where they come from: nowhere (priorities
//! off: one FIFO level), a static table (tests and experiments without the API), or meshtrace
//! by HTTP long poll of `GET /api/v1/priorities?service=&node=&wait=&version=` with
//! `If-None-Match`, each new version applied at once without a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meshtrace_model::time::now_unix_nanos;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::queue::Gate;

/// Where a proxy's priorities come from.
#[derive(Debug, Clone)]
pub enum PriorityMode {
    /// Every request at the same level: plain FIFO.
    Off,
    /// A fixed class → level table applied at start (documented test hook).
    Static(BTreeMap<String, u8>),
    /// Long-polled from meshtrace's HTTP API (`http://host:16686`).
    Meshtrace { base_url: String },
}

/// One assignment of the API answer (unknown fields ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct ApiAssignment {
    pub class: String,
    pub priority: u8,
    #[serde(default)]
    pub timeout_ms: Option<f64>,
    #[serde(default)]
    pub min_share: Option<f64>,
    #[serde(default)]
    pub reason: String,
}

/// The API answer.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiSet {
    pub version: u64,
    #[serde(default)]
    pub service: String,
    /// When meshtrace generated the set (the end of its window step), unix ns; absent from
    /// servers that only give the RFC 3339 `generated_at`.
    #[serde(default)]
    pub generated_at_ns: Option<i64>,
    #[serde(default)]
    pub assignments: Vec<ApiAssignment>,
}

/// A version applied by a proxy, and when.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: u64,
    pub at: Instant,
    /// `at` on the wall clock (unix ns), comparable with the set's `generated_at_ns` when
    /// meshtrace runs on the same host.
    pub at_wall_ns: i64,
    /// The set's `generated_at_ns`, when the server gave it.
    pub generated_at_ns: Option<i64>,
    pub levels: BTreeMap<String, u8>,
}

#[derive(Debug)]
struct Inner {
    enabled: bool,
    levels: BTreeMap<String, u8>,
    history: Vec<Applied>,
}

/// The levels one proxy applies now.
#[derive(Debug)]
pub struct PriorityTable {
    lowest: u8,
    inner: RwLock<Inner>,
}

impl PriorityTable {
    pub fn new(levels: u8, mode: &PriorityMode) -> Arc<Self> {
        let (enabled, table) = match mode {
            PriorityMode::Off => (false, BTreeMap::new()),
            PriorityMode::Static(t) => (true, t.clone()),
            PriorityMode::Meshtrace { .. } => (true, BTreeMap::new()),
        };
        let history = match mode {
            PriorityMode::Static(t) => vec![Applied {
                version: 1,
                at: Instant::now(),
                at_wall_ns: now_unix_nanos(),
                generated_at_ns: None,
                levels: t.clone(),
            }],
            _ => Vec::new(),
        };
        Arc::new(PriorityTable {
            lowest: levels.saturating_sub(1),
            inner: RwLock::new(Inner {
                enabled,
                levels: table,
                history,
            }),
        })
    }

    /// The level of a class: 0 for everything when off, the lowest for an unknown class.
    pub fn level_of(&self, class: Option<&str>) -> u8 {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if !inner.enabled {
            return 0;
        }
        class
            .and_then(|c| inner.levels.get(c).copied())
            .unwrap_or(self.lowest)
            .min(self.lowest)
    }

    /// Applies a new assignment set (and its minimum shares to the gate).
    pub fn apply(&self, set: &ApiSet, gate: &Gate) {
        let levels: BTreeMap<String, u8> = set
            .assignments
            .iter()
            .map(|a| (a.class.clone(), a.priority))
            .collect();
        let mut shares = BTreeMap::new();
        for a in &set.assignments {
            if let Some(s) = a.min_share.filter(|s| *s > 0.0) {
                let level = a.priority.min(self.lowest);
                let e: &mut f64 = shares.entry(level).or_default();
                *e = e.max(s);
            }
        }
        gate.set_min_shares(shares);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.levels = levels.clone();
        inner.history.push(Applied {
            version: set.version,
            at: Instant::now(),
            at_wall_ns: now_unix_nanos(),
            generated_at_ns: set.generated_at_ns.filter(|g| *g > 0),
            levels,
        });
    }

    /// The latest applied version (0 = none).
    pub fn version(&self) -> u64 {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.history.last().map(|a| a.version).unwrap_or(0)
    }

    /// Every version applied so far.
    pub fn history(&self) -> Vec<Applied> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.history.clone()
    }
}

/// What a long-poll round trip gave.
enum Poll {
    New(ApiSet),
    Unchanged,
    Unavailable,
}

async fn poll_once(
    client: &reqwest::Client,
    base_url: &str,
    service: &str,
    node: &str,
    version: u64,
) -> Poll {
    let url = format!("{}/api/v1/priorities", base_url.trim_end_matches('/'));
    let wait = if version == 0 { "1s" } else { "10s" };
    let version_s = version.to_string();
    let mut req = client.get(&url).query(&[
        ("service", service),
        ("node", node),
        ("wait", wait),
        ("version", version_s.as_str()),
    ]);
    if version > 0 {
        req = req.header("if-none-match", format!("\"{version}\""));
    }
    let resp = match req.timeout(Duration::from_secs(30)).send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(service, error = %e, "priority poll failed");
            return Poll::Unavailable;
        }
    };
    match resp.status().as_u16() {
        304 => Poll::Unchanged,
        200 => match resp.json::<ApiSet>().await {
            Ok(set) if set.version != version => Poll::New(set),
            Ok(_) => Poll::Unchanged,
            Err(e) => {
                tracing::warn!(service, error = %e, "priority answer not understood");
                Poll::Unavailable
            }
        },
        status => {
            tracing::debug!(service, status, "priorities not available");
            Poll::Unavailable
        }
    }
}

/// Long-polls meshtrace for one proxy's assignments until `stop`.
pub async fn poll_loop(
    base_url: String,
    service: String,
    node: String,
    table: Arc<PriorityTable>,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    let client = reqwest::Client::new();
    loop {
        let version = table.version();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            p = poll_once(&client, &base_url, &service, &node, version) => p,
        };
        match outcome {
            Poll::New(set) => {
                tracing::info!(
                    service,
                    version = set.version,
                    assignments = set.assignments.len(),
                    "applied priorities"
                );
                table.apply(&set, &gate);
            }
            // A server that answers at once (no long-poll support, or an empty set) is not
            // hammered.
            Poll::Unchanged => sleep_or_stop(Duration::from_millis(200), &stop).await,
            Poll::Unavailable => sleep_or_stop(Duration::from_secs(1), &stop).await,
        }
    }
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_classes_get_the_lowest_level_and_off_is_flat() {
        let t = PriorityTable::new(
            8,
            &PriorityMode::Meshtrace {
                base_url: "x".into(),
            },
        );
        assert_eq!(t.level_of(Some("interactive")), 7);
        let set: ApiSet = serde_json::from_value(serde_json::json!({
            "version": 3, "service": "reviews", "generated_at": "2024-01-01T00:00:00Z",
            "assignments": [
                {"class": "interactive", "priority": 0, "timeout_ms": 80.0, "reason": "r",
                 "match": {"header": ["x-mesh-class", "interactive"], "baggage": null, "signatures": []}},
                {"class": "batch", "priority": 2, "timeout_ms": 900.0, "reason": "r", "min_share": 0.2,
                 "match": {"header": null, "baggage": null, "signatures": []}}
            ]
        }))
        .unwrap();
        let gate = Gate::new(1);
        t.apply(&set, &gate);
        assert_eq!(t.version(), 3);
        let applied = &t.history()[0];
        assert_eq!(applied.generated_at_ns, None);
        assert!(applied.at_wall_ns > 1_700_000_000_000_000_000);
        assert_eq!(t.level_of(Some("interactive")), 0);
        assert_eq!(t.level_of(Some("batch")), 2);
        assert_eq!(t.level_of(Some("other")), 7);
        assert_eq!(t.level_of(None), 7);
        let next: ApiSet = serde_json::from_value(serde_json::json!({
            "version": 4, "generated_at_ns": 1_800_000_000_123_456_789i64, "assignments": []
        }))
        .unwrap();
        t.apply(&next, &gate);
        assert_eq!(
            t.history()[1].generated_at_ns,
            Some(1_800_000_000_123_456_789)
        );
        assert_eq!(t.level_of(Some("interactive")), 7);
        let off = PriorityTable::new(8, &PriorityMode::Off);
        assert_eq!(off.level_of(Some("batch")), 0);
        assert_eq!(off.level_of(None), 0);
    }
}
