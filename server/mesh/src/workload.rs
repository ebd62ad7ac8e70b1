//! Load generators. Open-loop classes send at Poisson arrival times (optionally ramping the
//! rate) and measure latency from the *scheduled* send time, so a slow system cannot slow the
//! generator down and hide its own latency (no coordinated omission). Closed-loop classes
//! keep N requests outstanding. End-to-end latency per class goes into an HDR histogram.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::context::{self, BAGGAGE, CLASS_HEADER};
use crate::scenario::{ClassSpec, Workload};

/// What one class's generator measured.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Latencies in µs of successful requests scheduled inside the measured window.
    pub hist: Histogram<u64>,
    /// Requests scheduled (open) or sent (closed) inside the measured window.
    pub offered: u64,
    pub ok: u64,
    pub errors: u64,
    /// (seconds since the load started, latency ms) of every answered request.
    pub series: Vec<(f64, f64)>,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            offered: 0,
            ok: 0,
            errors: 0,
            series: Vec::new(),
        }
    }
}

/// The measured numbers of a class in one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassResult {
    pub class: String,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Share of offered requests answered within the objective's latency.
    pub attainment: f64,
    pub errors: u64,
}

impl Recorded {
    /// Summarises the recording over a window of `secs`.
    pub fn result(&self, class: &ClassSpec, secs: f64) -> ClassResult {
        let q = |x: f64| match self.hist.is_empty() {
            true => 0.0,
            false => self.hist.value_at_quantile(x) as f64 / 1000.0,
        };
        let limit_us = (class.objective.latency_ms * 1000.0) as u64;
        let within = self.hist.count_between(0, limit_us);
        ClassResult {
            class: class.name.clone(),
            offered_rps: self.offered as f64 / secs,
            achieved_rps: self.ok as f64 / secs,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            attainment: match self.offered {
                0 => 0.0,
                n => (within as f64 / n as f64).min(1.0),
            },
            errors: self.errors,
        }
    }
}

/// Where and when to send.
#[derive(Debug, Clone)]
pub struct Target {
    pub class: ClassSpec,
    pub url: String,
    /// When the class starts, from the load's start.
    pub start_after: Duration,
}

/// Shared clock and bounds of one load run.
#[derive(Clone)]
struct Clock {
    t0: Instant,
    measure_from: Instant,
    end: Instant,
    stop: CancellationToken,
}

type Shared = Arc<Mutex<Recorded>>;

fn record(rec: &Shared, clock: &Clock, scheduled: Instant, ok: bool) {
    let done = Instant::now();
    let lat = done.saturating_duration_since(scheduled);
    let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
    let measured = scheduled >= clock.measure_from;
    match ok {
        true => {
            let t = scheduled.saturating_duration_since(clock.t0).as_secs_f64();
            r.series.push((t, lat.as_secs_f64() * 1000.0));
            if measured {
                r.ok += 1;
                let _ = r.hist.record((lat.as_micros() as u64).max(1));
            }
        }
        false if measured => r.errors += 1,
        false => {}
    }
}

async fn send(client: &reqwest::Client, url: &str, class: &str) -> bool {
    client
        .get(url)
        .header(CLASS_HEADER, class)
        .header(BAGGAGE, context::baggage_with_class(None, class))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

async fn open_loop(t: Target, rps: f64, ramp_to: Option<f64>, clock: Clock, rec: Shared) {
    let client = reqwest::Client::new();
    let start = clock.t0 + t.start_after;
    let span = clock
        .end
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-3);
    let mut at = start;
    let mut inflight = Vec::new();
    loop {
        let frac = (at.saturating_duration_since(start).as_secs_f64() / span).min(1.0);
        let rate = (rps + (ramp_to.unwrap_or(rps) - rps) * frac).max(1e-3);
        let u: f64 = rand::thread_rng().gen_range(f64::EPSILON..1.0);
        at += Duration::from_secs_f64(-u.ln() / rate);
        if at >= clock.end {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = clock.stop.cancelled() => break,
        }
        if at >= clock.measure_from {
            rec.lock().unwrap_or_else(|e| e.into_inner()).offered += 1;
        }
        let (client, url, class, clock, rec) = (
            client.clone(),
            t.url.clone(),
            t.class.name.clone(),
            clock.clone(),
            rec.clone(),
        );
        let scheduled = at;
        inflight.push(tokio::spawn(async move {
            let ok = send(&client, &url, &class).await;
            record(&rec, &clock, scheduled, ok);
        }));
        inflight.retain(|h| !h.is_finished());
    }
    for h in inflight {
        let _ = h.await;
    }
}

async fn closed_loop(t: Target, concurrency: usize, think_ms: f64, clock: Clock, rec: Shared) {
    tokio::select! {
        _ = tokio::time::sleep_until((clock.t0 + t.start_after).into()) => {}
        _ = clock.stop.cancelled() => return,
    }
    let client = reqwest::Client::new();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, t, clock, rec) = (client.clone(), t.clone(), clock.clone(), rec.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < clock.end && !clock.stop.is_cancelled() {
                let sent = Instant::now();
                if sent >= clock.measure_from {
                    rec.lock().unwrap_or_else(|e| e.into_inner()).offered += 1;
                }
                let ok = send(&client, &t.url, &t.class.name).await;
                record(&rec, &clock, sent, ok);
                if think_ms > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(think_ms / 1000.0)).await;
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

/// Runs every target for `duration` (or until `stop`) and returns each class's recording;
/// only requests scheduled after `measure_from` count in the histograms and rates.
pub async fn run(
    targets: Vec<Target>,
    duration: Duration,
    measure_from: Duration,
    stop: CancellationToken,
) -> BTreeMap<String, Recorded> {
    let t0 = Instant::now();
    let clock = Clock {
        t0,
        measure_from: t0 + measure_from,
        end: t0 + duration,
        stop,
    };
    let mut recs = BTreeMap::new();
    let mut tasks = Vec::new();
    for t in targets {
        let rec: Shared = Arc::default();
        recs.insert(t.class.name.clone(), rec.clone());
        let clock = clock.clone();
        tasks.push(tokio::spawn(async move {
            match t.class.workload.clone() {
                Workload::Open { rps, ramp_to_rps } => {
                    open_loop(t, rps, ramp_to_rps, clock, rec).await
                }
                Workload::Closed {
                    concurrency,
                    think_ms,
                } => closed_loop(t, concurrency, think_ms, clock, rec).await,
            }
        }));
    }
    // On `stop` the generators send nothing new and wait for their requests in flight.
    futures::future::join_all(tasks).await;
    recs.into_iter()
        .map(|(k, v)| {
            let r = v.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (k, r)
        })
        .collect()
}
