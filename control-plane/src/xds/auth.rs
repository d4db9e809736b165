//! Who may open an xDS stream.
//!
//! A caller proves itself one of two ways:
//! - a TLS client certificate chaining to the mesh root (checked during the handshake, see
//!   `tls.rs`), whose SPIFFE id becomes [`Caller::identity`];
//! - otherwise an `authorization: Bearer <token>` header, checked by the CA service's
//!   [`crate::ca_service::auth::Authenticator`]: one (asynchronous) authenticator for both
//!   services, so a token that gets a ztunnel its certificates also gets it its config —
//!   per-node bootstrap tokens, or Kubernetes service-account tokens (TokenReview).
//!
//! Every workload resource goes to every authenticated caller, as in Istio (a ztunnel needs
//! the whole mesh to route; istiod serves xDS to any authenticated service account):
//! authentication keeps the mesh's layout from strangers, not from workloads of the mesh.
//! A token-authenticated caller is always a node agent (bootstrap token) or a service account
//! (TokenReview answers that name anything else are refused); see docs/control-plane.md.

use mesh::identity::Identity;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The node the caller's token is bound to; empty when it authenticated by certificate
    /// (or with a service-account token not bound to a pod).
    pub node: String,
    /// The caller's SPIFFE identity, when known (`None` for a node bootstrap token).
    pub identity: Option<Identity>,
}
