//! `meshtrace bench assembly`: what trace assembly costs per span, stage by stage, on one
//! thread and without the network, the write-ahead log or a load generator sharing the CPU.
//!
//! Each round generates the same mesh-proxy traces as `bench ingest`, in requests of
//! `--traces-per-request` traces, and runs them through the stages the server runs: slim the
//! decoded spans, add them to an [`Assembler`], complete every trace (duplicates, tree, clock
//! skew), derive the rows, record them for latency budgets, learn the class mapping, build the
//! derived Arrow batches and encode them as a derived Parquet segment would be. All spans are
//! added before any trace completes, so, as in a server holding spans for the idle window,
//! they are no longer in the CPU caches when their trace completes. The baseline, measured in
//! the same run on the same thread, is decoding the same requests from OTLP protobuf.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use meshtrace_budget::WindowConfig;
use meshtrace_collector::decode::otlp;
use meshtrace_collector::Limits;
use meshtrace_provenance::{Assembler, AssemblerConfig, ClassMapping, GraphConfig, Slimmer};
use meshtrace_query::tables::{tables, Rows};
use prost::Message;
use rand::SeedableRng;

use crate::priorities::Recorder;
use crate::provenance::TraceObserver;

#[derive(Debug, Args)]
pub struct AssemblyArgs {
    /// Traces per round (10 to 30 spans each)
    #[arg(long, default_value_t = 20_000)]
    pub traces: usize,
    /// Rounds; the stage times are summed over them
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Traces per request, as `bench ingest` sends them
    #[arg(long, default_value_t = 25)]
    pub traces_per_request: usize,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

/// The stages, in the order the server runs them.
const STAGES: [&str; 8] = [
    "slim", "assemble", "complete", "derive", "budgets", "learn", "rows", "encode",
];

/// Time spent per stage, summed over rounds.
#[derive(Default)]
struct Times {
    stages: [Duration; STAGES.len()],
    decode: Duration,
    spans: u64,
    /// Bytes of the encoded derived segments.
    derived_bytes: u64,
}

impl Times {
    /// Runs `f`, adding its time to stage `i`.
    fn time<T>(&mut self, i: usize, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.stages[i] += t.elapsed();
        out
    }

    fn us_per_span(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / self.spans.max(1) as f64
    }

    fn total(&self) -> Duration {
        self.stages.iter().sum()
    }
}

/// One round: decode (the baseline), then every assembly stage.
fn round(
    args: &AssemblyArgs,
    rng: &mut rand::rngs::StdRng,
    times: &mut Times,
) -> anyhow::Result<()> {
    let now = meshtrace_model::time::now_unix_nanos();
    let per = args.traces_per_request.max(1);
    let bodies: Vec<Vec<u8>> = (0..args.traces.div_ceil(per))
        .map(|_| super::request(rng, per).0.encode_to_vec())
        .collect();
    let limits = Limits::default();
    let t = Instant::now();
    let mut decoded = Vec::with_capacity(bodies.len());
    for body in &bodies {
        decoded.push(otlp::decode_protobuf(body, &limits)?.spans);
    }
    times.decode += t.elapsed();
    times.spans += decoded.iter().map(|b| b.len() as u64).sum::<u64>();

    let graph = GraphConfig::default();
    let slimmer = Slimmer::new(&[], &graph);
    let mut assembler = Assembler::new(AssemblerConfig {
        max_open_traces: args.traces + 1,
        ..AssemblerConfig::default()
    });
    for batch in decoded {
        let slim = times.time(0, || Arc::new(slimmer.slim_all_owned(batch)));
        times.time(1, || assembler.add_shared(&slim, 0));
    }
    let done = times.time(2, || assembler.poll_complete(i64::MAX));
    let recorder = Recorder::new(WindowConfig::default());
    let mut mapping = ClassMapping::new();
    let mut rows = Rows::default();
    for (version, c) in (1..).zip(done) {
        let derived = times.time(3, || c.derive(&[], &graph));
        times.time(4, || recorder.record(&derived, &c.tree, now));
        times.time(5, || mapping.learn(&derived, 0));
        times.time(6, || rows.push(derived, version, c.reason));
    }
    let batches = times.time(6, || rows.into_batches())?;
    let config = meshtrace_storage::DerivedConfig::default();
    for table in tables() {
        let of_table: Vec<_> = batches
            .iter()
            .filter(|(name, _)| *name == table.name)
            .map(|(_, b)| b.clone())
            .collect();
        let bytes = times.time(7, || {
            meshtrace_storage::derived::encoded_size(
                &table.schema,
                &of_table,
                config.row_group_rows,
            )
        })?;
        times.derived_bytes += bytes as u64;
    }
    Ok(())
}

pub fn run(args: AssemblyArgs) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut times = Times::default();
    let bar = indicatif::ProgressBar::new(args.rounds as u64);
    for _ in 0..args.rounds.max(1) {
        round(&args, &mut rng, &mut times)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let per = |d| times.us_per_span(d);
    let (total, decode) = (per(times.total()), per(times.decode));
    let derived_bytes = times.derived_bytes as f64 / times.spans.max(1) as f64;
    if args.json {
        let stages: serde_json::Map<String, serde_json::Value> = STAGES
            .iter()
            .zip(times.stages)
            .map(|(name, d)| (name.to_string(), per(d).into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "spans": times.spans, "us_per_span": total, "decode_us_per_span": decode,
                "ratio_to_decode": total / decode, "stages_us_per_span": stages,
                "derived_bytes_per_span": derived_bytes,
            })
        );
        return Ok(());
    }
    println!("spans                  {}", times.spans);
    for (name, d) in STAGES.iter().zip(times.stages) {
        println!("{name:<22} {:.3} µs/span", per(d));
    }
    println!(
        "assembly total         {total:.3} µs/span ({:.0} spans/s on one thread)",
        1e6 / total
    );
    println!("decode-only baseline   {decode:.3} µs/span (OTLP protobuf, same run)");
    println!("assembly / decode      {:.2}", total / decode);
    println!("derived bytes/span     {derived_bytes:.1} (the three derived tables' segments)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_times_every_stage_of_every_span() {
        let args = AssemblyArgs {
            traces: 12,
            rounds: 1,
            traces_per_request: 5,
            json: false,
        };
        let mut times = Times::default();
        round(&args, &mut rand::rngs::StdRng::seed_from_u64(7), &mut times).unwrap();
        // 10 to 30 spans a trace.
        assert!((120..=360).contains(&times.spans), "{} spans", times.spans);
        for (name, d) in STAGES.iter().zip(times.stages) {
            assert!(d > Duration::ZERO, "stage {name} was not timed");
        }
        assert!(times.decode > Duration::ZERO);
        assert!(times.derived_bytes > 0, "the derived segments were encoded");
    }
}
