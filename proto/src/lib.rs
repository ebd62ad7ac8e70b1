//! meshtrace's own protobuf API, generated at build time from `proto/` (see `build.rs`):
//! - [`priorities::v1`]: the `Priorities` service through which mesh proxies watch the
//!   priority, timeout budget and recognition rule of each trace class at their service;
//! - [`convert`]: from `meshtrace-budget`'s assignment sets to these messages.

pub mod priorities {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("meshtrace.priorities.v1");
    }
}

pub mod convert;

#[cfg(test)]
mod tests;
