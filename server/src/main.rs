//! The `meshtrace` binary: `serve` runs the service, `import` loads trace files, `bench`
//! measures ingest. See README.md.

mod api;
mod bench;
mod cluster;
mod config;
mod demo;
mod engine;
mod experiment;
mod health;
mod import;
mod listener;
mod memory;
mod metrics;
mod pipeline;
mod priorities;
mod provenance;
mod serve;
mod tenants;
mod tls;

use clap::{Parser, Subcommand};

/// Ingest allocates and frees many small strings per span; mimalloc does that with less
/// CPU than the system allocator (see [`disable_transparent_huge_pages`] for its one trap).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (what mimalloc's `allow_thp=0` option
/// does). mimalloc asks for huge pages on its arenas and returns freed stretches to the kernel
/// a second later; touching such a stretch again then faults in and zeroes a whole 2 MiB
/// page. Under ingest with trace assembly on, that zeroing was 14 % of the CPU.
fn disable_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "could not turn transparent huge pages off");
    }
}

#[derive(Parser)]
#[command(
    name = "meshtrace",
    version,
    about = "distributed tracing and provenance analytics for service meshes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: OTLP gRPC/HTTP and Zipkin ingest, storage and the query API
    Serve(Box<config::ServeArgs>),
    /// Load trace files into a running server or straight into a data dir
    Import(import::ImportArgs),
    /// Measure ingest throughput, durability cost and bytes per span
    Bench(bench::BenchArgs),
    /// Run meshtrace with a simulated Bookinfo mesh whose sidecars apply its priorities
    Demo(Box<demo::DemoArgs>),
    /// Run experiments on a simulated mesh (`experiment priority`)
    Experiment(experiment::ExperimentArgs),
    /// Print the OpenAPI document of meshtrace's own HTTP API (as `docs/openapi.json` holds it)
    Openapi,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHTRACE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        print!("{}", api::openapi::document_json());
        return Ok(());
    }
    init_tracing();
    disable_transparent_huge_pages();
    listener::raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let config = config::Config::load(&args)?;
                serve::run(config).await
            }
            Command::Import(args) => import::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Demo(args) => demo::run(*args).await,
            Command::Experiment(args) => experiment::run(args).await,
            Command::Openapi => Ok(()),
        }
    })
}
