//! The client's copy of the control plane's resources, and what a delta response does to it.
//!
//! Pure (no I/O): the stream task feeds responses in and asks for a [`State`] out.
//!
//! Semantics of one response (as Istio's ztunnel does it):
//! - each resource is decoded, converted and validated on its own; a valid one replaces its
//!   previous version, an invalid one is rejected and the previous version (if any) stays in
//!   force;
//! - `removed_resources` drop their names (unknown names are ignored, as the protocol says);
//! - the response is ACKed when nothing was rejected, else NACKed naming every rejected
//!   resource and why. Applying the valid part of a NACKed response keeps the client as close
//!   to the server as it can be: the server does not resend resources it already sent.
//!
//! Resources are kept per type in name order, so the [`State`] built from them does not depend
//! on arrival order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mesh::authz::{Authorization, PeerAuthentication};
use mesh::model::{ModelError, Service, State, Workload};
use mesh::xds::proto::{
    ambit as proto_ambit, security as proto_security, workload as proto_workload,
};
use mesh::xds::{
    from_any, proto_to_address, proto_to_authorization, proto_to_peer_authentication,
    AddressResource,
};

use super::proto;

/// The resource types ztunnel subscribes to, in subscription order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `istio.workload.Address`: a workload or a service.
    Address,
    /// `istio.security.Authorization`.
    Authorization,
    /// ambit's own `ambit.security.PeerAuthentication` (Istio folds these into Authorizations).
    PeerAuthentication,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Address, Kind::Authorization, Kind::PeerAuthentication];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Address => proto::ADDRESS_TYPE_URL,
            Kind::Authorization => proto::AUTHORIZATION_TYPE_URL,
            Kind::PeerAuthentication => proto::PEER_AUTHENTICATION_TYPE_URL,
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_url())
    }
}

/// One stored resource: its opaque version (sent back on reconnect) and its converted value.
#[derive(Clone, Debug)]
struct Versioned<T> {
    version: String,
    value: T,
}

/// An `istio.workload.Address` after conversion.
#[derive(Clone, Debug)]
enum Address {
    Workload(Workload),
    Service(Service),
}

/// A resource the client could not use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

/// What applying one response did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub kind: Kind,
    /// Whether any stored resource was added, replaced or removed.
    pub changed: bool,
    pub rejected: Vec<Rejected>,
}

impl Applied {
    /// The NACK message (`error_detail.message`), or `None` to ACK.
    pub fn nack_message(&self) -> Option<String> {
        if self.rejected.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.name, r.reason))
            .collect();
        Some(format!("rejected {} {}", self.kind, parts.join("; ")))
    }
}

/// Why a whole response could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("unsupported resource type {0:?}")]
    UnknownType(String),
}

/// The resources received so far, per type.
#[derive(Clone, Debug, Default)]
pub struct ResourceCache {
    addresses: BTreeMap<String, Versioned<Address>>,
    authorizations: BTreeMap<String, Versioned<Authorization>>,
    peer_auths: BTreeMap<String, Versioned<PeerAuthentication>>,
    /// Types for which at least one response has been applied (ever: a reconnect does not
    /// forget what the client already had).
    received: BTreeSet<Kind>,
}

impl ResourceCache {
    /// Applies one delta response (see the module header).
    pub fn apply(
        &mut self,
        resp: &proto::DeltaDiscoveryResponse,
    ) -> Result<Applied, ResponseError> {
        let kind = Kind::from_type_url(&resp.type_url)
            .ok_or_else(|| ResponseError::UnknownType(resp.type_url.clone()))?;
        let mut applied = Applied {
            kind,
            changed: false,
            rejected: Vec::new(),
        };
        for res in &resp.resources {
            match self.apply_one(kind, res) {
                Ok(changed) => applied.changed |= changed,
                Err(reason) => applied.rejected.push(Rejected {
                    name: res.name.clone(),
                    reason,
                }),
            }
        }
        for name in &resp.removed_resources {
            applied.changed |= match kind {
                Kind::Address => self.addresses.remove(name).is_some(),
                Kind::Authorization => self.authorizations.remove(name).is_some(),
                Kind::PeerAuthentication => self.peer_auths.remove(name).is_some(),
            };
        }
        self.received.insert(kind);
        Ok(applied)
    }

    /// Decodes and stores one resource; `Ok(true)` when the stored set changed.
    fn apply_one(&mut self, kind: Kind, res: &proto::Resource) -> Result<bool, String> {
        if res.name.is_empty() {
            return Err("resource has no name".into());
        }
        let any = res
            .resource
            .as_ref()
            .ok_or_else(|| "resource has no body".to_string())?;
        let version = res.version.clone();
        let url = kind.type_url();
        match kind {
            Kind::Address => {
                let msg: proto_workload::Address = from_any(url, any).map_err(|e| e.to_string())?;
                let value = match proto_to_address(&msg).map_err(|e| e.to_string())? {
                    AddressResource::Workload(w) => Address::Workload(w),
                    AddressResource::Service(s) => Address::Service(s),
                };
                let (workloads, services) = match &value {
                    Address::Workload(w) => (vec![w.clone()], vec![]),
                    Address::Service(s) => (vec![], vec![s.clone()]),
                };
                valid_alone(workloads, services, vec![], vec![])?;
                Ok(store(&mut self.addresses, &res.name, version, value))
            }
            Kind::Authorization => {
                let msg: proto_security::Authorization =
                    from_any(url, any).map_err(|e| e.to_string())?;
                let value = proto_to_authorization(&msg).map_err(|e| e.to_string())?;
                valid_alone(vec![], vec![], vec![value.clone()], vec![])?;
                Ok(store(&mut self.authorizations, &res.name, version, value))
            }
            Kind::PeerAuthentication => {
                let msg: proto_ambit::PeerAuthentication =
                    from_any(url, any).map_err(|e| e.to_string())?;
                let value = proto_to_peer_authentication(&msg).map_err(|e| e.to_string())?;
                valid_alone(vec![], vec![], vec![], vec![value.clone()])?;
                Ok(store(&mut self.peer_auths, &res.name, version, value))
            }
        }
    }

    /// Whether every type has had at least one response: the first complete push.
    pub fn complete(&self) -> bool {
        Kind::ALL.iter().all(|k| self.received.contains(k))
    }

    /// name → version of what is stored for `kind`: a reconnecting stream's
    /// `initial_resource_versions`, so the server sends only what changed meanwhile.
    pub fn versions(&self, kind: Kind) -> BTreeMap<String, String> {
        fn of<T>(m: &BTreeMap<String, Versioned<T>>) -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| (k.clone(), v.version.clone()))
                .collect()
        }
        match kind {
            Kind::Address => of(&self.addresses),
            Kind::Authorization => of(&self.authorizations),
            Kind::PeerAuthentication => of(&self.peer_auths),
        }
    }

    /// A validated snapshot of everything stored.
    pub fn build_state(&self) -> Result<State, ModelError> {
        let mut workloads = Vec::new();
        let mut services = Vec::new();
        for entry in self.addresses.values() {
            match &entry.value {
                Address::Workload(w) => workloads.push(w.clone()),
                Address::Service(s) => services.push(s.clone()),
            }
        }
        let policies = self
            .authorizations
            .values()
            .map(|v| v.value.clone())
            .collect();
        let peer_auths = self.peer_auths.values().map(|v| v.value.clone()).collect();
        State::new(workloads, services, policies, peer_auths)
    }
}

/// Checks the invariants one resource must meet on its own (names, identity parts, ports),
/// so a single bad resource is rejected by name instead of making every later snapshot
/// invalid. Conflicts between resources (a shared IP) only show in the whole snapshot.
fn valid_alone(
    workloads: Vec<Workload>,
    services: Vec<Service>,
    policies: Vec<Authorization>,
    peer_auths: Vec<PeerAuthentication>,
) -> Result<(), String> {
    State::new(workloads, services, policies, peer_auths)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Stores `value` under `name`; whether anything changed (a resend of the same version is
/// not a change).
fn store<T>(
    map: &mut BTreeMap<String, Versioned<T>>,
    name: &str,
    version: String,
    value: T,
) -> bool {
    if let Some(old) = map.get(name) {
        if !version.is_empty() && old.version == version {
            return false;
        }
    }
    map.insert(name.to_string(), Versioned { version, value });
    true
}
