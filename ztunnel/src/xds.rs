//! ztunnel's xDS client: configuration from the control plane over delta ADS (`XDS_ADDRESS`).
//!
//! - [`cache`]: the pure resource store and what one delta response does to it.
//! - [`client`]: the stream task (connect over TLS, subscribe, ACK/NACK, reconnect with
//!   backoff, resync with `initial_resource_versions`).
//! - [`tls`]: the TLS client config that trusts only the mesh root and checks the server.
//!
//! Output goes through [`StatePublisher`] into the same watch channel the local-file source
//! uses, so proxies, the policy re-check and the config dump see xDS config exactly as they
//! see a file. `LOCAL_XDS_PATH` and `XDS_ADDRESS` are exclusive (see `config.rs`): one process
//! has one source of truth.

use std::net::IpAddr;

use mesh::cert::parse_pem_certs;
use mesh::identity::Identity;
use mesh::model::State;
use rustls_pki_types::ServerName;

use crate::config::Config;
use crate::readiness::BlockReady;
use crate::state::{StateHandle, StatePublisher};

pub mod cache;
pub mod client;
mod proto;
pub mod tls;

#[cfg(test)]
mod tests;

pub use client::{Backoff, XdsClient, XdsClientConfig};
pub use tls::ServerIdentity;

/// Who this ztunnel is, as it introduces itself to the control plane (Istio's node id and
/// metadata, from the downward-API environment Istio's DaemonSet sets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// `POD_NAME`.
    pub pod_name: String,
    /// `POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `INSTANCE_IP`.
    pub instance_ip: IpAddr,
    /// `NODE_NAME`: the Kubernetes node, whose workloads this ztunnel serves.
    pub node_name: String,
}

impl NodeInfo {
    /// Istio's sidecar-style node id: `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        format!(
            "ztunnel~{}~{}.{}~{}.svc.cluster.local",
            self.instance_ip, self.pod_name, self.pod_namespace, self.pod_namespace
        )
    }

    /// The metadata keys Istio's ztunnel sends, as strings.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NAME", self.pod_name.clone()),
            ("NAMESPACE", self.pod_namespace.clone()),
            ("INSTANCE_IPS", self.instance_ip.to_string()),
            ("NODE_NAME", self.node_name.clone()),
        ]
    }

    fn to_proto(&self) -> proto::Node {
        proto::node(self.node_id(), self.metadata())
    }
}

/// A parsed `XDS_ADDRESS`: `host:port`, optionally written `https://host:port` as Istio does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsAddress {
    pub host: String,
    pub port: u16,
}

impl XdsAddress {
    /// `host:port` for connecting (IPv6 hosts bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `XDS_ADDRESS`. Plaintext (`http://`) is refused: config carries policy, and a
/// network attacker who could feed it could turn authorization off.
pub fn parse_xds_address(s: &str) -> Result<XdsAddress, String> {
    let rest = if let Some(rest) = s.strip_prefix("https://") {
        rest
    } else if s.contains("://") {
        return Err(format!("{s:?}: only https:// (TLS) is supported"));
    } else {
        s
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
        Some(_) => return Err(format!("{s:?}: not an IPv6 address in brackets")),
        // Unbracketed, `fd00::1:15012` could split anywhere.
        None if host.contains(':') => {
            return Err(format!("{s:?}: IPv6 hosts must be bracketed, [addr]:port"))
        }
        None => host,
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("{s:?} has no valid host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?} has no valid port"))?;
    Ok(XdsAddress {
        host: host.to_string(),
        port,
    })
}

/// Why the xDS client could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum XdsSetupError {
    #[error("{0} is required with XDS_ADDRESS")]
    Missing(&'static str),
    #[error("cannot read the xDS root certificate {path}: {reason}")]
    Root { path: String, reason: String },
    #[error("invalid XDS_ADDRESS: {0}")]
    Address(String),
    #[error("invalid AMBIT_XDS_SERVER_IDENTITY: {0}")]
    ServerIdentity(String),
    #[error(transparent)]
    Tls(#[from] tls::XdsTlsError),
}

/// Builds the client from a validated [`Config`] (which has checked that XDS_ADDRESS and the
/// node settings are present). Returns the state handle (empty until the first complete
/// push) and the client, whose `run()` the caller spawns.
pub fn from_config(
    cfg: &Config,
    ready: BlockReady,
    on_result: impl Fn(bool) + Send + Sync + 'static,
) -> Result<(StateHandle, XdsClient), XdsSetupError> {
    let args = &cfg.args;
    let address = parse_xds_address(
        args.xds_address
            .as_deref()
            .ok_or(XdsSetupError::Missing("XDS_ADDRESS"))?,
    )
    .map_err(XdsSetupError::Address)?;
    let root_path = match (&args.xds_root_ca, &args.ca_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(dir)) => dir.join("root-cert.pem"),
        (None, None) => return Err(XdsSetupError::Missing("XDS_ROOT_CA (or AMBIT_CA_DIR)")),
    };
    let root_err = |reason: String| XdsSetupError::Root {
        path: root_path.display().to_string(),
        reason,
    };
    let pem = std::fs::read_to_string(&root_path).map_err(|e| root_err(e.to_string()))?;
    let roots =
        parse_pem_certs(&pem, "xDS root certificate").map_err(|e| root_err(e.to_string()))?;
    let identity = match &args.xds_server_identity {
        Some(s) => ServerIdentity::Exact(
            Identity::parse(s).map_err(|e| XdsSetupError::ServerIdentity(e.to_string()))?,
        ),
        None => ServerIdentity::Namespace {
            trust_domain: args.trust_domain.clone(),
            namespace: args.root_namespace.clone(),
        },
    };
    let server_name = ServerName::try_from(address.host.clone())
        .map_err(|e| XdsSetupError::Address(e.to_string()))?;
    let node = cfg.xds_node.clone().ok_or(XdsSetupError::Missing(
        "POD_NAME, POD_NAMESPACE, INSTANCE_IP, NODE_NAME",
    ))?;
    let client_cfg = XdsClientConfig {
        address: address.authority(),
        server_name,
        tls: tls::client_config(&roots, identity)?,
        token_file: args.xds_token_file.clone(),
        node,
        backoff: Backoff::default(),
    };
    let (publisher, handle) = StatePublisher::new(State::default());
    Ok((
        handle,
        XdsClient::new(client_cfg, publisher, Some(ready), on_result),
    ))
}
