//! Cluster mode in the server: start-up checks of NATS, the object store and the PostgreSQL
//! catalog; the ingest sink that publishes to JetStream; the loop that holds partition leases
//! and runs a consumer per owned partition ([`consume`]); and the refresh that shows every
//! node the segments its peers commit. The parts without storage live in `meshtrace-cluster`;
//! the design and the failure cases are in `docs/scaling.md`.

pub mod consume;
pub mod observations;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::connection::State;
use meshtrace_cluster::lease::{Change, LeaseConfig, Leases};
use meshtrace_cluster::publish::JetStreamSink;
use meshtrace_cluster::ClusterNames;
use meshtrace_storage::Store;
use object_store::ObjectStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterSettings, Config};
use crate::priorities::observe::Recorder;
use crate::priorities::Priorities;
use crate::provenance::Provenance;
use consume::Consuming;

/// How long start-up waits for each dependency.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A cluster node's connections, checked at start-up.
pub struct Connected {
    pub settings: ClusterSettings,
    pub node: String,
    pub names: ClusterNames,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub object_store: Arc<dyn ObjectStore>,
    /// Provenance's observer: records this node's traces, published a step at a time.
    pub forwarder: Arc<observations::Forwarder>,
}

/// This host's name, the default node ID.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Refuses settings a cluster cannot run with.
fn check_settings(s: &ClusterSettings) -> anyhow::Result<()> {
    if !(1..=4096).contains(&s.partitions) {
        bail!(
            "[cluster] partitions must be 1 to 4096, not {}",
            s.partitions
        );
    }
    if s.lease_ttl < Duration::from_secs(1) {
        bail!(
            "[cluster] lease_ttl must be at least 1s, not {:?}",
            s.lease_ttl
        );
    }
    if s.max_in_flight == 0 {
        bail!("[cluster] max_in_flight must be at least 1");
    }
    if s.duplicate_window.is_zero() || s.duplicate_window > s.stream_max_age {
        bail!("[cluster] duplicate_window must be above zero and at most stream_max_age");
    }
    Ok(())
}

/// Connects to NATS and the object store and checks them (the catalog is checked when the
/// store opens); each failure names the dependency.
pub async fn connect(config: &Config) -> anyhow::Result<Connected> {
    let settings = config.cluster.clone();
    check_settings(&settings)?;
    let name = settings
        .name
        .clone()
        .context("cluster mode needs a cluster name")?;
    let mut names = ClusterNames::new(&name)?;
    if let Some(tenant) = &settings.tenant {
        names = names.for_tenant(tenant);
    }
    let node = settings.node_id.clone().unwrap_or_else(host_name);
    if !meshtrace_cluster::lease::valid_node_id(&node) {
        bail!("node id {node:?}: use up to 253 letters, digits, '-', '_' or '.' (a host name)");
    }
    match config.catalog_url.as_deref() {
        Some(u) if u.starts_with("postgres:") || u.starts_with("postgresql:") => {}
        _ => bail!("cluster mode needs a PostgreSQL catalog: set --catalog-url postgres://..."),
    }
    let url = &settings.nats_url;
    let options = async_nats::ConnectOptions::new().connection_timeout(CONNECT_TIMEOUT);
    let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(url.as_str()))
        .await
        .map_err(|_| {
            anyhow::anyhow!("cannot reach NATS at {url}: no answer within {CONNECT_TIMEOUT:?}")
        })?
        .with_context(|| format!("cannot reach NATS at {url}"))?;
    let js = async_nats::jetstream::new(client.clone());
    let store_url = settings
        .object_store
        .clone()
        .context("cluster mode needs an object store: set --object-store s3://BUCKET/PREFIX")?;
    let object_store = meshtrace_storage::object_store_from_url(&store_url)
        .with_context(|| format!("cannot use the object store {store_url}"))?;
    let probe = object_store.list_with_delimiter(None);
    tokio::time::timeout(CONNECT_TIMEOUT, probe)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot reach the object store {store_url}: no answer within {CONNECT_TIMEOUT:?}"
            )
        })?
        .with_context(|| format!("cannot reach the object store {store_url}"))?;
    names
        .ensure_stream(&js, settings.stream_max_age, settings.duplicate_window)
        .await
        .with_context(|| format!("cannot use JetStream at {url}"))?;
    names.check_partitions(&js, settings.partitions).await?;
    tracing::info!(cluster = %name, node = %node, nats = %url, object_store = %store_url, partitions = settings.partitions, "cluster dependencies reachable");
    let forwarder = observations::Forwarder::new(crate::priorities::window_config(&config.budgets));
    Ok(Connected {
        forwarder,
        settings,
        node,
        names,
        client,
        js,
        object_store,
    })
}

impl Connected {
    /// Publishes the budget steps this node still holds (when it stops, after its last traces
    /// completed).
    pub async fn publish_last_budget_steps(&self) {
        let subject = self.names.observations();
        observations::publish_rest(&self.client, &subject, &self.forwarder).await;
    }

    /// The ingest sink: publishes to the span stream.
    pub fn sink(&self) -> JetStreamSink {
        JetStreamSink::new(
            self.js.clone(),
            self.names.clone(),
            self.settings.partitions,
            self.settings.max_in_flight,
            self.settings.publish_timeout,
            self.settings.duplicate_window,
        )
    }

    /// Starts holding leases and consuming owned partitions, and refreshing the segment lists.
    /// `ready` (the `/readyz` flag) follows the NATS connection from then on; class rules,
    /// objectives and overrides a peer changes in the catalog apply here within a second.
    pub async fn start(&self, shared: Shared) -> anyhow::Result<Node> {
        let Shared {
            store,
            provenance,
            assemble,
            straddle,
            priorities,
            recorder,
            ready,
        } = shared;
        let stream = self
            .js
            .get_stream(self.names.stream())
            .await
            .context("opening the span stream")?;
        let lease_cfg = LeaseConfig {
            node: self.node.clone(),
            partitions: self.settings.partitions,
            ttl: self.settings.lease_ttl,
        };
        let leases = Leases::open(&self.js, &self.names, lease_cfg).await?;
        let consuming = Consuming {
            client: self.client.clone(),
            stream,
            names: self.names.clone(),
            store: store.clone(),
            provenance: assemble.then(|| provenance.clone()),
            straddle,
        };
        let stop = CancellationToken::new();
        let subject = self.names.observations();
        let receive =
            observations::receive(self.client.clone(), subject.clone(), recorder, stop.clone());
        tokio::spawn(receive);
        let publisher = tokio::spawn(observations::publish(
            self.client.clone(),
            subject,
            self.forwarder.clone(),
            stop.clone(),
        ));
        let tick = self.settings.lease_ttl / 4;
        let owner = tokio::spawn(own(
            leases,
            consuming,
            priorities.clone(),
            tick,
            stop.clone(),
        ));
        let watch = Watch {
            store,
            provenance,
            priorities,
            client: self.client.clone(),
            ready,
        };
        let refresh = tokio::spawn(watch.run(stop.clone()));
        Ok(Node {
            stop,
            owner,
            refresh,
            publisher,
        })
    }
}

/// A running cluster node's background work.
pub struct Node {
    stop: CancellationToken,
    owner: JoinHandle<Leases>,
    refresh: JoinHandle<()>,
    /// Publishes each budget step once it is over (the rest goes when the store closes).
    publisher: JoinHandle<()>,
}

impl Node {
    /// Stops consuming (the caller flushes next) and returns the leases, to leave once flushed.
    pub async fn stop(self) -> Option<Leases> {
        self.stop.cancel();
        let _ = self.refresh.await;
        let _ = self.publisher.await;
        self.owner.await.ok()
    }
}

/// The consumers of owned partitions, by partition.
type Running = HashMap<u32, (CancellationToken, JoinHandle<()>)>;

async fn stop_consumer(running: &mut Running, partition: u32) {
    if let Some((token, task)) = running.remove(&partition) {
        token.cancel();
        let _ = task.await;
    }
}

/// Holds leases and runs one consumer per owned partition until `stop`.
async fn own(
    mut leases: Leases,
    consuming: Consuming,
    priorities: Priorities,
    tick: Duration,
    stop: CancellationToken,
) -> Leases {
    let mut running: Running = HashMap::new();
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        let changes = match leases.tick().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "lease round failed; retrying");
                continue;
            }
        };
        let mut surplus = Vec::new();
        for change in changes {
            match change {
                Change::Claimed(p) => claim(p, &mut leases, &consuming, &mut running, &stop).await,
                Change::Lost(p) => {
                    stop_consumer(&mut running, p).await;
                    consuming.store.release_partition(p).await;
                }
                Change::Release(p) => surplus.push(p),
                Change::Elected => {
                    if let Err(e) = priorities.lead().await {
                        // Not leading, yet holding the key: give it up for another node.
                        tracing::error!(error = %e, "cannot take the lead; resigning");
                        priorities.step_down();
                        if let Err(e) = leases.resign().await {
                            tracing::warn!(error = %e, "resigning failed; the leader key expires");
                        }
                    }
                }
                Change::Deposed => priorities.step_down(),
            }
        }
        if !surplus.is_empty() {
            hand_over(&surplus, &mut leases, &consuming.store, &mut running).await;
        }
    }
    for p in running.keys().copied().collect::<Vec<_>>() {
        stop_consumer(&mut running, p).await;
    }
    leases
}

/// Claims `partition` in the catalog (moving its epoch on) and starts its consumer.
async fn claim(
    partition: u32,
    leases: &mut Leases,
    consuming: &Consuming,
    running: &mut Running,
    stop: &CancellationToken,
) {
    // A consumer of an earlier claim of this partition (a lease lost and taken back) must not
    // append alongside the new one.
    stop_consumer(running, partition).await;
    match consuming.store.claim_partition(partition).await {
        Ok(claim) => {
            let token = stop.child_token();
            let task = tokio::spawn(consuming.clone().run(partition, claim, token.clone()));
            running.insert(partition, (token, task));
        }
        Err(e) => {
            tracing::error!(partition, error = %e, "cannot claim the partition in the catalog; giving it back");
            let _ = leases.release(partition).await;
        }
    }
}

/// Gives partitions above this node's share to the others: stops their consumers, flushes
/// once (so the next owners need not consume them again), then releases them. All at once, so
/// that handing many over does not hold up the next lease renewal.
async fn hand_over(partitions: &[u32], leases: &mut Leases, store: &Store, running: &mut Running) {
    for p in partitions {
        stop_consumer(running, *p).await;
    }
    if let Err(e) = store.flush().await {
        tracing::warn!(error = %e, "flush before hand-over failed; the next owners consume again from the checkpoints");
    }
    for &p in partitions {
        store.release_partition(p).await;
        if let Err(e) = leases.release(p).await {
            tracing::warn!(partition = p, error = %e, "releasing the lease failed; it expires");
        }
    }
    tracing::info!(partitions = ?partitions, "partitions handed over");
}

/// What a cluster node shares with the rest of the server.
pub struct Shared {
    pub store: Store,
    pub provenance: Provenance,
    /// Whether consumed spans go to trace assembly (`[provenance] enabled`).
    pub assemble: bool,
    /// How long after a claim a consumed span may belong to a trace the partition's previous
    /// owner saw part of (`[provenance] idle` plus `max_age`; see `consume`).
    pub straddle: Duration,
    pub priorities: Priorities,
    /// Where this node records every node's budget observations.
    pub recorder: Recorder,
    /// The `/readyz` flag.
    pub ready: Arc<AtomicBool>,
}

/// What a node re-reads and checks every second.
struct Watch {
    store: Store,
    provenance: Provenance,
    priorities: Priorities,
    client: async_nats::Client,
    ready: Arc<AtomicBool>,
}

impl Watch {
    /// Re-reads the segment lists (so peers' segments answer queries here), the class rules,
    /// objectives and overrides, and reports ready only while NATS is connected (ingest
    /// answers 503 meanwhile).
    async fn run(self, stop: CancellationToken) {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let connected = self.client.connection_state() == State::Connected;
            let was = self.ready.swap(connected, Ordering::AcqRel);
            if was && !connected {
                tracing::warn!("NATS is not connected: not ready, ingest answers 503");
            }
            if let Err(e) = self.store.refresh().await {
                tracing::warn!(error = %e, "cannot re-read the segment list");
            }
            if let Err(e) = self.provenance.derived().refresh().await {
                tracing::warn!(error = %e, "cannot re-read the derived segment list");
            }
            if let Err(e) = self.provenance.reload_rules().await {
                tracing::warn!(error = %e, "cannot re-read the class rules");
            }
            if let Err(e) = self.priorities.reload().await {
                tracing::warn!(error = %e, "cannot re-read objectives and overrides");
            }
            if let Err(e) = self.priorities.follow().await {
                tracing::warn!(error = %e, "cannot read the leader's priority sets");
            }
        }
    }
}
