//! One window step of observations, as cluster nodes share them. Each node records the traces
//! it completes into observations of its own; once a step is over it takes that step out
//! ([`Observations::take_steps`]) and publishes it, and every node (itself included) adds it
//! to the observations its budgets are computed from ([`Observations::record_step`]). Sketches
//! merge exactly, so the merged window equals one that recorded every node's traces, and
//! every node holds the same window: the elected node computes budgets from the whole cluster,
//! and a node elected after it from the same data at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::observe::{BucketStats, HopStats, Observations};
use crate::positions::HopPath;
use crate::Sketch;

/// One step's observations of every class.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// The step's number: its start over the step length (see `WindowConfig::bucket_of`).
    pub bucket: i64,
    pub classes: BTreeMap<String, StepClass>,
}

/// One class's observations in a step: end-to-end latencies and every hop position's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepClass {
    /// None in a step's later parts (see [`Observations::split`]): an empty sketch has no JSON
    /// form (its min and max are infinite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e: Option<Sketch>,
    pub hops: Vec<(HopPath, HopStats)>,
}

impl Step {
    /// Traces the step holds.
    pub fn traces(&self) -> u64 {
        let count = |c: &StepClass| c.e2e.as_ref().map_or(0, Sketch::count);
        self.classes.values().map(count).sum()
    }
}

impl Observations {
    /// Takes out the steps that ended before `now_ns` (every step, the current one too, with
    /// `all`, as a node that stops does), oldest first.
    pub fn take_steps(&mut self, now_ns: i64, all: bool) -> Vec<Step> {
        let current = self.cfg.bucket_of(now_ns);
        let kept = match all {
            true => BTreeMap::new(),
            false => self.buckets.split_off(&current),
        };
        let taken = std::mem::replace(&mut self.buckets, kept);
        let steps = taken
            .into_iter()
            .map(|(bucket, classes)| Step {
                bucket,
                classes: classes
                    .into_iter()
                    .map(|(class, stats)| (class, self.step_class(stats)))
                    .collect(),
            })
            .collect();
        // Positions of the steps taken out are no longer used here.
        self.compact();
        steps
    }

    /// The step in parts of at most `max_hops` hop positions each (one class a part, the
    /// class's end-to-end sketch in its first): each part merges on its own, so a step of
    /// many classes and positions travels in messages of bounded size.
    pub fn split(step: Step, max_hops: usize) -> Vec<Step> {
        let mut parts = Vec::new();
        for (class, c) in step.classes {
            let mut e2e = c.e2e;
            let mut hops = c.hops.into_iter().peekable();
            let mut first = true;
            while first || hops.peek().is_some() {
                first = false;
                let chunk: Vec<_> = hops.by_ref().take(max_hops.max(1)).collect();
                let part = StepClass {
                    e2e: e2e.take(),
                    hops: chunk,
                };
                parts.push(Step {
                    bucket: step.bucket,
                    classes: BTreeMap::from([(class.clone(), part)]),
                });
            }
        }
        parts
    }

    fn step_class(&self, stats: BucketStats) -> StepClass {
        let hops = stats
            .hops
            .into_iter()
            .map(|(id, h)| (self.positions.path(id), h))
            .collect();
        StepClass {
            e2e: Some(stats.e2e),
            hops,
        }
    }

    /// Adds a published step to its bucket at `now_ns` (this node's clock); false (and
    /// counted late) when the window has moved past it, or when it is more than a step ahead
    /// (a node whose clock runs fast must not push every other step out of the window).
    pub fn record_step(&mut self, step: &Step, now_ns: i64) -> bool {
        let current = self.cfg.bucket_of(now_ns);
        if step.bucket > current + 1 {
            self.late += step.traces();
            return false;
        }
        self.advance(step.bucket.min(current).saturating_mul(self.cfg.step_ns()));
        if step.bucket <= self.latest.unwrap_or(step.bucket) - self.cfg.buckets() {
            self.late += step.traces();
            return false;
        }
        let bucket = self.buckets.entry(step.bucket).or_default();
        for (class, c) in &step.classes {
            if !bucket.contains_key(class) {
                bucket.insert(class.clone(), BucketStats::default());
            }
            let Some(stats) = bucket.get_mut(class) else {
                continue;
            };
            if let Some(e2e) = &c.e2e {
                stats.e2e.merge(e2e);
            }
            for (path, h) in &c.hops {
                let id = self.positions.intern_path(path);
                // Each node keeps `max_positions` a class and step; the nodes together may
                // bring more, which the window leaves out (counted as folded).
                let full = stats.hops.len() >= self.cfg.max_positions;
                if full && !stats.hops.contains_key(&id) {
                    self.folded += h.visits();
                    continue;
                }
                stats.hops.entry(id).or_default().merge(h);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::observe::{HopSample, WindowConfig};
    use crate::Observations;

    fn config() -> WindowConfig {
        let cfg: WindowConfig =
            serde_json::from_str(r#"{"window": "60s", "step": "10s"}"#).unwrap();
        assert_eq!(cfg.step, Duration::from_secs(10));
        WindowConfig {
            min_hop_traces: 1,
            ..cfg
        }
    }

    fn trace(obs: &mut Observations, class: &str, e2e_ms: i64, at_s: i64) {
        let s = 1_000_000_000;
        let hops = [
            HopSample::new("frontend", "GET /", e2e_ms * 400_000),
            HopSample::new("reviews", "GET /r", e2e_ms * 600_000).child_of(0),
        ];
        obs.record_trace(class, e2e_ms * 1_000_000, &hops, at_s * s);
    }

    #[test]
    fn steps_shared_between_nodes_merge_into_the_window_of_one_that_saw_everything() {
        let (mut a, mut b, mut whole) = (
            Observations::new(config()),
            Observations::new(config()),
            Observations::new(config()),
        );
        for (i, at) in [(1, 1000), (2, 1004), (3, 1012), (4, 1013), (5, 1021)] {
            let node = if i % 2 == 0 { &mut a } else { &mut b };
            trace(node, "batch", 10 * i, at);
            trace(&mut whole, "batch", 10 * i, at);
        }
        trace(&mut a, "interactive", 7, 1022);
        trace(&mut whole, "interactive", 7, 1022);

        // At 1025 s the steps of 1000 s and 1010 s are over; 1020 s is not.
        let now = 1025 * 1_000_000_000;
        let mut steps = a.take_steps(now, false);
        steps.extend(b.take_steps(now, false));
        assert_eq!(steps.iter().map(|s| s.traces()).sum::<u64>(), 4);
        steps.extend(a.take_steps(now, true));
        steps.extend(b.take_steps(now, true));
        assert!(a.take_steps(now, true).is_empty(), "taken once");

        // Through their serde form, in parts, as they travel.
        let mut merged = Observations::new(config());
        for s in steps.iter().flat_map(|s| Observations::split(s.clone(), 1)) {
            assert!(s.classes.len() == 1 && s.classes.values().all(|c| c.hops.len() <= 1));
            let wire: super::Step =
                serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
            assert!(merged.record_step(&wire, now));
        }
        let (got, want) = (merged.window(now), whole.window(now));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (class, w) in &want {
            let g = &got[class];
            assert_eq!(g.e2e.count(), w.e2e.count(), "{class}");
            assert_eq!(g.e2e.quantile(0.5), w.e2e.quantile(0.5), "{class}");
            assert_eq!(
                g.hops.keys().collect::<Vec<_>>(),
                w.hops.keys().collect::<Vec<_>>()
            );
            for (path, h) in &w.hops {
                assert_eq!(g.hops[path].visits(), h.visits());
                assert_eq!(
                    g.hops[path].self_time.quantile(0.99),
                    h.self_time.quantile(0.99)
                );
            }
        }

        // A step from before the window is refused and counted.
        let old = super::Step {
            bucket: 90,
            classes: steps[0].classes.clone(),
        };
        assert!(!merged.record_step(&old, now));
        assert_eq!(merged.late_traces(), old.traces());
        // So is one from a node whose clock runs minutes ahead, and it moves nothing.
        let ahead = super::Step {
            bucket: 130,
            classes: steps[0].classes.clone(),
        };
        assert!(!merged.record_step(&ahead, now));
        let batch = |o: &Observations| o.window(now)["batch"].e2e.count();
        assert_eq!(batch(&merged), batch(&whole));
    }

    #[test]
    fn nodes_together_bring_no_more_positions_than_one_may_keep() {
        let cfg = WindowConfig {
            max_positions: 2,
            ..config()
        };
        let (mut a, mut b) = (Observations::new(cfg), Observations::new(cfg));
        let at = 1000 * 1_000_000_000;
        let one = |name: &str| [HopSample::new(name, "op", 1_000_000)];
        a.record_trace("batch", 1_000_000, &one("x"), at);
        a.record_trace("batch", 1_000_000, &one("y"), at);
        b.record_trace("batch", 1_000_000, &one("x"), at);
        b.record_trace("batch", 1_000_000, &one("z"), at);
        let now = at + 20 * 1_000_000_000;
        let mut merged = Observations::new(cfg);
        for step in a
            .take_steps(now, true)
            .iter()
            .chain(&b.take_steps(now, true))
        {
            assert!(merged.record_step(step, now));
        }
        let window = merged.window(now);
        let services: Vec<&str> = window["batch"]
            .hops
            .keys()
            .map(|p| &*p[0].service)
            .collect();
        assert_eq!(services, ["x", "y"], "z came third");
        assert_eq!(
            window["batch"]
                .hops
                .values()
                .map(|h| h.visits())
                .sum::<u64>(),
            3
        );
        assert_eq!(merged.folded_samples(), 1);
    }
}
