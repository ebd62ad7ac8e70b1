//! Samples the process's resident memory into its [`MemoryBudget`] twenty times a second, and
//! publishes both in `/metrics`. What the budget makes the rest of the server do (refuse
//! spans and queries, complete open traces early, flush) is described in
//! `meshtrace_model::memory`.

use std::time::Duration;

use meshtrace_model::memory::MemoryBudget;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the resident size is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The process's resident memory in bytes (Linux: `VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib << 10)
}

/// Registers the gauges and starts sampling into `budget` until `shutdown`.
pub fn start(
    budget: MemoryBudget,
    registry: &mut Registry,
    shutdown: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let resident = Gauge::<i64>::default();
    let limit = Gauge::<i64>::default();
    registry.register(
        "meshtrace_memory_resident_bytes",
        "Resident memory of the server, as last sampled",
        resident.clone(),
    );
    registry.register(
        "meshtrace_memory_budget_bytes",
        "The memory budget ([memory] budget_mib; 0: none)",
        limit.clone(),
    );
    limit.set(i64::try_from(budget.limit()).unwrap_or(i64::MAX));
    if budget.limit() > 0 && resident_bytes().is_none() {
        tracing::warn!(
            "cannot read this process's resident memory here: the memory budget is not enforced"
        );
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_over = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let Some(rss) = resident_bytes() else {
                continue;
            };
            budget.record(rss);
            resident.set(i64::try_from(rss).unwrap_or(i64::MAX));
            let over = budget.exceeded();
            match (over, was_over) {
                (Some(e), false) => {
                    tracing::warn!(%e, "refusing spans and queries and shedding open traces until memory is back under seven eighths of the budget")
                }
                (None, true) => tracing::info!(
                    resident_mib = rss >> 20,
                    "memory back under seven eighths of the budget: taking spans and queries again"
                ),
                _ => {}
            }
            was_over = over.is_some();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_plausible_resident_size() {
        let rss = resident_bytes().expect("Linux /proc");
        assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
    }
}
