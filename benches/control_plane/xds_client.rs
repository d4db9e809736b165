//! The control plane's xDS server in-process over real TLS on 127.0.0.1, and delta-ADS
//! subscribers that dial it the way ztunnel does (tonic over our own rustls connector, a
//! client certificate from the mesh CA, wildcard subscriptions to every served type).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use control_plane::xds::{debounced_snapshots, tls, XdsServer, DEFAULT_DEBOUNCE, TYPE_URLS};
use hyper_util::rt::TokioIo;
use mesh::ca::CertificateAuthority;
use mesh::identity::Identity;
use mesh::model::State;
use mesh::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::{Endpoint, Uri};

/// Upper bound on any wait, so a broken server fails the bench instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(60);

fn control_plane_id() -> Identity {
    Identity::new("cluster.local", "istio-system", "ambit-control-plane").expect("identity")
}

/// A running server: send states in, subscribers see snapshots.
pub struct Server {
    pub states: watch::Sender<Arc<State>>,
    pub addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    _shutdown: oneshot::Sender<()>,
}

/// Starts the server with the production debounce; returns once it is listening. The first
/// snapshot is encoded before this returns (`debounced_snapshots` encodes it at once).
pub async fn start(initial: Arc<State>) -> Server {
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").expect("CA"));
    let config = tls::server_config(ca.clone(), control_plane_id(), Duration::from_secs(3600))
        .expect("server TLS config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (states, rx) = watch::channel(initial);
    let (snapshots, _task) = debounced_snapshots(rx, DEFAULT_DEBOUNCE);
    // Certificate holders only: every subscriber presents one from `ca`.
    let service = XdsServer::new(snapshots, None).into_service();
    let (shutdown, stop) = oneshot::channel::<()>();
    tokio::spawn(tls::serve(listener, config, service, async move {
        let _ = stop.await;
    }));
    Server {
        states,
        addr,
        ca,
        _shutdown: shutdown,
    }
}

impl Server {
    /// The TLS config a subscriber dials with: a ztunnel certificate from the mesh CA.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let id = Identity::new("cluster.local", "istio-system", "ztunnel").expect("identity");
        let cert = self
            .ca
            .issue(&id, Duration::from_secs(3600))
            .expect("issue");
        mesh::tls::client_config(&cert, vec![control_plane_id()]).expect("client TLS config")
    }
}

/// Dials `addr` over TLS, checking the server proves the control plane's SPIFFE id.
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.addr).await?;
            let name = rustls_pki_types::ServerName::IpAddress(this.addr.ip().into());
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// What a subscriber reports.
#[derive(Debug)]
pub enum Event {
    /// Every type's first response has arrived: resources per type URL.
    Initial {
        at: Instant,
        counts: BTreeMap<String, usize>,
    },
    /// A later response: its resource names and removals.
    Update {
        at: Instant,
        type_url: String,
        names: Vec<String>,
        removed: Vec<String>,
    },
}

/// One subscriber: connects, subscribes to every type with `*`, ACKs everything, and reports
/// on `events` (tagged with `id`) until the stream or `events` closes.
pub async fn subscriber(
    id: usize,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    events: mpsc::UnboundedSender<(usize, Event)>,
) -> Result<(), String> {
    let channel = Endpoint::from_static("http://xds.bench")
        .connect_with_connector(Connector { addr, config: tls })
        .await
        .map_err(|e| format!("subscriber {id}: connect: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    // The initial Address push is one message of every workload and service; tonic's 4 MiB
    // default would refuse it (ztunnel's limit is far higher too).
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
    for (i, type_url) in TYPE_URLS.iter().enumerate() {
        let _ = tx.send(DeltaDiscoveryRequest {
            // Node only on the first request, as ztunnel sends it.
            node: (i == 0).then(|| Node {
                id: format!(
                    "ztunnel~10.0.0.{id}~ztunnel-{id}.istio-system~istio-system.svc.cluster.local"
                ),
                ..Node::default()
            }),
            type_url: (*type_url).into(),
            resource_names_subscribe: vec!["*".into()],
            ..DeltaDiscoveryRequest::default()
        });
    }
    let mut stream = client
        .delta_aggregated_resources(requests)
        .await
        .map_err(|e| format!("subscriber {id}: open stream: {e}"))?
        .into_inner();
    let mut counts = BTreeMap::new();
    let mut initial_sent = false;
    loop {
        let msg: DeltaDiscoveryResponse = match tokio::time::timeout(WAIT, stream.message()).await {
            Err(_) if initial_sent => return Ok(()), // idle after the scenarios: done.
            Err(_) => return Err(format!("subscriber {id}: no initial push in {WAIT:?}")),
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => return Err(format!("subscriber {id}: stream: {status}")),
        };
        let at = Instant::now();
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: msg.type_url.clone(),
            response_nonce: msg.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        });
        if !initial_sent {
            counts.insert(msg.type_url.clone(), msg.resources.len());
            if counts.len() == TYPE_URLS.len() {
                initial_sent = true;
                let counts = std::mem::take(&mut counts);
                if events.send((id, Event::Initial { at, counts })).is_err() {
                    return Ok(());
                }
            }
            continue;
        }
        let names = msg.resources.iter().map(|r| r.name.clone()).collect();
        let update = Event::Update {
            at,
            type_url: msg.type_url,
            names,
            removed: msg.removed_resources,
        };
        if events.send((id, update)).is_err() {
            return Ok(());
        }
    }
}
