//! The update task: at every window step (aligned to the step on the wall clock, so an update
//! follows the end of each bucket at once), or at once when an objective or override changes,
//! compute the budgets, update the prioritizer, store each changed set in the catalog and
//! publish it, and record each class's end-to-end observation in the in-memory budget
//! history; then write the proxies seen since the last update. Each published set's
//! `generated_at` is the step boundary that triggered it (or the instant of the change that
//! woke the task), and the time from it to the publication is recorded as the publish latency.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Duration;

use meshtrace_budget::{compute_budgets, AssignmentSet, MappingRow, Objective};
use meshtrace_storage::StoredPrioritySet;

use super::publish::SetJson;
use meshtrace_model::time::now_unix_nanos;

use super::{lock, Priorities};

/// The next multiple of `step` on the wall clock (unix ns) after `now`.
fn next_step(step: Duration, now: i64) -> i64 {
    let step_ns = i64::try_from(step.as_nanos()).unwrap_or(i64::MAX).max(1);
    (now.div_euclid(step_ns) + 1) * step_ns
}

/// Time until `boundary` (unix ns) on the wall clock, plus a little.
fn until(boundary: i64) -> Duration {
    Duration::from_nanos(u64::try_from(boundary - now_unix_nanos()).unwrap_or(0))
        + Duration::from_millis(5)
}

/// Runs updates until the server stops. In cluster mode each update waits a little past the
/// step's end, for the step every node publishes then (see `crate::cluster::observations`).
pub(super) async fn run(p: Priorities) {
    let step = p.inner.settings.step.max(Duration::from_millis(10));
    let grace = match p.inner.clustered {
        true => (step / 5).clamp(Duration::from_millis(50), Duration::from_millis(500)),
        false => Duration::ZERO,
    };
    loop {
        let boundary = next_step(step, now_unix_nanos());
        let step_end = tokio::select! {
            _ = p.inner.stop.cancelled() => break,
            _ = tokio::time::sleep(until(boundary) + grace) => boundary,
            _ = p.inner.wake.notified() => now_unix_nanos(),
        };
        update(&p, step_end).await;
        p.persist_proxies().await;
    }
    p.persist_proxies().await;
    tracing::debug!("budget task stopped");
}

/// Why a new version: the classes that changed, with their reasons.
fn summarize(prev: &AssignmentSet, next: &AssignmentSet) -> String {
    let before: BTreeMap<&str, _> = prev
        .assignments
        .iter()
        .map(|a| (a.class.as_str(), a))
        .collect();
    let mut parts = Vec::new();
    for a in &next.assignments {
        match before.get(a.class.as_str()) {
            None => parts.push(format!(
                "{}: priority {} ({})",
                a.class, a.priority, a.reason
            )),
            Some(b) if b.priority != a.priority => parts.push(format!(
                "{}: priority {} -> {} ({})",
                a.class, b.priority, a.priority, a.reason
            )),
            Some(b) if b.timeout_ms != a.timeout_ms => parts.push(format!(
                "{}: timeout {:.1} -> {:.1} ms",
                a.class, b.timeout_ms, a.timeout_ms
            )),
            Some(_) => {}
        }
    }
    for a in &prev.assignments {
        if !next.assignments.iter().any(|n| n.class == a.class) {
            parts.push(format!("{}: removed (no traffic in the window)", a.class));
        }
    }
    if parts.is_empty() {
        "match rules updated".to_string()
    } else {
        parts.join("; ")
    }
}

/// One update for the step ending at `step_end` (unix ns): budgets, priorities, store and
/// publish.
async fn update(p: &Priorities, step_end: i64) {
    let inner = &p.inner;
    let now = now_unix_nanos();
    let objectives: BTreeMap<String, Objective> = p
        .objectives()
        .into_iter()
        .map(|(c, (o, _))| (c, o))
        .collect();
    let budgets = {
        let mut obs = inner.obs.lock().unwrap_or_else(PoisonError::into_inner);
        obs.advance(now);
        compute_budgets(&obs, &objectives, now)
    };
    inner.history.record(&budgets, step_end);
    if !inner.leading.load(Ordering::Acquire) {
        // Cluster mode, not the leader: the leader's sets arrive through the catalog.
        return;
    }
    let mapping: Vec<MappingRow> = inner
        .provenance
        .mapping()
        .into_iter()
        .map(|e| (e.caller, e.callee, e.operation, e.class, e.share))
        .collect();
    let overrides = p.overrides();
    let changed = inner
        .prioritizer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .update(&budgets, &mapping, &overrides, now);
    inner.updates.fetch_add(1, Ordering::Relaxed);
    for mut set in changed {
        set.version += lock(&inner.base_versions)
            .get(&set.service)
            .copied()
            .unwrap_or(0);
        set.generated_at_ns = step_end;
        let prev = inner.board.current(&set.service);
        let reason = summarize(&prev, &set);
        let body = serde_json::to_string(&SetJson::from(&set)).unwrap_or_default();
        let stored = StoredPrioritySet {
            service: set.service.clone(),
            version: set.version,
            generated_at_ns: set.generated_at_ns,
            reason: reason.clone(),
            body,
        };
        if let Err(e) = inner
            .store
            .store_priority_set(&stored, inner.settings.history_len.max(1))
            .await
        {
            tracing::warn!(service = %set.service, error = %e, "could not store a priority set");
            if inner.clustered {
                if matches!(e, meshtrace_storage::StorageError::Conflict(_)) {
                    // Another node leads and stored a newer version.
                    p.step_down();
                    return;
                }
                continue;
            }
        }
        let (service, version) = (set.service.clone(), set.version);
        inner.board.publish(set);
        let latency_ns = now_unix_nanos().saturating_sub(step_end);
        p.record_publish_latency(latency_ns);
        tracing::info!(
            %service,
            version,
            %reason,
            publish_latency_ms = latency_ns as f64 / 1e6,
            "priorities published"
        );
        inner.published.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_budget::{Assignment, MatchRule};

    fn set(levels: &[(&str, u8)]) -> AssignmentSet {
        AssignmentSet {
            version: 1,
            service: "s".into(),
            generated_at_ns: 0,
            assignments: levels
                .iter()
                .map(|(c, l)| Assignment {
                    class: c.to_string(),
                    priority: *l,
                    timeout_ms: 10.0,
                    r#match: MatchRule {
                        header: None,
                        baggage: None,
                        signatures: vec![],
                    },
                    reason: "why".into(),
                    min_share: None,
                })
                .collect(),
        }
    }

    #[test]
    fn summary_names_changed_classes() {
        let s = summarize(&set(&[("a", 1), ("b", 0)]), &set(&[("a", 0), ("c", 2)]));
        assert_eq!(
            s,
            "a: priority 1 -> 0 (why); c: priority 2 (why); b: removed (no traffic in the window)"
        );
        assert_eq!(
            summarize(&set(&[("a", 1)]), &set(&[("a", 1)])),
            "match rules updated"
        );
    }

    #[test]
    fn steps_are_aligned() {
        let d = until(next_step(Duration::from_secs(1), now_unix_nanos()));
        assert!(d <= Duration::from_millis(1005) && d >= Duration::from_millis(5));
        let s = Duration::from_secs(1);
        assert_eq!(next_step(s, 2_500_000_000), 3_000_000_000);
        assert_eq!(next_step(s, 3_000_000_000), 4_000_000_000);
    }
}
