//! ztunnel.

pub mod metrics;
