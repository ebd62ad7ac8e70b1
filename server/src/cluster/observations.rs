//! Budget observations shared by every node: each node completes the traces of the partitions
//! it owns, and forwards each trace's observation (class, end-to-end time, critical-path hops)
//! to the subject `<cluster>.observations`; every node records every observation it receives
//! (its own included) in its budget window. So the leader computes budgets from the whole
//! cluster's traces, and a node elected after it computes from the same window at once.
//!
//! Forwarding is core NATS (at most once): a lost observation only thins a statistical window,
//! and a full queue drops observations (counted) rather than slow trace assembly down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use meshtrace_provenance::{Derived, TraceTree};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::priorities::observe::{Observation, Recorder};
use crate::provenance::TraceObserver;

/// Observations waiting to be published, at most.
const QUEUE: usize = 16_384;

/// Provenance's observer in cluster mode: queues each completed trace's observation.
pub struct Forwarder {
    tx: mpsc::Sender<Observation>,
    pub dropped: AtomicU64,
}

impl TraceObserver for Forwarder {
    fn record(&self, d: &Derived, tree: &TraceTree, now_ns: i64) {
        if self.tx.try_send(Observation::of(d, tree, now_ns)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A forwarder and the receiving end its publisher task drains.
pub fn forwarder() -> (Arc<Forwarder>, mpsc::Receiver<Observation>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let f = Forwarder {
        tx,
        dropped: AtomicU64::new(0),
    };
    (Arc::new(f), rx)
}

/// Publishes queued observations until `stop`.
pub async fn publish(
    client: async_nats::Client,
    subject: String,
    mut rx: mpsc::Receiver<Observation>,
    stop: CancellationToken,
) {
    loop {
        let o = tokio::select! {
            _ = stop.cancelled() => return,
            o = rx.recv() => match o { Some(o) => o, None => return },
        };
        let Ok(body) = serde_json::to_vec(&o) else {
            continue;
        };
        if let Err(e) = client.publish(subject.clone(), body.into()).await {
            tracing::debug!(error = %e, "could not forward a budget observation");
        }
    }
}

/// Records every observation published to `subject` until `stop`.
pub async fn receive(
    client: async_nats::Client,
    subject: String,
    recorder: Recorder,
    stop: CancellationToken,
) {
    let mut sub = match client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to budget observations: budgets see no traces");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        match serde_json::from_slice::<Observation>(&msg.payload) {
            Ok(o) => recorder.record_observation(&o),
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed budget observation"),
        }
    }
}
