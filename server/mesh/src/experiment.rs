//! The priority experiment: the same load twice, priorities off then on, after an unloaded
//! baseline (the foreground classes alone). Each loaded run starts with the foreground classes
//! alone for a warm-up, then the background classes burst in; the measured window starts at
//! the burst. The caller runs the steps ([`steps`], [`run_step`]) against meshtrace servers of
//! its choice (the "on" run against a fresh one, so the loop has learned nothing yet) and
//! assembles the results ([`assemble`]). The reaction and propagation times of the run with
//! priorities on are measured in [`crate::reaction`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::mesh::{Mesh, MeshConfig};
use crate::priorities::PriorityMode;
use crate::reaction::{
    applied_after, publish_latency, recovered_after, shared_services, visible_latencies,
};
pub use crate::reaction::{Propagation, Reaction};
use crate::scenario::{Scenario, Workload};
use crate::workload::{self, ClassResult, Target};

/// Where meshtrace is.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Query API base, `http://127.0.0.1:16686`.
    pub http: String,
    /// OTLP gRPC, `http://127.0.0.1:4317`.
    pub otlp_grpc: String,
}

/// One run's results.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub priorities: bool,
    pub classes: Vec<ClassResult>,
    /// Measured utilization of each shared service over the measured window: slot-time held
    /// at its sidecar's gate over `slots × wall time`.
    pub utilization: BTreeMap<String, f64>,
}

/// Busy slot-time readings of some sidecars' gates at one instant.
#[derive(Debug, Clone)]
pub struct BusyReading {
    at: Instant,
    busy: BTreeMap<String, Duration>,
}

impl BusyReading {
    /// Reads the gates of `services` now.
    pub fn take(mesh: &Mesh, services: &BTreeSet<String>) -> BusyReading {
        let busy = services
            .iter()
            .filter_map(|s| Some((s.clone(), mesh.sidecars.get(s)?.gate.busy())))
            .collect();
        BusyReading {
            at: Instant::now(),
            busy,
        }
    }

    /// Utilization per service between this reading and a later one.
    pub fn utilization(&self, later: &BusyReading, mesh: &Mesh) -> BTreeMap<String, f64> {
        let wall = later.at.saturating_duration_since(self.at).as_secs_f64();
        self.busy
            .iter()
            .filter_map(|(s, b0)| {
                let b1 = later.busy.get(s)?;
                let slots = mesh.sidecars.get(s)?.gate.slots() as f64;
                let used = b1.saturating_sub(*b0).as_secs_f64();
                Some((
                    s.clone(),
                    if wall > 0.0 {
                        used / (slots * wall)
                    } else {
                        0.0
                    },
                ))
            })
            .collect()
    }
}

/// `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub scenario: String,
    pub runs: Vec<RunResult>,
    pub unloaded_p99_ms: BTreeMap<String, f64>,
    pub reaction_s: Reaction,
    /// Window step end → a changed set published by meshtrace, longest in the "on" run
    /// (seconds).
    pub publish_latency_s: Option<f64>,
    /// Window step end → the changed set applied at the last sidecar, longest in the "on"
    /// run (seconds).
    pub visible_latency_s: Option<f64>,
    /// Both, in more detail.
    pub propagation: Propagation,
    /// How the priorities of the "on" run were obtained (`meshtrace` or `static`).
    pub priority_source: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// The load sweep (`--sweep`), empty when not asked for.
    pub sweep: Vec<SweepPoint>,
}

/// One level of the load sweep: the background load scaled by `level`, run with priorities
/// off and on.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub level: f64,
    /// Measured utilization of the shared services, per run.
    pub utilization_off: BTreeMap<String, f64>,
    pub utilization_on: BTreeMap<String, f64>,
    /// p99 of the foreground classes, per run.
    pub p99_ms_off: BTreeMap<String, f64>,
    pub p99_ms_on: BTreeMap<String, f64>,
}

impl SweepPoint {
    /// The point of `level` from its "off" and "on" runs of `scenario`.
    pub fn new(level: f64, scenario: &Scenario, off: &RunResult, on: &RunResult) -> SweepPoint {
        let foreground = |r: &RunResult| {
            r.classes
                .iter()
                .filter(|c| {
                    scenario
                        .classes
                        .iter()
                        .any(|s| s.name == c.class && !s.background)
                })
                .map(|c| (c.class.clone(), c.p99_ms))
                .collect()
        };
        SweepPoint {
            level,
            utilization_off: off.utilization.clone(),
            utilization_on: on.utilization.clone(),
            p99_ms_off: foreground(off),
            p99_ms_on: foreground(on),
        }
    }
}

/// The scenario with its background load scaled by `level`. A closed class with a measured
/// saturated throughput in `saturated_rps` (its achieved rate in the loaded "off" run, where
/// it holds the shared hop at capacity) becomes open Poisson arrivals at `level ×` that rate,
/// so the level sets the shared service's utilization (a closed loop with more clients than
/// slots saturates it at any concurrency); one without scales its concurrency (rounded, at
/// least 1). Open classes scale their rates.
pub fn scaled(scenario: &Scenario, level: f64, saturated_rps: &BTreeMap<String, f64>) -> Scenario {
    let mut s = scenario.clone();
    for c in s.classes.iter_mut().filter(|c| c.background) {
        let saturated = saturated_rps.get(&c.name).copied().filter(|r| *r > 0.0);
        c.workload = match (c.workload.clone(), saturated) {
            (Workload::Closed { .. }, Some(rps)) => Workload::Open {
                rps: rps * level,
                ramp_to_rps: None,
            },
            (
                Workload::Closed {
                    concurrency,
                    think_ms,
                },
                None,
            ) => Workload::Closed {
                concurrency: ((concurrency as f64 * level).round() as usize).max(1),
                think_ms,
            },
            (Workload::Open { rps, ramp_to_rps }, _) => Workload::Open {
                rps: rps * level,
                ramp_to_rps: ramp_to_rps.map(|r| r * level),
            },
        };
    }
    s
}

/// The achieved rate of each background class in a run: its saturated throughput when the
/// run is the loaded "off" one.
pub fn background_rates(scenario: &Scenario, run: &RunResult) -> BTreeMap<String, f64> {
    run.classes
        .iter()
        .filter(|c| {
            scenario
                .classes
                .iter()
                .any(|s| s.name == c.class && s.background)
        })
        .map(|c| (c.class.clone(), c.achieved_rps))
        .collect()
}

/// A run with its raw latency series, for the chart.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub result: RunResult,
    /// Per class: (seconds since the load started, latency ms).
    pub series: BTreeMap<String, Vec<(f64, f64)>>,
    pub reaction: Reaction,
    pub propagation: Propagation,
    pub warmup: Duration,
}

/// The warm-up before the burst for a run of `duration`.
pub fn warmup_for(duration: Duration) -> Duration {
    duration.mul_f64(0.25).max(Duration::from_secs(1))
}

/// Levels by importance (highest first): the documented static hook for runs without the
/// priorities API. Each distinct importance is one level.
pub fn static_assignments(scenario: &Scenario) -> BTreeMap<String, u8> {
    let mut imps: Vec<f64> = scenario
        .classes
        .iter()
        .map(|c| c.objective.importance)
        .collect();
    imps.sort_by(|a, b| b.total_cmp(a));
    imps.dedup();
    scenario
        .classes
        .iter()
        .map(|c| {
            let level = imps
                .iter()
                .position(|i| *i == c.objective.importance)
                .unwrap_or(0);
            (
                c.name.clone(),
                level.min(usize::from(scenario.levels - 1)) as u8,
            )
        })
        .collect()
}

/// Whether meshtrace answers `GET /api/v1/priorities` with an assignment set.
pub async fn priorities_api_available(http: &str) -> bool {
    let url = format!("{http}/api/v1/priorities?service=probe&node=probe");
    let Ok(r) = reqwest::get(url).await else {
        return false;
    };
    r.status().is_success()
        && r.json::<serde_json::Value>()
            .await
            .is_ok_and(|v| v.get("version").is_some())
}

/// Sets every class objective through `PUT /api/v1/classes/{class}/objective`.
pub async fn set_objectives(http: &str, scenario: &Scenario) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for c in &scenario.classes {
        let url = format!("{http}/api/v1/classes/{}/objective", c.name);
        let r = client
            .put(&url)
            .json(&c.objective)
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        if !r.status().is_success() {
            let status = r.status();
            anyhow::bail!(
                "PUT {url}: {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// The load targets of a scenario on a running mesh; background classes start after `warmup`.
pub fn targets(
    mesh: &Mesh,
    scenario: &Scenario,
    warmup: Duration,
    background: bool,
) -> Vec<Target> {
    scenario
        .classes
        .iter()
        .filter(|c| background || !c.background)
        .filter_map(|c| {
            Some(Target {
                url: mesh.url(&c.entry, &c.path)?,
                class: c.clone(),
                start_after: if c.background { warmup } else { Duration::ZERO },
            })
        })
        .collect()
}

/// One run of the scenario for `duration` with the given priorities; `background = false`
/// runs the foreground classes alone (the unloaded baseline).
pub async fn run_experiment(
    scenario: &Scenario,
    duration: Duration,
    endpoints: &Endpoints,
    priorities: PriorityMode,
    background: bool,
) -> anyhow::Result<RunOutcome> {
    let on = !matches!(priorities, PriorityMode::Off);
    let from_meshtrace = matches!(priorities, PriorityMode::Meshtrace { .. });
    let mesh = Mesh::start(
        scenario,
        MeshConfig {
            priorities,
            otlp_endpoint: Some(endpoints.otlp_grpc.clone()),
        },
    )
    .await?;
    let warmup = if background {
        warmup_for(duration)
    } else {
        Duration::ZERO
    };
    let burst_at = Instant::now() + warmup;
    let shared = shared_services(scenario);
    let end_at = burst_at + duration.saturating_sub(warmup);
    let (load, (start, end)) = tokio::join!(
        workload::run(
            targets(&mesh, scenario, warmup, background),
            duration,
            warmup,
            CancellationToken::new(),
        ),
        async {
            tokio::time::sleep_until(burst_at.into()).await;
            let start = BusyReading::take(&mesh, &shared);
            tokio::time::sleep_until(end_at.into()).await;
            (start, BusyReading::take(&mesh, &shared))
        }
    );
    let utilization = start.utilization(&end, &mesh);
    let window = (duration - warmup).as_secs_f64();
    let classes = scenario
        .classes
        .iter()
        .filter_map(|c| load.get(&c.name).map(|r| r.result(c, window)))
        .collect();
    let mut reaction = Reaction::default();
    let mut propagation = Propagation::default();
    if on && background {
        reaction.priorities_applied = applied_after(&mesh, scenario, burst_at);
        reaction.p99_recovered = recovered_after(scenario, &load, warmup);
        let publish = match from_meshtrace {
            true => publish_latency(&endpoints.http).await,
            false => None,
        };
        propagation = Propagation::new(publish, visible_latencies(&mesh));
    }
    mesh.stop().await;
    Ok(RunOutcome {
        result: RunResult {
            priorities: on,
            classes,
            utilization,
        },
        series: load.into_iter().map(|(k, v)| (k, v.series)).collect(),
        reaction,
        propagation,
        warmup,
    })
}

/// One step of the experiment.
#[derive(Debug, Clone)]
pub struct Step {
    pub label: &'static str,
    pub duration: Duration,
    pub priorities: PriorityMode,
    /// Whether the background classes burst in after the warm-up.
    pub background: bool,
}

/// The three steps: unloaded baseline, priorities off, priorities on (with `on_mode`).
pub fn steps(duration: Duration, on_mode: PriorityMode) -> [Step; 3] {
    let baseline = duration
        .mul_f64(0.5)
        .clamp(Duration::from_secs(2), Duration::from_secs(15));
    let step = |label, duration, priorities, background| Step {
        label,
        duration,
        priorities,
        background,
    };
    [
        step("unloaded baseline", baseline, PriorityMode::Off, false),
        step("priorities off", duration, PriorityMode::Off, true),
        step("priorities on", duration, on_mode, true),
    ]
}

/// Runs one step against meshtrace at `endpoints`, with a progress bar if asked.
pub async fn run_step(
    scenario: &Scenario,
    step: &Step,
    endpoints: &Endpoints,
    progress: bool,
) -> anyhow::Result<RunOutcome> {
    let bar = progress.then(|| progress_bar(step.label, step.duration));
    let run = run_experiment(
        scenario,
        step.duration,
        endpoints,
        step.priorities.clone(),
        step.background,
    );
    let outcome = match &bar {
        Some(b) => tick_while(b, run).await?,
        None => run.await?,
    };
    if let Some(b) = bar {
        b.finish_with_message("done");
    }
    Ok(outcome)
}

/// The results of the three steps' outcomes (baseline, off, on); `on_mode` is how the "on"
/// run got its priorities.
pub fn assemble(
    scenario: &Scenario,
    duration: Duration,
    on_mode: &PriorityMode,
    outcomes: &[RunOutcome; 3],
) -> Results {
    let source = match on_mode {
        PriorityMode::Static(_) => "static",
        PriorityMode::Meshtrace { .. } => "meshtrace",
        PriorityMode::Off => "off",
    };
    let unloaded_p99_ms = outcomes[0]
        .result
        .classes
        .iter()
        .map(|c| (c.class.clone(), c.p99_ms))
        .collect();
    let on = &outcomes[2];
    Results {
        scenario: scenario.name.clone(),
        runs: vec![outcomes[1].result.clone(), on.result.clone()],
        unloaded_p99_ms,
        reaction_s: on.reaction.clone(),
        publish_latency_s: on.propagation.publish_max_s,
        visible_latency_s: on.propagation.visible_max_s,
        propagation: on.propagation,
        priority_source: source.to_string(),
        duration_s: duration.as_secs_f64(),
        warmup_s: warmup_for(duration).as_secs_f64(),
        sweep: Vec::new(),
    }
}

fn progress_bar(label: &str, d: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(d.as_millis() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix:>20} [{bar:40}] {elapsed}/{duration} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

async fn tick_while<F: std::future::Future>(bar: &indicatif::ProgressBar, f: F) -> F::Output {
    let started = Instant::now();
    tokio::pin!(f);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            out = &mut f => return out,
            _ = tick.tick() => bar.set_position(started.elapsed().as_millis() as u64),
        }
    }
}

/// The per-class table printed after an experiment.
pub fn table(results: &Results) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "class", "priorities", "offered/s", "done/s", "p50 ms", "p99 ms", "p99.9 ms", "attainment"
    );
    for run in &results.runs {
        for c in &run.classes {
            let _ = writeln!(
                out,
                "{:<14} {:<11} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}%",
                c.class,
                if run.priorities { "on" } else { "off" },
                c.offered_rps,
                c.achieved_rps,
                c.p50_ms,
                c.p99_ms,
                c.p999_ms,
                c.attainment * 100.0
            );
        }
    }
    for (class, p99) in &results.unloaded_p99_ms {
        let _ = writeln!(out, "unloaded p99 of {class}: {p99:.1} ms");
    }
    let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.1} s"));
    let _ = writeln!(
        out,
        "reaction to the burst: priorities applied at every shared sidecar {}, \
         foreground p99 ({} s window) back within objective {} (source: {})",
        f(results.reaction_s.priorities_applied),
        crate::reaction::P99_WINDOW.as_secs(),
        f(results.reaction_s.p99_recovered),
        results.priority_source
    );
    for run in &results.runs {
        let _ = writeln!(
            out,
            "shared-service utilization, priorities {}: {}",
            if run.priorities { "on" } else { "off" },
            fractions(&run.utilization)
        );
    }
    let ms = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{:.0} ms", v * 1000.0));
    let p = &results.propagation;
    let _ = writeln!(
        out,
        "window end -> published: max {} mean {} ({} sets); -> applied at the last sidecar: \
         max {} p50 {} ({} versions)",
        ms(p.publish_max_s),
        ms(p.publish_mean_s),
        p.published,
        ms(p.visible_max_s),
        ms(p.visible_p50_s),
        p.applied_versions
    );
    for pt in &results.sweep {
        let _ = writeln!(
            out,
            "sweep level {:.2}: utilization off {} on {}; p99 ms off {} on {}",
            pt.level,
            fractions(&pt.utilization_off),
            fractions(&pt.utilization_on),
            millis(&pt.p99_ms_off),
            millis(&pt.p99_ms_on)
        );
    }
    out
}

fn fractions(m: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k} {:.0}%", v * 100.0))
        .collect();
    parts.join(", ")
}

fn millis(m: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_changes_only_the_background_load() {
        let s = Scenario::bookinfo();
        // Without a measured rate, a closed class scales its concurrency.
        let half = scaled(&s, 0.5, &BTreeMap::new());
        for (a, b) in s.classes.iter().zip(&half.classes) {
            match (&a.workload, &b.workload, a.background) {
                (
                    Workload::Closed { concurrency: x, .. },
                    Workload::Closed { concurrency: y, .. },
                    true,
                ) => assert_eq!(*y, (*x as f64 * 0.5).round() as usize),
                (Workload::Open { rps: x, .. }, Workload::Open { rps: y, .. }, false) => {
                    assert_eq!(x, y)
                }
                other => panic!("unexpected bookinfo workloads {other:?}"),
            }
        }
        let tiny = scaled(&s, 0.01, &BTreeMap::new());
        assert!(tiny.classes.iter().all(|c| match c.workload {
            Workload::Closed { concurrency, .. } => concurrency == 1,
            Workload::Open { .. } => true,
        }));
        // With its saturated rate, it becomes open arrivals at the level's share of it.
        let rates = BTreeMap::from([("batch".to_string(), 60.0)]);
        let at = scaled(&s, 0.85, &rates);
        let batch = at.classes.iter().find(|c| c.name == "batch").unwrap();
        match batch.workload {
            Workload::Open { rps, ramp_to_rps } => {
                assert!((rps - 51.0).abs() < 1e-9);
                assert!(ramp_to_rps.is_none());
            }
            ref w => panic!("batch stayed {w:?}"),
        }
        let interactive = at.classes.iter().find(|c| c.name == "interactive").unwrap();
        assert!(matches!(interactive.workload, Workload::Open { rps, .. } if rps == 15.0));
    }
}
