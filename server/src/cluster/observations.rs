//! Budget observations shared by every node, one window step at a time: each node records the
//! traces of the partitions it owns into observations of its own (the [`Forwarder`],
//! provenance's observer in cluster mode); once a step is over ([`publish`], checked a few
//! times a step) it sends that step's sketches to the subject `<cluster>.observations`, and
//! every node adds every step it receives (its own included) to the window its budgets are
//! computed from ([`receive`]; see `meshtrace_budget::step`). Sketches merge exactly, so every
//! node holds the same window: the elected node computes budgets from the whole cluster's
//! traces, and a node elected after it computes from the same window at once. What a step
//! costs the network is a message or a few per node and step, whatever the trace rate; the
//! price is that a trace counts in budgets once its step is over: each node publishes a step
//! just after it ends, and the leader updates a little after that (see `crate::priorities`).
//!
//! Publishing is core NATS (at most once): a lost step only thins a statistical window. A step
//! travels in messages of at most a hundred hop positions, so none passes NATS's payload limit.
//! A node that stops publishes what it still holds once its last traces completed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use meshtrace_budget::step::Step;
use meshtrace_budget::{Observations, WindowConfig};
use meshtrace_model::time::now_unix_nanos;
use meshtrace_provenance::{Derived, TraceTree};
use tokio_util::sync::CancellationToken;

use crate::priorities::observe::{record_into, Recorder};
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
        record_into(&self.local, d, tree, now_ns);
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
        let (steps, counts) = {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            (local.take_steps(now_ns, all), local.take_counts())
        };
        // This node's folded and capped samples, for its metrics.
        self.recorder.add_counts(counts);
        steps
    }

    fn step(&self) -> Duration {
        let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        local.config().step
    }
}

/// Hop positions a message carries at most (a step of many travels in several).
const HOPS_PER_MESSAGE: usize = 100;

/// Publishes each step of `forwarder`'s just after it is over (the leader's update waits a
/// little longer, see `crate::priorities`), until `stop`. The steps recorded after that (the
/// traces completed while the node stops) go with [`publish_rest`].
pub async fn publish(
    client: async_nats::Client,
    subject: String,
    forwarder: Arc<Forwarder>,
    stop: CancellationToken,
) {
    let step = forwarder.step().max(Duration::from_millis(10));
    let step_ns = i64::try_from(step.as_nanos()).unwrap_or(i64::MAX);
    loop {
        let now = now_unix_nanos();
        let next = (now.div_euclid(step_ns) + 1).saturating_mul(step_ns);
        let wait = Duration::from_nanos(u64::try_from(next - now).unwrap_or(0));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait + Duration::from_millis(20)) => {}
        }
        send_all(&client, &subject, forwarder.take(now_unix_nanos(), false)).await;
    }
}

/// Publishes every step `forwarder` still holds, the one in progress too: the last thing a
/// stopping node does for budgets, after its last traces completed.
pub async fn publish_rest(client: &async_nats::Client, subject: &str, forwarder: &Forwarder) {
    send_all(client, subject, forwarder.take(now_unix_nanos(), true)).await;
    if let Err(e) = client.flush().await {
        tracing::debug!(error = %e, "could not flush the last budget steps");
    }
}

async fn send_all(client: &async_nats::Client, subject: &str, steps: Vec<Step>) {
    for step in steps {
        for part in Observations::split(step, HOPS_PER_MESSAGE) {
            send(client, subject, &part).await;
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
