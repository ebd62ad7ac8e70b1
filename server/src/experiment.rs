//! `meshtrace experiment priority`: the same simulated-mesh load twice, priorities off then
//! on, against a meshtrace started in-process for the run (temporary data dir, free ports),
//! after an unloaded baseline. Prints a table per class and writes `results.json` and
//! `latency.svg` to the output directory.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use meshtrace_mesh::experiment::{
    priorities_api_available, run_priority_experiment, set_objectives, static_assignments, table,
};
use meshtrace_mesh::{Endpoints, PriorityMode, Scenario};

use crate::config::{Config, ServeArgs};

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    pub what: ExperimentWhat,
}

#[derive(Debug, Subcommand)]
pub enum ExperimentWhat {
    /// Interactive latency with and without meshtrace's priorities at the sidecars
    Priority(PriorityArgs),
}

#[derive(Debug, Args)]
pub struct PriorityArgs {
    /// Scenario file (TOML) [default: the built-in Bookinfo scenario]
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Length of each of the two loaded runs
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Where results.json and latency.svg go
    #[arg(long, default_value = "./experiment-results")]
    pub out: PathBuf,
    /// In the "on" run, give the sidecars a fixed table (levels by objective importance)
    /// instead of long-polling meshtrace: isolates the queueing effect from the control loop
    #[arg(long)]
    pub static_priorities: bool,
    /// Update budgets and priorities this often in the server started for the experiment
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub budget_step: Duration,
    /// No progress bars
    #[arg(long)]
    pub quiet: bool,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub async fn run(args: ExperimentArgs) -> anyhow::Result<()> {
    let ExperimentWhat::Priority(args) = args.what;
    let scenario = match &args.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::bookinfo(),
    };
    let dir = tempfile::tempdir()?;
    let (grpc, http) = (free_addr()?, free_addr()?);
    let serve = ServeArgs {
        data_dir: Some(dir.path().to_path_buf()),
        otlp_grpc_listen: Some(grpc),
        otlp_http_listen: Some(free_addr()?),
        zipkin_listen: Some(free_addr()?),
        http_listen: Some(http),
        provenance_idle: Some(Duration::from_secs(1)),
        budget_step: Some(args.budget_step),
        ..Default::default()
    };
    let config = Config::load(&serve)?;
    let running = crate::serve::start(&config).await?;
    let endpoints = Endpoints {
        http: format!("http://{http}"),
        otlp_grpc: format!("http://{grpc}"),
    };
    let outcome = experiment(&args, &scenario, &endpoints).await;
    running.stop().await?;
    drop(dir);
    outcome
}

async fn experiment(
    args: &PriorityArgs,
    scenario: &Scenario,
    endpoints: &Endpoints,
) -> anyhow::Result<()> {
    let on_mode = match args.static_priorities {
        true => PriorityMode::Static(static_assignments(scenario)),
        false => {
            if !priorities_api_available(&endpoints.http).await {
                anyhow::bail!(
                    "this server does not answer GET /api/v1/priorities; use --static-priorities"
                );
            }
            set_objectives(&endpoints.http, scenario).await?;
            PriorityMode::Meshtrace {
                base_url: endpoints.http.clone(),
            }
        }
    };
    let (results, outcomes) =
        run_priority_experiment(scenario, args.duration, endpoints, on_mode, !args.quiet).await?;
    print!("{}", table(&results));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = args.out.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let svg = args.out.join("latency.svg");
    meshtrace_mesh::chart::draw(&svg, scenario, &outcomes[1..])?;
    println!("wrote {} and {}", json.display(), svg.display());
    Ok(())
}
