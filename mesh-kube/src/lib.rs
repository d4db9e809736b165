//! Kubernetes API plumbing shared by the control plane's `--kube` source and the CNI agent's:
//! building the client ([`client`]) and running a watch that survives API-server restarts,
//! expired resourceVersions and network cuts ([`watch_resource`]).
//!
//! Both components watch with kube-runtime's `watcher` and the same recovery rules; keeping
//! them here means a fix to one (a 410 case, a back-off bound) reaches both.

mod backoff;
mod client;
mod watch;

pub use backoff::ExponentialBackoff;
pub use client::{client, ClientError};
pub use watch::{gone_at_watch_start, watch_resource, WatchSettings};
