//! The ingest sink of cluster mode: splits each request's spans by partition, publishes them
//! to JetStream and acknowledges the client only once JetStream acknowledged every message.
//!
//! JetStream stores each message durably before its acknowledgement (it replaces the local
//! write-ahead log). If any message fails or times out, the whole request fails with a
//! retryable 503 / `UNAVAILABLE`; the parts that did reach the stream are not stored twice
//! when the client retries, because each message's ID is derived from its bytes
//! ([`crate::codec::message_id`]) and JetStream drops a repeated ID within its duplicate window.

use std::sync::Arc;
use std::time::Duration;

use std::future::IntoFuture;

use async_nats::jetstream::{self, message::PublishMessage};
use futures::future::{try_join_all, BoxFuture};
use meshtrace_collector::{Error, SpanSink};
use meshtrace_model::Span;
use tokio::sync::Semaphore;

use crate::codec;
use crate::names::ClusterNames;
use crate::partition::partition_of;

/// Publishes spans to the cluster's span stream.
#[derive(Clone)]
pub struct JetStreamSink {
    js: jetstream::Context,
    names: ClusterNames,
    partitions: u32,
    /// Requests being published; past it, ingest answers 429.
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    /// The stream's duplicate window, for error messages.
    dedup: Duration,
}

/// What a client is told to wait before retrying a failed publish.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl JetStreamSink {
    pub fn new(
        js: jetstream::Context,
        names: ClusterNames,
        partitions: u32,
        max_in_flight: usize,
        timeout: Duration,
        dedup: Duration,
    ) -> Self {
        JetStreamSink {
            js,
            names,
            partitions,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
            dedup,
        }
    }

    /// The spans of one request grouped by partition, in order of first appearance.
    fn split(&self, spans: Vec<Span>) -> Vec<(u32, Vec<Span>)> {
        let mut parts: Vec<(u32, Vec<Span>)> = Vec::new();
        for span in spans {
            let p = partition_of(&span.trace_id, self.partitions);
            match parts.iter_mut().find(|(q, _)| *q == p) {
                Some((_, v)) => v.push(span),
                None => parts.push((p, vec![span])),
            }
        }
        parts
    }

    async fn publish(&self, spans: Vec<Span>) -> Result<(), Error> {
        let unavailable = |reason: String| Error::Unavailable {
            reason,
            retry_after: RETRY_AFTER,
        };
        let mut acks = Vec::new();
        for (partition, part) in self.split(spans) {
            let messages =
                codec::encode(&part).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            for payload in messages {
                let id = codec::message_id(partition, &payload);
                let message = PublishMessage::build().payload(payload).message_id(id);
                let ack = self
                    .js
                    .send_publish(self.names.subject(partition), message)
                    .await
                    .map_err(|e| unavailable(format!("JetStream publish: {e}")))?;
                acks.push(ack.into_future());
            }
        }
        match tokio::time::timeout(self.timeout, try_join_all(acks)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(format!(
                "JetStream did not acknowledge the spans ({e}); some may be stored: resending \
                 the same request within {:?} does not store them twice",
                self.dedup
            ))),
            Err(_) => Err(unavailable(format!(
                "JetStream did not acknowledge the spans within {:?}; some may be stored: \
                 resending the same request within {:?} does not store them twice",
                self.timeout, self.dedup
            ))),
        }
    }
}

impl SpanSink for JetStreamSink {
    fn accept(&self, spans: Vec<Span>) -> BoxFuture<'static, Result<(), Error>> {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return Box::pin(async {
                Err(Error::Overloaded {
                    retry_after: RETRY_AFTER,
                })
            });
        };
        let this = self.clone();
        // Its own task: a client that disconnects must not leave a request half published.
        let task = tokio::spawn(async move {
            let _permit = permit;
            this.publish(spans).await
        });
        Box::pin(async move {
            task.await
                .map_err(|e| Error::Wal(format!("publish task failed: {e}")))?
        })
    }
}
