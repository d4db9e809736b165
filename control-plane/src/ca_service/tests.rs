//! The CA service end to end: in-process tonic over real TLS, driven by the real CA client
//! (mesh::caclient) or by raw requests where a well-behaved client cannot produce the case.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::future::BoxFuture;
use mesh::caclient::proto::{self as pb, Struct};
use mesh::caclient::{self, CaClient, CaClientConfig, TokenSource};
use mesh::cert::WorkloadCertificate;
use mesh::certmanager::{CertState, SecretManager, SecretManagerConfig};
use mesh::model::Workload;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::auth::{
    BootstrapTokenAuthenticator, ReviewedToken, TokenReviewAuthenticator, TokenReviewer,
};
use super::*;

const TOKEN_A: &str = "token-for-node-a-0123456789";
const TOKEN_B: &str = "token-for-node-b-0123456789";

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

fn control_plane_id() -> Identity {
    id("istio-system", "ambit-control-plane")
}

fn pod(name: &str, sa: &str, node: &str) -> Workload {
    Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: sa.into(),
        node: node.into(),
        ..Workload::default()
    }
}

/// web runs on node-a, db on node-b.
fn state(pods: Vec<Workload>) -> Arc<State> {
    Arc::new(State::new(pods, vec![], vec![], vec![]).unwrap())
}

fn default_pods() -> Vec<Workload> {
    vec![pod("web-1", "web", "node-a"), pod("db-1", "db", "node-b")]
}

/// A per-test temporary directory, removed on drop (also on panic).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ambit-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    address: String,
    ca: Arc<CertificateAuthority>,
    state_tx: watch::Sender<Arc<State>>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    _dir: TempDir,
}

impl Harness {
    async fn start(name: &str) -> Harness {
        let dir = TempDir::new(name);
        let tokens = dir.0.join("tokens");
        std::fs::write(
            &tokens,
            format!("# node tokens\nnode-a {TOKEN_A}\n\nnode-b {TOKEN_B}\n"),
        )
        .unwrap();
        let auth = Arc::new(BootstrapTokenAuthenticator::from_file(&tokens).unwrap());
        Self::start_with(auth, dir).await
    }

    async fn start_with(auth: Arc<dyn Authenticator>, dir: TempDir) -> Harness {
        let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
        let (state_tx, state_rx) = watch::channel(state(default_pods()));
        let service = CaService::new(
            ca.clone(),
            auth,
            state_rx,
            CaServiceConfig::new("cluster.local"),
        );
        let server_cert = ca
            .issue(&control_plane_id(), Duration::from_secs(3600))
            .unwrap();
        let tls = caclient::tls::control_plane_server_config(&server_cert).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let incoming = caclient::tls::tls_incoming(listener, tokio_rustls::TlsAcceptor::from(tls));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Harness {
            address,
            ca,
            state_tx,
            stop: Some(stop),
            server,
            _dir: dir,
        }
    }

    fn client(&self, token: &str, lifetime: Duration) -> CaClient {
        CaClient::new(CaClientConfig {
            address: self.address.clone(),
            roots: self.ca.roots().to_vec(),
            server_identity: control_plane_id(),
            token: TokenSource::Static(token.into()),
            lifetime,
            cluster_id: None,
        })
        .unwrap()
    }

    /// Sends exactly the request given, for cases the real client would never produce.
    async fn raw(
        &self,
        token: Option<&str>,
        csr: String,
        impersonate: Option<&Identity>,
    ) -> Result<Vec<String>, Status> {
        let channel =
            caclient::control_plane_channel(&self.address, self.ca.roots(), control_plane_id())
                .unwrap();
        let mut request = Request::new(pb::IstioCertificateRequest {
            csr,
            validity_duration: 600,
            metadata: impersonate
                .map(|i| Struct::with_string(pb::IMPERSONATED_IDENTITY, &i.to_string())),
        });
        if let Some(t) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        pb::create_certificate(channel, request)
            .await
            .map(|r| r.into_inner().cert_chain)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server).await.unwrap();
    }
}

fn csr_for(identity: &Identity) -> String {
    caclient::make_csr(identity).unwrap().1
}

/// All SAN entries of the leaf, as strings.
fn leaf_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, parsed) = X509Certificate::from_der(cert).unwrap();
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("URI:{u}"),
            other => format!("{other:?}"),
        })
        .collect()
}

fn verify_to_roots(cert: &WorkloadCertificate, roots: &[CertificateDer<'static>]) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let leaf = rustls::server::ParsedCertificate::try_from(&cert.chain[0]).unwrap();
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &store,
        &cert.chain[1..],
        rustls_pki_types::UnixTime::now(),
        algs.all,
    )
    .unwrap();
}

#[tokio::test]
async fn node_agent_gets_a_certificate_for_a_pod_on_its_node() {
    let h = Harness::start("valid").await;
    let web = id("default", "web");
    let cert = h
        .client(TOKEN_A, Duration::from_secs(3600))
        .fetch_certificate(&web)
        .await
        .unwrap();
    assert_eq!(cert.identity, web);
    assert_eq!(leaf_sans(&cert.chain[0]), vec![format!("URI:{web}")]);
    verify_to_roots(&cert, h.ca.roots());
    // leaf … root
    assert_eq!(cert.chain.last(), h.ca.roots().last());
    h.stop().await;
}

#[tokio::test]
async fn bad_or_missing_token_is_unauthenticated() {
    let h = Harness::start("token").await;
    let web = id("default", "web");
    for token in [Some("not-a-known-token-at-all"), Some(""), None] {
        let err = h.raw(token, csr_for(&web), Some(&web)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token:?}: {err}");
    }
    h.stop().await;
}

#[tokio::test]
async fn identity_not_on_the_callers_node_is_denied() {
    let h = Harness::start("other-node").await;
    // db runs on node-b; node-a's agent must not get it.
    let db = id("default", "db");
    let err = h
        .raw(Some(TOKEN_A), csr_for(&db), Some(&db))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // Nor an identity nobody runs as.
    let ghost = id("default", "ghost");
    let err = h
        .raw(Some(TOKEN_A), csr_for(&ghost), Some(&ghost))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // A bootstrap token has no identity of its own: asking for nothing is refused too.
    let err = h.raw(Some(TOKEN_A), csr_for(&db), None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // node-b's agent does get db.
    h.raw(Some(TOKEN_B), csr_for(&db), Some(&db)).await.unwrap();
    h.stop().await;
}

#[tokio::test]
async fn csr_san_must_be_the_impersonated_identity() {
    let h = Harness::start("csr-san").await;
    let web = id("default", "web");
    // Authorised for web (on node-a), but the CSR asks for db.
    let err = h
        .raw(Some(TOKEN_A), csr_for(&id("default", "db")), Some(&web))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let err = h
        .raw(Some(TOKEN_A), "not a csr".into(), Some(&web))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    h.stop().await;
}

#[tokio::test]
async fn a_pod_that_moves_is_certified_for_its_new_node_only() {
    let h = Harness::start("moves").await;
    let web = id("default", "web");
    let a = h.client(TOKEN_A, Duration::from_secs(600));
    let b = h.client(TOKEN_B, Duration::from_secs(600));
    a.fetch_certificate(&web).await.unwrap();
    assert!(b.fetch_certificate(&web).await.is_err());
    h.state_tx.send_replace(state(vec![
        pod("web-1", "web", "node-b"),
        pod("db-1", "db", "node-b"),
    ]));
    let err = h
        .raw(Some(TOKEN_A), csr_for(&web), Some(&web))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    b.fetch_certificate(&web).await.unwrap();
    h.stop().await;
}

#[tokio::test]
async fn lifetime_limits() {
    let h = Harness::start("lifetime").await;
    let web = id("default", "web");
    let channel =
        caclient::control_plane_channel(&h.address, h.ca.roots(), control_plane_id()).unwrap();
    let call = |secs: i64| {
        let mut request = Request::new(pb::IstioCertificateRequest {
            csr: csr_for(&web),
            validity_duration: secs,
            metadata: Some(Struct::with_string(
                pb::IMPERSONATED_IDENTITY,
                &web.to_string(),
            )),
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {TOKEN_A}").parse().unwrap(),
        );
        pb::create_certificate(channel.clone(), request)
    };
    let too_long = MAX_CERT_LIFETIME.as_secs() as i64 + 1;
    let err = call(too_long).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // 0 = the default (24 h): the leaf outlives an hour.
    let chain = call(0).await.unwrap().into_inner().cert_chain;
    let der = mesh::cert::parse_pem_certs(&chain[0], "leaf").unwrap();
    let (_, leaf) = X509Certificate::from_der(&der[0]).unwrap();
    let secs = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(secs >= DEFAULT_CERT_LIFETIME.as_secs() as i64, "{secs}");
    h.stop().await;
}

/// A fixed TokenReview answer per token.
struct FakeReviewer(BTreeMap<String, ReviewedToken>);

impl TokenReviewer for FakeReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewedToken, String>> {
        let answer = self.0.get(token).cloned().unwrap_or_default();
        Box::pin(async move { Ok(answer) })
    }
}

fn sa_token(ns: &str, sa: &str, node: Option<&str>) -> ReviewedToken {
    ReviewedToken {
        authenticated: true,
        username: format!("system:serviceaccount:{ns}:{sa}"),
        node_name: node.map(str::to_string),
        error: None,
    }
}

#[tokio::test]
async fn kubernetes_tokens_ztunnel_impersonates_other_service_accounts_only_themselves() {
    let reviewer = FakeReviewer(BTreeMap::from([
        (
            "ztunnel-a".to_string(),
            sa_token("istio-system", "ztunnel", Some("node-a")),
        ),
        (
            "web-pod".to_string(),
            sa_token("default", "web", Some("node-a")),
        ),
        (
            "unbound-ztunnel".to_string(),
            sa_token("istio-system", "ztunnel", None),
        ),
    ]));
    let auth = Arc::new(TokenReviewAuthenticator::new(reviewer, "cluster.local"));
    let h = Harness::start_with(auth, TempDir::new("kube")).await;
    let web = id("default", "web");
    let db = id("default", "db");

    // The node agent of node-a: pods on node-a only.
    h.raw(Some("ztunnel-a"), csr_for(&web), Some(&web))
        .await
        .unwrap();
    let err = h
        .raw(Some("ztunnel-a"), csr_for(&db), Some(&db))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // A pod's own token: its own identity, with or without impersonating itself…
    h.raw(Some("web-pod"), csr_for(&web), None).await.unwrap();
    h.raw(Some("web-pod"), csr_for(&web), Some(&web))
        .await
        .unwrap();
    // …but not a neighbour's, even one on the same node.
    h.state_tx.send_replace(state(vec![
        pod("web-1", "web", "node-a"),
        pod("db-1", "db", "node-a"),
    ]));
    let err = h
        .raw(Some("web-pod"), csr_for(&db), Some(&db))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // A ztunnel token without node binding cannot impersonate.
    let err = h
        .raw(Some("unbound-ztunnel"), csr_for(&web), Some(&web))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // Unknown to the API server.
    let err = h
        .raw(Some("forged"), csr_for(&web), Some(&web))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    h.stop().await;
}

/// The control plane goes away: the SecretManager keeps serving the certificate it has until
/// it expires, retrying meanwhile; then reports it expired.
#[tokio::test]
async fn ca_outage_keeps_the_old_certificate_until_expiry() {
    let h = Harness::start("outage").await;
    let web = id("default", "web");
    // Short-lived certificates so renewal (at half-life) and expiry happen within the test.
    let client = h.client(TOKEN_A, Duration::from_secs(3));
    let secrets = SecretManager::with_config(
        Arc::new(client),
        SecretManagerConfig {
            jitter: 0.0,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(100),
            min_refresh_interval: Duration::from_millis(10),
            fetch_timeout: Duration::from_secs(2),
        },
    );
    let first = secrets.get(&web).await.unwrap();
    let mut status = secrets.subscribe(&web).unwrap();

    h.stop().await;

    // Wait for the renewal attempt to fail (event-driven: each attempt publishes a status).
    loop {
        status.changed().await.unwrap();
        if status.borrow_and_update().state == CertState::Retrying {
            break;
        }
    }
    let during = secrets.get(&web).await.unwrap();
    assert_eq!(during.serial, first.serial, "old certificate still served");

    // Retries keep failing; once the certificate expires it is no longer handed out.
    loop {
        status.changed().await.unwrap();
        if status.borrow_and_update().usable().is_none() {
            break;
        }
    }
    let err = secrets.get(&web).await.unwrap_err();
    assert!(matches!(err, CaError::Expired(_)), "{err}");
}

/// The CA and the xDS server share the control plane's port: one tonic server on the xDS
/// server's TLS stack (its self-renewing certificate) carrying both services, one bootstrap
/// token file authenticating callers of both.
#[tokio::test]
async fn ca_and_xds_share_one_port_and_one_token_file() {
    use mesh::xds::gen::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use mesh::xds::gen::envoy::service::discovery::v3::DeltaDiscoveryRequest;

    let dir = TempDir::new("shared-port");
    let tokens = dir.0.join("tokens");
    std::fs::write(&tokens, format!("node-a {TOKEN_A}\n")).unwrap();
    let bootstrap = Arc::new(BootstrapTokenAuthenticator::from_file(&tokens).unwrap());

    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let (_state_tx, state_rx) = watch::channel(state(default_pods()));
    let (snapshots, _debounce) =
        crate::xds::debounced_snapshots(state_rx.clone(), Duration::from_millis(10));
    let xds = crate::xds::XdsServer::new(snapshots, Some(bootstrap.clone()));
    let ca_service = CaService::new(
        ca.clone(),
        bootstrap,
        state_rx,
        CaServiceConfig::new("cluster.local"),
    );
    let tls =
        crate::xds::tls::server_config(ca.clone(), control_plane_id(), Duration::from_secs(3600))
            .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(xds.into_service())
            .add_service(ca_service.into_server())
            .serve_with_incoming(crate::xds::tls::incoming(listener, tls)),
    );

    // CA over the shared port.
    let web = id("default", "web");
    let client = CaClient::new(CaClientConfig {
        address: address.clone(),
        roots: ca.roots().to_vec(),
        server_identity: control_plane_id(),
        token: TokenSource::Static(TOKEN_A.into()),
        lifetime: Duration::from_secs(600),
        cluster_id: None,
    })
    .unwrap();
    assert_eq!(client.fetch_certificate(&web).await.unwrap().identity, web);

    // xDS on the same port and channel kind, same token: the stream opens and the first
    // response arrives.
    let channel =
        caclient::control_plane_channel(&address, ca.roots(), control_plane_id()).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(DeltaDiscoveryRequest {
        type_url: "type.googleapis.com/istio.workload.Address".into(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut request = Request::new(requests);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN_A}").parse().unwrap(),
    );
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(request)
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!(first.type_url, "type.googleapis.com/istio.workload.Address");
    assert!(!first.resources.is_empty());
    drop(tx);
}
