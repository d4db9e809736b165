//! The server end to end: a real tonic client over real TLS, in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use mesh::ca::CertificateAuthority;
use mesh::identity::Identity;
use mesh::model::State;
use mesh::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use mesh::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, PEER_AUTHENTICATION_TYPE_URL};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::metadata::MetadataMap;
use tonic::transport::{Endpoint, Uri};

use super::tests::{pod, policy, state, uid};
use super::{debounced_snapshots, tls, Caller, XdsServer};
use crate::ca_service::auth::review_cache::CachedReviewer;
use crate::ca_service::auth::{
    bearer_token, Authenticator, ReviewedToken, TokenReviewAuthenticator, TokenReviewer,
};

/// Upper bound on any single wait, so a broken server fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

struct Tokens;

impl Authenticator for Tokens {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, tonic::Status>> {
        let result = match bearer_token(metadata) {
            Ok("token-node-a") => Ok(Caller {
                node: "node-a".into(),
                identity: None,
            }),
            _ => Err(tonic::Status::unauthenticated("bad token")),
        };
        Box::pin(async move { result })
    }
}

struct Harness {
    states: watch::Sender<Arc<State>>,
    server: XdsServer,
    addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    _shutdown: oneshot::Sender<()>,
}

fn control_plane_id() -> Identity {
    Identity::new("cluster.local", "ambit-system", "ambit-control-plane").unwrap()
}

async fn start(initial: Arc<State>, debounce: Duration) -> Harness {
    start_with(initial, debounce, Arc::new(Tokens)).await
}

async fn start_with(
    initial: Arc<State>,
    debounce: Duration,
    authenticator: Arc<dyn Authenticator>,
) -> Harness {
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let config =
        tls::server_config(ca.clone(), control_plane_id(), Duration::from_secs(3600)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (states, rx) = watch::channel(initial);
    let (snapshots, _task) = debounced_snapshots(rx, debounce);
    let server = XdsServer::new(snapshots, Some(authenticator));
    let (shutdown, stop) = oneshot::channel::<()>();
    let service = server.clone().into_service();
    tokio::spawn(tls::serve(listener, config, service, async move {
        let _ = stop.await;
    }));
    Harness {
        states,
        server,
        addr,
        ca,
        _shutdown: shutdown,
    }
}

/// Dials the server over TLS, checking it proves the control plane's SPIFFE id.
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

/// A client that presents no certificate (it authenticates with a token).
#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
    fn has_certs(&self) -> bool {
        false
    }
}

struct Client {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Harness {
    fn client_tls(&self, with_cert: bool) -> Arc<rustls::ClientConfig> {
        let id = Identity::new("cluster.local", "istio-system", "ztunnel").unwrap();
        let cert = self.ca.issue(&id, Duration::from_secs(3600)).unwrap();
        let config = mesh::tls::client_config(&cert, vec![control_plane_id()]).unwrap();
        if with_cert {
            return config;
        }
        let mut config = (*config).clone();
        config.client_auth_cert_resolver = Arc::new(NoClientCert);
        Arc::new(config)
    }

    async fn connect(&self, token: Option<&str>, with_cert: bool) -> Result<Client, tonic::Status> {
        let connector = Connector {
            addr: self.addr,
            config: self.client_tls(with_cert),
        };
        let channel = Endpoint::from_static("http://xds.test")
            .connect_with_connector(connector)
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let requests =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let mut req = tonic::Request::new(requests);
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().unwrap();
            req.metadata_mut().insert("authorization", value);
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let rx = client.delta_aggregated_resources(req).await?.into_inner();
        Ok(Client { tx, rx })
    }

    async fn ztunnel(&self) -> Client {
        self.connect(Some("token-node-a"), false).await.unwrap()
    }
}

impl Client {
    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn subscribe(&self, type_url: &str) {
        self.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "ztunnel~10.0.0.1~ztunnel-a.istio-system~istio-system.svc.cluster.local".into(),
                ..Node::default()
            }),
            type_url: type_url.into(),
            resource_names_subscribe: vec!["*".into()],
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream healthy")
            .expect("stream open")
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    /// NACKs `r` with `reason`, then waits until the server has processed it: requests on one
    /// stream are handled in order, so once a later subscription is answered, the NACK before
    /// it has been recorded.
    async fn nack_and_sync(&mut self, r: &DeltaDiscoveryResponse, reason: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(Status {
                code: 3,
                message: reason.into(),
                details: vec![],
            }),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
        self.subscribe(PEER_AUTHENTICATION_TYPE_URL).await;
        assert_eq!(self.recv().await.type_url, PEER_AUTHENTICATION_TYPE_URL);
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn initial_push_then_one_changed_pod_then_a_removal() {
    let h = start(
        state(vec![pod("a", "10.0.0.2"), pod("b", "10.0.0.3")], vec![]),
        Duration::from_millis(10),
    )
    .await;
    let mut c = h.ztunnel().await;
    c.subscribe(ADDRESS_TYPE_URL).await;
    let first = c.recv().await;
    assert_eq!(
        names(&first),
        [
            uid("a").as_str(),
            &uid("b"),
            "shop/web.shop.svc.cluster.local"
        ]
    );
    // The resources decode to what the state holds.
    let any = first.resources[0].resource.as_ref().unwrap();
    let addr: mesh::xds::proto::workload::Address =
        mesh::xds::from_any(ADDRESS_TYPE_URL, any).unwrap();
    assert!(matches!(
        mesh::xds::proto_to_address(&addr).unwrap(),
        mesh::xds::AddressResource::Workload(w) if w.name == "a"
    ));
    c.ack(&first).await;

    h.states
        .send(state(
            vec![pod("a", "10.0.0.2"), pod("b", "10.0.0.9")],
            vec![],
        ))
        .unwrap();
    let second = c.recv().await;
    assert_eq!(names(&second), [uid("b")]);
    assert!(second.removed_resources.is_empty());
    assert_ne!(second.nonce, first.nonce);
    c.ack(&second).await;

    h.states
        .send(state(vec![pod("b", "10.0.0.9")], vec![]))
        .unwrap();
    let third = c.recv().await;
    assert!(third.resources.is_empty());
    assert_eq!(third.removed_resources, [uid("a")]);
}

#[tokio::test]
async fn a_nack_is_recorded_with_node_and_reason_and_not_retried() {
    let h = start(state(vec![], vec![policy("p1")]), Duration::from_millis(10)).await;
    let mut c = h.ztunnel().await;
    c.subscribe(AUTHORIZATION_TYPE_URL).await;
    let first = c.recv().await;
    assert_eq!(names(&first), ["shop/p1"]);
    c.nack_and_sync(&first, "unsupported policy shape").await;
    let nacks = h.server.recent_nacks();
    assert_eq!(nacks.len(), 1);
    assert!(nacks[0].node_id.starts_with("ztunnel~10.0.0.1~"));
    assert_eq!(nacks[0].caller, "node-a");
    assert_eq!(nacks[0].reason, "unsupported policy shape");
    assert_eq!(nacks[0].resources, ["shop/p1"]);

    // The rejected policy is not pushed again; the next push carries only the new one.
    h.states
        .send(state(vec![], vec![policy("p1"), policy("p2")]))
        .unwrap();
    let next = c.recv().await;
    assert_eq!(next.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(names(&next), ["shop/p2"]);
}

#[tokio::test]
async fn a_burst_of_changes_is_pushed_once() {
    // A long window: the burst below takes microseconds, so it always falls inside.
    let h = start(
        state(vec![pod("a", "10.0.0.2")], vec![]),
        Duration::from_secs(1),
    )
    .await;
    let mut c = h.ztunnel().await;
    c.subscribe(ADDRESS_TYPE_URL).await;
    c.recv().await;

    let mut pods = vec![pod("a", "10.0.0.2")];
    for (name, ip) in [("b", "10.0.0.3"), ("c", "10.0.0.4"), ("d", "10.0.0.5")] {
        pods.push(pod(name, ip));
        h.states.send(state(pods.clone(), vec![])).unwrap();
        // Give the server every chance to act on each change on its own: without the
        // debounce it would encode and push "b" alone here.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    let merged = c.recv().await;
    assert_eq!(names(&merged), [uid("b"), uid("c"), uid("d")]);
    // And nothing else was queued in between: the next push is the next change.
    pods.push(pod("e", "10.0.0.6"));
    h.states.send(state(pods, vec![])).unwrap();
    assert_eq!(names(&c.recv().await), [uid("e")]);
}

#[tokio::test]
async fn subscribers_are_independent() {
    let h = start(
        state(vec![pod("a", "10.0.0.2")], vec![policy("p1")]),
        Duration::from_millis(10),
    )
    .await;
    let mut addresses = h.ztunnel().await;
    addresses.subscribe(ADDRESS_TYPE_URL).await;
    assert_eq!(addresses.recv().await.resources.len(), 2);
    let mut policies = h.ztunnel().await;
    policies.subscribe(AUTHORIZATION_TYPE_URL).await;
    assert_eq!(names(&policies.recv().await), ["shop/p1"]);

    h.states
        .send(state(vec![pod("a", "10.0.0.7")], vec![policy("p1")]))
        .unwrap();
    assert_eq!(names(&addresses.recv().await), [uid("a")]);
    h.states
        .send(state(
            vec![pod("a", "10.0.0.7")],
            vec![policy("p1"), policy("p2")],
        ))
        .unwrap();
    // The policy subscriber never saw the pod change; the address one never sees policies.
    assert_eq!(names(&policies.recv().await), ["shop/p2"]);
    h.states
        .send(state(
            vec![pod("a", "10.0.0.8")],
            vec![policy("p1"), policy("p2")],
        ))
        .unwrap();
    let next = addresses.recv().await;
    assert_eq!(next.type_url, ADDRESS_TYPE_URL);
    assert_eq!(names(&next), [uid("a")]);
}

#[tokio::test]
async fn callers_need_a_token_or_a_mesh_certificate() {
    let h = start(state(vec![], vec![]), Duration::from_millis(10)).await;
    let refused = h.connect(None, false).await.err().expect("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = h
        .connect(Some("wrong"), false)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A certificate from the mesh CA is enough on its own.
    let mut c = h.connect(None, true).await.unwrap();
    c.subscribe(AUTHORIZATION_TYPE_URL).await;
    assert_eq!(c.recv().await.type_url, AUTHORIZATION_TYPE_URL);
}

/// Scripted TokenReview answers, counting the reviews that reach "the API server".
#[derive(Clone, Default)]
struct ScriptedReviews {
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl ScriptedReviews {
    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl TokenReviewer for ScriptedReviews {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewedToken, String>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer = match token {
            "ztunnel-sa-token" => Ok(ReviewedToken {
                authenticated: true,
                username: "system:serviceaccount:istio-system:ztunnel".into(),
                node_name: Some("node-a".into()),
                error: None,
            }),
            // Authenticated, but a user rather than a service account.
            "user-token" => Ok(ReviewedToken {
                authenticated: true,
                username: "alice".into(),
                node_name: None,
                error: None,
            }),
            "api-server-down" => Err("connection refused".into()),
            _ => Ok(ReviewedToken {
                error: Some("invalid bearer token".into()),
                ..ReviewedToken::default()
            }),
        };
        Box::pin(async move { answer })
    }
}

/// Under `--kube` a ztunnel has only its service-account token: xDS accepts it through the
/// same TokenReview authenticator the CA uses, records who the caller is, and asks the API
/// server once per token rather than once per stream.
#[tokio::test]
async fn service_account_tokens_open_xds_streams_through_token_review() {
    let reviews = ScriptedReviews::default();
    let auth = TokenReviewAuthenticator::new(CachedReviewer::new(reviews.clone()), "cluster.local");
    let h = start_with(
        state(vec![], vec![policy("p1")]),
        Duration::from_millis(10),
        Arc::new(auth),
    )
    .await;

    let mut c = h.connect(Some("ztunnel-sa-token"), false).await.unwrap();
    c.subscribe(AUTHORIZATION_TYPE_URL).await;
    let first = c.recv().await;
    assert_eq!(names(&first), ["shop/p1"]);
    // The caller's node and identity are what the stream is logged and recorded under.
    c.nack_and_sync(&first, "rejected").await;
    assert_eq!(
        h.server.recent_nacks()[0].caller,
        "node-a (spiffe://cluster.local/ns/istio-system/sa/ztunnel)"
    );

    // A second stream with the same token (a reconnect) is answered from the cache.
    let mut again = h.connect(Some("ztunnel-sa-token"), false).await.unwrap();
    again.subscribe(ADDRESS_TYPE_URL).await;
    again.recv().await;
    assert_eq!(reviews.calls(), 1);

    for (token, code) in [
        ("some-other-token", tonic::Code::Unauthenticated),
        ("user-token", tonic::Code::Unauthenticated),
        // Not the caller's fault: it may retry.
        ("api-server-down", tonic::Code::Unavailable),
    ] {
        let refused = h.connect(Some(token), false).await.err().expect(token);
        assert_eq!(refused.code(), code, "{token}: {refused}");
    }
    // Refusals are not cached: each is a fresh review.
    let refused = h.connect(Some("some-other-token"), false).await.err();
    assert_eq!(refused.unwrap().code(), tonic::Code::Unauthenticated);
    assert_eq!(reviews.calls(), 5);
}
