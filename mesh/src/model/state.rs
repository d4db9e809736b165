//! [`State`]: an immutable, validated, indexed snapshot of workloads, services and policies.
//!
//! Built whole from a config (or an xDS snapshot) and swapped atomically by the owner (an
//! `Arc<State>` behind whatever cell it likes), so readers never see half an update and
//! lookups need no locks. Every index is derived in [`State::new`] and never changes after.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{json, Value};

use super::validate::validate;
use super::{Endpoint, HealthStatus, ModelError, ModelWarning, Service, Workload};
use crate::authz::{Authorization, PeerAuthentication, Scope};
use workload_index::WorkloadIndex;

mod workload_index;

/// An immutable, indexed snapshot of everything ztunnel knows. Cheap to share (Arc); replaced
/// whole on each config change.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// In the order given, which is the order of the config file.
    workloads: Vec<Arc<Workload>>,
    services: Vec<Arc<Service>>,
    policies: Vec<Authorization>,
    peer_auths: Vec<PeerAuthentication>,
    warnings: Vec<ModelWarning>,

    /// By uid, by name and by IP, as positions in `workloads` (no key copies).
    workload_index: WorkloadIndex,
    services_by_vip: HashMap<IpAddr, BTreeMap<String, Arc<Service>>>,
    services_by_key: HashMap<String, Arc<Service>>,
    /// `namespace/hostname` → workloads backing it, sorted by uid so endpoint order is stable
    /// whatever the config order (round-robin positions survive a reload that only reorders).
    backends: HashMap<String, Vec<Arc<Workload>>>,

    /// Indices into `policies`.
    policy_by_key: HashMap<String, usize>,
    global_policies: Vec<usize>,
    namespace_policies: HashMap<String, Vec<usize>>,
}

impl State {
    /// Applies Istio's defaults to each workload ([`Workload::apply_defaults`]), validates
    /// everything (see the [`model`](super) module header) and builds the indices.
    pub fn new(
        mut workloads: Vec<Workload>,
        services: Vec<Service>,
        policies: Vec<Authorization>,
        peer_auths: Vec<PeerAuthentication>,
    ) -> Result<State, ModelError> {
        workloads.iter_mut().for_each(Workload::apply_defaults);
        // The state is frozen from here on: spare capacity left by whoever built the lists
        // would be held for the state's lifetime, once per workload.
        for w in &mut workloads {
            w.workload_ips.shrink_to_fit();
            w.authorization_policies.shrink_to_fit();
            w.services.shrink_to_fit();
        }
        let warnings = validate(&workloads, &services, &policies, &peer_auths)?;

        let mut state = State {
            policies,
            peer_auths,
            warnings,
            ..State::default()
        };

        state.workloads = workloads.into_iter().map(Arc::new).collect();
        state.workload_index = WorkloadIndex::new(&state.workloads);
        for w in &state.workloads {
            for key in w.services.keys() {
                state
                    .backends
                    .entry(key.clone())
                    .or_default()
                    .push(w.clone());
            }
        }
        for backends in state.backends.values_mut() {
            backends.sort_by(|a, b| a.uid.cmp(&b.uid));
            backends.shrink_to_fit();
        }

        for svc in services {
            let svc = Arc::new(svc);
            state.services_by_key.insert(svc.key(), svc.clone());
            for vip in &svc.vips {
                state
                    .services_by_vip
                    .entry(*vip)
                    .or_default()
                    .insert(svc.network.clone(), svc.clone());
            }
            state.services.push(svc);
        }

        for (i, p) in state.policies.iter().enumerate() {
            state.policy_by_key.insert(p.key(), i);
            match p.scope {
                Scope::Global => state.global_policies.push(i),
                Scope::Namespace => state
                    .namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(i),
                // Applies only where a workload names it.
                Scope::WorkloadSelector => {}
            }
        }
        Ok(state)
    }

    /// The workload with this IP. When several networks use the IP, the default network ("")
    /// wins, then the lexically first network; use [`State::workload_by_addr`] to say which.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        let i = self.workload_index.by_ip(ip)?;
        self.workloads.get(i)
    }

    /// The workload with this IP in this network.
    pub fn workload_by_addr(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        let i = self.workload_index.by_addr(&self.workloads, network, ip)?;
        self.workloads.get(i)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workload_index.by_uid(uid)
    }

    /// The workload of this name; names need not be unique (e.g. across clusters), in which
    /// case the first in config order is returned.
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        let i = self
            .workload_index
            .by_name(&self.workloads, namespace, name)?;
        self.workloads.get(i)
    }

    /// The service with this VIP; network preference as in [`State::workload_by_ip`].
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.services_by_vip.get(&ip)?.values().next()
    }

    /// The service with this VIP in this network.
    pub fn service_by_addr(&self, network: &str, ip: IpAddr) -> Option<&Arc<Service>> {
        self.services_by_vip.get(&ip)?.get(network)
    }

    /// The service with this `namespace/hostname` key.
    pub fn service_by_key(&self, key: &str) -> Option<&Arc<Service>> {
        self.services_by_key.get(key)
    }

    /// Healthy endpoints of `svc` for service port `port`, with the target port per endpoint,
    /// in a stable order (by workload uid; callers round-robin).
    ///
    /// The target port is the workload's own mapping for this service port when it has one,
    /// else the service's target port; an endpoint with neither (service target port 0 and no
    /// workload mapping) is left out, as is every endpoint when `svc` has no such port.
    /// Workloads with no IPs are kept: the caller may reach them through a gateway.
    pub fn endpoints(&self, svc: &Service, port: u16) -> Vec<Endpoint> {
        let Some(&service_target) = svc.ports.get(&port) else {
            return Vec::new();
        };
        let key = svc.key();
        let Some(backends) = self.backends.get(&key) else {
            return Vec::new();
        };
        backends
            .iter()
            .filter(|w| w.status == HealthStatus::Healthy)
            .filter_map(|w| {
                let own = w.services.get(&key).and_then(|m| m.get(&port)).copied();
                let target_port = own.or((service_target != 0).then_some(service_target))?;
                Some(Endpoint {
                    workload: w.clone(),
                    target_port,
                })
            })
            .collect()
    }

    /// Global + Namespace-scope in the workload's namespace + WorkloadSelector policies named in
    /// `workload.authorization_policies`. Each policy at most once; a name that is missing or
    /// belongs to a policy of another scope selects nothing extra.
    pub fn policies_for<'a>(
        &'a self,
        workload: &Workload,
    ) -> impl Iterator<Item = &'a Authorization> {
        let mut picked: BTreeSet<usize> = self.global_policies.iter().copied().collect();
        if let Some(ns) = self.namespace_policies.get(&workload.namespace) {
            picked.extend(ns.iter().copied());
        }
        picked.extend(
            workload
                .authorization_policies
                .iter()
                .filter_map(|key| self.policy_by_key.get(key).copied())
                .filter(|&i| self.policies[i].scope == Scope::WorkloadSelector),
        );
        picked.into_iter().map(move |i| &self.policies[i])
    }

    pub fn peer_authentications(&self) -> &[PeerAuthentication] {
        &self.peer_auths
    }

    /// Workloads in config order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.iter()
    }

    /// Services in config order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    /// Policies in config order.
    pub fn policies(&self) -> impl Iterator<Item = &Authorization> {
        self.policies.iter()
    }

    /// The policy with this `namespace/name` key.
    pub fn policy_by_key(&self, key: &str) -> Option<&Authorization> {
        self.policy_by_key.get(key).map(|&i| &self.policies[i])
    }

    /// Tolerated oddities found while building (e.g. a workload naming a missing policy).
    pub fn warnings(&self) -> &[ModelWarning] {
        &self.warnings
    }

    /// Everything, as JSON for the admin `/config_dump`: Istio's field names, services with the
    /// endpoints they currently resolve to (keyed by workload uid), plus the warnings.
    pub fn to_dump(&self) -> Value {
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|svc| {
                let mut v = to_value(&**svc);
                let endpoints: serde_json::Map<String, Value> = self
                    .backends
                    .get(&svc.key())
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        let ports = w.services.get(&svc.key()).cloned().unwrap_or_default();
                        let ep = json!({
                            "workloadUid": w.uid,
                            "port": ports,
                            "status": w.status,
                        });
                        (w.uid.clone(), ep)
                    })
                    .collect();
                if let Value::Object(map) = &mut v {
                    map.insert("endpoints".to_string(), Value::Object(endpoints));
                }
                v
            })
            .collect();
        json!({
            "workloads": self.workloads.iter().map(|w| to_value(&**w)).collect::<Vec<_>>(),
            "services": services,
            "policies": self.policies.iter().map(to_value).collect::<Vec<_>>(),
            "peerAuthentications": self.peer_auths.iter().map(to_value).collect::<Vec<_>>(),
            "warnings": self.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        })
    }
}

/// Serialising plain data structs with string keys cannot fail; if it ever did, the dump
/// says so in place rather than losing the whole dump.
fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}
