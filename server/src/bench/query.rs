//! `meshtrace bench query`: what the queries a Jaeger user runs cost as the stored span count
//! grows. For each span count a server is started on a fresh data directory and filled over
//! OTLP gRPC (the real ingest path: write-ahead log, trace assembly, derived tables, Parquet
//! segments) with mesh-shaped traces spread in time order over `--range` ending at the start
//! of the fill. Once every trace is complete, flushed and compacted (and the server's
//! background task has rolled the service graph up once), each query is sent `--runs` times
//! over the query port's HTTP API, as the Jaeger UI sends it, and the p50/p99 wall times are
//! printed with the data size, the Parquet file count, the process's peak RSS (filling, then
//! querying) and the bytes on disk per span (span segments and derived segments apart). The
//! baseline is the first span count of the same run: the last table prints each query's cost
//! at the largest count over its cost at the smallest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use meshtrace_collector::decode::otlp;
use meshtrace_query::tables::{CRITICAL_PATH, EDGES, TRACES};
use prost::Message;
use rand::{Rng, SeedableRng};

use super::mesh_trace;
use super::payload::{Protocol, SendError, Sender};
use crate::config::{Config, Loopback};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Span counts to measure, each in a server and data directory of its own over the same
    /// range (suffixes k and M allowed)
    #[arg(long, value_delimiter = ',', default_value = "1M,10M", value_parser = parse_count)]
    pub spans: Vec<u64>,
    /// The time range the spans are spread over; searches ask for all of it
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    pub range: Duration,
    /// Timed runs of each query per span count
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Concurrent export streams while filling
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
}

fn parse_count(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.trim().strip_suffix(['M', 'm']) {
        Some(d) => (d, 1_000_000.0),
        None => match s.trim().strip_suffix(['k', 'K']) {
            Some(d) => (d, 1_000.0),
            None => (s.trim(), 1.0),
        },
    };
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("not a span count: {s}"))?;
    Ok((n * unit) as u64)
}

/// The service the searches ask about and an operation of its (one of the generated ones).
const SERVICE: &str = "reviews";
const OPERATION: &str = "ratings.default.svc.cluster.local:9080/*";
/// Traces per export request while filling.
const TRACES_PER_REQUEST: usize = 25;

/// What one span count measured.
struct Measured {
    spans: u64,
    files: usize,
    span_bytes: u64,
    derived_bytes: u64,
    /// Peak resident set while filling and flushing, and while querying.
    fill_rss_mib: f64,
    query_rss_mib: f64,
    /// In the order of [`queries`].
    times: Vec<Timed>,
}

/// What the runs of one query took.
struct Timed {
    name: &'static str,
    /// Wall times (ms).
    p50: f64,
    p99: f64,
    /// Per run: span segments a search read, row groups trace lookups read.
    segments_searched: f64,
    row_groups_read: f64,
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for &count in &args.spans {
        let m = measure(&args, count).await?;
        print_one(&m);
        results.push(m);
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        if results.len() > 1 {
            let scale = last.spans as f64 / first.spans as f64;
            println!(
                "\ncost at {} spans over cost at {} ({scale:.1} times the data), p50:",
                last.spans, first.spans
            );
            for (a, b) in first.times.iter().zip(&last.times) {
                println!("  {:<34} {:.2}", a.name, b.p50 / a.p50);
            }
        }
    }
    Ok(())
}

fn print_one(m: &Measured) {
    let per_span = |b: u64| b as f64 / m.spans.max(1) as f64;
    println!(
        "\n{} spans: {} Parquet files, {:.1} + {:.1} bytes/span (span + derived segments), \
         peak RSS {:.0} MiB filling, {:.0} MiB querying",
        m.spans,
        m.files,
        per_span(m.span_bytes),
        per_span(m.derived_bytes),
        m.fill_rss_mib,
        m.query_rss_mib
    );
    println!(
        "  {:<34} {:>8} {:>8} {:>10} {:>10}",
        "query", "p50 ms", "p99 ms", "segments", "row groups"
    );
    for t in &m.times {
        println!(
            "  {:<34} {:>8.1} {:>8.1} {:>10.1} {:>10.1}",
            t.name, t.p50, t.p99, t.segments_searched, t.row_groups_read
        );
    }
    println!(
        "  (segments: span segments a search scanned; row groups: read by trace lookups; per run)"
    );
}

/// Starts a server on a fresh directory, fills it with `count` spans, times the queries.
async fn measure(args: &QueryArgs, count: u64) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let ports = Loopback::new(dir.path())?;
    let (grpc, http) = (ports.otlp_grpc, ports.http);
    let mut config = Config::load(&ports.args)?;
    // The load generator shares the process: its resident size is not the server's alone.
    config.memory.budget_mib = 0;
    reset_peak_rss();
    let running = crate::serve::start(&config).await?;
    let end_ns = meshtrace_model::time::now_unix_nanos();
    let range_ns = i64::try_from(args.range.as_nanos())?;
    let (stored, ids) = fill(args, &format!("http://{grpc}"), count, end_ns, range_ns).await?;
    // Every trace completes after the idle window; then everything is flushed, and the
    // server's background task rolls the service graph up as it does every 30 s.
    tokio::time::sleep(config.provenance.idle + Duration::from_secs(2)).await;
    running.opened().store.flush().await?;
    running.opened().provenance.derived().flush().await?;
    let fill_rss_mib = peak_rss_kib() as f64 / 1024.0;
    // Compacted as the server's background pass would leave it, so that no pass runs while
    // the queries are timed.
    // The server's own pass may be merging meanwhile (a run both picked counts for one):
    // done once two passes a second apart find nothing.
    let store = &running.opened().store;
    while store.compact_segments().await? > 0 || {
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.compact_segments().await? > 0
    } {}
    while running.opened().provenance.derived().compact().await? > 0 {}
    tokio::time::sleep(Duration::from_secs(32)).await;
    reset_peak_rss();
    let client = reqwest::Client::new();
    let base = format!("http://{http}");
    let mut times = Vec::new();
    let store = running.opened().store.clone();
    for q in queries(end_ns, range_ns) {
        let mut ms = Vec::with_capacity(args.runs);
        let before = store.stats();
        for run in 0..args.runs.max(1) {
            let req = match &q.kind {
                Kind::Get(path) => client.get(format!("{base}{path}")),
                Kind::TraceById => {
                    client.get(format!("{base}/api/traces/{}", ids[run % ids.len()]))
                }
                Kind::Sql(sql) => client
                    .post(format!("{base}/api/v1/sql"))
                    .json(&serde_json::json!({"sql": sql})),
            };
            let t = Instant::now();
            let resp = req.send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(
                status.is_success(),
                "{}: {status} {}",
                q.name,
                String::from_utf8_lossy(&body)
            );
        }
        ms.sort_by(f64::total_cmp);
        let after = store.stats();
        let per_run = |a: u64, b: u64| (a - b) as f64 / ms.len() as f64;
        times.push(Timed {
            name: q.name,
            p50: quantile(&ms, 0.5),
            p99: quantile(&ms, 0.99),
            segments_searched: per_run(
                after.search_segments_scanned,
                before.search_segments_scanned,
            ),
            row_groups_read: per_run(after.row_groups_read, before.row_groups_read),
        });
    }
    let query_rss_mib = peak_rss_kib() as f64 / 1024.0;
    let (files, span_bytes, derived_bytes) = stored_size(&running)?;
    running.stop().await?;
    drop(dir);
    Ok(Measured {
        spans: stored,
        files,
        span_bytes,
        derived_bytes,
        fill_rss_mib,
        query_rss_mib,
        times,
    })
}

enum Kind {
    Get(String),
    TraceById,
    Sql(&'static str),
}

struct Query {
    name: &'static str,
    kind: Kind,
}

/// The query set, each as the Jaeger UI (or a SQL user) sends it, over the whole range.
fn queries(end_ns: i64, range_ns: i64) -> Vec<Query> {
    let (start_us, end_us) = ((end_ns - range_ns) / 1000, end_ns / 1000 + 1);
    let search = |extra: &str| {
        Kind::Get(format!(
            "/api/traces?service={SERVICE}&start={start_us}&end={end_us}&limit=20{extra}"
        ))
    };
    let tags = "&tags=%7B%22http.status_code%22%3A%22503%22%7D";
    vec![
        Query {
            name: "trace by ID",
            kind: Kind::TraceById,
        },
        Query {
            name: "search by service",
            kind: search(""),
        },
        Query {
            name: "search by service and operation",
            kind: search(&format!(
                "&operation={}",
                OPERATION.replace('/', "%2F").replace('*', "%2A")
            )),
        },
        Query {
            name: "search by tag (status 503)",
            kind: search(tags),
        },
        Query {
            name: "search with minDuration 19ms",
            kind: search("&minDuration=19ms"),
        },
        Query {
            name: "dependencies",
            kind: Kind::Get(format!(
                "/api/dependencies?endTs={}&lookback={}",
                end_ns / 1_000_000 + 1,
                range_ns / 1_000_000
            )),
        },
        Query {
            name: "SQL GROUP BY service, p99",
            kind: Kind::Sql(
                "SELECT service_name, count(*) AS spans, \
                 approx_percentile_cont(duration_ns, 0.99) AS p99 FROM spans GROUP BY service_name",
            ),
        },
    ]
}

/// Sends about `count` spans in time order over the `range_ns` before `end_ns`; returns how
/// many were acknowledged and a sample of their trace IDs (hex).
async fn fill(
    args: &QueryArgs,
    endpoint: &str,
    count: u64,
    end_ns: i64,
    range_ns: i64,
) -> anyhow::Result<(u64, Vec<String>)> {
    let bar = ProgressBar::new(count).with_style(ProgressStyle::with_template(
        "sending [{bar:40}] {human_pos}/{human_len} spans ({per_sec}, eta {eta})",
    )?);
    let (sent, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for stream in 0..args.streams.max(1) {
        let mut client = Sender::connect(endpoint, Protocol::Grpc).await?;
        let (sent, acked, ids, bar) = (sent.clone(), acked.clone(), ids.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(stream as u64);
            loop {
                let at = sent.load(Ordering::Relaxed);
                if at >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let offset = (range_ns as i128 * at as i128 / count as i128) as i64;
                let spans: Vec<_> = (0..TRACES_PER_REQUEST)
                    .flat_map(|_| mesh_trace(&mut rng, end_ns - range_ns + offset))
                    .collect();
                let n = spans.len() as u64;
                sent.fetch_add(n, Ordering::Relaxed);
                // A sample of the IDs for trace-by-ID queries (the first request's always).
                let keep = rng.gen_ratio(1, 20);
                if let Ok(mut ids) = ids.lock() {
                    if keep || ids.is_empty() {
                        ids.push(hex::encode(spans[0].trace_id));
                    }
                }
                let body = bytes::Bytes::from(otlp::to_request(&spans).encode_to_vec());
                export_retrying(&mut client, body).await?;
                acked.fetch_add(n, Ordering::Relaxed);
                bar.inc(n);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    bar.finish_and_clear();
    let ids = std::mem::take(&mut *ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    anyhow::ensure!(!ids.is_empty(), "no trace was sent");
    Ok((acked.load(Ordering::Relaxed), ids))
}

/// Exports one request, waiting and trying again while the server sheds load, and (three
/// times at most) after a failure: the server closes connections past `max_connection_age`
/// (5 min; a slow build's fill takes longer), and a resent request is stored once.
async fn export_retrying(client: &mut Sender, body: bytes::Bytes) -> anyhow::Result<()> {
    let mut failures = 0;
    for _ in 0..600 {
        match client.send(body.clone()).await {
            Ok(()) => return Ok(()),
            Err(SendError::Busy) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(SendError::Failed(e)) if failures < 3 => {
                failures += 1;
                tracing::debug!(error = %e, "export failed; sending it again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(SendError::Failed(e)) => anyhow::bail!("export: {e}"),
        }
    }
    anyhow::bail!("the server refused one request for a minute")
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

/// The Parquet files the catalog holds (span and derived segments) and their bytes, span
/// segments and derived segments apart. Files of compacted segments waiting for their grace
/// period to end are not counted.
fn stored_size(running: &crate::serve::Running) -> anyhow::Result<(usize, u64, u64)> {
    let spans = running.opened().store.segments();
    let mut files = spans.len();
    let span_bytes = spans.iter().map(|s| s.byte_size.max(0) as u64).sum();
    let mut derived_bytes = 0;
    for table in [TRACES, EDGES, CRITICAL_PATH] {
        let segments = running.opened().provenance.derived().segments(table)?;
        files += segments.len();
        derived_bytes += segments
            .iter()
            .map(|s| s.byte_size.max(0) as u64)
            .sum::<u64>();
    }
    Ok((files, span_bytes, derived_bytes))
}

/// Peak resident set of this process (server and load generator) since the last reset, KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the peak resident set (Linux: writing 5 to `clear_refs`), so each span count
/// reports its own.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        tracing::debug!(error = %e, "could not reset the peak RSS");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_suffixes() {
        assert_eq!(parse_count("10M"), Ok(10_000_000));
        assert_eq!(parse_count("1.5k"), Ok(1_500));
        assert_eq!(parse_count("250000"), Ok(250_000));
        assert!(parse_count("lots").is_err());
    }
}
