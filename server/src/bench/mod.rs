//! `meshtrace bench ingest`: a load generator that sends realistic mesh-proxy spans over OTLP
//! gRPC (or OTLP/HTTP JSON) on several concurrent streams for a fixed time and reports durable (acknowledged)
//! spans per second, export latency, bytes per span on disk, and, measured in the same run, the
//! spans per second of decoding the same payloads alone: the ceiling, so the ratio is
//! meaningful on a noisy machine. The generator sends pre-encoded payloads ([`payload`]) so
//! that it takes little of the CPU it shares with the server. `bench assembly` ([`assembly`])
//! and `bench red` ([`red`]) measure trace assembly and RED-metrics queries alone; `bench query`
//! ([`query`]) times Jaeger searches, dependencies and SQL as the stored data grows.

mod assembly;
mod payload;
mod query;
mod red;

use payload::{Protocol, SendError, Sender};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use meshtrace_collector::decode::{otlp, otlp_json};
use meshtrace_collector::Limits;
use meshtrace_model::{AttrValue, KeyValue, Span, SpanKind, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use rand::{Rng, SeedableRng};

use crate::config::{Config, Loopback, ServeArgs};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Ingest throughput end to end (acknowledged = durable)
    Ingest(IngestArgs),
    /// CPU per span of each trace-assembly stage, on one thread, against decoding
    Assembly(assembly::AssemblyArgs),
    /// Cost of RED-metrics (SPM) queries as stored spans grow, against a SQL scan
    Red(red::RedArgs),
    /// Jaeger searches, dependencies and SQL as stored spans grow (1 M and 10 M by default)
    Query(query::QueryArgs),
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Load a running server's OTLP port (gRPC, or HTTP with `--protocol http-json`) instead
    /// of starting one
    #[arg(long)]
    pub target: Option<String>,
    /// How the load is sent: OTLP gRPC, or OTLP/HTTP with JSON bodies as the OpenTelemetry
    /// SDKs' JSON exporters send them (the decode-only ceiling then decodes JSON)
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    pub protocol: Protocol,
    /// How long to measure, after the warm-up
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How long to send before measuring. Longer than the idle window after which trace
    /// assembly completes a trace (5 s by default), so that the measured window pays for
    /// completing traces at the rate they arrive, as a server under steady load does
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Concurrent export streams (connections), as many sidecars would open; each waits for
    /// its export to be acknowledged before sending the next
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Traces per export request
    #[arg(long, default_value_t = 25)]
    pub traces_per_request: usize,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
    /// Also run once with trace assembly (provenance) off and print the ratio
    #[arg(long, conflicts_with = "compare_dedup")]
    pub compare_assembly: bool,
    /// Also run once with deduplication of resent spans off and print the ratio
    #[arg(long)]
    pub compare_dedup: bool,
    /// Distinct requests per stream, encoded before the timed run and sent again and again
    /// with new trace IDs. The default gives more distinct spans than a Parquet segment holds,
    /// so repeats do not flatter the bytes per span
    #[arg(long, default_value_t = 64)]
    pub pool: usize,
    /// Skip fsync in the write-ahead log (shows what durability costs; not durable)
    #[arg(long)]
    pub no_fsync: bool,
    /// With --compare-assembly or --compare-dedup: alternate off and on runs this many times
    /// and sum them, so a slow spell of a shared machine falls on both sides
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

/// What one load run measured.
struct Run {
    acked: u64,
    secs: f64,
    errors: u64,
    hist: Histogram<u64>,
    bytes_per_span: Option<f64>,
    /// CPU time of this whole process (server and load generator) during the timed window.
    cpu_secs: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.acked as f64 / self.secs
    }

    /// CPU microseconds spent per acknowledged span, load generator included.
    fn cpu_us_per_span(&self) -> f64 {
        self.cpu_secs * 1e6 / self.acked.max(1) as f64
    }

    /// Two runs as one: spans and seconds added, latencies merged, the latest size kept.
    fn sum(total: Option<Run>, next: Run) -> Run {
        let Some(mut t) = total else { return next };
        t.acked += next.acked;
        t.secs += next.secs;
        t.cpu_secs += next.cpu_secs;
        t.errors += next.errors;
        if let Err(e) = t.hist.add(&next.hist) {
            tracing::warn!(error = %e, "could not merge latency histograms");
        }
        t.bytes_per_span = next.bytes_per_span.or(t.bytes_per_span);
        t
    }
}

const SERVICES: &[&str] = &[
    "istio-ingressgateway",
    "productpage",
    "details",
    "reviews",
    "ratings",
    "cart",
    "checkout",
];

/// One trace of 10 to 30 spans shaped like sidecar spans: client and server side per hop.
fn mesh_trace(rng: &mut impl Rng, now_ns: i64) -> Vec<Span> {
    let trace_id: [u8; 16] = rng.gen();
    let hops = rng.gen_range(5..=15);
    let mut spans = Vec::with_capacity(hops * 2);
    let mut parent: Option<[u8; 8]> = None;
    let mut start = now_ns - rng.gen_range(0..1_000_000_000);
    let mut caller = SERVICES[0];
    for hop in 0..hops {
        let callee = SERVICES[1 + (hop + rng.gen_range(0..3)) % (SERVICES.len() - 1)];
        let status: i64 = if rng.gen_ratio(1, 50) { 503 } else { 200 };
        let route = format!("/api/v1/{callee}/{}", rng.gen_range(0..8));
        for (side, service, kind) in [
            ("outbound", caller, SpanKind::Client),
            ("inbound", callee, SpanKind::Server),
        ] {
            let span_id: [u8; 8] = rng.gen();
            let duration = rng.gen_range(200_000..20_000_000);
            let attrs = vec![
                KeyValue::string("component", "proxy"),
                KeyValue::string("node_id", format!("sidecar~10.1.{}.{}~{service}-v1-7d4f9c-x2k{}.default~default.svc.cluster.local", hop % 4, rng.gen_range(1..50), hop % 3)),
                KeyValue::string("upstream_cluster", format!("{side}|9080||{callee}.default.svc.cluster.local")),
                KeyValue::string("http.method", if rng.gen_ratio(1, 5) { "POST" } else { "GET" }),
                KeyValue::string("http.url", format!("http://{callee}:9080{route}")),
                KeyValue::new("http.status_code", AttrValue::Int(status)),
                KeyValue::string("response_flags", if status == 200 { "-" } else { "UF" }),
                KeyValue::string("peer.address", format!("10.1.{}.{}", hop % 4, rng.gen_range(1..250))),
                KeyValue::string("istio.canonical_service", service),
                KeyValue::string("request_size", rng.gen_range(0..2000).to_string()),
            ];
            spans.push(Span {
                trace_id,
                span_id,
                parent_span_id: parent,
                name: format!("{callee}.default.svc.cluster.local:9080/*"),
                kind,
                start_unix_nano: start,
                duration_nano: duration,
                status_code: if status == 200 {
                    StatusCode::Unset
                } else {
                    StatusCode::Error
                },
                service_name: service.to_string(),
                resource_attributes: vec![KeyValue::string("k8s.namespace.name", "default")],
                scope_name: "envoy".into(),
                attributes: attrs,
                ..Default::default()
            });
            parent = Some(span_id);
            start += rng.gen_range(10_000..200_000);
        }
        caller = callee;
    }
    spans
}

fn request(rng: &mut impl Rng, traces: usize) -> (ExportTraceServiceRequest, usize) {
    let now = meshtrace_model::time::now_unix_nanos();
    let spans: Vec<Span> = (0..traces).flat_map(|_| mesh_trace(rng, now)).collect();
    let n = spans.len();
    (otlp::to_request(&spans), n)
}

#[derive(Default)]
struct Totals {
    spans: AtomicU64,
    errors: AtomicU64,
}

async fn load(endpoint: String, args: &IngestArgs) -> anyhow::Result<Run> {
    let totals = Arc::new(Totals::default());
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let t_pool = Instant::now();
    let mut pools = Vec::new();
    for _ in 0..args.streams {
        let (n, traces, protocol) = (args.pool.max(1), args.traces_per_request, args.protocol);
        pools.push(tokio::task::spawn_blocking(move || {
            let mut rng = rand::rngs::StdRng::from_entropy();
            (0..n)
                .map(|_| payload::Payload::new(&request(&mut rng, traces).0, protocol))
                .collect::<Vec<_>>()
        }));
    }
    let mut streams = Vec::new();
    for pool in pools {
        streams.push((
            Sender::connect(&endpoint, args.protocol).await?,
            pool.await?,
        ));
    }
    tracing::info!(took = ?t_pool.elapsed(), "payloads encoded");
    let measure_from = tokio::time::Instant::now() + args.warmup;
    let deadline = (measure_from + args.duration).into_std();
    let mut tasks = Vec::new();
    for (stream, (mut client, pool)) in streams.into_iter().enumerate() {
        let (totals, hist) = (totals.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let p = &pool[sent as usize % pool.len()];
                sent += 1;
                let body = p.render(((stream as u64) << 40) | sent);
                let t0 = Instant::now();
                match client.send(body).await {
                    Ok(()) => {
                        totals.spans.fetch_add(p.spans as u64, Ordering::Relaxed);
                        let us = t0.elapsed().as_micros() as u64;
                        let _ = hist.lock().map(|mut h| h.record(us.max(1)));
                    }
                    Err(e) => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        match e {
                            SendError::Busy => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            SendError::Failed(e) => tracing::debug!(error = %e, "export failed"),
                        }
                    }
                }
            }
        }));
    }
    // What the warm-up did is not counted: spans, errors, latencies and CPU count from here.
    tokio::time::sleep_until(measure_from).await;
    let started = Instant::now();
    let cpu_at_start = process_cpu_secs();
    let acked_before = totals.spans.load(Ordering::Relaxed);
    let errors_before = totals.errors.load(Ordering::Relaxed);
    if let Ok(mut h) = hist.lock() {
        h.reset();
    }
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = process_cpu_secs() - cpu_at_start;
    let h = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    Ok(Run {
        acked: totals.spans.load(Ordering::Relaxed) - acked_before,
        secs,
        errors: totals.errors.load(Ordering::Relaxed) - errors_before,
        hist: h,
        bytes_per_span: None,
        cpu_secs,
    })
}

/// User plus system CPU seconds of this process so far, all its threads (`getrusage`, in
/// microseconds; 0 where it fails).
fn process_cpu_secs() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        (u.user_time().num_microseconds() + u.system_time().num_microseconds()) as f64 / 1e6
    })
}

/// Spans per second of decoding the same kind of payloads, on as many threads as streams.
async fn decode_only(args: &IngestArgs) -> anyhow::Result<f64> {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let bodies: Arc<Vec<(Vec<u8>, usize)>> = Arc::new(
        (0..32)
            .map(|_| {
                let (req, n) = request(&mut rng, args.traces_per_request);
                (args.protocol.encode(&req), n)
            })
            .collect(),
    );
    let window = Duration::from_secs(3);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut tasks = Vec::new();
    for _ in 0..threads {
        let (bodies, protocol) = (bodies.clone(), args.protocol);
        tasks.push(tokio::task::spawn_blocking(move || {
            let (start, mut spans, limits) = (Instant::now(), 0u64, Limits::default());
            let mut i = 0;
            while start.elapsed() < window {
                let (body, _) = &bodies[i % bodies.len()];
                let batch = match protocol {
                    Protocol::Grpc => otlp::decode_protobuf(body, &limits),
                    Protocol::HttpJson => otlp_json::decode(body, &limits),
                };
                if let Ok(batch) = batch {
                    spans += batch.spans.len() as u64;
                }
                i += 1;
            }
            spans as f64 / start.elapsed().as_secs_f64()
        }));
    }
    let mut total = 0.0;
    for t in tasks {
        total += t.await?;
    }
    Ok(total)
}

/// What a comparison switches off in its baseline runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feature {
    Assembly,
    Dedup,
}

impl Feature {
    fn of(args: &IngestArgs) -> Option<Feature> {
        if args.target.is_some() {
            return None;
        }
        match (args.compare_assembly, args.compare_dedup) {
            (true, _) => Some(Feature::Assembly),
            (_, true) => Some(Feature::Dedup),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Feature::Assembly => "assembly",
            Feature::Dedup => "dedup",
        }
    }
}

/// One timed load against the target, or against a server started for this run (with
/// `off` switched off, if given).
async fn run_once(args: &IngestArgs, off: Option<Feature>) -> anyhow::Result<Run> {
    let (endpoint, server, dir) = match &args.target {
        Some(t) => (
            format!("http://{}", t.trim_start_matches("http://")),
            None,
            None,
        ),
        None => {
            let dir = tempfile::tempdir()?;
            let ports = Loopback::new(dir.path())?;
            let listen = match args.protocol {
                Protocol::Grpc => Some(ports.otlp_grpc),
                Protocol::HttpJson => ports.args.otlp_http_listen,
            };
            let listen = listen.context("no OTLP port")?;
            let serve = ServeArgs {
                no_fsync: args.no_fsync,
                ..ports.args
            };
            let mut config = Config::load(&serve)?;
            // The load generator shares the process (its pool of encoded requests is hundreds
            // of MiB): the resident size is not the server's, so no budget applies here.
            config.memory.budget_mib = 0;
            match off {
                Some(Feature::Assembly) => config.provenance.enabled = false,
                Some(Feature::Dedup) => config.storage.dedup_window_spans = 0,
                None => {}
            }
            let running = crate::serve::start(&config).await?;
            (format!("http://{listen}"), Some(running), Some(dir))
        }
    };
    let mut run = load(endpoint, args).await?;
    if let Some(running) = server {
        let store = running.opened().store.clone();
        running.stop().await?;
        let stats = store.stats();
        if stats.rows_written > 0 {
            run.bytes_per_span = Some(stats.bytes_written as f64 / stats.rows_written as f64);
        }
    }
    drop(dir);
    Ok(run)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let args = match args.what {
        BenchWhat::Ingest(args) => args,
        BenchWhat::Assembly(args) => return tokio::task::block_in_place(|| assembly::run(args)),
        BenchWhat::Red(args) => return red::run(args).await,
        BenchWhat::Query(args) => return query::run(args).await,
    };
    let decode_rate = decode_only(&args).await?;
    let compare = Feature::of(&args);
    let (mut off, mut on): (Option<Run>, Option<Run>) = (None, None);
    for round in 1..=if compare.is_some() {
        args.rounds.max(1)
    } else {
        1
    } {
        let Some(feature) = compare else {
            on = Some(run_once(&args, None).await?);
            continue;
        };
        let o = run_once(&args, Some(feature)).await?;
        let n = run_once(&args, None).await?;
        if !args.json {
            let (a, b) = (o.rate(), n.rate());
            let (ca, cb) = (o.cpu_us_per_span(), n.cpu_us_per_span());
            println!(
                "round {round}: {} off {a:.0}/s, on {b:.0}/s, ratio {:.3}; \
                 CPU µs/span off {ca:.2}, on {cb:.2}, ratio {:.3}",
                feature.name(),
                b / a,
                ca / cb
            );
        }
        off = Some(Run::sum(off, o));
        on = Some(Run::sum(on, n));
    }
    let feature = compare.map_or("assembly", Feature::name);
    let run = on.context("no run")?;
    let rate = run.rate();
    let ms = |q| run.hist.value_at_quantile(q) as f64 / 1000.0;
    let (p50, p99) = (ms(0.5), ms(0.99));
    let off_rate = off.as_ref().map(Run::rate);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "spans_acked": run.acked, "spans_per_s": rate, "decode_only_spans_per_s": decode_rate,
                "ratio": rate / decode_rate, "bytes_per_span": run.bytes_per_span,
                "p50_ms": p50, "p99_ms": p99, "errors": run.errors,
                "compared": compare.map(Feature::name),
                "off_spans_per_s": off_rate,
                "on_off_ratio": off_rate.map(|o| rate / o),
                "cpu_us_per_span": run.cpu_us_per_span(),
                "off_cpu_us_per_span": off.as_ref().map(Run::cpu_us_per_span),
            })
        );
        return Ok(());
    }
    let (acked, secs, errors) = (run.acked, run.secs, run.errors);
    println!("acknowledged spans       {acked} in {secs:.1}s ({errors} failed exports)");
    println!("durable spans/s          {rate:.0}   (trace assembly and dedup on)");
    println!("decode-only spans/s      {decode_rate:.0}   (ceiling, same run)");
    println!("ratio                    {:.3}", rate / decode_rate);
    let cpu = run.cpu_us_per_span();
    println!("CPU µs/span              {cpu:.2}   (server and load generator)");
    if let Some(o) = &off {
        println!(
            "{feature:<8} off spans/s     {:.0}   (on/off ratio {:.3})",
            o.rate(),
            rate / o.rate()
        );
        println!(
            "{feature:<8} off CPU µs/span {:.2}   (off/on ratio {:.3})",
            o.cpu_us_per_span(),
            o.cpu_us_per_span() / cpu
        );
    }
    match run.bytes_per_span {
        Some(b) => println!("bytes/span on disk       {b:.1}"),
        None => println!("bytes/span on disk       n/a (remote target)"),
    }
    println!("export latency p50/p99   {p50:.2} ms / {p99:.2} ms");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_time_counts_the_work_of_other_threads() {
        let before = process_cpu_secs();
        // A fixed amount of work on another thread (at least tens of ms of CPU, however
        // loaded the machine is); this thread only waits for it.
        std::thread::spawn(|| {
            let mut x = 0u64;
            for i in 0..100_000_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
        })
        .join()
        .unwrap();
        let used = process_cpu_secs() - before;
        assert!(used > 0.01, "CPU seconds used: {used}");
    }
}
