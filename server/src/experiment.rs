//! `meshtrace experiment priority`: the same simulated-mesh load twice, priorities off then
//! on, after an unloaded baseline, against meshtrace servers started in-process (temporary
//! data dir, free ports): one for the baseline and the "off" run, and a fresh one for the
//! "on" run, so its sidecars start with no assignments and the loop must learn the classes
//! and react to the burst. Prints a table per class and writes `results.json` and
//! `latency.svg` to the output directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use meshtrace_mesh::experiment::{
    assemble, background_rates, priorities_api_available, run_step, scaled, set_objectives,
    static_assignments, steps, table, SweepPoint,
};
use meshtrace_mesh::{Endpoints, PriorityMode, Scenario};

use crate::config::{Config, Loopback, ServeArgs};

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
    /// Also run the background load at these levels, priorities off and on, and report the
    /// shared services' utilization and the foreground p99 per level, e.g.
    /// `--sweep 0.5,0.7,0.85,1.0`: a closed background class becomes open arrivals at the
    /// level's share of its saturated rate in the "off" run; open classes scale their rates
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<f64>,
}

/// A meshtrace server started for part of the experiment, with its temporary data dir.
struct Instance {
    running: crate::serve::Running,
    endpoints: Endpoints,
    _dir: tempfile::TempDir,
}

impl Instance {
    async fn start(budget_step: Duration) -> anyhow::Result<Instance> {
        let dir = tempfile::tempdir()?;
        let ports = Loopback::new(dir.path())?;
        let (grpc, http) = (ports.otlp_grpc, ports.http);
        let serve = ServeArgs {
            provenance_idle: Some(Duration::from_secs(1)),
            budget_step: Some(budget_step),
            ..ports.args
        };
        let config = Config::load(&serve)?;
        let running = crate::serve::start(&config).await?;
        let endpoints = Endpoints {
            http: format!("http://{http}"),
            otlp_grpc: format!("http://{grpc}"),
        };
        Ok(Instance {
            running,
            endpoints,
            _dir: dir,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.running.stop().await
    }
}

pub async fn run(args: ExperimentArgs) -> anyhow::Result<()> {
    let ExperimentWhat::Priority(args) = args.what;
    if let Some(bad) = args.sweep.iter().find(|l| !(l.is_finite() && **l > 0.0)) {
        anyhow::bail!("sweep level {bad} is not a positive number");
    }
    let scenario = match &args.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::bookinfo(),
    };
    let [baseline, off, on] = steps(args.duration, PriorityMode::Off);
    let progress = !args.quiet;
    // Baseline and "off" share one server; with priorities off nothing reads its sets.
    let first = Instance::start(args.budget_step).await?;
    let mut outcomes = Vec::new();
    for step in [&baseline, &off] {
        match run_step(&scenario, step, &first.endpoints, progress).await {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                first.stop().await?;
                return Err(e);
            }
        }
    }
    first.stop().await?;
    // A fresh server for "on": no learned classes, no published sets.
    let fresh = Instance::start(args.budget_step).await?;
    let outcome = run_on(&args, &scenario, on, &fresh.endpoints).await;
    fresh.stop().await?;
    let (on_mode, on_outcome) = outcome?;
    outcomes.push(on_outcome);
    let outcomes: [_; 3] = outcomes
        .try_into()
        .map_err(|_| anyhow::anyhow!("missing experiment runs"))?;
    let mut results = assemble(&scenario, args.duration, &on_mode, &outcomes);
    // Levels are shares of the background classes' saturated rates of the "off" run.
    let saturated = background_rates(&scenario, &outcomes[1].result);
    for level in &args.sweep {
        let point = sweep_point(&args, &scenario, *level, &saturated).await?;
        results.sweep.push(point);
    }
    print!("{}", table(&results));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = args.out.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let svg = args.out.join("latency.svg");
    meshtrace_mesh::chart::draw(&svg, &scenario, &outcomes[1..])?;
    println!("wrote {} and {}", json.display(), svg.display());
    Ok(())
}

/// The "on" run against `endpoints` (a fresh server): static table or meshtrace's
/// priorities, with the scenario's objectives set first.
async fn run_on(
    args: &PriorityArgs,
    scenario: &Scenario,
    mut step: meshtrace_mesh::experiment::Step,
    endpoints: &Endpoints,
) -> anyhow::Result<(PriorityMode, meshtrace_mesh::RunOutcome)> {
    step.priorities = match args.static_priorities {
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
    let outcome = run_step(scenario, &step, endpoints, !args.quiet).await?;
    Ok((step.priorities, outcome))
}

/// One level of the load sweep: the background load scaled, off against one server and on
/// against a fresh one.
async fn sweep_point(
    args: &PriorityArgs,
    scenario: &Scenario,
    level: f64,
    saturated: &BTreeMap<String, f64>,
) -> anyhow::Result<SweepPoint> {
    let scenario = scaled(scenario, level, saturated);
    let [_, off, on] = steps(args.duration, PriorityMode::Off);
    let progress = !args.quiet;
    let first = Instance::start(args.budget_step).await?;
    let off_outcome = run_step(&scenario, &off, &first.endpoints, progress).await;
    first.stop().await?;
    let off_outcome = off_outcome?;
    let fresh = Instance::start(args.budget_step).await?;
    let on_outcome = run_on(args, &scenario, on, &fresh.endpoints).await;
    fresh.stop().await?;
    let (_, on_outcome) = on_outcome?;
    tracing::info!(level, "sweep level done");
    Ok(SweepPoint::new(
        level,
        &scenario,
        &off_outcome.result,
        &on_outcome.result,
    ))
}
