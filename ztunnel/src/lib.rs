//! ztunnel.

pub mod accesslog;
pub mod admin;
pub mod httpserver;
pub mod logging;
pub mod metrics;
pub mod readiness;
