//! The one configuration struct of `meshtrace serve`, built in layers: defaults, then the TOML
//! file given by `--config`, then `MESHTRACE_*` environment variables, then command-line flags
//! (clap reads the last two together; a flag wins over its variable). It is passed explicitly to
//! whatever needs it; there is no global.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use meshtrace_budget::Objective;
use meshtrace_collector::auth::{read_tokens_file, Auth, TokenConfig};
use meshtrace_collector::receiver::ReceiverConfig;
use meshtrace_provenance::{AssemblerConfig, ClassRule, GraphConfig};
pub use meshtrace_query::QueryConfig;
use serde::{Deserialize, Serialize};

/// Everything `serve` needs; see `meshtrace.example.toml` for every key with its default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: Listen,
    /// `sqlite://PATH` or `postgres://...`; empty means SQLite at `DATA_DIR/catalog.db`.
    pub catalog_url: Option<String>,
    /// Set for a tenant's engine with a PostgreSQL catalog (see `crate::tenants`): the schema
    /// of its tables. Not configurable.
    #[serde(skip)]
    pub catalog_schema: Option<String>,
    pub storage: StorageConfig,
    pub ingest: ReceiverConfig,
    pub wal: WalSettings,
    pub query: QueryConfig,
    pub provenance: ProvenanceSettings,
    pub budgets: BudgetSettings,
    pub auth: AuthSettings,
    pub tls: crate::tls::TlsSettings,
    pub cluster: ClusterSettings,
    pub tenants: TenantSettings,
    pub memory: MemorySettings,
}

/// The process's memory budget (`[memory]`); see `meshtrace_model::memory`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySettings {
    /// Resident memory the whole server may take, in MiB (0: no budget). Past seven eighths
    /// of it ingest answers 429 / `RESOURCE_EXHAUSTED` with a retry delay, new queries 429,
    /// and the server completes open traces early and flushes its buffers until it is back
    /// under (see `meshtrace_model::memory`).
    pub budget_mib: u64,
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings { budget_mib: 1536 }
    }
}

/// Tenants (`[tenants]`): requests name theirs with `X-Scope-OrgID` or a token binds it; each
/// tenant's data lives under `DATA_DIR/tenants/ID` (the default tenant, `single`, in
/// `DATA_DIR` itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    /// Off: `X-Scope-OrgID` and tokens' tenants are ignored, every request is `single`'s.
    pub enabled: bool,
    /// Tenants besides `single` served at most; a request for a new one past it is 429.
    pub max: usize,
    /// A tenant's engine (besides `single`'s) with no request and no proxy watching for this
    /// long is closed (flushed, its memory given back) and opened again at its next request;
    /// 0: never.
    #[serde(with = "humantime_serde")]
    pub idle_close: Duration,
}

impl Default for TenantSettings {
    fn default() -> Self {
        TenantSettings {
            enabled: true,
            max: 16,
            idle_close: Duration::from_secs(15 * 60),
        }
    }
}

/// Cluster mode (`[cluster]`): on when `name` is set. See `docs/scaling.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// The cluster's name: its JetStream stream, subjects and buckets are named after it.
    pub name: Option<String>,
    /// This node's ID, unique in the cluster [default: the host name].
    pub node_id: Option<String>,
    pub nats_url: String,
    /// Where segments go: `s3://BUCKET/PREFIX` (`AWS_*` variables give credentials, region,
    /// endpoint and `AWS_ALLOW_HTTP`) or `file:///PATH`.
    pub object_store: Option<String>,
    /// Partitions of the span stream; fixed when the cluster is created.
    pub partitions: u32,
    /// A node that stops renewing its leases loses its partitions after this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long JetStream keeps span messages (consumed or not).
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Duration,
    /// A request resent within this long (a client's retry) does not store its spans twice:
    /// JetStream's duplicate window of the span stream. Longer than clients retry for.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Ingest answers 503 when JetStream has not acknowledged a request within this.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Requests being published at once; past it, ingest answers 429.
    pub max_in_flight: usize,
    /// Set by the server for a tenant's engine, never read from a file, a flag or the
    /// environment: the tenant whose own stream and buckets these are (see `tenants.rs`).
    #[serde(skip)]
    pub tenant: Option<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            name: None,
            node_id: None,
            nats_url: "nats://127.0.0.1:4222".into(),
            object_store: None,
            partitions: meshtrace_cluster::partition::DEFAULT_PARTITIONS,
            lease_ttl: Duration::from_secs(10),
            stream_max_age: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(600),
            publish_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            tenant: None,
        }
    }
}

/// Tokens and browser rules (`[auth]`); see [`meshtrace_collector::auth`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `[[auth.tokens]]`: name, token, scopes (ingest, read, proxy, admin), services, classes.
    pub tokens: Vec<TokenConfig>,
    /// A TOML file of more `[[tokens]]`, e.g. a mounted secret.
    pub tokens_file: Option<PathBuf>,
    /// `Host` names the query port answers to besides localhost and its bind address
    /// (`*.example.com` for subdomains, `*` for any).
    pub allowed_hosts: Vec<String>,
    /// Origins whose pages may call the query API (CORS); none by default.
    pub cors_origins: Vec<String>,
}

impl AuthSettings {
    /// The configured tokens and those of the tokens file, checked.
    pub fn build(&self) -> anyhow::Result<Auth> {
        let mut tokens = self.tokens.clone();
        if let Some(path) = &self.tokens_file {
            tokens.extend(read_tokens_file(path).map_err(anyhow::Error::msg)?);
        }
        Auth::new(tokens).map_err(anyhow::Error::msg)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub zipkin: SocketAddr,
    pub http: SocketAddr,
    /// Connections, header timeout and HTTP/2 streams of every listener.
    pub limits: crate::listener::ConnectionLimits,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub flush_age: Duration,
    pub flush_rows: usize,
    pub row_group_rows: usize,
    /// Service names the name lists keep (`/api/services`); spans of others are still stored.
    pub max_services: usize,
    /// Operation names kept per service.
    pub max_operations_per_service: usize,
    /// Span rows held in memory at most: beyond it ingest answers 503 while flushes fail
    /// and 429 while they only lag (both with a retry delay).
    pub max_buffered_rows: usize,
    /// Fingerprints of the most recent spans kept to drop copies (client retries, requests
    /// sent twice); 0 turns deduplication off.
    pub dedup_window_spans: usize,
    /// Rows a compacted span segment holds: segments under half of it (a quiet mesh flushes
    /// small ones) are merged in the background, and compacted ones are then appended into
    /// segments of 8 times it; 0: never.
    pub compact_rows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalSettings {
    /// Pending appends before ingest answers 429 / RESOURCE_EXHAUSTED.
    pub queue_depth: usize,
    pub segment_bytes: u64,
    /// `false` skips fsync: only for benchmarks, acknowledged spans may then be lost on a crash.
    pub fsync: bool,
}

/// Trace assembly, derived tables and trace classes (`[provenance]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvenanceSettings {
    /// Build provenance (classes, critical paths, derived tables) as spans arrive.
    pub enabled: bool,
    /// A trace without new spans for this long is complete.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// A trace open this long is completed even if spans keep coming.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Spans arriving this long after completion are merged and the rows replaced.
    #[serde(with = "humantime_serde")]
    pub late_window: Duration,
    pub max_open_traces: usize,
    pub max_spans_per_trace: usize,
    /// Span batches waiting for the assembler; beyond, spans skip provenance (counted).
    pub queue_depth: usize,
    /// Derived rows are flushed to Parquet when this old or this many.
    #[serde(with = "humantime_serde")]
    pub flush_age: Duration,
    pub flush_rows: usize,
    /// Rows a compacted derived segment holds: smaller segments are merged in the background
    /// (0: never).
    pub compact_rows: usize,
    /// (caller, callee, operation) signatures the learned class mapping holds at most.
    pub max_mapping_signatures: usize,
    /// A signature no complete trace has made for this long leaves the class mapping (and a
    /// class no trace had leaves the `max_classes` count).
    #[serde(with = "humantime_serde")]
    pub mapping_max_age: Duration,
    /// Distinct classes traces get besides those the rules name, `default` and `other`:
    /// beyond, a claimed class is folded into `other`.
    pub max_classes: usize,
    /// Trace-class rules, first match wins (rules set with PUT /api/v1/classes come first).
    pub classes: Vec<ClassRule>,
    pub graph: GraphConfig,
}

impl ProvenanceSettings {
    /// The assembler's part of the settings.
    pub fn assembler(&self) -> AssemblerConfig {
        AssemblerConfig {
            idle: self.idle,
            max_age: self.max_age,
            late_window: self.late_window,
            max_open_traces: self.max_open_traces,
            max_spans_per_trace: self.max_spans_per_trace,
        }
    }
}

impl Default for ProvenanceSettings {
    fn default() -> Self {
        let a = AssemblerConfig::default();
        ProvenanceSettings {
            enabled: true,
            idle: a.idle,
            max_age: a.max_age,
            late_window: a.late_window,
            max_open_traces: a.max_open_traces,
            max_spans_per_trace: a.max_spans_per_trace,
            queue_depth: 4096,
            flush_age: Duration::from_secs(30),
            flush_rows: 100_000,
            compact_rows: 500_000,
            max_mapping_signatures: meshtrace_provenance::mapping::DEFAULT_MAX_SIGNATURES,
            mapping_max_age: meshtrace_provenance::mapping::DEFAULT_MAX_AGE,
            max_classes: meshtrace_provenance::class_limit::DEFAULT_MAX_CLASSES,
            classes: Vec::new(),
            graph: GraphConfig::default(),
        }
    }
}

/// Latency budgets and priorities published to proxies (`[budgets]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    /// Sliding window of the latency observations.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The window slides, and budgets and priorities are updated, this often.
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    /// Priority levels (0 = highest).
    pub levels: u8,
    /// Consecutive updates a new level must be proposed in before it applies.
    pub hysteresis_windows: u32,
    /// A hop is at risk when its slack is under this fraction of its budget.
    pub at_risk_slack_fraction: f64,
    /// Request header and baggage key proxies recognise a class by.
    pub class_header: String,
    pub baggage_key: String,
    /// Longest long poll of GET /api/v1/priorities (longer waits are clamped).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Versions kept per service in the priority history.
    pub history_len: usize,
    /// Hop positions (paths from the entry) kept per class in each step; samples at further
    /// new positions count towards their nearest kept ancestor.
    pub max_positions_per_class: usize,
    /// Hop positions visited by fewer traces in the window do not move budgets.
    pub min_hop_traces: u64,
    /// The largest share of a class's samples, at a hop or end to end, that the traces of one
    /// sender (the ingest token of their entry span) may hold in a step; 1 for no bound.
    pub max_sender_share: f64,
    /// Proxies kept in the registry (`GET /api/v1/proxies`); new ones past it are not recorded.
    pub max_proxies: usize,
    /// Proxies not seen for this long leave the registry.
    #[serde(with = "humantime_serde")]
    pub proxy_ttl: Duration,
    /// Objectives per class; those set with PUT /api/v1/classes/{class}/objective win.
    pub objectives: std::collections::BTreeMap<String, Objective>,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        let p = meshtrace_budget::PriorityConfig::default();
        let w = meshtrace_budget::WindowConfig::default();
        BudgetSettings {
            window: w.window,
            step: w.step,
            levels: p.levels,
            hysteresis_windows: p.hysteresis_windows,
            at_risk_slack_fraction: p.at_risk_slack_fraction,
            class_header: p.class_header,
            baggage_key: p.baggage_key,
            max_wait: Duration::from_secs(60),
            history_len: 64,
            max_positions_per_class: w.max_positions,
            min_hop_traces: w.min_hop_traces,
            max_sender_share: w.max_sender_share,
            max_proxies: 10_000,
            proxy_ttl: Duration::from_secs(3600),
            objectives: Default::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            listen: Listen::default(),
            catalog_url: None,
            catalog_schema: None,
            storage: StorageConfig::default(),
            ingest: ReceiverConfig::default(),
            wal: WalSettings::default(),
            query: QueryConfig::default(),
            provenance: ProvenanceSettings::default(),
            budgets: BudgetSettings::default(),
            auth: AuthSettings::default(),
            tls: Default::default(),
            cluster: ClusterSettings::default(),
            tenants: TenantSettings::default(),
            memory: MemorySettings::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        // Ingest on every interface (as Jaeger's and Tempo's); the query port, which can
        // change the mesh, on loopback until configured otherwise.
        let addr = |port| SocketAddr::from(([0, 0, 0, 0], port));
        Listen {
            otlp_grpc: addr(4317),
            otlp_http: addr(4318),
            zipkin: addr(9411),
            http: SocketAddr::from(([127, 0, 0, 1], 16686)),
            limits: Default::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            retention: Duration::from_secs(7 * 24 * 3600),
            flush_age: Duration::from_secs(2),
            flush_rows: 100_000,
            row_group_rows: 16_384,
            max_services: 10_000,
            max_operations_per_service: 2_000,
            max_buffered_rows: 500_000,
            dedup_window_spans: 2_000_000,
            compact_rows: 200_000,
        }
    }
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings {
            queue_depth: 1024,
            segment_bytes: 64 << 20,
            fsync: true,
        }
    }
}

/// A server started in-process on loopback (benchmarks, the experiment): its flags, every
/// port a free one, and the OTLP gRPC and query ports among them.
pub struct Loopback {
    pub args: ServeArgs,
    pub otlp_grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Loopback {
    /// Serving `data_dir` on free loopback ports.
    pub fn new(data_dir: &std::path::Path) -> anyhow::Result<Loopback> {
        let free = || -> anyhow::Result<SocketAddr> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        let (otlp_grpc, http) = (free()?, free()?);
        let args = ServeArgs {
            data_dir: Some(data_dir.to_path_buf()),
            otlp_grpc_listen: Some(otlp_grpc),
            otlp_http_listen: Some(free()?),
            zipkin_listen: Some(free()?),
            http_listen: Some(http),
            ..Default::default()
        };
        Ok(Loopback {
            args,
            otlp_grpc,
            http,
        })
    }
}

/// Flags (and `MESHTRACE_*` variables) that override the file; unset ones leave it alone.
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file (see meshtrace.example.toml)
    #[arg(long, env = "MESHTRACE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the write-ahead log, Parquet segments and SQLite catalog live [default: ./data]
    #[arg(long, env = "MESHTRACE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// OTLP gRPC listen address [default: 0.0.0.0:4317]
    #[arg(long, env = "MESHTRACE_OTLP_GRPC_LISTEN")]
    pub otlp_grpc_listen: Option<SocketAddr>,
    /// OTLP HTTP listen address [default: 0.0.0.0:4318]
    #[arg(long, env = "MESHTRACE_OTLP_HTTP_LISTEN")]
    pub otlp_http_listen: Option<SocketAddr>,
    /// Zipkin v2 listen address [default: 0.0.0.0:9411]
    #[arg(long, env = "MESHTRACE_ZIPKIN_LISTEN")]
    pub zipkin_listen: Option<SocketAddr>,
    /// Query API, metrics and dashboard listen address [default: 127.0.0.1:16686]
    #[arg(long, env = "MESHTRACE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Catalog database: postgres://... or sqlite://... [default: SQLite in the data dir]
    #[arg(long, env = "MESHTRACE_CATALOG_URL")]
    pub catalog_url: Option<String>,
    /// Delete whole segments older than this, e.g. 7d or 12h [default: 7d]
    #[arg(long, env = "MESHTRACE_RETENTION", value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// Flush buffered spans to Parquet at least this often [default: 2s]
    #[arg(long, env = "MESHTRACE_FLUSH_AGE", value_parser = humantime::parse_duration)]
    pub flush_age: Option<Duration>,
    /// Flush once this many spans are buffered [default: 100000]
    #[arg(long, env = "MESHTRACE_FLUSH_ROWS")]
    pub flush_rows: Option<usize>,
    /// Largest request body as sent, in bytes [default: 8 MiB]
    #[arg(long, env = "MESHTRACE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest request body after decompression, in bytes [default: 64 MiB]
    #[arg(long, env = "MESHTRACE_MAX_DECOMPRESSED_BYTES")]
    pub max_decompressed_bytes: Option<usize>,
    /// Attributes kept per span, resource or scope; the rest are dropped and counted [default: 128]
    #[arg(long, env = "MESHTRACE_MAX_ATTRIBUTES")]
    pub max_attributes: Option<usize>,
    /// Longest attribute value in bytes; longer ones are cut and counted [default: 4096]
    #[arg(long, env = "MESHTRACE_MAX_ATTRIBUTE_VALUE_BYTES")]
    pub max_attribute_value_bytes: Option<usize>,
    /// Pending write-ahead-log appends before ingest answers 429 [default: 1024]
    #[arg(long, env = "MESHTRACE_QUEUE_DEPTH")]
    pub queue_depth: Option<usize>,
    /// A trace is complete after this long without new spans, e.g. 5s [default: 5s]
    #[arg(long, env = "MESHTRACE_PROVENANCE_IDLE", value_parser = humantime::parse_duration)]
    pub provenance_idle: Option<Duration>,
    /// Update budgets and priorities this often, e.g. 10s [default: 10s]
    #[arg(long, env = "MESHTRACE_BUDGET_STEP", value_parser = humantime::parse_duration)]
    pub budget_step: Option<Duration>,
    /// Sliding window of budget observations, e.g. 60s [default: 60s]
    #[arg(long, env = "MESHTRACE_BUDGET_WINDOW", value_parser = humantime::parse_duration)]
    pub budget_window: Option<Duration>,
    /// PEM certificate chain served on every port (with --tls-key)
    #[arg(long, env = "MESHTRACE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "MESHTRACE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// TOML file of `[[tokens]]` (name, token, scopes, services, classes) required by every port
    #[arg(long, env = "MESHTRACE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Run as a node of this cluster (NATS JetStream, object store, PostgreSQL catalog)
    #[arg(long, env = "MESHTRACE_CLUSTER")]
    pub cluster: Option<String>,
    /// This node's ID in the cluster [default: the host name]
    #[arg(long, env = "MESHTRACE_NODE_ID")]
    pub node_id: Option<String>,
    /// NATS server of the cluster [default: nats://127.0.0.1:4222]
    #[arg(long, env = "MESHTRACE_NATS_URL")]
    pub nats_url: Option<String>,
    /// Object store of the cluster's segments: s3://BUCKET/PREFIX or file:///PATH
    #[arg(long, env = "MESHTRACE_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// Partitions of a new cluster's span stream [default: 32]
    #[arg(long, env = "MESHTRACE_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Tenants besides the default one served at most [default: 16]
    #[arg(long, env = "MESHTRACE_MAX_TENANTS")]
    pub max_tenants: Option<usize>,
    /// Resident memory the server may take, in MiB; 0 for none [default: 1536]
    #[arg(long, env = "MESHTRACE_MEMORY_BUDGET_MIB")]
    pub memory_budget_mib: Option<u64>,
    /// Skip fsync in the write-ahead log (benchmarks only: loses durability)
    #[arg(long, env = "MESHTRACE_NO_FSYNC")]
    pub no_fsync: bool,
}

impl Config {
    /// Builds the configuration: defaults, then the file, then environment and flags.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        let mut config = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text).map_err(|e| {
                    let why = meshtrace_collector::auth::toml_error(&text, &e);
                    anyhow::anyhow!("parsing config file {}: {why}", path.display())
                })?
            }
            None => Config::default(),
        };
        config.apply(args);
        Ok(config)
    }

    fn apply(&mut self, a: &ServeArgs) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        set(&mut self.data_dir, &a.data_dir);
        set(&mut self.listen.otlp_grpc, &a.otlp_grpc_listen);
        set(&mut self.listen.otlp_http, &a.otlp_http_listen);
        set(&mut self.listen.zipkin, &a.zipkin_listen);
        set(&mut self.listen.http, &a.http_listen);
        if a.catalog_url.is_some() {
            self.catalog_url = a.catalog_url.clone();
        }
        set(&mut self.storage.retention, &a.retention);
        set(&mut self.storage.flush_age, &a.flush_age);
        set(&mut self.storage.flush_rows, &a.flush_rows);
        set(&mut self.ingest.max_body_bytes, &a.max_body_bytes);
        set(
            &mut self.ingest.max_decompressed_bytes,
            &a.max_decompressed_bytes,
        );
        set(&mut self.ingest.limits.max_attributes, &a.max_attributes);
        set(
            &mut self.ingest.limits.max_attribute_value_bytes,
            &a.max_attribute_value_bytes,
        );
        set(&mut self.wal.queue_depth, &a.queue_depth);
        set(&mut self.provenance.idle, &a.provenance_idle);
        set(&mut self.budgets.step, &a.budget_step);
        set(&mut self.budgets.window, &a.budget_window);
        set(&mut self.tenants.max, &a.max_tenants);
        set(&mut self.memory.budget_mib, &a.memory_budget_mib);
        if a.tls_cert.is_some() {
            self.tls.cert = a.tls_cert.clone();
        }
        if a.tls_key.is_some() {
            self.tls.key = a.tls_key.clone();
        }
        if a.auth_tokens_file.is_some() {
            self.auth.tokens_file = a.auth_tokens_file.clone();
        }
        let c = &mut self.cluster;
        for (target, value) in [
            (&mut c.name, &a.cluster),
            (&mut c.node_id, &a.node_id),
            (&mut c.object_store, &a.object_store),
        ] {
            if value.is_some() {
                *target = value.clone();
            }
        }
        set(&mut c.nats_url, &a.nats_url);
        set(&mut c.partitions, &a.partitions);
        if a.no_fsync {
            self.wal.fsync = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_equals_defaults() {
        let text = include_str!("../../meshtrace.example.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            serde_json::to_value(&defaults).unwrap()
        );
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\n[storage]\nflush_rows = 5\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            flush_rows: Some(7),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.storage.flush_rows, 7);
    }
}
