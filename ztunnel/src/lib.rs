//! ambit's ztunnel: the per-node L4 agent.
//!
//! # Architecture
//!
//! - One multi-threaded tokio runtime (`ZTUNNEL_WORKER_THREADS`, default 2) runs everything.
//! - Per served workload (a pod in shared mode, or ztunnel's own netns in dedicated mode),
//!   three listeners are bound *inside the workload's network namespace*: 15001 outbound,
//!   15006 inbound plaintext, 15008 inbound HBONE ([`proxy`]).
//! - Shared mode gets pods from the node agent over ZDS ([`inpod`]); the namespace fd is held
//!   open and entered only to create sockets ([`netns`], [`socket`]).
//! - Config comes from a watched local file ([`state`]) or the control plane over delta xDS
//!   ([`xds`]); certificates from a file CA through
//!   the rotating secret manager ([`tlscache`]).
//! - Operational endpoints: admin on 127.0.0.1:15000, metrics on :15020, readiness on :15021.

pub mod accesslog;
pub mod admin;
pub mod alloc;
pub mod app;
pub mod certsource;
pub mod config;
pub mod httpserver;
pub mod inpod;
pub mod logging;
pub mod metrics;
pub mod netns;
pub mod proxy;
pub mod readiness;
pub mod socket;
pub mod state;
pub mod tlscache;
pub mod xds;
