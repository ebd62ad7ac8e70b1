//! Consuming one owned partition: a durable pull consumer from just past the partition's
//! checkpoint, each message's spans into the store's buffer (and provenance), and
//! acknowledgements once the segment holding them is committed.
//!
//! The consumer is created afresh at every claim, starting at the checkpoint the claim read
//! from the catalog, so a takeover never waits for the dead owner's unacknowledged messages to
//! time out and never skips one. Messages are acknowledged with `AckPolicy::All`: acknowledging
//! the newest committed message acknowledges every one before it.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use async_nats::Subject;
use bytes::Bytes;
use futures::StreamExt;
use meshtrace_cluster::{codec, ClusterNames};
use meshtrace_model::arrow_conv::spans_to_batch;
use meshtrace_storage::cluster::Claim;
use meshtrace_storage::{span_names, Store};
use tokio_util::sync::CancellationToken;

use crate::provenance::Provenance;

/// What every partition consumer of a node shares.
#[derive(Clone)]
pub struct Consuming {
    pub client: async_nats::Client,
    pub stream: Stream,
    pub names: ClusterNames,
    pub store: Store,
    /// Present when provenance is on: consumed spans go to trace assembly too.
    pub provenance: Option<Provenance>,
}

/// Messages fetched per pull request, and how long a pull waits for them.
const FETCH: usize = 512;
const FETCH_WAIT: Duration = Duration::from_millis(300);

impl Consuming {
    /// Consumes `partition` from just past the claim's checkpoint until `stop`.
    pub async fn run(self, partition: u32, claim: Claim, stop: CancellationToken) {
        let consumer = loop {
            match self.consumer(partition, claim).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot create the partition's consumer; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let mut unacked: VecDeque<(u64, Subject)> = VecDeque::new();
        while !stop.is_cancelled() {
            let batch = consumer
                .fetch()
                .max_messages(FETCH)
                .expires(FETCH_WAIT)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "pull request failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(next) = tokio::select! {
                _ = stop.cancelled() => None,
                m = batch.next() => m,
            } {
                match next {
                    Ok(msg) => {
                        if let Some(seq) = self.deliver(partition, &msg).await {
                            if let Some(reply) = msg.message.reply.clone() {
                                unacked.push_back((seq, reply));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "pulling messages failed");
                        break;
                    }
                }
            }
            self.ack_committed(partition, &mut unacked).await;
        }
    }

    /// The claim's own durable consumer of the partition, starting just past its checkpoint;
    /// earlier claims' consumers are deleted (a node still pulling from one then fails).
    async fn consumer(
        &self,
        partition: u32,
        claim: Claim,
    ) -> anyhow::Result<async_nats::jetstream::consumer::Consumer<pull::Config>> {
        let name = self.names.consumer(partition, claim.epoch);
        let prefix = self.names.consumer_prefix(partition);
        let mut names = self.stream.consumer_names();
        while let Some(old) = names.next().await {
            let old = old?;
            if old.starts_with(&prefix) && old != name {
                // Gone already is fine.
                let _ = self.stream.delete_consumer(&old).await;
            }
        }
        let deliver_policy = match claim.checkpoint {
            0 => DeliverPolicy::All,
            c => DeliverPolicy::ByStartSequence {
                start_sequence: c + 1,
            },
        };
        let config = pull::Config {
            durable_name: Some(name),
            filter_subject: self.names.subject(partition),
            deliver_policy,
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 4096,
            ..Default::default()
        };
        Ok(self.stream.create_consumer(config).await?)
    }

    /// Buffers one message's spans; returns its stream sequence number.
    async fn deliver(&self, partition: u32, msg: &async_nats::jetstream::Message) -> Option<u64> {
        let seq = match msg.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => {
                tracing::warn!(partition, error = %e, "a message without JetStream metadata");
                return None;
            }
        };
        let spans = match codec::decode(&msg.message.payload) {
            Ok(spans) => spans,
            Err(e) => {
                // Nothing else can read it either: skip it, loudly.
                tracing::error!(partition, seq, error = %e, "skipping a span message that cannot be decoded");
                Vec::new()
            }
        };
        let batch = match spans_to_batch(&spans) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(partition, seq, error = %e, "skipping spans that cannot be converted");
                return Some(seq);
            }
        };
        let fresh = self
            .store
            .append_partition(partition, seq, span_names(&spans), batch);
        if let (true, Some(p)) = (fresh, &self.provenance) {
            p.feed_waiting(spans).await;
        }
        Some(seq)
    }

    /// Acknowledges the newest message whose spans are in a committed segment.
    async fn ack_committed(&self, partition: u32, unacked: &mut VecDeque<(u64, Subject)>) {
        let Some(committed) = self.store.partition_committed(partition) else {
            return;
        };
        let mut newest = None;
        while unacked.front().is_some_and(|(seq, _)| *seq <= committed) {
            newest = unacked.pop_front();
        }
        if let Some((seq, reply)) = newest {
            if let Err(e) = self.client.publish(reply, Bytes::new()).await {
                tracing::debug!(partition, seq, error = %e, "ack failed; the next one covers it");
            }
        }
    }
}
