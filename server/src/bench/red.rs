//! `meshtrace bench red`: what a RED-metrics request (Jaeger's SPM API) costs as the stored
//! span count grows. For each span count, mesh-shaped spans spread in time order over a time
//! range go straight into a fresh store in a temporary directory (no network, no write-ahead
//! log), flushed to Parquet segments with their per-minute rollups as the server flushes
//! them. It then times the
//! queries the Jaeger UI's Monitor tab sends for one service (call rate, error rate and p95
//! latency per operation over the whole range, one point a minute) and, as the baseline in the
//! same run, the same numbers computed by a SQL scan of the spans; it prints both and their
//! ratio, so the figures compare across noisy machines.

use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use meshtrace_model::SpanKind;
use meshtrace_query::{Queries, QueryConfig, RedMetric, RedQuery};
use meshtrace_storage::{Store, StoreConfig};
use rand::SeedableRng;

use super::mesh_trace;

#[derive(Debug, Args)]
pub struct RedArgs {
    /// Span counts to measure, each in a store of its own over the same range
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    pub checkpoints: Vec<u64>,
    /// The time range the spans are spread over, ending now; the queries ask for all of it
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    pub range: Duration,
    /// Timed runs of each query per checkpoint (the median is printed)
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// The service the queries ask about (one of the generated mesh services).
const SERVICE: &str = "reviews";
const MINUTE_NS: i64 = 60_000_000_000;

pub async fn run(args: RedArgs) -> anyhow::Result<()> {
    let range_ns = i64::try_from(args.range.as_nanos())?;
    println!("spans       segments   rollup query (median)   SQL scan (median)   scan / rollup");
    for &count in &args.checkpoints {
        let dir = tempfile::tempdir()?;
        let store = Store::open(StoreConfig::new(dir.path())).await?;
        let end_ns = meshtrace_model::time::now_unix_nanos();
        let stored = fill(&store, count, end_ns, range_ns).await?;
        let queries = Queries::new(store.clone(), QueryConfig::default());
        let rollup = median(args.runs, || rollup_queries(&queries, end_ns, range_ns)).await?;
        let scan = median(args.runs, || scan_queries(&queries, end_ns, range_ns)).await?;
        println!(
            "{stored:<11} {:<10} {:>10.1} ms           {:>10.1} ms       {:>8.1}",
            store.segments().len(),
            rollup * 1e3,
            scan * 1e3,
            scan / rollup
        );
        store.close().await;
    }
    println!("each row: a fresh store, the spans in time order over the whole range; the rollup");
    println!("query reads per-minute rows, the scan every span of {SERVICE}");
    Ok(())
}

/// Stores about `count` spans spread in time order over the `range_ns` before `end_ns`,
/// flushed as the server flushes; returns how many.
async fn fill(store: &Store, count: u64, end_ns: i64, range_ns: i64) -> anyhow::Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let bar = ProgressBar::new(count).with_style(ProgressStyle::with_template(
        "storing [{bar:40}] {human_pos}/{human_len} spans ({per_sec}, eta {eta})",
    )?);
    let (mut stored, mut seq) = (0u64, 0u64);
    while stored < count {
        let offset = (range_ns as i128 * stored as i128 / count as i128) as i64;
        let spans: Vec<_> = (0..200)
            .flat_map(|_| mesh_trace(&mut rng, end_ns - range_ns + offset))
            .collect();
        seq += 1;
        store.append(seq, &spans)?;
        store.flush_if_due().await?;
        stored += spans.len() as u64;
        bar.set_position(stored.min(count));
    }
    store.flush().await?;
    bar.finish_and_clear();
    Ok(stored)
}

/// The median wall time (s) of `runs` calls.
async fn median<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f().await?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The Monitor tab's three per-operation queries over the whole range, from rollups.
async fn rollup_queries(queries: &Queries, end_ns: i64, range_ns: i64) -> anyhow::Result<()> {
    let query = RedQuery {
        services: vec![SERVICE.into()],
        kinds: vec![SpanKind::Server],
        group_by_operation: true,
        end_ns,
        lookback_ns: range_ns,
        step_ns: MINUTE_NS,
        rate_per_ns: MINUTE_NS,
    };
    for metric in [
        RedMetric::Calls,
        RedMetric::Errors,
        RedMetric::Latencies { quantile: 0.95 },
    ] {
        let family = queries.red_metrics(metric, &query).await?;
        anyhow::ensure!(!family.metrics.is_empty(), "no {metric:?} series");
    }
    Ok(())
}

/// The same numbers by scanning spans: calls, errors and p95 per operation and minute. (The
/// SQL text holds only a constant and integers this function computed.)
async fn scan_queries(queries: &Queries, end_ns: i64, range_ns: i64) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT name, date_bin(INTERVAL '1 minute', start_time) AS minute, count(*) AS calls, \
         sum(CASE WHEN status_code = 'error' THEN 1 ELSE 0 END) AS errors, \
         approx_percentile_cont(duration_ns, 0.95) AS p95 FROM spans \
         WHERE service_name = '{SERVICE}' AND kind = 'server' \
         AND start_time >= to_timestamp_nanos({}) AND start_time <= to_timestamp_nanos({end_ns}) \
         GROUP BY name, minute",
        end_ns - range_ns
    );
    let result = queries.sql(&sql).await?;
    anyhow::ensure!(!result.rows.is_empty(), "the scan found no spans");
    Ok(())
}
