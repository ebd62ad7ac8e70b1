//! The priority experiment: the same load twice against a meshtrace server, priorities off
//! then on, after an unloaded baseline (the foreground classes alone). Each run starts with
//! the foreground classes alone for a warm-up, then the background classes burst in; the
//! measured window starts at the burst. The reaction time is measured in the run with
//! priorities on: from the burst to every shared sidecar applying a set that ranks the
//! foreground above the background, and to the foreground p99 (over 1 s windows) meeting
//! its objective again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::mesh::{Mesh, MeshConfig};
use crate::priorities::PriorityMode;
use crate::scenario::Scenario;
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
}

/// Reaction to the background burst (priorities on).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reaction {
    /// Burst → every sidecar the classes share applies a set ranking foreground first.
    pub priorities_applied: Option<f64>,
    /// Burst → the foreground p99 over a 1 s window meets its objective.
    pub p99_recovered: Option<f64>,
}

/// `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub scenario: String,
    pub runs: Vec<RunResult>,
    pub unloaded_p99_ms: BTreeMap<String, f64>,
    pub reaction_s: Reaction,
    /// How the priorities of the "on" run were obtained (`meshtrace` or `static`).
    pub priority_source: String,
    pub duration_s: f64,
    pub warmup_s: f64,
}

/// A run with its raw latency series, for the chart.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub result: RunResult,
    /// Per class: (seconds since the load started, latency ms).
    pub series: BTreeMap<String, Vec<(f64, f64)>>,
    pub reaction: Reaction,
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
    let load = workload::run(
        targets(&mesh, scenario, warmup, background),
        duration,
        warmup,
        CancellationToken::new(),
    )
    .await;
    let window = (duration - warmup).as_secs_f64();
    let classes = scenario
        .classes
        .iter()
        .filter_map(|c| load.get(&c.name).map(|r| r.result(c, window)))
        .collect();
    let mut reaction = Reaction::default();
    if on && background {
        reaction.priorities_applied = applied_after(&mesh, scenario, burst_at);
        reaction.p99_recovered = recovered_after(scenario, &load, warmup);
    }
    mesh.stop().await;
    Ok(RunOutcome {
        result: RunResult {
            priorities: on,
            classes,
        },
        series: load.into_iter().map(|(k, v)| (k, v.series)).collect(),
        reaction,
        warmup,
    })
}

/// Seconds from the burst until every sidecar where both a foreground and a background
/// class pass applies a set ranking every foreground class above every background one.
fn applied_after(mesh: &Mesh, scenario: &Scenario, burst: Instant) -> Option<f64> {
    let fg: Vec<&str> = scenario
        .classes
        .iter()
        .filter(|c| !c.background)
        .map(|c| c.name.as_str())
        .collect();
    let bg: Vec<&str> = scenario
        .classes
        .iter()
        .filter(|c| c.background)
        .map(|c| c.name.as_str())
        .collect();
    let lowest = scenario.levels.saturating_sub(1);
    let mut worst = 0.0f64;
    for sidecar in mesh.sidecars.values() {
        let history = sidecar.table.history();
        let good = history.iter().find(|a| {
            let level = |c: &str| a.levels.get(c).copied().unwrap_or(lowest);
            let top_bg = bg.iter().map(|c| level(c)).min().unwrap_or(lowest);
            fg.iter().all(|c| level(c) < top_bg)
        })?;
        worst = worst.max(good.at.saturating_duration_since(burst).as_secs_f64());
    }
    Some(worst)
}

/// Seconds from the burst to the first 1 s window whose foreground p99 meets the objective.
fn recovered_after(
    scenario: &Scenario,
    load: &BTreeMap<String, workload::Recorded>,
    warmup: Duration,
) -> Option<f64> {
    let mut worst = 0.0f64;
    for c in scenario.classes.iter().filter(|c| !c.background) {
        let series = &load.get(&c.name)?.series;
        let start = warmup.as_secs_f64();
        let end = series.iter().map(|p| p.0).fold(start, f64::max);
        let mut t = start;
        let found = loop {
            if t >= end {
                break None;
            }
            let mut w: Vec<f64> = series
                .iter()
                .filter(|p| p.0 >= t && p.0 < t + 1.0)
                .map(|p| p.1)
                .collect();
            if w.len() >= 3 {
                w.sort_by(f64::total_cmp);
                let p99 = w[((w.len() as f64 * 0.99).ceil() as usize).clamp(1, w.len()) - 1];
                if p99 <= c.objective.latency_ms {
                    break Some(t - start);
                }
            }
            t += 0.25;
        };
        worst = worst.max(found?);
    }
    Some(worst)
}

/// The whole experiment: baseline, off, on. `on_mode` is how the "on" run gets priorities.
pub async fn run_priority_experiment(
    scenario: &Scenario,
    duration: Duration,
    endpoints: &Endpoints,
    on_mode: PriorityMode,
    progress: bool,
) -> anyhow::Result<(Results, Vec<RunOutcome>)> {
    let source = match &on_mode {
        PriorityMode::Static(_) => "static",
        PriorityMode::Meshtrace { .. } => "meshtrace",
        PriorityMode::Off => "off",
    };
    let baseline_d = duration
        .mul_f64(0.5)
        .clamp(Duration::from_secs(2), Duration::from_secs(15));
    let steps: [(&str, Duration, PriorityMode, bool); 3] = [
        ("unloaded baseline", baseline_d, PriorityMode::Off, false),
        ("priorities off", duration, PriorityMode::Off, true),
        ("priorities on", duration, on_mode, true),
    ];
    let mut outcomes = Vec::new();
    for (label, d, mode, background) in steps {
        let bar = progress.then(|| progress_bar(label, d));
        let run = run_experiment(scenario, d, endpoints, mode, background);
        let outcome = match &bar {
            Some(b) => tick_while(b, run).await?,
            None => run.await?,
        };
        if let Some(b) = bar {
            b.finish_with_message("done");
        }
        outcomes.push(outcome);
    }
    let unloaded_p99_ms = outcomes[0]
        .result
        .classes
        .iter()
        .map(|c| (c.class.clone(), c.p99_ms))
        .collect();
    let results = Results {
        scenario: scenario.name.clone(),
        runs: vec![outcomes[1].result.clone(), outcomes[2].result.clone()],
        unloaded_p99_ms,
        reaction_s: outcomes[2].reaction.clone(),
        priority_source: source.to_string(),
        duration_s: duration.as_secs_f64(),
        warmup_s: warmup_for(duration).as_secs_f64(),
    };
    Ok((results, outcomes))
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
        "reaction: priorities applied at every sidecar {}, p99 back within objective {} (source: {})",
        f(results.reaction_s.priorities_applied),
        f(results.reaction_s.p99_recovered),
        results.priority_source
    );
    out
}
