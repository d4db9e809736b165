//! ztunnel.

pub mod metrics;
pub mod readiness;
