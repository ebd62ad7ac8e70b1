//! How fast the priority loop reacts, measured in the experiment's "on" run: from the
//! background burst to every shared sidecar applying a set that ranks the foreground above
//! the background, and to the foreground p99 (over a sliding window) back within its
//! objective; and how fast a changed set travels, from the end of the window step it was
//! computed for to its publication (meshtrace's own metric) and to the last sidecar
//! applying it (the set's `generated_at_ns` against the sidecar's wall clock).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::mesh::Mesh;
use crate::scenario::Scenario;
use crate::workload::Recorded;

/// The sliding window over which the foreground p99 is computed.
pub const P99_WINDOW: Duration = Duration::from_secs(2);
/// How far the window slides each step.
const P99_SLIDE: f64 = 0.25;
/// Fewest samples in a window for its p99 to count.
const P99_MIN_SAMPLES: usize = 20;

/// Reaction to the background burst (priorities on).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reaction {
    /// Burst → every sidecar both kinds of class pass has applied a version that assigns the
    /// background classes and ranks every foreground class above them (the max over those
    /// sidecars); `None` if some never did.
    pub priorities_applied: Option<f64>,
    /// Burst → the end of the first sliding window (after one that missed) whose foreground
    /// p99 meets the objective; 0 if no window after the burst missed; `None` if the p99
    /// never came back.
    pub p99_recovered: Option<f64>,
}

/// Step end → published and → applied, over the versions of one run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Propagation {
    /// Sets meshtrace published (from its `meshtrace_priority_publish_latency_seconds`).
    pub published: u64,
    /// Longest step end → published, seconds.
    pub publish_max_s: Option<f64>,
    /// Mean step end → published, seconds.
    pub publish_mean_s: Option<f64>,
    /// (service, version) pairs applied by sidecars with a `generated_at_ns`.
    pub applied_versions: usize,
    /// Longest step end → applied at the last sidecar of the service, seconds.
    pub visible_max_s: Option<f64>,
    /// Median of the same, seconds.
    pub visible_p50_s: Option<f64>,
}

/// The services a class reaches from its entry (calls limited to other classes excluded).
fn reached(scenario: &Scenario, class: &str, entry: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![entry.to_string()];
    while let Some(s) = todo.pop() {
        if !seen.insert(s.clone()) {
            continue;
        }
        let Some(spec) = scenario.services.iter().find(|x| x.name == s) else {
            continue;
        };
        for call in &spec.calls {
            if call.classes.is_empty() || call.classes.iter().any(|c| c == class) {
                todo.push(call.to.clone());
            }
        }
    }
    seen
}

/// The services both a foreground and a background class pass through.
pub fn shared_services(scenario: &Scenario) -> BTreeSet<String> {
    let reach = |background: bool| -> BTreeSet<String> {
        scenario
            .classes
            .iter()
            .filter(|c| c.background == background)
            .flat_map(|c| reached(scenario, &c.name, &c.entry))
            .collect()
    };
    reach(false).intersection(&reach(true)).cloned().collect()
}

/// Seconds from the burst until every shared sidecar has applied a version that assigns every
/// background class and ranks every foreground class above all of them. A background class
/// the sidecar has no assignment for is not evidence of a reaction (it only falls to the
/// lowest level by default), so it does not count.
pub fn applied_after(mesh: &Mesh, scenario: &Scenario, burst: Instant) -> Option<f64> {
    let names = |background: bool| -> Vec<&str> {
        scenario
            .classes
            .iter()
            .filter(|c| c.background == background)
            .map(|c| c.name.as_str())
            .collect()
    };
    let (fg, bg) = (names(false), names(true));
    let lowest = scenario.levels.saturating_sub(1);
    let mut worst = 0.0f64;
    for service in shared_services(scenario) {
        let sidecar = mesh.sidecars.get(&service)?;
        let history = sidecar.table.history();
        let good = history.iter().find(|a| {
            let level = |c: &str| a.levels.get(c).copied().unwrap_or(lowest);
            let all_bg_known = bg.iter().all(|c| a.levels.contains_key(*c));
            let top_bg = bg.iter().map(|c| level(c)).min().unwrap_or(lowest);
            all_bg_known && fg.iter().all(|c| level(c) < top_bg)
        })?;
        worst = worst.max(good.at.saturating_duration_since(burst).as_secs_f64());
    }
    Some(worst)
}

/// The p99 of a window's latencies.
fn p99(mut w: Vec<f64>) -> f64 {
    w.sort_by(f64::total_cmp);
    w[((w.len() as f64 * 0.99).ceil() as usize).clamp(1, w.len()) - 1]
}

/// When one class's p99 over a sliding window is back within `objective_ms` after the burst
/// at `start` (seconds on the series clock).
fn class_recovered(series: &[(f64, f64)], start: f64, objective_ms: f64) -> Option<f64> {
    let width = P99_WINDOW.as_secs_f64();
    let end = series.iter().map(|p| p.0).fold(start, f64::max);
    let mut missed = false;
    let mut t = start;
    while t + width <= end {
        let w: Vec<f64> = series
            .iter()
            .filter(|p| p.0 >= t && p.0 < t + width)
            .map(|p| p.1)
            .collect();
        if w.len() >= P99_MIN_SAMPLES {
            let ok = p99(w) <= objective_ms;
            if !ok {
                missed = true;
            } else if missed {
                return Some(t + width - start);
            }
        }
        t += P99_SLIDE;
    }
    (!missed).then_some(0.0)
}

/// Seconds from the burst until every foreground class's sliding-window p99 is back within
/// its objective (see [`Reaction::p99_recovered`]).
pub fn recovered_after(
    scenario: &Scenario,
    load: &BTreeMap<String, Recorded>,
    warmup: Duration,
) -> Option<f64> {
    let mut worst = 0.0f64;
    for c in scenario.classes.iter().filter(|c| !c.background) {
        let series = &load.get(&c.name)?.series;
        let found = class_recovered(series, warmup.as_secs_f64(), c.objective.latency_ms)?;
        worst = worst.max(found);
    }
    Some(worst)
}

/// Step end → applied, seconds, per (service, version) the sidecars applied: the latest
/// sidecar of the service that applied it.
pub fn visible_latencies(mesh: &Mesh) -> Vec<f64> {
    let mut last: BTreeMap<(String, u64), i64> = BTreeMap::new();
    for sidecar in mesh.sidecars.values() {
        for a in sidecar.table.history() {
            let Some(g) = a.generated_at_ns else { continue };
            let e = last
                .entry((sidecar.service.clone(), a.version))
                .or_insert(i64::MIN);
            *e = (*e).max(a.at_wall_ns - g);
        }
    }
    last.into_values().map(|ns| ns as f64 / 1e9).collect()
}

/// One sample of a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Step end → published, from meshtrace's `/metrics`: (count, max s, mean s).
pub async fn publish_latency(http: &str) -> Option<(u64, f64, f64)> {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let base = "meshtrace_priority_publish_latency_seconds";
    let count = metric(&text, &format!("{base}_count"))? as u64;
    let sum = metric(&text, &format!("{base}_sum"))?;
    let max = metric(&text, "meshtrace_priority_publish_latency_max_seconds")?;
    Some((count, max, if count > 0 { sum / count as f64 } else { 0.0 }))
}

impl Propagation {
    /// From meshtrace's publish counters and the sidecars' step end → applied latencies.
    pub fn new(publish: Option<(u64, f64, f64)>, mut visible: Vec<f64>) -> Propagation {
        visible.sort_by(f64::total_cmp);
        let published = publish.map_or(0, |p| p.0);
        let has = published > 0;
        Propagation {
            published,
            publish_max_s: publish.filter(|_| has).map(|p| p.1),
            publish_mean_s: publish.filter(|_| has).map(|p| p.2),
            applied_versions: visible.len(),
            visible_max_s: visible.last().copied(),
            visible_p50_s: visible.get(visible.len() / 2).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
        // 30 samples per second at each (second, latency) given.
        points
            .iter()
            .flat_map(|(s, lat)| (0..30).map(move |i| (s + f64::from(i) / 30.0, *lat)))
            .collect()
    }

    #[test]
    fn recovery_is_the_end_of_the_first_good_window_after_a_bad_one() {
        let s = series(&[
            (5.0, 500.0),
            (6.0, 500.0),
            (7.0, 20.0),
            (8.0, 20.0),
            (9.0, 20.0),
        ]);
        assert_eq!(class_recovered(&s, 5.0, 150.0), Some(4.0));
        let never = series(&[(5.0, 500.0), (6.0, 500.0), (7.0, 500.0)]);
        assert_eq!(class_recovered(&never, 5.0, 150.0), None);
        let fine = series(&[(5.0, 20.0), (6.0, 20.0), (7.0, 20.0)]);
        assert_eq!(class_recovered(&fine, 5.0, 150.0), Some(0.0));
    }

    #[test]
    fn shared_services_of_bookinfo_are_reviews_and_ratings() {
        let s = Scenario::bookinfo();
        let shared: Vec<String> = shared_services(&s).into_iter().collect();
        assert_eq!(shared, ["ratings", "reviews"]);
    }

    #[test]
    fn metrics_are_read_from_the_exposition() {
        let text = "# HELP x_count no\nx_count 3\nx_sum 0.3\nx_max_seconds 0.2\n";
        assert_eq!(metric(text, "x_count"), Some(3.0));
        assert_eq!(metric(text, "x_sum"), Some(0.3));
        assert_eq!(metric(text, "x"), None);
        let p = Propagation::new(Some((3, 0.2, 0.1)), vec![0.5, 0.1, 0.3]);
        assert_eq!(p.visible_max_s, Some(0.5));
        assert_eq!(p.visible_p50_s, Some(0.3));
        assert_eq!(p.applied_versions, 3);
        assert_eq!(p.publish_max_s, Some(0.2));
    }
}
