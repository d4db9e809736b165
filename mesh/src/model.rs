//! The data-plane model: workloads, services, endpoints and the policies that apply to them.
//!
//! Everything here is plain data plus pure validation and indexing; no I/O. The shapes and
//! serde names follow Istio's ztunnel (`src/state/workload.rs`, `src/state/service.rs`) so the
//! same local config file (see [`local_config`]) and, later, the same xDS resources drive either
//! implementation.
//!
//! Invariants of a [`State`] (checked by [`State::new`], relied on by every reader):
//! - every workload has a non-empty name, namespace and uid (the uid derived as Istio's
//!   `<cluster>//v1/Pod/<ns>/<name>` when the source left it empty), and its identity parts
//!   form a valid SPIFFE identity, so [`Workload::identity`] never falls back;
//! - uids are unique; an IP belongs to at most one workload per network;
//! - every service has a non-empty name, namespace and hostname, no service port 0, and a
//!   (network, VIP) pair belongs to at most one service;
//! - policy and peer-authentication keys (`namespace/name`) are unique.
//!
//! Error paths use the local-config field names (camelCase, e.g. `workloads[1].serviceAccount`)
//! and the index of the object in the vectors given to [`State::new`], which for a config file
//! is its position in the file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::{Identity, IdentityError};

pub mod local_config;
mod state;
mod validate;
mod workload_services;

pub use state::State;
pub use workload_services::{ServicePorts, WorkloadServices};

#[cfg(test)]
mod config_tests;
#[cfg(test)]
mod tests;

/// Trust domain of workloads that do not name one (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account of workloads that do not name one (Istio's default).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Cluster id of workloads that do not name one (Istio's default).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// How traffic reaches a workload: HBONE (the workload is in the mesh) or plain TCP.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Protocol {
    #[serde(rename = "HBONE")]
    Hbone,
    /// Istio's default: a workload is only reached over HBONE when it says so.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
}

/// Whether a workload may receive load-balanced service traffic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// One workload (a pod, or a VM entry), as ztunnel's local config and Istio's workload API
/// describe it. Fields Istio has and ambit does not use yet are accepted and dropped on parse.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "WorkloadDe")]
pub struct Workload {
    /// Unique key; Istio's form is `<cluster>//v1/Pod/<namespace>/<name>`.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Empty means [`DEFAULT_SERVICE_ACCOUNT`].
    pub service_account: String,
    /// Empty means [`DEFAULT_TRUST_DOMAIN`].
    pub trust_domain: String,
    /// Node the workload runs on: a ztunnel serves the workloads of its own node.
    pub node: String,
    /// Network the IPs live in; empty is the default network.
    pub network: String,
    pub cluster_id: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_type: String,
    pub workload_name: String,
    pub workload_ips: Vec<IpAddr>,
    pub protocol: Protocol,
    pub status: HealthStatus,
    /// `namespace/name` keys of the WorkloadSelector-scoped policies that select this workload.
    pub authorization_policies: Vec<String>,
    /// Services this workload backs: `namespace/hostname` → (service port → target port).
    /// This is Istio's `LocalWorkload.services` (an xDS `Workload.services` port list).
    pub services: WorkloadServices,
}

/// What the local config file may carry for a workload: [`Workload`]'s fields plus the legacy
/// singular `workloadIp` of older ztunnel examples, folded into `workload_ips`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct WorkloadDe {
    uid: String,
    name: String,
    namespace: String,
    service_account: String,
    trust_domain: String,
    node: String,
    network: String,
    cluster_id: String,
    canonical_name: String,
    canonical_revision: String,
    workload_type: String,
    workload_name: String,
    workload_ips: Vec<IpAddr>,
    workload_ip: Option<IpAddr>,
    protocol: Protocol,
    status: HealthStatus,
    authorization_policies: Vec<String>,
    services: WorkloadServices,
}

impl Default for WorkloadDe {
    fn default() -> Self {
        let w = Workload::default();
        WorkloadDe {
            uid: w.uid,
            name: w.name,
            namespace: w.namespace,
            service_account: w.service_account,
            trust_domain: w.trust_domain,
            node: w.node,
            network: w.network,
            cluster_id: w.cluster_id,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_type: w.workload_type,
            workload_name: w.workload_name,
            workload_ips: w.workload_ips,
            workload_ip: None,
            protocol: w.protocol,
            status: w.status,
            authorization_policies: w.authorization_policies,
            services: w.services,
        }
    }
}

impl From<WorkloadDe> for Workload {
    fn from(d: WorkloadDe) -> Self {
        let mut workload_ips = d.workload_ips;
        if let Some(ip) = d.workload_ip {
            if !workload_ips.contains(&ip) {
                workload_ips.insert(0, ip);
            }
        }
        Workload {
            uid: d.uid,
            name: d.name,
            namespace: d.namespace,
            service_account: d.service_account,
            trust_domain: d.trust_domain,
            node: d.node,
            network: d.network,
            cluster_id: d.cluster_id,
            canonical_name: d.canonical_name,
            canonical_revision: d.canonical_revision,
            workload_type: d.workload_type,
            workload_name: d.workload_name,
            workload_ips,
            protocol: d.protocol,
            status: d.status,
            authorization_policies: d.authorization_policies,
            services: d.services,
        }
    }
}

impl Workload {
    /// The workload's SPIFFE identity, with Istio's defaults for an empty trust domain or
    /// service account.
    ///
    /// Infallible for every workload of a [`State`] (validated there). A workload built by hand
    /// with invalid parts gets an identity in the reserved `ambit.invalid` trust domain, which no
    /// CA of ours signs and no valid config can name, so it can never be mistaken for (or
    /// authorised as) a real one; use [`Workload::try_identity`] to see the error instead.
    pub fn identity(&self) -> Identity {
        self.try_identity().unwrap_or_else(|_| invalid_identity())
    }

    /// The workload's SPIFFE identity, or why its parts do not form one.
    pub fn try_identity(&self) -> Result<Identity, IdentityError> {
        Identity::new(
            or_default(&self.trust_domain, DEFAULT_TRUST_DOMAIN),
            &self.namespace,
            or_default(&self.service_account, DEFAULT_SERVICE_ACCOUNT),
        )
    }

    /// Fills in what Istio fills in when converting a workload: trust domain, service account
    /// and cluster id defaults, and the uid when empty. Idempotent.
    pub fn apply_defaults(&mut self) {
        for (field, default) in [
            (&mut self.trust_domain, DEFAULT_TRUST_DOMAIN),
            (&mut self.service_account, DEFAULT_SERVICE_ACCOUNT),
            (&mut self.cluster_id, DEFAULT_CLUSTER_ID),
        ] {
            if field.is_empty() {
                *field = default.to_string();
            }
        }
        if self.uid.is_empty() {
            self.uid = format!(
                "{}//v1/Pod/{}/{}",
                self.cluster_id, self.namespace, self.name
            );
        }
    }
}

fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

/// The identity of a workload whose parts are invalid. `.invalid` is reserved (RFC 6761); a
/// config that spells this trust domain out only gives its own workload this identity, so the
/// fallback never lets one workload pass as another.
fn invalid_identity() -> Identity {
    Identity::new("ambit.invalid", "invalid", "invalid")
        .expect("a constant made of allowed characters is a valid identity")
}

/// An IP address qualified by its network, written `network/ip` as Istio does (`/10.0.0.1`
/// is the default network). A bare IP is accepted too and means the default network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

/// Why a string is not a `network/ip` address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not of the form <network>/<ip>")]
pub struct NetworkAddressError(String);

impl FromStr for NetworkAddress {
    type Err = NetworkAddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // IPs contain no '/', so the last '/' separates the network (which, in principle, may).
        let (network, ip) = s.rsplit_once('/').unwrap_or(("", s));
        let address = ip.parse().map_err(|_| NetworkAddressError(s.to_string()))?;
        Ok(NetworkAddress {
            network: network.to_string(),
            address,
        })
    }
}

impl Serialize for NetworkAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetworkAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A service: a hostname, VIPs and ports, load-balanced over the workloads that back it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// The VIPs, all in [`Service::network`].
    pub vips: Vec<IpAddr>,
    /// Service port → target port. Target port 0 means "the endpoint says" (Istio: a named
    /// target port resolved per workload).
    pub ports: BTreeMap<u16, u16>,
    /// Extra identities a client accepts for this service's endpoints (SPIFFE strings).
    pub subject_alt_names: Vec<String>,
    /// The network of the VIPs. Istio writes one per VIP; ambit keeps one per service (a
    /// service whose VIPs span networks is rejected rather than half-understood).
    pub network: String,
}

impl Service {
    /// `namespace/hostname`: the key workloads use to name the services they back.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// The VIPs qualified by their network, as Istio writes them.
    pub fn vip_addresses(&self) -> impl Iterator<Item = NetworkAddress> + '_ {
        self.vips.iter().map(|ip| NetworkAddress {
            network: self.network.clone(),
            address: *ip,
        })
    }
}

/// The serde shape of a service (Istio's field names; `vips` as `network/ip` strings).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceDe {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    vips: Vec<NetworkAddress>,
    #[serde(default)]
    ports: BTreeMap<u16, u16>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
}

impl Serialize for Service {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ServiceDe {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
            vips: self.vip_addresses().collect(),
            ports: self.ports.clone(),
            subject_alt_names: self.subject_alt_names.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Service {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let d = ServiceDe::deserialize(deserializer)?;
        let network = d
            .vips
            .first()
            .map(|a| a.network.clone())
            .unwrap_or_default();
        if let Some(other) = d.vips.iter().find(|a| a.network != network) {
            return Err(serde::de::Error::custom(format!(
                "VIP {other} is in network {:?} but VIP {} is in {network:?}; \
                 ambit keeps one network per service (list the service once per network)",
                other.network, d.vips[0]
            )));
        }
        Ok(Service {
            name: d.name,
            namespace: d.namespace,
            hostname: d.hostname,
            vips: d.vips.into_iter().map(|a| a.address).collect(),
            ports: d.ports,
            subject_alt_names: d.subject_alt_names,
            network,
        })
    }
}

/// One backend of a service port: the workload and the port to connect to on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub target_port: u16,
}

/// A config object that breaks one of the [`State`] invariants. `path` names the field, e.g.
/// `workloads[1].serviceAccount`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ModelError {
    pub path: String,
    pub kind: ModelErrorKind,
}

/// What is wrong at a [`ModelError`]'s path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelErrorKind {
    #[error("must not be empty")]
    Empty,
    /// A trust domain, namespace or service account that cannot be part of a SPIFFE identity.
    #[error("{value:?} {reason}, so it cannot be part of a SPIFFE identity")]
    InvalidIdentityPart { value: String, reason: &'static str },
    #[error("duplicate uid {uid:?} (first used by {first})")]
    DuplicateUid { uid: String, first: String },
    #[error("IP {ip} in network {network:?} is already used by {first}")]
    DuplicateIp {
        ip: IpAddr,
        network: String,
        first: String,
    },
    #[error("port 0 is not a valid port")]
    PortZero,
    #[error("{key:?} is not of the form <namespace>/<hostname>")]
    BadServiceKey { key: String },
    #[error("duplicate service {key:?} (first defined by {first})")]
    DuplicateService { key: String, first: String },
    #[error("VIP {vip} is already used by {first}")]
    DuplicateVip { vip: NetworkAddress, first: String },
    #[error("subject alt name is not a SPIFFE identity: {0}")]
    InvalidSan(#[source] IdentityError),
    #[error("duplicate key {key:?} (first defined by {first})")]
    DuplicateKey { key: String, first: String },
}

impl ModelError {
    fn new(path: impl Into<String>, kind: ModelErrorKind) -> Self {
        ModelError {
            path: path.into(),
            kind,
        }
    }
}

/// Something suspicious that Istio also tolerates, so it does not reject the config.
/// [`State::warnings`] lists them; the caller decides whether to log them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelWarning {
    /// A workload names a policy that does not exist (yet): it simply does not apply, which
    /// matches Istio, where xDS may deliver the policy later.
    #[error("{path}: policy {policy:?} is not defined")]
    MissingPolicy { path: String, policy: String },
    /// A workload backs a service that is not defined: its endpoints are unreachable by VIP.
    #[error("{path}: service {service:?} is not defined")]
    MissingService { path: String, service: String },
}
