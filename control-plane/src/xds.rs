//! Distribution: the delta xDS server (`envoy.service.discovery.v3.AggregatedDiscoveryService/
//! DeltaAggregatedResources`) that feeds ztunnels, over TLS on port 15012.
//!
//! Data flow: the owner publishes each new [`mesh::model::State`] on a `watch` channel →
//! [`debounced_snapshots`] encodes it once per debounce window into a [`Snapshot`] (every
//! resource, versioned by a hash of its bytes) → each stream's [`Subscriber`] diffs the
//! snapshot against what that subscriber was sent and pushes only changed resources and
//! removed names. Resource types and names: see [`mesh::xds`].
//!
//! Pure parts ([`snapshot`], [`subscriber`]) hold the protocol; `server.rs` and `tls.rs` are
//! the I/O around them. Authentication: a client certificate from the mesh CA, or a bearer
//! token checked by the CA service's [`crate::ca_service::Authenticator`] (see [`auth`]).

pub mod auth;
mod server;
pub mod snapshot;
pub mod subscriber;
pub mod tls;

pub use auth::Caller;
pub use server::{debounced_snapshots, NackRecord, XdsServer, DEFAULT_DEBOUNCE};
pub use snapshot::{Snapshot, TYPE_URLS};
pub use subscriber::{Outcome, Subscriber};

/// Istio's xDS port on the control plane.
pub const XDS_PORT: u16 = 15012;

#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
mod tests;
