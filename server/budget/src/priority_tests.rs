//! Priority assignment: shared hops, hysteresis, overrides, versions, match rules.

use std::collections::BTreeMap;

use super::*;
use crate::objective::Objective;

fn hop(service: &str, budget: f64, observed: f64) -> HopBudget {
    HopBudget {
        service: service.into(),
        operation: "op".into(),
        parent: None,
        depth: 0,
        parallel: false,
        budget_ms: budget,
        subtree_budget_ms: budget,
        observed_ms: observed,
        slack_ms: budget - observed,
        share: 0.0,
        rate_per_s: 1.0,
        load_share: 0.5,
    }
}

fn class(name: &str, importance: u32, hops: Vec<HopBudget>) -> ClassBudget {
    ClassBudget {
        class: name.into(),
        objective: Objective {
            quantile: 0.99,
            latency_ms: 250.0,
            importance,
            min_share: (importance == 1).then_some(0.2),
        },
        observed_ms: Some(100.0),
        attainment: Some(1.0),
        samples: 10,
        hops,
    }
}

/// interactive (importance 10) and batch (importance 1) share `db`; interactive also uses
/// `frontend`. `interactive_risk` / `batch_risk` put the class's db hop at 2% slack.
fn scenario(interactive_risk: bool, batch_risk: bool) -> Vec<ClassBudget> {
    let db = |risk: bool, budget: f64| {
        hop(
            "db",
            budget,
            if risk { budget * 0.98 } else { budget * 0.5 },
        )
    };
    vec![
        class("batch", 1, vec![db(batch_risk, 500.0)]),
        class(
            "interactive",
            10,
            vec![hop("frontend", 100.0, 50.0), db(interactive_risk, 50.0)],
        ),
    ]
}

fn levels(p: &Prioritizer, service: &str) -> Vec<(String, u8)> {
    p.current(service)
        .map(|s| {
            s.assignments
                .iter()
                .map(|a| (a.class.clone(), a.priority))
                .collect()
        })
        .unwrap_or_default()
}

fn lv(pairs: &[(&str, u8)]) -> Vec<(String, u8)> {
    pairs.iter().map(|(c, l)| (c.to_string(), *l)).collect()
}

fn none() -> BTreeMap<String, u8> {
    BTreeMap::new()
}

#[test]
fn at_risk_class_is_raised_at_the_shared_hop() {
    let mut p = Prioritizer::new(PriorityConfig::default());
    let changed = p.update(&scenario(true, false), &[], &none(), 1);
    let services: Vec<&str> = changed.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, vec!["db", "frontend"]);
    assert_eq!(levels(&p, "db"), lv(&[("batch", 1), ("interactive", 0)]));
    assert_eq!(levels(&p, "frontend"), lv(&[("interactive", 0)]));
    let db = p.current("db").unwrap();
    let interactive = &db.assignments[1];
    assert!(
        interactive
            .reason
            .contains("objective p99 <= 250 ms of class interactive"),
        "{}",
        interactive.reason
    );
    assert!(
        interactive
            .reason
            .contains("slack 1.0 ms of 50.0 ms budget at db/op (2%)"),
        "{}",
        interactive.reason
    );
    assert!(
        interactive.reason.contains("at risk: raised above"),
        "{}",
        interactive.reason
    );
    assert_eq!(interactive.timeout_ms, 50.0);
    assert_eq!(db.assignments[0].min_share, Some(0.2));
    assert!(
        db.assignments[0].reason.ends_with("importance 1"),
        "{}",
        db.assignments[0].reason
    );

    // A less important class at risk goes above a more important class with slack.
    let mut p = Prioritizer::new(PriorityConfig::default());
    p.update(&scenario(false, true), &[], &none(), 1);
    assert_eq!(levels(&p, "db"), lv(&[("batch", 0), ("interactive", 1)]));
    // Both with slack: importance decides. Both at risk: importance decides too.
    for (i, b) in [(false, false), (true, true)] {
        let mut p = Prioritizer::new(PriorityConfig::default());
        p.update(&scenario(i, b), &[], &none(), 1);
        assert_eq!(levels(&p, "db"), lv(&[("batch", 1), ("interactive", 0)]));
    }
}

#[test]
fn hysteresis_needs_consecutive_windows_and_does_not_flap() {
    let mut p = Prioritizer::new(PriorityConfig::default());
    assert_eq!(p.update(&scenario(true, false), &[], &none(), 1).len(), 2);
    // Proposed once: nothing applies.
    assert!(p.update(&scenario(false, true), &[], &none(), 2).is_empty());
    assert_eq!(levels(&p, "db"), lv(&[("batch", 1), ("interactive", 0)]));
    // Flapping back and forth never applies.
    for t in 3..10 {
        let flip = t % 2 == 0;
        assert!(p.update(&scenario(!flip, flip), &[], &none(), t).is_empty());
    }
    assert_eq!(p.current("db").unwrap().version, 1);
    // Two consecutive windows: applies, with the new reason.
    assert!(p
        .update(&scenario(false, true), &[], &none(), 20)
        .is_empty());
    let changed = p.update(&scenario(false, true), &[], &none(), 21);
    assert_eq!(changed.len(), 1);
    assert_eq!(
        (
            changed[0].service.as_str(),
            changed[0].version,
            changed[0].generated_at_ns
        ),
        ("db", 2, 21)
    );
    assert_eq!(levels(&p, "db"), lv(&[("batch", 0), ("interactive", 1)]));
    assert!(changed[0].assignments[0].reason.contains("class batch"));
    assert_eq!(
        p.history("db")
            .iter()
            .map(|s| s.version)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );

    // With hysteresis 1 a change applies at once.
    let cfg = PriorityConfig {
        hysteresis_windows: 1,
        ..PriorityConfig::default()
    };
    let mut p = Prioritizer::new(cfg);
    p.update(&scenario(true, false), &[], &none(), 1);
    assert_eq!(p.update(&scenario(false, true), &[], &none(), 2).len(), 1);
    assert_eq!(levels(&p, "db"), lv(&[("batch", 0), ("interactive", 1)]));
}

#[test]
fn overrides_win_and_apply_at_once() {
    let mut p = Prioritizer::new(PriorityConfig::default());
    p.update(&scenario(true, false), &[], &none(), 1);
    let overrides: BTreeMap<String, u8> =
        [("batch".to_string(), 0), ("interactive".to_string(), 200)].into();
    let changed = p.update(&scenario(true, false), &[], &overrides, 2);
    assert_eq!(changed.len(), 2);
    assert_eq!(levels(&p, "db"), lv(&[("batch", 0), ("interactive", 7)]));
    assert!(p
        .current("db")
        .unwrap()
        .assignments
        .iter()
        .all(|a| a.reason == "operator override"));
    // Lifting the override returns to the computed levels at once (they never changed).
    p.update(&scenario(true, false), &[], &none(), 3);
    assert_eq!(levels(&p, "db"), lv(&[("batch", 1), ("interactive", 0)]));
}

#[test]
fn versions_are_per_service_and_bump_only_on_change() {
    let mut p = Prioritizer::new(PriorityConfig::default());
    p.update(&scenario(true, false), &[], &none(), 1);
    assert!(p.update(&scenario(true, false), &[], &none(), 2).is_empty());
    // A timeout moving by 5% (within tolerance) is not republished; by 20% it is.
    let mut budgets = scenario(true, false);
    budgets[1].hops[0].subtree_budget_ms = 105.0;
    assert!(p.update(&budgets, &[], &none(), 3).is_empty());
    budgets[1].hops[0].subtree_budget_ms = 120.0;
    let changed = p.update(&budgets, &[], &none(), 4);
    assert_eq!(
        changed
            .iter()
            .map(|s| (s.service.as_str(), s.version))
            .collect::<Vec<_>>(),
        vec![("frontend", 2)]
    );
    assert_eq!(
        p.current("frontend").unwrap().assignments[0].timeout_ms,
        120.0
    );
    assert_eq!(p.current("db").unwrap().version, 1);
    // interactive leaves db: db's set changes; then nothing is left anywhere.
    let only_batch = vec![scenario(true, false).remove(0)];
    let changed = p.update(&only_batch, &[], &none(), 5);
    let got: Vec<(&str, u64, usize)> = changed
        .iter()
        .map(|s| (s.service.as_str(), s.version, s.assignments.len()))
        .collect();
    assert_eq!(got, vec![("db", 2, 1), ("frontend", 3, 0)]);
    // Alone at db batch would be 0, but hysteresis holds its level for now.
    assert_eq!(levels(&p, "db"), lv(&[("batch", 1)]));
    let changed = p.update(&[], &[], &none(), 6);
    assert_eq!(
        changed
            .iter()
            .map(|s| (s.service.as_str(), s.version))
            .collect::<Vec<_>>(),
        vec![("db", 3)]
    );
    assert!(p.update(&[], &[], &none(), 7).is_empty());
    assert_eq!(p.current("db").unwrap().assignments.len(), 0);
}

#[test]
fn unknown_service_gets_an_empty_set() {
    let mut p = Prioritizer::new(PriorityConfig::default());
    p.update(&scenario(true, false), &[], &none(), 1);
    assert!(p.current("nope").is_none());
    assert_eq!(p.current_or_empty("nope"), AssignmentSet::empty("nope"));
    assert_eq!(p.current_or_empty("nope").version, 0);
    assert!(p.history("nope").is_empty());
    assert_eq!(p.services().collect::<Vec<_>>(), vec!["db", "frontend"]);
}

#[test]
fn match_rule_carries_header_baggage_and_learned_signatures() {
    let mapping: Vec<MappingRow> = vec![
        (
            "frontend".into(),
            "db".into(),
            "GET".into(),
            "interactive".into(),
            0.333,
        ),
        (
            "cron".into(),
            "db".into(),
            "scan".into(),
            "interactive".into(),
            0.9,
        ),
        (
            "cron".into(),
            "db".into(),
            "scan".into(),
            "batch".into(),
            0.1,
        ),
        (
            "frontend".into(),
            "cart".into(),
            "GET".into(),
            "interactive".into(),
            1.0,
        ),
    ];
    let mut p = Prioritizer::new(PriorityConfig::default());
    p.update(&scenario(true, false), &mapping, &none(), 1);
    let db = p.current("db").unwrap();
    let m = &db.assignments[1].r#match;
    assert_eq!(
        m.header,
        Some(("x-mesh-class".into(), "interactive".into()))
    );
    assert_eq!(m.baggage, Some(("mesh.class".into(), "interactive".into())));
    let sigs: Vec<(&str, &str, f64)> = m
        .signatures
        .iter()
        .map(|s| (s.caller.as_str(), s.operation.as_str(), s.share))
        .collect();
    assert_eq!(sigs, vec![("cron", "scan", 0.9), ("frontend", "GET", 0.33)]);
    assert_eq!(db.assignments[0].r#match.signatures.len(), 1);
}

#[test]
fn levels_are_capped() {
    let cfg = PriorityConfig {
        levels: 2,
        ..PriorityConfig::default()
    };
    let mut budgets = scenario(true, false);
    budgets.push(class("bulk", 0, vec![hop("db", 1000.0, 10.0)]));
    let mut p = Prioritizer::new(cfg);
    p.update(&budgets, &[], &none(), 1);
    assert_eq!(
        levels(&p, "db"),
        lv(&[("batch", 1), ("bulk", 1), ("interactive", 0)])
    );
}

#[test]
fn from_observations_to_priorities() {
    use crate::budget::compute_budgets;
    use crate::observe::{HopSample, Observations, WindowConfig};
    const MS: i64 = 1_000_000;
    let mut obs = Observations::new(WindowConfig::default());
    for i in 0..20 {
        // interactive: 245 ms of a 250 ms objective, 2% slack everywhere -> at risk.
        obs.record_trace(
            "interactive",
            245 * MS,
            &[
                HopSample::new("gw", "GET", 45 * MS),
                HopSample::new("db", "q", 200 * MS).child_of(0),
            ],
            i,
        );
        // batch: 100 ms of a 1 s objective.
        obs.record_trace("batch", 100 * MS, &[HopSample::new("db", "q", 100 * MS)], i);
    }
    let objectives: BTreeMap<String, Objective> = [
        (
            "interactive".to_string(),
            Objective {
                quantile: 0.99,
                latency_ms: 250.0,
                importance: 10,
                min_share: None,
            },
        ),
        (
            "batch".to_string(),
            Objective {
                quantile: 0.9,
                latency_ms: 1000.0,
                importance: 1,
                min_share: Some(0.2),
            },
        ),
    ]
    .into();
    let budgets = compute_budgets(&obs, &objectives, 0);
    let mut p = Prioritizer::new(PriorityConfig::default());
    p.update(&budgets, &[], &none(), 0);
    assert_eq!(levels(&p, "db"), lv(&[("batch", 1), ("interactive", 0)]));
    let db = p.current("db").unwrap();
    // interactive's db hop: subtree budget = 250 * 200/245; batch's: its whole 1000 ms.
    assert_eq!(db.assignments[1].timeout_ms, 250.0 * (200.0 / 245.0));
    assert_eq!(db.assignments[0].timeout_ms, 1000.0);
    assert_eq!(p.current("gw").unwrap().assignments[0].timeout_ms, 250.0);
}
