//! Who may open an xDS stream.
//!
//! A caller proves itself one of two ways:
//! - a TLS client certificate chaining to the mesh root (checked during the handshake, see
//!   `tls.rs`), whose SPIFFE id becomes [`Caller::identity`];
//! - otherwise an `authorization: Bearer <token>` header, checked by an [`Authenticator`] —
//!   the same one the CA service uses (Kubernetes TokenReview, or per-node bootstrap tokens).
//!
//! Every workload resource goes to every authenticated caller, as in Istio (a ztunnel needs
//! the whole mesh to route); authentication keeps the mesh's layout from strangers.

use mesh::identity::Identity;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The node the caller's token is bound to; empty when it authenticated by certificate.
    pub node: String,
    /// The caller's SPIFFE identity, when known.
    pub identity: Option<Identity>,
}

/// Checks a request's metadata (its bearer token). The CA service's authenticator
/// implements this; tests use a fixed token table.
pub trait Authenticator: Send + Sync + 'static {
    /// `Err` with `Status::unauthenticated` (missing or bad token) or `permission_denied`.
    // `Status` is what tonic handlers return; boxing it here would only be unboxed there.
    #[allow(clippy::result_large_err)]
    fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status>;
}

/// The bearer token of `metadata`, if it has a well-formed one.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}
