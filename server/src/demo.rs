//! `meshtrace demo`: meshtrace itself (as `serve` would run it) plus a simulated Bookinfo mesh
//! whose sidecars long-poll their priorities from it, with the scenario's objectives set
//! through the API. The interactive load starts at once, the batch load after a short
//! warm-up, so the priorities can be watched reacting. Runs until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use meshtrace_mesh::experiment::{set_objectives, targets};
use meshtrace_mesh::{Mesh, MeshConfig, PriorityMode, Scenario};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServeArgs};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Scenario file (TOML) [default: the built-in Bookinfo scenario]
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Seconds of interactive-only load before the batch load starts
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub batch_after: Duration,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// A listen address as a local client reaches it.
pub fn local(addr: SocketAddr) -> SocketAddr {
    match addr.ip().is_unspecified() {
        true => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        false => addr,
    }
}

/// Demo settings: short provenance idle and budget step unless given.
fn config(args: &DemoArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(&args.serve)?;
    if args.serve.provenance_idle.is_none() {
        config.provenance.idle = Duration::from_secs(1);
    }
    if args.serve.budget_step.is_none() {
        config.budgets.step = Duration::from_secs(2);
    }
    Ok(config)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let scenario = match &args.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::bookinfo(),
    };
    let config = config(&args)?;
    let running = crate::serve::start(&config).await?;
    let http = format!("http://{}", local(config.listen.http));
    let grpc = format!("http://{}", local(config.listen.otlp_grpc));
    if let Err(e) = set_objectives(&http, &scenario).await {
        tracing::warn!(error = %e, "could not set the scenario's objectives");
    }
    let mesh = Mesh::start(
        &scenario,
        MeshConfig {
            priorities: PriorityMode::Meshtrace {
                base_url: http.clone(),
            },
            otlp_endpoint: Some(grpc),
        },
    )
    .await?;
    let stop = CancellationToken::new();
    let load = tokio::spawn(meshtrace_mesh::workload::run(
        targets(&mesh, &scenario, args.batch_after, true),
        Duration::from_secs(365 * 24 * 3600),
        Duration::ZERO,
        stop.clone(),
    ));
    print_guide(&scenario, &args, config.listen.http.port());
    crate::serve::wait_for_signal().await;
    println!("stopping the load, the mesh and meshtrace ...");
    stop.cancel();
    let _ = load.await;
    let stats = mesh.stop().await;
    running.stop().await?;
    println!(
        "stopped: the sidecars exported {} spans ({} dropped)",
        stats.exported.load(std::sync::atomic::Ordering::Relaxed),
        stats.dropped.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

fn print_guide(scenario: &Scenario, args: &DemoArgs, port: u16) {
    let base = format!("http://localhost:{port}");
    let services: Vec<&str> = scenario.services.iter().map(|s| s.name.as_str()).collect();
    println!();
    println!(
        "meshtrace demo: scenario {} ({})",
        scenario.name,
        services.join(", ")
    );
    for c in &scenario.classes {
        let when = match c.background {
            true => format!(
                "starts after {}",
                humantime::format_duration(args.batch_after)
            ),
            false => "starts now".into(),
        };
        println!(
            "  class {:<12} enters at {:<14} objective p{} <= {} ms, importance {} ({when})",
            c.name,
            c.entry,
            c.objective.quantile * 100.0,
            c.objective.latency_ms,
            c.objective.importance
        );
    }
    let entry = scenario
        .class("interactive")
        .map(|c| c.entry.as_str())
        .unwrap_or("productpage");
    println!();
    println!("dashboard           {base}/");
    println!("service graph       {base}/graph  (the graph page; pick a class)");
    println!("interactive traces  {base}/search?service={entry}&tags=mesh.class%3Dinteractive");
    println!("latency budgets     {base}/api/v1/budgets");
    println!("priorities          {base}/api/v1/priorities?service=reviews");
    println!();
    println!("press Ctrl-C (or send SIGTERM) to stop");
}
