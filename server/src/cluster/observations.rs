//! Budget observations shared by every node, one window step at a time: each node records the
//! traces of the partitions it owns into observations of its own (the [`Forwarder`],
//! provenance's observer in cluster mode); once a step is over ([`publish`], checked a few
//! times a step) it sends that step's sketches to the subject `<cluster>.observations`, and
//! every node adds every step it receives (its own included) to the window its budgets are
//! computed from ([`receive`]; see `meshtrace_budget::step`). Sketches merge exactly, so every
//! node holds the same window: the elected node computes budgets from the whole cluster's
//! traces, and a node elected after it computes from the same window at once. What a step
//! costs the network is one message per node and step, whatever the trace rate; the price is
//! that a trace counts in budgets once its step is over (at most one step, 10 s by default,
//! later than on a standalone node).
//!
//! Publishing is core NATS (at most once): a lost step only thins a statistical window. A node
//! that stops publishes the step in progress too.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use meshtrace_budget::step::Step;
use meshtrace_budget::{Observations, WindowConfig};
use meshtrace_model::time::now_unix_nanos;
use meshtrace_provenance::{Derived, TraceTree};
use tokio_util::sync::CancellationToken;

use crate::priorities::observe::{hop_samples, Recorder};
use crate::provenance::TraceObserver;

/// Provenance's observer in cluster mode: records this node's completed traces until their
/// step is published.
pub struct Forwarder {
    local: Mutex<Observations>,
    /// This node's window, where every node's steps are recorded.
    recorder: Recorder,
}

impl TraceObserver for Forwarder {
    fn record(&self, d: &Derived, tree: &TraceTree, now_ns: i64) {
        let hops = hop_samples(d, tree);
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        local.record_trace(&d.trace.class, d.trace.duration_ns, &hops, now_ns);
    }

    /// As the node's recorder keeps them: classes with an objective or an override.
    fn keeps_class(&self, class: &str) -> bool {
        self.recorder.keeps_class(class)
    }
}

impl Forwarder {
    /// A forwarder with windows of `window`: its own, and the node's recorder.
    pub fn new(window: WindowConfig) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            local: Mutex::new(Observations::new(window)),
            recorder: Recorder::new(window),
        })
    }

    /// The node's recorder: the window its budgets are computed from.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The steps over at `now_ns` (all of them with `all`), taken out.
    fn take(&self, now_ns: i64, all: bool) -> Vec<Step> {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        local.take_steps(now_ns, all)
    }

    fn step(&self) -> Duration {
        let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        local.config().step
    }
}

/// Publishes each step of `forwarder`'s once it is over, until `stop`; then the step in
/// progress.
pub async fn publish(
    client: async_nats::Client,
    subject: String,
    forwarder: Arc<Forwarder>,
    stop: CancellationToken,
) {
    let every = (forwarder.step() / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut tick = tokio::time::interval(every);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        for step in forwarder.take(now_unix_nanos(), stopping) {
            send(&client, &subject, &step).await;
        }
        if stopping {
            if let Err(e) = client.flush().await {
                tracing::debug!(error = %e, "could not flush the last budget step");
            }
            return;
        }
    }
}

async fn send(client: &async_nats::Client, subject: &str, step: &Step) {
    let Ok(body) = serde_json::to_vec(step) else {
        return;
    };
    if let Err(e) = client.publish(subject.to_string(), body.into()).await {
        tracing::warn!(error = %e, traces = step.traces(), "could not publish a budget step");
    }
}

/// Records every step published to `subject` until `stop`.
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
        match serde_json::from_slice::<Step>(&msg.payload) {
            Ok(step) => recorder.record_step(&step),
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed budget step"),
        }
    }
}
