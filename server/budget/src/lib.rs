//! Per-class latency budgets and dynamic priorities for mesh proxies.
//!
//! Pure logic (no I/O, no clocks: time is a parameter):
//! - [`objective`]: a class's latency objective and its validation;
//! - [`observe`]: windowed sketches per class end to end and per (class, hop position), each
//!   sender's traces held to a share of them ([`share`]);
//! - [`budget`]: splitting objectives into per-hop budgets along the aggregated critical path,
//!   with slack, attainment and load;
//! - [`priority`]: per-service priority levels from budgets and slack, with hysteresis,
//!   operator overrides and versioned assignment sets for proxies.

pub mod budget;
pub mod objective;
pub mod observe;
pub mod positions;
pub mod priority;
pub mod share;
pub mod step;

pub use budget::{compute_budgets, ClassBudget, HopBudget};
/// The mergeable latency sketch budgets are computed from (shared with the service graph).
pub use meshtrace_model::sketch::Sketch;
pub use objective::{BudgetError, Objective, ObjectiveSpec};
pub use observe::{ClassStats, HopSample, HopStats, Observations, WindowConfig};
pub use positions::{HopKey, HopPath};
pub use priority::{
    Assignment, AssignmentSet, MappingRow, MatchRule, Prioritizer, PriorityConfig, Signature,
};
