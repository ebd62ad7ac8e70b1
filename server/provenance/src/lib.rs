//! Provenance of traces in a service mesh: assembling spans into traces, classifying each
//! trace, and deriving what it shows — the call tree, the critical path, caller→callee edges,
//! the service graph and which call signatures carry which classes.
//!
//! Pure logic over [`meshtrace_model::Span`]: no I/O, no clocks (time is a parameter).
//! - [`tree`]: one trace's spans as a tree (Zipkin shared spans, orphans, roots, clock skew);
//! - [`critical_path`]: Jaeger UI's critical path and self times;
//! - [`classes`]: trace classes from the entry span;
//! - [`class_limit`]: a bound on the distinct classes traces get;
//! - [`graph`]: calls and the OpenTelemetry-style service graph;
//! - [`derive`]: the `traces`, `edges` and `critical_path` rows of one trace;
//! - [`assembler`]: grouping arriving spans into complete traces, with bounded memory;
//! - [`mapping`]: learning (caller, callee, operation) → class shares;
//! - [`span`]: the span as provenance holds it ([`SlimSpan`], shared [`Name`]s);
//! - [`slim`]: turning received spans into slim ones, keeping only what is read.

pub mod assembler;
pub mod class_limit;
pub mod classes;
pub mod critical_path;
pub mod derive;
pub mod graph;
pub mod mapping;
pub mod slim;
pub mod span;
pub mod tree;

pub use assembler::{
    unique_spans, Assembler, AssemblerConfig, AssemblerStats, CompletedTrace, CompletionReason,
};
pub use class_limit::{ClassLimit, OTHER_CLASS};
pub use classes::{classify, ClassRule, DEFAULT_CLASS};
pub use critical_path::{critical_path, self_times, Section};
pub use derive::{derive, derive_tree, CriticalPathRow, Derived, EdgeRow, TraceRow};
pub use graph::{
    ConnectionType, EdgeCall, EdgeKey, EdgeStats, GraphConfig, ServiceGraph, VirtualSide,
};
pub use mapping::{ClassMapping, Learned, MappingEntry};
pub use slim::Slimmer;
pub use span::{Name, SlimSpan};
pub use tree::{build_tree, build_tree_shared, build_tree_slim, TraceTree, TreeCounters};
