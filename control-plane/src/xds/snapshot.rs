//! [`Snapshot`]: every xDS resource of one [`State`], encoded once and versioned by content.
//!
//! Pure. A resource's version is a hash of its encoded bytes (encoding is deterministic: maps
//! are ordered), so the same pod in two snapshots has the same version and a subscriber that
//! already has it is not sent it again — "a change to one pod sends that one resource".

use std::collections::BTreeMap;

use mesh::model::State;
use mesh::xds::proto::google::Any;
use mesh::xds::{
    self, authorization_to_proto, peer_authentication_to_proto, service_address, workload_address,
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, PEER_AUTHENTICATION_TYPE_URL,
};

/// The resource types this server serves, in push order: addresses first, so a client that
/// applies resources one by one learns a workload before the policies naming it.
pub const TYPE_URLS: [&str; 3] = [
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    PEER_AUTHENTICATION_TYPE_URL,
];

/// One encoded resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Content hash (16 hex digits).
    pub version: String,
    pub resource: Any,
}

/// All resources of one state, by type URL and resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Increases by one per snapshot; sent as `system_version_info` (debugging only).
    pub generation: u64,
    types: BTreeMap<&'static str, BTreeMap<String, Entry>>,
}

impl Snapshot {
    /// Encodes every workload, service, authorization policy and peer authentication of
    /// `state`. Resource names are Istio's: workload uid, service `namespace/hostname`, policy
    /// `namespace/name`.
    pub fn from_state(generation: u64, state: &State) -> Snapshot {
        let mut types: BTreeMap<&'static str, BTreeMap<String, Entry>> =
            TYPE_URLS.iter().map(|t| (*t, BTreeMap::new())).collect();
        let mut put = |type_url: &'static str, name: String, resource: Any| {
            let version = format!("{:016x}", fnv1a(&resource.value));
            let entries = types.entry(type_url).or_default();
            entries.insert(name, Entry { version, resource });
        };
        // Services before workloads: should a workload uid ever equal a service key (both
        // live under the Address type), the workload, which carries the traffic, wins.
        for s in state.services() {
            let any = xds::to_any(ADDRESS_TYPE_URL, &service_address(s));
            put(ADDRESS_TYPE_URL, s.key(), any);
        }
        for w in state.workloads() {
            let any = xds::to_any(ADDRESS_TYPE_URL, &workload_address(w));
            put(ADDRESS_TYPE_URL, w.uid.clone(), any);
        }
        for p in state.policies() {
            let any = xds::to_any(AUTHORIZATION_TYPE_URL, &authorization_to_proto(p));
            put(AUTHORIZATION_TYPE_URL, p.key(), any);
        }
        for p in state.peer_authentications() {
            let proto = peer_authentication_to_proto(p);
            let any = xds::to_any(PEER_AUTHENTICATION_TYPE_URL, &proto);
            put(
                PEER_AUTHENTICATION_TYPE_URL,
                format!("{}/{}", p.namespace, p.name),
                any,
            );
        }
        Snapshot { generation, types }
    }

    /// The resources of `type_url`; `None` for a type this server does not serve.
    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, Entry>> {
        self.types.get(type_url)
    }
}

/// 64-bit FNV-1a: tiny, stable across builds and platforms (unlike std's hasher, which only
/// promises stability within one build), and good enough to tell resource versions apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
