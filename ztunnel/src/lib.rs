//! ztunnel.

pub mod accesslog;
pub mod logging;
pub mod metrics;
pub mod readiness;
