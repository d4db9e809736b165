//! Tests of the xDS client against an in-process fake ADS server over real TLS, plus the pure
//! pieces (cache, address parsing, node id, backoff).
//!
//! The fake server hands each accepted stream to the test as a [`FakeConn`]; the test reads the
//! client's requests and writes responses itself, so every step is synchronised by a message,
//! never by a sleep. Timeouts only bound a broken test.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh::authz::{Action, Authorization, PeerAuthentication, Scope};
use mesh::ca::CertificateAuthority;
use mesh::identity::Identity;
use mesh::model::{State, Workload};
use mesh::xds::proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh::xds::proto::google::value::Kind as ValueKind;
use mesh::xds::{authorization_to_proto, peer_authentication_to_proto, to_any, workload_address};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::cache::{Kind, ResourceCache};
use super::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use super::*;
use crate::readiness::Readiness;

const TD: &str = "cluster.local";
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------------------------------------
// Fake ADS server over TLS.

/// A server-side TLS stream tonic can serve (tonic only implements `Connected` for its own
/// TLS types, which need a feature ambit does not enable).
struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// One client stream as the fake server sees it.
struct FakeConn {
    token: Option<String>,
    requests: tonic::Streaming<DeltaDiscoveryRequest>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, tonic::Status>>,
    nonce: u64,
}

impl FakeConn {
    async fn recv(&mut self) -> DeltaDiscoveryRequest {
        within("a request", self.requests.message())
            .await
            .expect("request stream failed")
            .expect("request stream ended")
    }

    /// The three initial subscriptions, by type.
    async fn subscriptions(&mut self) -> BTreeMap<Kind, DeltaDiscoveryRequest> {
        let mut out = BTreeMap::new();
        for _ in Kind::ALL {
            let req = self.recv().await;
            assert!(req.response_nonce.is_empty(), "not a subscription: {req:?}");
            let kind = Kind::from_type_url(&req.type_url).expect("known type");
            out.insert(kind, req);
        }
        out
    }

    /// Sends a response and returns the client's reply to it.
    async fn push(
        &mut self,
        kind: Kind,
        resources: Vec<Resource>,
        removed: &[&str],
    ) -> DeltaDiscoveryRequest {
        self.nonce += 1;
        let nonce = format!("n{}", self.nonce);
        self.push_raw(DeltaDiscoveryResponse {
            type_url: kind.type_url().to_string(),
            resources,
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            nonce: nonce.clone(),
            ..Default::default()
        })
        .await;
        let reply = self.recv().await;
        assert_eq!(reply.response_nonce, nonce, "reply to the wrong response");
        assert_eq!(reply.type_url, kind.type_url());
        reply
    }

    async fn push_raw(&mut self, resp: DeltaDiscoveryResponse) {
        self.responses
            .send(Ok(resp))
            .await
            .expect("client stream gone");
    }

    /// Subscriptions, then an empty push of every type; returns the subscriptions.
    async fn initial_empty_push(&mut self) -> BTreeMap<Kind, DeltaDiscoveryRequest> {
        let subs = self.subscriptions().await;
        for kind in Kind::ALL {
            assert_ack(&self.push(kind, vec![], &[]).await);
        }
        subs
    }
}

struct FakeAds {
    conns: mpsc::UnboundedSender<FakeConn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type DeltaAggregatedResourcesStream =
        ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (tx, rx) = mpsc::channel(16);
        let conn = FakeConn {
            token,
            requests: request.into_inner(),
            responses: tx,
            nonce: 0,
        };
        self.conns
            .send(conn)
            .map_err(|_| tonic::Status::unavailable("test over"))?;
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

struct Harness {
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<FakeConn>,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    handle: crate::state::StateHandle,
    readiness: Readiness,
    reloads: watch::Receiver<(u32, u32)>,
    _dir: TempDir,
}

/// Starts a fake ADS server presenting a certificate for `server_id`, and an xDS client
/// connected to it with a token file.
async fn start(server_id: &Identity) -> Harness {
    let ca = CertificateAuthority::generate(TD).expect("CA");
    let cert = ca
        .issue(server_id, Duration::from_secs(3600))
        .expect("server cert");
    let mut server_tls = rustls::ServerConfig::builder_with_provider(mesh::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key().clone_key())
        .expect("server config");
    server_tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (io_tx, io_rx) = mpsc::channel::<io::Result<TlsIo>>(4);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // A failed handshake (e.g. the client refused our cert) is just not a connection.
            if let Ok(tls) = acceptor.accept(tcp).await {
                if io_tx.send(Ok(TlsIo(tls))).await.is_err() {
                    return;
                }
            }
        }
    });
    let (conn_tx, conns) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(FakeAds {
                conns: conn_tx,
            }))
            .serve_with_incoming(ReceiverStream::new(io_rx)),
    );

    let dir = TempDir::new();
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, "s3cret\n").expect("token");
    let roots = cert.roots.clone();
    let tls = tls::client_config(
        &roots,
        ServerIdentity::Namespace {
            trust_domain: TD.into(),
            namespace: "istio-system".into(),
        },
    )
    .expect("client tls");
    let cfg = XdsClientConfig {
        address: addr.to_string(),
        server_name: ServerName::from(addr.ip()),
        tls,
        token_file: Some(token_file),
        node: node(),
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
    };
    let readiness = Readiness::new();
    let ready = readiness.register("xds");
    let (publisher, handle) = crate::state::StatePublisher::new(State::default());
    let (reload_tx, reloads) = watch::channel((0u32, 0u32));
    let client = XdsClient::new(cfg, publisher, Some(ready), move |ok| {
        reload_tx.send_modify(|(good, bad)| if ok { *good += 1 } else { *bad += 1 });
    });
    tokio::spawn(client.run());
    Harness {
        addr,
        conns,
        roots,
        handle,
        readiness,
        reloads,
        _dir: dir,
    }
}

impl Harness {
    async fn accept(&mut self) -> FakeConn {
        within("a client stream", self.conns.recv())
            .await
            .expect("server gone")
    }
}

/// A unique temporary directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "ambit-xds-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).expect("tempdir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn control_plane_id() -> Identity {
    Identity::new(TD, "istio-system", "ambit-control-plane").unwrap()
}

fn node() -> NodeInfo {
    NodeInfo {
        pod_name: "ztunnel-abcde".into(),
        pod_namespace: "istio-system".into(),
        instance_ip: "10.0.0.5".parse().unwrap(),
        node_name: "node-a".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Resources.

fn workload(name: &str, ip: &str) -> Workload {
    let mut w = Workload {
        name: name.into(),
        namespace: "default".into(),
        node: "node-a".into(),
        workload_ips: vec![ip.parse().unwrap()],
        ..Default::default()
    };
    w.apply_defaults();
    w
}

fn workload_res(w: &Workload, version: &str) -> Resource {
    Resource {
        name: w.uid.clone(),
        version: version.into(),
        resource: Some(to_any(mesh::xds::ADDRESS_TYPE_URL, &workload_address(w))),
        ..Default::default()
    }
}

fn policy(name: &str) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: Scope::Namespace,
        action: Action::Deny,
        rules: vec![],
        dry_run: false,
    }
}

fn policy_res(p: &Authorization, version: &str) -> Resource {
    Resource {
        name: p.key(),
        version: version.into(),
        resource: Some(to_any(
            mesh::xds::AUTHORIZATION_TYPE_URL,
            &authorization_to_proto(p),
        )),
        ..Default::default()
    }
}

fn peer_auth_res(name: &str) -> Resource {
    let pa = PeerAuthentication {
        name: name.into(),
        namespace: "default".into(),
        mode: Some(mesh::authz::MtlsMode::Strict),
        port_level_mtls: Default::default(),
    };
    Resource {
        name: format!("default/{name}"),
        version: "1".into(),
        resource: Some(to_any(
            mesh::xds::PEER_AUTHENTICATION_TYPE_URL,
            &peer_authentication_to_proto(&pa),
        )),
        ..Default::default()
    }
}

/// A resource whose body does not decode as an Address.
fn garbage_res(name: &str) -> Resource {
    Resource {
        name: name.into(),
        version: "1".into(),
        resource: Some(mesh::xds::proto::google::Any {
            type_url: mesh::xds::ADDRESS_TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        }),
        ..Default::default()
    }
}

fn assert_ack(req: &DeltaDiscoveryRequest) {
    assert!(
        req.error_detail.is_none(),
        "expected an ACK, got a NACK: {:?}",
        req.error_detail
    );
}

fn nack_message(req: &DeltaDiscoveryRequest) -> String {
    req.error_detail
        .as_ref()
        .map(|s| s.message.clone())
        .expect("expected a NACK")
}

fn uids(state: &State) -> Vec<String> {
    let mut v: Vec<String> = state.workloads().map(|w| w.uid.clone()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Stream behaviour.

#[tokio::test]
async fn subscribes_with_node_token_and_wildcard() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    assert_eq!(conn.token.as_deref(), Some("Bearer s3cret"));
    let subs = conn.subscriptions().await;
    assert_eq!(subs.len(), 3, "one subscription per type");
    for req in subs.values() {
        let node = req.node.as_ref().expect("node on the first request");
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.5~ztunnel-abcde.istio-system~istio-system.svc.cluster.local"
        );
        let meta = &node.metadata.as_ref().expect("metadata").fields;
        let get = |k: &str| match meta.get(k).and_then(|v| v.kind.clone()) {
            Some(ValueKind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(get("NAME"), "ztunnel-abcde");
        assert_eq!(get("NAMESPACE"), "istio-system");
        assert_eq!(get("INSTANCE_IPS"), "10.0.0.5");
        assert_eq!(get("NODE_NAME"), "node-a");
        // Wildcard: nothing named, nothing held yet.
        assert!(req.resource_names_subscribe.is_empty());
        assert!(req.initial_resource_versions.is_empty());
        assert!(req.error_detail.is_none());
    }
}

#[tokio::test]
async fn publishes_only_after_first_complete_push() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.subscriptions().await;
    let w = workload("a", "10.1.0.1");
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&w, "1")], &[])
            .await,
    );
    assert_ack(&conn.push(Kind::Authorization, vec![], &[]).await);
    // Workloads without their policies must not be served: nothing published yet.
    assert_eq!(h.handle.status().version, 0);
    assert_eq!(h.handle.current().workloads().count(), 0);
    assert!(!h.readiness.is_ready());

    assert_ack(
        &conn
            .push(Kind::PeerAuthentication, vec![peer_auth_res("strict")], &[])
            .await,
    );
    assert!(
        h.readiness.is_ready(),
        "first complete push releases readiness"
    );
    let st = h.handle.current();
    assert_eq!(uids(&st), vec![w.uid.clone()]);
    assert_eq!(st.peer_authentications().len(), 1);
    assert_eq!(h.handle.status().version, 1);
}

#[tokio::test]
async fn empty_initial_push_is_complete() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    assert!(h.readiness.is_ready());
    assert_eq!(h.handle.status().version, 1);
}

#[tokio::test]
async fn applies_incremental_updates_and_removals() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    let mut changes = h.handle.subscribe();
    changes.borrow_and_update();

    let a = workload("a", "10.1.0.1");
    let b = workload("b", "10.1.0.2");
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&a, "1")], &[])
            .await,
    );
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&b, "1")], &[])
            .await,
    );
    within("a state change", changes.changed()).await.unwrap();
    // Delta: the second push added b without dropping a.
    assert_eq!(
        uids(&changes.borrow_and_update()),
        vec![a.uid.clone(), b.uid.clone()]
    );

    let p = policy("deny-all");
    assert_ack(
        &conn
            .push(Kind::Authorization, vec![policy_res(&p, "1")], &[])
            .await,
    );
    assert_eq!(h.handle.current().policies().count(), 1);

    assert_ack(&conn.push(Kind::Address, vec![], &[a.uid.as_str()]).await);
    assert_ack(
        &conn
            .push(Kind::Authorization, vec![], &["default/deny-all"])
            .await,
    );
    let st = h.handle.current();
    assert_eq!(uids(&st), vec![b.uid.clone()]);
    assert_eq!(st.policies().count(), 0);
    assert_eq!(h.handle.status().last_error, None);
}

#[tokio::test]
async fn nacks_invalid_resource_and_keeps_last_good() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    let a = workload("a", "10.1.0.1");
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&a, "1")], &[])
            .await,
    );
    let before = h.handle.status().version;

    // An undecodable resource: NACKed by name; the last good config stays.
    let reply = conn
        .push(Kind::Address, vec![garbage_res("bad-one")], &[])
        .await;
    let msg = nack_message(&reply);
    assert!(msg.contains("bad-one"), "{msg}");
    assert_eq!(reply.error_detail.as_ref().unwrap().code, 3);
    assert_eq!(uids(&h.handle.current()), vec![a.uid.clone()]);
    assert_eq!(h.handle.status().version, before);
    assert!(h.handle.status().last_error.unwrap().contains("bad-one"));
    assert_eq!(h.reloads.borrow().1, 1, "one failed reload counted");

    // A workload the model refuses (no namespace) replaces nothing: its previous
    // version stays; the valid resource in the same response is still applied.
    let mut broken = a.clone();
    broken.namespace = String::new();
    let b = workload("b", "10.1.0.2");
    let mut bad = workload_res(&broken, "2");
    bad.name = a.uid.clone();
    let reply = conn
        .push(Kind::Address, vec![bad, workload_res(&b, "1")], &[])
        .await;
    assert!(nack_message(&reply).contains(&a.uid));
    let st = h.handle.current();
    assert_eq!(uids(&st), vec![a.uid.clone(), b.uid.clone()]);
    assert_eq!(st.workload_by_uid(&a.uid).unwrap().namespace, "default");

    // The next good response clears the error.
    assert_ack(&conn.push(Kind::Address, vec![], &[b.uid.as_str()]).await);
    assert_eq!(h.handle.status().last_error, None);
}

#[tokio::test]
async fn nacks_conflicting_config_until_fixed() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    let a = workload("a", "10.1.0.1");
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&a, "1")], &[])
            .await,
    );

    // Each resource is fine, but two workloads cannot share an IP: NACK, keep serving a.
    let clash = workload("b", "10.1.0.1");
    let reply = conn
        .push(Kind::Address, vec![workload_res(&clash, "1")], &[])
        .await;
    assert!(nack_message(&reply).contains("resulting config is invalid"));
    assert_eq!(uids(&h.handle.current()), vec![a.uid.clone()]);

    // The server then removes a (e.g. the old pod is gone): the held b now applies.
    assert_ack(&conn.push(Kind::Address, vec![], &[a.uid.as_str()]).await);
    assert_eq!(uids(&h.handle.current()), vec![clash.uid.clone()]);
}

#[tokio::test]
async fn nacks_unknown_type() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    conn.push_raw(DeltaDiscoveryResponse {
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        nonce: "x1".into(),
        ..Default::default()
    })
    .await;
    let reply = conn.recv().await;
    assert_eq!(reply.response_nonce, "x1");
    assert!(nack_message(&reply).contains("unsupported resource type"));
}

#[tokio::test]
async fn reconnects_keeps_serving_and_resyncs() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.subscriptions().await;
    let a = workload("a", "10.1.0.1");
    let b = workload("b", "10.1.0.2");
    let p = policy("deny-all");
    conn.push(
        Kind::Address,
        vec![workload_res(&a, "v1"), workload_res(&b, "v1")],
        &[],
    )
    .await;
    conn.push(Kind::Authorization, vec![policy_res(&p, "p1")], &[])
        .await;
    conn.push(Kind::PeerAuthentication, vec![], &[]).await;
    assert!(h.readiness.is_ready());

    // The control plane goes away: the stream ends with an error.
    conn.responses
        .send(Err(tonic::Status::unavailable("control plane restarting")))
        .await
        .unwrap();
    drop(conn);

    // The client comes back on its own and says what it holds.
    let mut conn = h.accept().await;
    // Meanwhile the last config stays in force.
    assert_eq!(
        uids(&h.handle.current()),
        vec![a.uid.clone(), b.uid.clone()]
    );
    assert!(
        h.readiness.is_ready(),
        "readiness does not drop with the stream"
    );
    let subs = conn.subscriptions().await;
    let held = &subs[&Kind::Address].initial_resource_versions;
    assert_eq!(
        held,
        &BTreeMap::from([(a.uid.clone(), "v1".into()), (b.uid.clone(), "v1".into())])
    );
    assert_eq!(
        subs[&Kind::Authorization].initial_resource_versions,
        BTreeMap::from([("default/deny-all".to_string(), "p1".to_string())])
    );
    assert!(subs[&Kind::PeerAuthentication]
        .initial_resource_versions
        .is_empty());

    // The resync: only what changed while away (b gone, c new).
    let c = workload("c", "10.1.0.3");
    let version = h.handle.status().version;
    assert_ack(
        &conn
            .push(
                Kind::Address,
                vec![workload_res(&c, "v1")],
                &[b.uid.as_str()],
            )
            .await,
    );
    assert_eq!(
        uids(&h.handle.current()),
        vec![a.uid.clone(), c.uid.clone()]
    );
    assert_eq!(h.handle.status().version, version + 1);
    assert_eq!(h.handle.current().policies().count(), 1, "policy kept");
}

#[tokio::test]
async fn reconnects_after_clean_close() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    drop(conn); // closes the response stream cleanly
    let mut conn = h.accept().await;
    let subs = conn.subscriptions().await;
    assert_eq!(subs.len(), 3);
}

#[tokio::test]
async fn refuses_server_with_wrong_identity() {
    // A workload certificate from another namespace must not pass as the control plane.
    let impostor = Identity::new(TD, "default", "attacker").unwrap();
    let h = start(&impostor).await;
    let ca_roots = h.roots.clone();
    let tls = tls::client_config(
        &ca_roots,
        ServerIdentity::Namespace {
            trust_domain: TD.into(),
            namespace: "istio-system".into(),
        },
    )
    .unwrap();
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::from(h.addr.ip()), tcp)
        .await
        .expect_err("impostor accepted");
    assert!(err.to_string().contains("ns/default/sa/attacker"), "{err}");
    // Nor does the client ever open a stream to it.
    let mut conns = h.conns;
    assert!(conns.try_recv().is_err());
}

#[tokio::test]
async fn exact_server_identity() {
    let h = start(&control_plane_id()).await;
    let connect = |identity: ServerIdentity| {
        let tls = tls::client_config(&h.roots, identity).unwrap();
        let addr = h.addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(tls)
                .connect(ServerName::from(addr.ip()), tcp)
                .await
                .map(|_| ())
        }
    };
    connect(ServerIdentity::Exact(control_plane_id()))
        .await
        .expect("exact identity accepted");
    let other = Identity::new(TD, "istio-system", "someone-else").unwrap();
    assert!(connect(ServerIdentity::Exact(other)).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Pure pieces.

#[test]
fn cache_resend_of_same_version_is_no_change() {
    let mut cache = ResourceCache::default();
    let a = workload("a", "10.1.0.1");
    let resp = |v: &str| DeltaDiscoveryResponse {
        type_url: Kind::Address.type_url().into(),
        resources: vec![workload_res(&a, v)],
        nonce: "n".into(),
        ..Default::default()
    };
    assert!(cache.apply(&resp("1")).unwrap().changed);
    assert!(!cache.apply(&resp("1")).unwrap().changed);
    assert!(cache.apply(&resp("2")).unwrap().changed);
    assert!(!cache.complete());
    assert_eq!(
        cache.versions(Kind::Address),
        BTreeMap::from([(a.uid.clone(), "2".to_string())])
    );
    // Removing an unknown name is ignored, as the protocol says.
    let removal = DeltaDiscoveryResponse {
        type_url: Kind::Address.type_url().into(),
        removed_resources: vec!["nope".into()],
        ..Default::default()
    };
    assert!(!cache.apply(&removal).unwrap().changed);
}

#[test]
fn cache_rejects_resource_of_wrong_type_or_without_body() {
    let mut cache = ResourceCache::default();
    let p = policy("x");
    let mut wrong = policy_res(&p, "1");
    wrong.name = "w".into();
    let resp = DeltaDiscoveryResponse {
        type_url: Kind::Address.type_url().into(),
        resources: vec![
            wrong,
            Resource {
                name: "empty".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let applied = cache.apply(&resp).unwrap();
    assert!(!applied.changed);
    let names: Vec<&str> = applied.rejected.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["w", "empty"]);
    let msg = applied.nack_message().unwrap();
    assert!(msg.contains("istio.security.Authorization"), "{msg}");
    assert!(msg.contains("no body"), "{msg}");
}

#[test]
fn xds_addresses() {
    let ok = |s: &str, host: &str, port: u16| {
        assert_eq!(
            parse_xds_address(s).unwrap(),
            XdsAddress {
                host: host.into(),
                port
            },
            "{s}"
        )
    };
    ok(
        "istiod.istio-system.svc:15012",
        "istiod.istio-system.svc",
        15012,
    );
    ok(
        "https://ambit-cp.istio-system.svc:15012",
        "ambit-cp.istio-system.svc",
        15012,
    );
    ok("10.0.0.1:15012", "10.0.0.1", 15012);
    ok("[fd00::1]:15012", "fd00::1", 15012);
    assert_eq!(
        parse_xds_address("[fd00::1]:15012").unwrap().authority(),
        "[fd00::1]:15012"
    );
    for bad in [
        "http://cp:15012",
        "cp",
        "cp:0",
        "cp:99999",
        ":15012",
        "fd00::1:15012",
        "grpc://cp:1",
    ] {
        assert!(parse_xds_address(bad).is_err(), "{bad}");
    }
}

#[test]
fn backoff_grows_and_is_capped() {
    let b = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };
    for _ in 0..50 {
        let d1 = b.delay(1);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let d3 = b.delay(3);
        assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
        let big = b.delay(1000);
        assert!(big >= Duration::from_secs(1) && big <= Duration::from_secs(2));
    }
}

#[test]
fn node_metadata() {
    let n = node();
    assert_eq!(
        n.metadata(),
        vec![
            ("NAME", "ztunnel-abcde".to_string()),
            ("NAMESPACE", "istio-system".to_string()),
            ("INSTANCE_IPS", "10.0.0.5".to_string()),
            ("NODE_NAME", "node-a".to_string()),
        ]
    );
    let ip: IpAddr = "fd00::5".parse().unwrap();
    let v6 = NodeInfo {
        instance_ip: ip,
        ..n
    };
    assert!(v6.node_id().starts_with("ztunnel~fd00::5~"));
}
