//! One delta-ADS subscriber's protocol state: what it subscribed to, what it has, which
//! responses are awaiting its ACK. Pure: requests and snapshots in, responses and
//! [`Outcome`]s (for the caller to log) out.
//!
//! Rules (envoy's delta xDS, as Istio's ztunnel uses it):
//! - The first request of a type with no names, or any request naming `*`, subscribes to every
//!   resource of the type (wildcard); other names subscribe to those resources only.
//! - `initial_resource_versions` (a reconnecting client) says what the client already has:
//!   resources at those versions are not resent, those gone since are reported removed.
//! - A request that changes a subscription is answered, even with an empty response (the
//!   client learns its initial state is complete); explicitly subscribed names are sent even
//!   if the client seems to have them, and reported removed if they do not exist.
//! - After that, a new snapshot yields only the resources whose version differs from what the
//!   subscriber was sent, plus `removed_resources` for names it had that are gone.
//! - A NACK (response_nonce + error_detail) is reported with the resources of that response.
//!   Those versions stay recorded as sent, so they are not pushed again until they change:
//!   re-sending config the client just rejected would only be rejected again, forever.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use mesh::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};

use super::snapshot::Snapshot;

/// How many unacknowledged responses per type are remembered for NACK reports. A client that
/// never ACKs must not make the server's memory grow without bound.
const MAX_INFLIGHT: usize = 64;

/// What a request meant, for the caller to log and act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client accepted the response with this nonce.
    Ack { type_url: String, nonce: String },
    /// The client rejected the response with this nonce.
    Nack {
        type_url: String,
        nonce: String,
        reason: String,
        /// Names in the rejected response (empty if it is too old to be remembered).
        resources: Vec<String>,
    },
    /// A type this server does not serve; the request is otherwise ignored.
    UnknownType { type_url: String },
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → version the client has or was last sent (NACKed versions included).
    sent: BTreeMap<String, String>,
    /// Explicitly (re)subscribed since the last response: answered even if unchanged.
    forced: BTreeSet<String>,
    /// The subscription changed: the next response is sent even if empty.
    must_answer: bool,
    /// Unacknowledged nonces and the names each response carried.
    inflight: VecDeque<(String, Vec<String>)>,
}

/// One stream's subscriptions.
#[derive(Debug, Default)]
pub struct Subscriber {
    /// From the first request that carried a node; for logs.
    pub node_id: String,
    types: BTreeMap<String, TypeState>,
}

impl Subscriber {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one request. Returns what it acknowledged or rejected, if anything; afterwards
    /// [`Subscriber::response`] for `req.type_url` yields whatever the request calls for.
    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        served: impl Fn(&str) -> bool,
    ) -> Option<Outcome> {
        if self.node_id.is_empty() {
            if let Some(node) = &req.node {
                self.node_id = node.id.clone();
            }
        }
        if !served(&req.type_url) {
            return Some(Outcome::UnknownType {
                type_url: req.type_url.clone(),
            });
        }
        let first = !self.types.contains_key(&req.type_url);
        let st = self.types.entry(req.type_url.clone()).or_default();

        let outcome = (!req.response_nonce.is_empty()).then(|| {
            let pos = st
                .inflight
                .iter()
                .position(|(n, _)| *n == req.response_nonce);
            let resources = pos
                .and_then(|p| st.inflight.remove(p))
                .map(|(_, names)| names)
                .unwrap_or_default();
            match &req.error_detail {
                Some(status) => Outcome::Nack {
                    type_url: req.type_url.clone(),
                    nonce: req.response_nonce.clone(),
                    reason: status.message.clone(),
                    resources,
                },
                None => Outcome::Ack {
                    type_url: req.type_url.clone(),
                    nonce: req.response_nonce.clone(),
                },
            }
        });

        if first {
            st.must_answer = true;
            st.sent = req.initial_resource_versions.clone();
            if req.resource_names_subscribe.is_empty() {
                // Legacy implicit wildcard: a first request naming nothing wants everything.
                st.wildcard = true;
            }
        }
        for name in &req.resource_names_subscribe {
            st.must_answer = true;
            if name == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(name.clone());
                st.forced.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(name);
                st.forced.remove(name);
            }
        }
        if !req.resource_names_unsubscribe.is_empty() {
            // The client forgets what it no longer tracks: neither updates nor removals.
            let (wildcard, names) = (st.wildcard, &st.names);
            st.sent.retain(|name, _| wildcard || names.contains(name));
        }
        outcome
    }

    /// Whether this subscriber has asked for `type_url` on this stream.
    pub fn is_subscribed(&self, type_url: &str) -> bool {
        self.types.contains_key(type_url)
    }

    /// The response `type_url` needs against `snap`, if any: changed and added resources, and
    /// the names the subscriber has that are gone. `nonce` is used only if a response is made.
    pub fn response(
        &mut self,
        type_url: &str,
        snap: &Snapshot,
        nonce: impl FnOnce() -> String,
    ) -> Option<DeltaDiscoveryResponse> {
        let st = self.types.get_mut(type_url)?;
        let empty = BTreeMap::new();
        let current = snap.resources(type_url).unwrap_or(&empty);

        let wanted = |name: &str| st.wildcard || st.names.contains(name);
        let mut resources = Vec::new();
        for (name, entry) in current.iter().filter(|(n, _)| wanted(n)) {
            let stale = st.sent.get(name) != Some(&entry.version);
            if stale || st.forced.contains(name) {
                resources.push(Resource {
                    name: name.clone(),
                    aliases: Vec::new(),
                    version: entry.version.clone(),
                    resource: Some(entry.resource.clone()),
                });
            }
        }
        let mut removed: Vec<String> = (st.sent.keys())
            .filter(|n| !current.contains_key(*n))
            .cloned()
            .collect();
        for name in &st.forced {
            if !current.contains_key(name) && !st.sent.contains_key(name) {
                removed.push(name.clone());
            }
        }
        if resources.is_empty() && removed.is_empty() && !st.must_answer {
            return None;
        }

        for r in &resources {
            st.sent.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            st.sent.remove(name);
        }
        st.forced.clear();
        st.must_answer = false;
        let nonce = nonce();
        let names = resources.iter().map(|r| r.name.clone()).collect();
        st.inflight.push_back((nonce.clone(), names));
        if st.inflight.len() > MAX_INFLIGHT {
            st.inflight.pop_front();
        }
        Some(DeltaDiscoveryResponse {
            system_version_info: snap.generation.to_string(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
        })
    }
}
