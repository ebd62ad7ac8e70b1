//! Consuming one owned partition: a durable pull consumer from just past what the store holds
//! of the partition, the spans of the messages already received into the store's buffer (and
//! provenance) as one batch, and acknowledgements once the segment holding them is committed.
//!
//! Each claim consumes through a consumer of its own (named with the claim's epoch), created
//! at the claim from the checkpoint the claim read, so a takeover never waits for the dead
//! owner's unacknowledged messages to time out and never skips one. Delivery must be gapless:
//! a message the server counts as delivered but that never arrived (a connection cut
//! mid-fetch) shows up as a jump in the consumer sequence, and any pull error may hide one, so
//! on either the consumer is made again from just past the last message buffered. A message
//! that cannot be decoded is never skipped: the partition stops there, loudly, and retries
//! (a node of another version may be writing a format this one does not read). Messages are
//! acknowledged with `AckPolicy::All`: acknowledging the newest committed message acknowledges
//! every one before it.
//!
//! A trace open when its partition changed hands (a takeover, or a hand-over to a node that
//! joined) has spans on both sides: the previous owner's in committed segments, the rest here.
//! So for `straddle` (`[provenance] idle` plus `max_age`, the longest a trace stays open)
//! after a claim of a partition with committed spans, consumed spans go to provenance as
//! replayed (a lookup of stored spans per trace, as after a write-ahead log replay): their traces are derived from
//! every span the store holds, with a newer version than anything the previous owner
//! derived, instead of from this node's part alone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use async_nats::Subject;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use meshtrace_cluster::{codec, ClusterNames};
use meshtrace_model::arrow_conv::spans_to_batch;
use meshtrace_storage::cluster::{Appended, Claim};
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
    /// For this long after a claim (of a partition with committed spans), consumed spans go to
    /// provenance as replayed (see the module docs).
    pub straddle: Duration,
}

/// Messages fetched per pull request, and how long a pull waits for them.
const FETCH: usize = 512;
const FETCH_WAIT: Duration = Duration::from_millis(300);

/// Why consuming must start again, and how long to wait first.
struct Restart {
    why: String,
    wait: Duration,
}

impl Restart {
    fn soon(why: impl std::fmt::Display) -> Restart {
        Restart {
            why: why.to_string(),
            wait: Duration::from_millis(500),
        }
    }
}

/// Messages buffered but not yet acknowledged: (stream sequence, reply subject).
type Unacked = VecDeque<(u64, Subject)>;

impl Consuming {
    /// Consumes `partition` for `claim` until `stop` or until the partition is not this
    /// claim's any more.
    pub async fn run(self, partition: u32, claim: Claim, stop: CancellationToken) {
        // A partition nothing was ever committed for has no trace on the other side.
        let straddle = (claim.checkpoint > 0).then(|| Instant::now() + self.straddle);
        let mut start_after = claim.checkpoint;
        while !stop.is_cancelled() {
            let restart = match self.consumer(partition, claim.epoch, start_after).await {
                Ok(consumer) => {
                    match self
                        .pump(partition, claim, straddle, &consumer, &stop)
                        .await
                    {
                        Ok(()) => return,
                        Err(r) => r,
                    }
                }
                Err(e) => Restart::soon(format!("cannot create the consumer: {e}")),
            };
            let Some(appended) = self.store.partition_appended(partition, claim.epoch) else {
                return;
            };
            start_after = appended;
            tracing::warn!(partition, start_after, why = %restart.why, "consuming the partition again");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(restart.wait) => {}
            }
        }
    }

    /// Pulls and buffers messages until `stop` (`Ok`) or until consuming must start again.
    async fn pump(
        &self,
        partition: u32,
        claim: Claim,
        straddle: Option<Instant>,
        consumer: &Consumer<pull::Config>,
        stop: &CancellationToken,
    ) -> Result<(), Restart> {
        let mut unacked = Unacked::new();
        let mut last_delivery = 0;
        while !stop.is_cancelled() {
            // Short of memory: nothing more is pulled (JetStream keeps it) until flushes and
            // shedding bring the process back under; what was pulled is still acknowledged.
            if self.store.config().memory.exceeded().is_some() {
                self.ack_committed(partition, &mut unacked).await;
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
            let mut batch = consumer
                .fetch()
                .max_messages(FETCH)
                .expires(FETCH_WAIT)
                .messages()
                .await
                .map_err(|e| Restart::soon(format!("pull request failed: {e}")))?;
            while let Some(group) = next_group(&mut batch, stop).await {
                let mut messages = Vec::with_capacity(group.len());
                for next in group {
                    let msg = next.map_err(|e| Restart::soon(format!("pulling failed: {e}")))?;
                    let info = msg
                        .info()
                        .map_err(|e| Restart::soon(format!("a message without metadata: {e}")))?;
                    if info.consumer_sequence != last_delivery + 1 {
                        return Err(Restart::soon(format!(
                            "delivery {} arrived after {last_delivery}: one was lost on the way",
                            info.consumer_sequence
                        )));
                    }
                    last_delivery = info.consumer_sequence;
                    let seq = info.stream_sequence;
                    messages.push((seq, msg.message.payload.clone(), msg.message.reply.clone()));
                }
                match self.deliver(partition, claim, straddle, &messages).await? {
                    Appended::New | Appended::Again => {}
                    Appended::NotOwned => return Ok(()),
                }
                let replies = messages
                    .into_iter()
                    .filter_map(|(seq, _, r)| Some((seq, r?)));
                unacked.extend(replies);
            }
            self.ack_committed(partition, &mut unacked).await;
        }
        Ok(())
    }

    /// The claim's own durable consumer of the partition, starting just past `start_after`;
    /// other claims' consumers are deleted (a node still pulling from one then fails).
    async fn consumer(
        &self,
        partition: u32,
        epoch: i64,
        start_after: u64,
    ) -> anyhow::Result<Consumer<pull::Config>> {
        let name = self.names.consumer(partition, epoch);
        let prefix = self.names.consumer_prefix(partition);
        let mut names = self.stream.consumer_names();
        while let Some(old) = names.next().await {
            let old = old?;
            // Ours too: it is made again from `start_after`. Gone already is fine.
            if old.starts_with(&prefix) {
                let _ = self.stream.delete_consumer(&old).await;
            }
        }
        let config = pull::Config {
            durable_name: Some(name),
            filter_subject: self.names.subject(partition),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start_after + 1,
            },
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 4096,
            ..Default::default()
        };
        Ok(self.stream.create_consumer(config).await?)
    }

    /// Buffers the spans of `messages` (stream sequence numbers, payloads) as one batch,
    /// skipping those already appended (redeliveries).
    async fn deliver(
        &self,
        partition: u32,
        claim: Claim,
        straddle: Option<Instant>,
        messages: &[(u64, Bytes, Option<Subject>)],
    ) -> Result<Appended, Restart> {
        let Some(appended) = self.store.partition_appended(partition, claim.epoch) else {
            return Ok(Appended::NotOwned);
        };
        let mut spans = Vec::new();
        let mut last = appended;
        for (seq, payload, _) in messages.iter().filter(|m| m.0 > appended) {
            let stuck = |why: String| {
                tracing::error!(partition, seq, %why, "cannot read a span message; the partition waits at it");
                Restart {
                    why,
                    wait: Duration::from_secs(5),
                }
            };
            spans.extend(codec::decode(payload).map_err(|e| stuck(e.to_string()))?);
            last = *seq;
        }
        if last == appended {
            return Ok(Appended::Again);
        }
        let batch = spans_to_batch(&spans).map_err(|e| Restart {
            why: format!("arrow conversion: {e}"),
            wait: Duration::from_secs(5),
        })?;
        let names = span_names(&spans);
        let appended = self
            .store
            .append_partition(partition, claim.epoch, last, names, batch);
        match (appended, &self.provenance) {
            (Appended::New, Some(p)) if straddle.is_some_and(|t| Instant::now() < t) => {
                p.replay(spans).await
            }
            (Appended::New, Some(p)) => p.feed_waiting(spans).await,
            _ => {}
        }
        Ok(appended)
    }

    /// Acknowledges the newest message whose spans are in a committed segment.
    async fn ack_committed(&self, partition: u32, unacked: &mut Unacked) {
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

/// Messages delivered together at most: one Arrow batch and one hand-over to provenance for
/// many small messages (a request's spans are split over up to all partitions).
const GROUP: usize = 256;

/// The next message of `batch` and those already received after it (up to [`GROUP`]),
/// without waiting for more; `None` when the batch is over or `stop` is cancelled.
async fn next_group<S>(batch: &mut S, stop: &CancellationToken) -> Option<Vec<S::Item>>
where
    S: futures::Stream + Unpin,
{
    let first = tokio::select! {
        _ = stop.cancelled() => None,
        m = batch.next() => m,
    }?;
    let mut group = vec![first];
    while group.len() < GROUP {
        match batch.next().now_or_never() {
            Some(Some(m)) => group.push(m),
            _ => break,
        }
    }
    Some(group)
}
