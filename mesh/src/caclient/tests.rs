//! The CA client against a minimal in-process CA over real TLS. The control plane's real
//! service (authentication, node authorization) is tested in the control-plane crate.

use std::sync::Mutex;

use tokio::net::TcpListener;

use super::proto::{
    IstioCertificateResponse, IstioCertificateService, IstioCertificateServiceServer,
};
use super::*;
use crate::ca::CertificateAuthority;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

fn control_plane_id() -> Identity {
    id("istio-system", "ambit-control-plane")
}

/// What the fake CA saw, and how it answers.
#[derive(Default)]
struct Seen {
    tokens: Vec<String>,
    cluster_ids: Vec<String>,
    impersonated: Vec<String>,
}

/// Signs whatever the ImpersonatedIdentity names (no authorization: that is the control plane's
/// job), or, when `sign_as` is set, deliberately signs a different identity.
struct FakeCa {
    ca: Arc<CertificateAuthority>,
    seen: Arc<Mutex<Seen>>,
    sign_as: Option<Identity>,
}

#[tonic::async_trait]
impl IstioCertificateService for FakeCa {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let md = request.metadata();
        let header = |k: &str| {
            md.get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let req = request.get_ref();
        let impersonated = req
            .metadata
            .as_ref()
            .and_then(|m| m.string(IMPERSONATED_IDENTITY))
            .unwrap_or_default()
            .to_string();
        {
            let mut seen = self.seen.lock().unwrap();
            seen.tokens.push(header("authorization"));
            seen.cluster_ids.push(header("clusterid"));
            seen.impersonated.push(impersonated.clone());
        }
        self.sign(&impersonated, &req.csr, req.validity_duration)
            .map(|cert_chain| tonic::Response::new(IstioCertificateResponse { cert_chain }))
            .map_err(tonic::Status::invalid_argument)
    }
}

impl FakeCa {
    fn sign(&self, impersonated: &str, csr: &str, secs: i64) -> Result<Vec<String>, String> {
        let asked = Identity::parse(impersonated).map_err(|e| e.to_string())?;
        let csr_id = self.sign_as.clone().unwrap_or(asked);
        // To mis-sign on purpose, the fake has to lie to sign_csr about the CSR too.
        let csr = if self.sign_as.is_some() {
            make_csr(&csr_id).map_err(|e| e.to_string())?.1
        } else {
            csr.to_string()
        };
        self.ca
            .sign_csr(&csr, &csr_id, Duration::from_secs(secs as u64))
            .map_err(|e| e.to_string())
    }
}

struct Harness {
    address: String,
    ca: Arc<CertificateAuthority>,
    seen: Arc<Mutex<Seen>>,
}

/// Serves a fake CA on 127.0.0.1 with a certificate for `server_id`, issued by `ca`.
async fn serve(
    ca: Arc<CertificateAuthority>,
    server_id: &Identity,
    sign_as: Option<Identity>,
) -> Harness {
    let server_cert = ca.issue(server_id, Duration::from_secs(3600)).unwrap();
    let tls = tls::control_plane_server_config(&server_cert).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let svc = IstioCertificateServiceServer::new(FakeCa {
        ca: ca.clone(),
        seen: seen.clone(),
        sign_as,
    });
    let incoming = tls::tls_incoming(listener, tokio_rustls::TlsAcceptor::from(tls));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    Harness { address, ca, seen }
}

fn config(h: &Harness, roots: Vec<CertificateDer<'static>>) -> CaClientConfig {
    CaClientConfig {
        address: h.address.clone(),
        roots,
        server_identity: control_plane_id(),
        token: TokenSource::Static("node-token-123".into()),
        lifetime: Duration::from_secs(600),
        cluster_id: Some("Kubernetes".into()),
    }
}

#[tokio::test]
async fn fetches_a_certificate_over_tls() {
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let h = serve(ca.clone(), &control_plane_id(), None).await;
    let client = CaClient::new(config(&h, h.ca.roots().to_vec())).unwrap();
    let want = id("default", "web");
    let cert = client.fetch_certificate(&want).await.unwrap();
    assert_eq!(cert.identity, want);
    // The requested lifetime reached the CA (plus the CA's backdating of not_before).
    let left = cert
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left <= Duration::from_secs(600), "{left:?}");
    assert!(left > Duration::from_secs(500), "{left:?}");
    assert_eq!(cert.chain.last(), ca.roots().last());

    let seen = h.seen.lock().unwrap();
    assert_eq!(seen.tokens, vec!["Bearer node-token-123".to_string()]);
    assert_eq!(seen.cluster_ids, vec!["Kubernetes".to_string()]);
    assert_eq!(seen.impersonated, vec![want.to_string()]);
}

#[tokio::test]
async fn token_file_is_read_per_request() {
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let h = serve(ca, &control_plane_id(), None).await;
    let dir = std::env::temp_dir().join(format!("ambit-caclient-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "first\n").unwrap();
    let mut cfg = config(&h, h.ca.roots().to_vec());
    cfg.token = TokenSource::File(path.clone());
    let client = CaClient::new(cfg).unwrap();
    client.fetch_certificate(&id("a", "b")).await.unwrap();
    std::fs::write(&path, "second").unwrap();
    client.fetch_certificate(&id("a", "b")).await.unwrap();
    std::fs::write(&path, "  \n").unwrap();
    let err = client.fetch_certificate(&id("a", "b")).await.unwrap_err();
    assert!(matches!(err, CaClientError::Token { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        h.seen.lock().unwrap().tokens,
        vec!["Bearer first".to_string(), "Bearer second".to_string()]
    );
}

/// A server certified by the mesh CA but as some workload, not the control plane, must not get
/// the node's token.
#[tokio::test]
async fn refuses_a_server_with_another_identity() {
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let h = serve(ca, &id("default", "evil"), None).await;
    let client = CaClient::new(config(&h, h.ca.roots().to_vec())).unwrap();
    let err = client.fetch_certificate(&id("a", "b")).await.unwrap_err();
    assert!(matches!(err, CaClientError::Rpc { .. }), "{err}");
    assert!(h.seen.lock().unwrap().tokens.is_empty());
}

#[tokio::test]
async fn refuses_a_server_from_another_root() {
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let other = CertificateAuthority::generate("cluster.local").unwrap();
    let h = serve(ca, &control_plane_id(), None).await;
    let client = CaClient::new(config(&h, other.roots().to_vec())).unwrap();
    assert!(client.fetch_certificate(&id("a", "b")).await.is_err());
    assert!(h.seen.lock().unwrap().tokens.is_empty());
}

#[tokio::test]
async fn refuses_a_certificate_for_another_identity() {
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let h = serve(ca, &control_plane_id(), Some(id("default", "other"))).await;
    let client = CaClient::new(config(&h, h.ca.roots().to_vec())).unwrap();
    let err = client.fetch_certificate(&id("a", "b")).await.unwrap_err();
    // The fake signed a different key too, so whichever check fires first names the problem.
    assert!(
        matches!(
            err,
            CaClientError::WrongIdentity { .. } | CaClientError::Cert(CertError::KeyMismatch)
        ),
        "{err}"
    );
}

#[test]
fn response_checks() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let other = CertificateAuthority::generate("cluster.local").unwrap();
    let want = id("ns", "sa");
    let (key, csr) = make_csr(&want).unwrap();
    let signed = ca.sign_csr(&csr, &want, Duration::from_secs(60)).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let client_for = |roots: &[CertificateDer<'static>]| {
        CaClient::new(CaClientConfig {
            address: "127.0.0.1:1".into(),
            roots: roots.to_vec(),
            server_identity: control_plane_id(),
            token: TokenSource::Static("t".into()),
            lifetime: Duration::from_secs(60),
            cluster_id: None,
        })
        .unwrap()
    };

    let good = client_for(ca.roots());
    let cert = good
        .check_response(&want, key.clone_key(), &signed)
        .unwrap();
    assert_eq!(cert.identity, want);
    // All in one PEM string is accepted too.
    let joined = vec![signed.concat()];
    good.check_response(&want, key.clone_key(), &joined)
        .unwrap();

    let err = good
        .check_response(&want, key.clone_key(), &[])
        .unwrap_err();
    assert!(matches!(err, CaClientError::BadResponse(_)), "{err}");
    let err = good
        .check_response(&want, key.clone_key(), &["garbage".to_string()])
        .unwrap_err();
    assert!(matches!(err, CaClientError::Cert(_)), "{err}");
    let err = good
        .check_response(&id("ns", "other"), key.clone_key(), &signed)
        .unwrap_err();
    assert!(matches!(err, CaClientError::WrongIdentity { .. }), "{err}");
    let (other_key, _) = make_csr(&want).unwrap();
    let err = good.check_response(&want, other_key, &signed).unwrap_err();
    assert!(
        matches!(err, CaClientError::Cert(CertError::KeyMismatch)),
        "{err}"
    );

    let untrusting = client_for(other.roots());
    let err = untrusting.check_response(&want, key, &signed).unwrap_err();
    assert!(matches!(err, CaClientError::Untrusted(_)), "{err}");
}

#[test]
fn addresses() {
    let ok = |a: &str| split_address(a).unwrap();
    assert_eq!(ok("cp:15012"), ("cp".into(), 15012));
    assert_eq!(ok("cp"), ("cp".into(), DEFAULT_PORT));
    assert_eq!(
        ok("https://istiod.istio-system.svc:15012"),
        ("istiod.istio-system.svc".into(), 15012)
    );
    assert_eq!(ok("http://10.0.0.1:99/"), ("10.0.0.1".into(), 99));
    assert_eq!(ok("[::1]:15012"), ("::1".into(), 15012));
    assert_eq!(ok("[fd00::1]"), ("fd00::1".into(), DEFAULT_PORT));
    for bad in [
        "",
        "cp:0",
        "cp:x",
        "cp:70000",
        "::1",
        "[::1",
        "[::1]x",
        "https://cp/path",
        ":15012",
    ] {
        assert!(split_address(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn csr_is_what_the_ca_accepts() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let want = id("ns", "sa");
    let (_key, csr) = make_csr(&want).unwrap();
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    ca.sign_csr(&csr, &want, Duration::from_secs(60)).unwrap();
    // sign_csr ties the CSR to its SAN: a CSR for one identity cannot be signed for another.
    assert!(ca
        .sign_csr(&csr, &id("ns", "other"), Duration::from_secs(60))
        .is_err());
}

#[test]
fn token_is_never_printed() {
    let dbg = format!("{:?}", TokenSource::Static("s3cret".into()));
    assert!(!dbg.contains("s3cret"), "{dbg}");
}
