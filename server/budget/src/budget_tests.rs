//! Hand-computed budget splits: a chain, a flat critical path, a fan-out, attainment, load
//! shares, and exact merging of observations.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::observe::{HopSample, WindowConfig};

const MS: i64 = 1_000_000;
const S: i64 = 1_000_000_000;

fn objective(q: f64, ms: f64, importance: u32) -> Objective {
    Objective {
        quantile: q,
        latency_ms: ms,
        importance,
        min_share: None,
    }
}

fn objectives(list: &[(&str, Objective)]) -> BTreeMap<String, Objective> {
    list.iter()
        .map(|(c, o)| (c.to_string(), o.clone()))
        .collect()
}

fn hop<'a>(b: &'a ClassBudget, service: &str) -> &'a HopBudget {
    b.hops
        .iter()
        .find(|h| h.service == service)
        .unwrap_or_else(|| panic!("no hop {service}"))
}

#[test]
fn chain_splits_in_proportion_to_observed_shares() {
    let mut obs = Observations::new(WindowConfig::default());
    let hops = [
        HopSample::new("a", "GET /", 50 * MS),
        HopSample::new("b", "rpc", 30 * MS).child_of(0),
        HopSample::new("c", "query", 20 * MS).child_of(1),
    ];
    for i in 0..10 {
        obs.record_trace("interactive", 100 * MS, &hops, S + i);
    }
    let objs = objectives(&[("interactive", objective(0.99, 250.0, 10))]);
    let got = compute_budgets(&obs, &objs, 5 * S);
    assert_eq!(got.len(), 1);
    let b = &got[0];
    assert_eq!(b.samples, 10);
    assert_eq!(b.observed_ms, Some(100.0));
    assert_eq!(b.attainment, Some(1.0));
    let rows: Vec<(&str, f64, f64, f64, f64, f64, usize)> = b
        .hops
        .iter()
        .map(|h| {
            let s = h.service.as_str();
            (
                s,
                h.budget_ms,
                h.subtree_budget_ms,
                h.observed_ms,
                h.slack_ms,
                h.share,
                h.depth,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("a", 125.0, 250.0, 50.0, 75.0, 0.5, 0),
            ("b", 75.0, 125.0, 30.0, 45.0, 0.3, 1),
            ("c", 50.0, 50.0, 20.0, 30.0, 0.2, 2),
        ]
    );
    assert_eq!(hop(b, "b").parent, Some(HopKey::new("a", "GET /")));
    // 10 visits over a 60 s window.
    assert_eq!(hop(b, "c").rate_per_s, 10.0 / 60.0);
    assert_eq!(hop(b, "c").load_share, 1.0);
}

#[test]
fn flat_critical_path_rows_split_the_same_way() {
    let mut obs = Observations::new(WindowConfig::default());
    let hops = [
        HopSample::new("a", "GET /", 50 * MS),
        HopSample::new("b", "rpc", 30 * MS),
        HopSample::new("c", "query", 20 * MS),
    ];
    for _ in 0..5 {
        obs.record_trace("interactive", 100 * MS, &hops, S);
    }
    let objs = objectives(&[("interactive", objective(0.99, 250.0, 10))]);
    let b = &compute_budgets(&obs, &objs, S)[0];
    let budgets: Vec<(f64, f64)> = b
        .hops
        .iter()
        .map(|h| (h.budget_ms, h.subtree_budget_ms))
        .collect();
    assert_eq!(budgets, vec![(125.0, 125.0), (75.0, 75.0), (50.0, 50.0)]);
}

#[test]
fn fan_out_branches_inherit_the_parents_remaining_budget() {
    // frontend (40 ms self) calls auth (20 ms) then fans out to search (100) and ads (60).
    let mut obs = Observations::new(WindowConfig::default());
    let hops = [
        HopSample::new("frontend", "GET /", 40 * MS),
        HopSample::new("auth", "check", 20 * MS).child_of(0),
        HopSample::new("search", "query", 100 * MS)
            .child_of(0)
            .parallel(),
        HopSample::new("ads", "pick", 60 * MS)
            .child_of(0)
            .parallel(),
    ];
    for i in 0..5 {
        obs.record_trace("interactive", 160 * MS, &hops, 2 * S + i);
    }
    let objs = objectives(&[("interactive", objective(0.9, 200.0, 5))]);
    let b = &compute_budgets(&obs, &objs, 2 * S)[0];
    // W(frontend) = 40 + 20 + max(100, 60) = 160; scale 200/160 = 1.25.
    // frontend 50, auth 25, the fan-out gets 200 - 50 - 25 = 125, whole, for each branch.
    let rows: Vec<(&str, f64, f64, bool)> = b
        .hops
        .iter()
        .map(|h| (h.service.as_str(), h.budget_ms, h.slack_ms, h.parallel))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("frontend", 50.0, 10.0, false),
            ("ads", 125.0, 65.0, true),
            ("auth", 25.0, 5.0, false),
            ("search", 125.0, 25.0, true),
        ]
    );
    assert_eq!(hop(b, "frontend").subtree_budget_ms, 200.0);
    assert_eq!(hop(b, "search").share, 100.0 / 160.0);
}

#[test]
fn attainment_and_missing_objective() {
    let mut obs = Observations::new(WindowConfig::default());
    for i in 0..8 {
        obs.record_trace("c", 200 * MS, &[], S + i);
    }
    for i in 0..2 {
        obs.record_trace("c", 300 * MS, &[], S + 100 + i);
    }
    let objs = objectives(&[
        ("c", objective(0.99, 250.0, 1)),
        ("idle", objective(0.5, 10.0, 0)),
    ]);
    let got = compute_budgets(&obs, &objs, S);
    let c = &got[0];
    assert_eq!(c.attainment, Some(0.8));
    let p99 = c.observed_ms.unwrap();
    assert!((297.0..=300.0).contains(&p99), "{p99}");
    assert!(c.missing());
    assert!(c.hops.is_empty());
    let idle = &got[1];
    assert_eq!(
        (idle.class.as_str(), idle.samples, idle.observed_ms),
        ("idle", 0, None)
    );
    assert_eq!(idle.attainment, None);
}

#[test]
fn load_share_is_the_class_part_of_the_hop_time() {
    let mut obs = Observations::new(WindowConfig::default());
    for i in 0..10 {
        obs.record_trace(
            "interactive",
            20 * MS,
            &[HopSample::new("db", "q", 10 * MS)],
            S + i,
        );
        obs.record_trace(
            "batch",
            40 * MS,
            &[HopSample::new("db", "q", 30 * MS)],
            S + i,
        );
    }
    let objs = objectives(&[
        ("batch", objective(0.5, 1000.0, 1)),
        ("interactive", objective(0.99, 50.0, 10)),
    ]);
    let got = compute_budgets(&obs, &objs, S);
    assert_eq!(hop(&got[0], "db").load_share, 0.75);
    assert_eq!(hop(&got[1], "db").load_share, 0.25);
    // The window has moved past every sample.
    assert!(compute_budgets(&obs, &objs, 100 * S)
        .iter()
        .all(|b| b.samples == 0));
}

type Trace = (u8, i64, Vec<(u8, i64)>, i64);

fn record(obs: &mut Observations, traces: &[Trace]) {
    let services = ["a", "b", "c", "d"];
    for (class, e2e, hops, t) in traces {
        let samples: Vec<HopSample> = hops
            .iter()
            .enumerate()
            .map(|(i, (s, ns))| {
                let h = HopSample::new(services[*s as usize % 4], "op", *ns);
                if i == 0 {
                    h
                } else {
                    h.child_of(0)
                }
            })
            .collect();
        let class = if *class % 2 == 0 { "x" } else { "y" };
        obs.record_trace(class, *e2e, &samples, *t);
    }
}

fn trace() -> impl Strategy<Value = Trace> {
    (
        any::<u8>(),
        1i64..10_000_000_000,
        prop::collection::vec((any::<u8>(), 0i64..5_000_000_000), 0..4),
        0i64..50 * S,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn merging_equals_recording_everything_into_one(
        left in prop::collection::vec(trace(), 0..40),
        right in prop::collection::vec(trace(), 0..40),
    ) {
        let cfg = WindowConfig::default();
        let (mut a, mut b, mut all) =
            (Observations::new(cfg), Observations::new(cfg), Observations::new(cfg));
        // Times stay inside one window (0..50 s, window 60 s), so nothing is dropped.
        record(&mut a, &left);
        record(&mut b, &right);
        record(&mut all, &left);
        record(&mut all, &right);
        a.merge(&b);
        let objs = objectives(&[("x", objective(0.9, 100.0, 1)), ("y", objective(0.99, 3000.0, 2))]);
        let now = 55 * S;
        prop_assert_eq!(compute_budgets(&a, &objs, now), compute_budgets(&all, &objs, now));
        let (wa, wall) = (a.window(now), all.window(now));
        prop_assert_eq!(wa.keys().collect::<Vec<_>>(), wall.keys().collect::<Vec<_>>());
        for (class, sa) in &wa {
            let sb = &wall[class];
            prop_assert_eq!(sa.e2e.count(), sb.e2e.count());
            prop_assert_eq!(sa.e2e.sum(), sb.e2e.sum());
            for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
                prop_assert_eq!(sa.e2e.quantile(q), sb.e2e.quantile(q));
            }
            prop_assert_eq!(sa.hops.keys().collect::<Vec<_>>(), sb.hops.keys().collect::<Vec<_>>());
            for (p, h) in &sa.hops {
                prop_assert_eq!(h.self_time.quantile(0.99), sb.hops[p].self_time.quantile(0.99));
                prop_assert_eq!(h.self_time.count(), sb.hops[p].self_time.count());
            }
        }
    }
}

#[test]
fn a_few_forged_slow_traces_at_a_made_up_hop_move_no_budget() {
    let honest = [
        HopSample::new("productpage", "GET /", 40 * MS),
        HopSample::new("reviews", "GET /reviews", 60 * MS),
    ];
    let objs = objectives(&[("batch", objective(0.99, 500.0, 1))]);
    let mut obs = Observations::new(WindowConfig::default());
    for _ in 0..50 {
        obs.record_trace("batch", 100 * MS, &honest, S);
    }
    let before = compute_budgets(&obs, &objs, S);
    let forged = [HopSample::new("no-such-service", "GET /", 5_000 * MS)];
    for _ in 0..4 {
        obs.record_trace("batch", 5_000 * MS, &forged, S);
    }
    let after = compute_budgets(&obs, &objs, S);
    assert_eq!(
        hop(&after[0], "reviews").budget_ms,
        hop(&before[0], "reviews").budget_ms
    );
    assert!(after[0].hops.iter().all(|h| h.service != "no-such-service"));
    // Seen in enough traces, the hop counts.
    obs.record_trace("batch", 5_000 * MS, &forged, S);
    let seen = compute_budgets(&obs, &objs, S);
    assert!(hop(&seen[0], "reviews").budget_ms < hop(&before[0], "reviews").budget_ms);
}
