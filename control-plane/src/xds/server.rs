//! The delta ADS gRPC service and the debounced snapshot feed behind it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use mesh::model::State;
use mesh::xds::proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Caller;
use super::snapshot::{Snapshot, TYPE_URLS};
use super::subscriber::{Outcome, Subscriber};
use super::tls::ConnInfo;
use crate::ca_service::auth::Authenticator;

/// Default debounce window: a burst of changes (a rollout, a namespace relabel) within it is
/// pushed once.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// How many NACKs [`XdsServer::recent_nacks`] remembers.
const NACK_HISTORY: usize = 32;

/// Turns a stream of states into a stream of [`Snapshot`]s, debounced: after a change, waits
/// `debounce` and then encodes whatever state is current, so a burst becomes one snapshot
/// (and one push), and no change waits longer than `debounce`. The first state is encoded at
/// once. Ends when the state sender is dropped.
pub fn debounced_snapshots(
    mut states: watch::Receiver<Arc<State>>,
    debounce: Duration,
) -> (watch::Receiver<Arc<Snapshot>>, tokio::task::JoinHandle<()>) {
    let first = Snapshot::from_state(1, &states.borrow_and_update());
    let (tx, rx) = watch::channel(Arc::new(first));
    let task = tokio::spawn(async move {
        let mut generation = 1;
        while states.changed().await.is_ok() {
            tokio::time::sleep(debounce).await;
            let state = states.borrow_and_update().clone();
            generation += 1;
            // Encoding is CPU work proportional to the mesh; it runs once per debounce window,
            // whatever the number of subscribers.
            if tx
                .send(Arc::new(Snapshot::from_state(generation, &state)))
                .is_err()
            {
                return;
            }
        }
    });
    (rx, task)
}

/// A rejected response, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackRecord {
    /// The subscriber's xDS node id.
    pub node_id: String,
    /// How it authenticated: its token's node or its certificate identity.
    pub caller: String,
    pub type_url: String,
    pub nonce: String,
    pub reason: String,
    /// The resources in the rejected response.
    pub resources: Vec<String>,
}

/// The `envoy.service.discovery.v3.AggregatedDiscoveryService` implementation (delta only).
#[derive(Clone)]
pub struct XdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    authenticator: Option<Arc<dyn Authenticator>>,
    nonces: Arc<AtomicU64>,
    nacks: Arc<Mutex<VecDeque<NackRecord>>>,
}

impl XdsServer {
    /// Serves `snapshots` (see [`debounced_snapshots`]). Callers without a verified client
    /// certificate must pass `authenticator`; with `None`, only certificate holders get in.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        authenticator: Option<Arc<dyn Authenticator>>,
    ) -> Self {
        XdsServer {
            snapshots,
            authenticator,
            nonces: Arc::new(AtomicU64::new(0)),
            nacks: Arc::default(),
        }
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            // Large meshes make large initial pushes; ztunnel's own limit is far above tonic's
            // 4 MiB default.
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// The most recent NACKs, oldest first (also logged as they happen).
    pub fn recent_nacks(&self) -> Vec<NackRecord> {
        self.lock_nacks().iter().cloned().collect()
    }

    fn lock_nacks(&self) -> std::sync::MutexGuard<'_, VecDeque<NackRecord>> {
        // Only whole records are ever pushed or popped: a poisoned lock holds consistent data.
        self.nacks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A verified client certificate admits its holder; otherwise the bearer token is checked
    /// (which may be a TokenReview round trip to the API server). Takes the parts rather than
    /// the request so the future does not borrow the (non-`Sync`) request stream.
    async fn authenticate(
        &self,
        conn: Option<&ConnInfo>,
        metadata: &MetadataMap,
    ) -> Result<Caller, Status> {
        if let Some(identity) = conn.and_then(|c| c.peer_identity.clone()) {
            return Ok(Caller {
                node: String::new(),
                identity: Some(identity),
            });
        }
        match &self.authenticator {
            Some(auth) => auth.authenticate(metadata).await,
            None => Err(Status::unauthenticated(
                "a client certificate from the mesh CA is required",
            )),
        }
    }

    fn next_nonce(&self) -> String {
        format!("{:x}", self.nonces.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, sub: &Subscriber, caller: &str, outcome: Outcome) {
        match outcome {
            Outcome::Ack { type_url, nonce } => {
                tracing::debug!(node = %sub.node_id, caller, type_url, nonce, "xDS ACK");
            }
            Outcome::Nack {
                type_url,
                nonce,
                reason,
                resources,
            } => {
                tracing::warn!(
                    node = %sub.node_id, caller, type_url, nonce, ?resources, reason,
                    "xDS NACK: the subscriber rejected config; it is not resent until it changes"
                );
                let mut nacks = self.lock_nacks();
                nacks.push_back(NackRecord {
                    node_id: sub.node_id.clone(),
                    caller: caller.to_string(),
                    type_url,
                    nonce,
                    reason,
                    resources,
                });
                if nacks.len() > NACK_HISTORY {
                    nacks.pop_front();
                }
            }
            Outcome::UnknownType { type_url } => {
                tracing::info!(node = %sub.node_id, caller, type_url, "xDS request for a type this server does not serve");
            }
        }
    }

    /// One stream: requests and snapshot changes in, responses out, until either side ends.
    async fn run(
        self,
        caller: String,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) {
        let mut snapshots = self.snapshots.clone();
        snapshots.mark_unchanged();
        let mut sub = Subscriber::new();
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let req = match msg {
                        Ok(Some(req)) => req,
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(node = %sub.node_id, caller, %status, "xDS stream ended");
                            break;
                        }
                    };
                    let served = |t: &str| TYPE_URLS.contains(&t);
                    if let Some(outcome) = sub.on_request(&req, served) {
                        self.record(&sub, &caller, outcome);
                    }
                    // `borrow`, not `borrow_and_update`: a snapshot not yet pushed for the
                    // other types must still wake the push branch below.
                    let snap = snapshots.borrow().clone();
                    if let Some(resp) = sub.response(&req.type_url, &snap, || self.next_nonce()) {
                        if tx.send(Ok(resp)).await.is_err() {
                            break;
                        }
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    for type_url in TYPE_URLS {
                        if let Some(resp) = sub.response(type_url, &snap, || self.next_nonce()) {
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                () = tx.closed() => break,
            }
        }
        tracing::debug!(node = %sub.node_id, caller, "xDS subscriber gone");
    }
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let conn = request.extensions().get::<ConnInfo>();
        let caller = self
            .authenticate(conn, request.metadata())
            .await
            .inspect_err(|status| {
                let remote = conn.and_then(|c| c.remote);
                tracing::warn!(?remote, %status, "xDS stream refused");
            })?;
        let label = match &caller.identity {
            Some(id) if caller.node.is_empty() => id.to_string(),
            Some(id) => format!("{} ({id})", caller.node),
            None => caller.node.clone(),
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.clone().run(label, request.into_inner(), tx));
        let out = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}
