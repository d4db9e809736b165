//! PeerAuthentication: which mTLS mode a destination requires (ambit local-config extension; the
//! control plane translates Istio's PeerAuthentication into it).
//!
//! Policies here are namespace-wide (no workload selector): the one in the workload's namespace
//! and the one in the root namespace (mesh-wide). Precedence, as in Istio: the namespace policy's
//! port-level mode > its mode > the mesh-wide mode > the caller's default. An unset mode inherits.
//! When several policies sit in one namespace, Istio takes the oldest; ambit has no creation
//! time, so the smallest name wins, which keeps the choice independent of delivery order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{wire, ConnInfo, Denied};

/// An mTLS mode. Serde names are Istio's (`STRICT`, `PERMISSIVE`, `DISABLE`); Istio's `UNSET`
/// is `None` where a mode is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only connections with an authenticated peer identity are accepted.
    Strict,
    /// mTLS and plaintext are both accepted.
    Permissive,
    /// Treated like PERMISSIVE: the destination ztunnel never refuses HBONE, so there is nothing
    /// further to disable at L4.
    Disable,
}

/// A namespace-wide mTLS policy (the root namespace's applies mesh-wide).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    /// `None` (absent or `UNSET`) inherits from the mesh-wide policy or the default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::optional_mtls_mode"
    )]
    pub mode: Option<MtlsMode>,
    /// Per-destination-port overrides of `mode`. `UNSET` entries are dropped (they inherit).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "wire::port_level_mtls"
    )]
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
}

/// Istio precedence: port-level of the namespace policy > namespace policy > mesh-wide (root
/// namespace) > `default`.
pub fn effective_mtls_mode(
    default: MtlsMode,
    root_namespace: &str,
    peer_auths: &[PeerAuthentication],
    workload_namespace: &str,
    port: u16,
) -> MtlsMode {
    let in_namespace = |ns: &str| {
        peer_auths
            .iter()
            .filter(|pa| pa.namespace == ns)
            .min_by(|a, b| a.name.cmp(&b.name))
    };
    let namespace_policy = in_namespace(workload_namespace);
    if let Some(pa) = namespace_policy {
        if let Some(mode) = pa.port_level_mtls.get(&port) {
            return *mode;
        }
        if let Some(mode) = pa.mode {
            return mode;
        }
    }
    in_namespace(root_namespace)
        .and_then(|pa| pa.mode)
        .unwrap_or(default)
}

/// STRICT denies connections without an authenticated principal.
pub fn check_mtls(mode: MtlsMode, conn: &ConnInfo) -> Result<(), Denied> {
    match mode {
        MtlsMode::Strict if conn.src_identity.is_none() => Err(Denied::MtlsRequired),
        _ => Ok(()),
    }
}
