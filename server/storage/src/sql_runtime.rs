//! Where DataFusion plans run, so that no query can take the server down with it.
//!
//! A plan runs on a Tokio runtime of its own ([`SqlRuntime`], threads named
//! `meshtrace-query`, fewer than the machine's cores by default), never on the runtime that
//! serves ingest, `/readyz` and the write-ahead log: a CPU-bound plan (a cross join) keeps
//! those threads busy, not the ingest path. At most [`SqlLimits::max_concurrent`] plans run at
//! once; a query waits for a slot up to [`SqlLimits::queue_wait`] and is then refused as
//! overloaded (429 with a retry delay), as is every query while the process is over its memory
//! budget ([`MemoryBudget`]). Operators share a `FairSpillPool` of
//! [`SqlLimits::memory_bytes`] (sorts and aggregations spill or fail past it), and functions
//! whose output size a query chooses are bounded separately ([`crate::bounded`]).
//!
//! The caller awaits the plan's batches through a channel on its own runtime, so its time
//! limit is enforced from outside the plan: past it, or when the caller goes away (a client
//! disconnects), the plan is cancelled ([`crate::cancel`]: its next batch is an error) and its
//! task aborted. Dropping the store shuts the runtime down without waiting,
//! so a runaway plan never holds up shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshtrace_model::memory::MemoryBudget;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::error::StorageError;

/// Limits of DataFusion queries (SQL and the query layer's aggregations).
#[derive(Clone, Debug, PartialEq)]
pub struct SqlLimits {
    /// Worker threads of the query runtime, also DataFusion's target partitions.
    pub threads: usize,
    /// Plans running at once.
    pub max_concurrent: usize,
    /// How long a query waits for a slot before it is refused as overloaded.
    pub queue_wait: Duration,
    /// Memory the operators of all running plans may hold together.
    pub memory_bytes: usize,
}

impl SqlLimits {
    /// The most one function call may build: a sixteenth of the memory limit.
    pub fn function_output_bytes(&self) -> u64 {
        (self.memory_bytes / 16) as u64
    }
}

impl Default for SqlLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        SqlLimits {
            threads: (cores / 2).max(1),
            max_concurrent: 4,
            queue_wait: Duration::from_secs(5),
            // Well under the server's default memory budget (1536 MiB).
            memory_bytes: 512 << 20,
        }
    }
}

/// The query runtime and its slots.
#[derive(Debug)]
pub(crate) struct SqlRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
    slots: Arc<Semaphore>,
    pub(crate) limits: SqlLimits,
    memory: MemoryBudget,
}

impl SqlRuntime {
    pub(crate) fn new(limits: SqlLimits, memory: MemoryBudget) -> Result<SqlRuntime, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1))
            .thread_name("meshtrace-query")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Config(format!("starting the query runtime: {e}")))?;
        Ok(SqlRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            limits,
            memory,
        })
    }

    /// Waits for a slot, at most `queue_wait` (and never past `deadline`); none while the
    /// memory budget is spent.
    pub(crate) async fn slot(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, StorageError> {
        if let Some(exceeded) = self.memory.exceeded() {
            return Err(exceeded.into());
        }
        let wait = tokio::time::Instant::now() + self.limits.queue_wait;
        let acquire = self.slots.clone().acquire_owned();
        match tokio::time::timeout_at(wait.min(deadline), acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(StorageError::Overloaded(format!(
                "{} queries are running, the most this server runs at once; retry later",
                self.limits.max_concurrent
            ))),
        }
    }

    /// Runs `plan` on the query runtime, handing it the flag that cancels it; the flag is
    /// set and the task aborted when the guard is dropped.
    pub(crate) fn spawn<F>(&self, plan: impl FnOnce(Arc<AtomicBool>) -> F) -> AbortOnDrop
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancelled = Arc::new(AtomicBool::new(false));
        AbortOnDrop {
            task: self.handle.spawn(plan(cancelled.clone())),
            cancelled,
        }
    }
}

impl Drop for SqlRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A plan's task, cancelled ([`crate::cancel`]) and aborted when its caller stops waiting
/// for it.
pub(crate) struct AbortOnDrop {
    pub(crate) task: JoinHandle<()>,
    cancelled: Arc<AtomicBool>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}
