//! meshtrace-mesh: a simulated service mesh on loopback for closing the loop between
//! meshtrace's priorities and the proxies that apply them. Scenarios (TOML) describe services,
//! their slots, service times and calls, and request classes with objectives and workloads;
//! every service runs behind a sidecar that queues by priority, propagates W3C trace context
//! and baggage, and exports Envoy-style spans to meshtrace over OTLP gRPC. The experiment
//! runs the same load with priorities off and on and reports latency per class.

pub mod chart;
pub mod context;
pub mod experiment;
pub mod export;
pub mod mesh;
pub mod priorities;
pub mod proxy;
pub mod queue;
pub mod reaction;
pub mod scenario;
pub mod service;
pub mod workload;

pub use experiment::{run_experiment, run_step, Endpoints, Results, RunOutcome};
pub use mesh::{Mesh, MeshConfig};
pub use priorities::PriorityMode;
pub use scenario::Scenario;
