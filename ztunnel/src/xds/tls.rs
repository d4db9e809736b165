//! TLS to the control plane: a rustls client config that trusts only the mesh root and checks
//! who the server is, and the tonic connector that uses it.
//!
//! Who counts as the control plane: its chain must reach the configured root, and then either
//! - a DNS/IP SAN matches the host of `XDS_ADDRESS` (a conventional server cert, as istiod has), or
//! - a SPIFFE URI SAN is one the config accepts ([`ServerIdentity`]): an exact identity, or by
//!   default any identity of the mesh's root (system) namespace, where only the control plane
//!   runs. A workload certificate from another namespace is refused, so a compromised pod that
//!   intercepts the connection cannot pose as the control plane.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use mesh::cert::spiffe_ids_of;
use mesh::identity::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Which SPIFFE identities may speak for the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerIdentity {
    /// Exactly this identity (`AMBIT_XDS_SERVER_IDENTITY`).
    Exact(Identity),
    /// Any service account of this namespace in this trust domain (the default: the root
    /// namespace, `AMBIT_ROOT_NAMESPACE`).
    Namespace {
        trust_domain: String,
        namespace: String,
    },
}

impl ServerIdentity {
    fn accepts(&self, id: &Identity) -> bool {
        match self {
            ServerIdentity::Exact(want) => want == id,
            ServerIdentity::Namespace {
                trust_domain,
                namespace,
            } => id.trust_domain() == trust_domain && id.namespace() == namespace,
        }
    }
}

impl fmt::Display for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerIdentity::Exact(id) => write!(f, "{id}"),
            ServerIdentity::Namespace {
                trust_domain,
                namespace,
            } => write!(f, "spiffe://{trust_domain}/ns/{namespace}/sa/*"),
        }
    }
}

/// Why the control plane's certificate was refused (carried in rustls' `Other` error so the
/// connect failure log says what was wrong).
#[derive(Debug, thiserror::Error)]
#[error("control plane certificate is valid neither for host {host:?} nor for identity {expected} (it has {found:?})")]
struct UnexpectedServer {
    host: String,
    expected: String,
    found: Vec<String>,
}

/// Why a TLS client config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum XdsTlsError {
    #[error("root certificate rejected: {0}")]
    BadRoot(String),
    #[error("rustls rejected the configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client config trusting only `roots`, accepting the server as described in the module
/// header, with ALPN h2 (gRPC).
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: ServerIdentity,
) -> Result<Arc<rustls::ClientConfig>, XdsTlsError> {
    let provider = mesh::tls::provider();
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| XdsTlsError::BadRoot(e.to_string()))?;
    }
    let verifier = ControlPlaneVerifier {
        roots: Arc::new(store),
        identity,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![mesh::tls::ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

struct ControlPlaneVerifier {
    roots: Arc<RootCertStore>,
    identity: ServerIdentity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for ControlPlaneVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneVerifier")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ControlPlaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let found = spiffe_ids_of(end_entity);
        if found.iter().any(|id| self.identity.accepts(id)) {
            return Ok(ServerCertVerified::assertion());
        }
        if verify_server_name(&parsed, server_name).is_ok() {
            return Ok(ServerCertVerified::assertion());
        }
        let err = UnexpectedServer {
            host: server_name.to_str().into_owned(),
            expected: self.identity.to_string(),
            found: found.iter().map(ToString::to_string).collect(),
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(err)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// tonic connector: TCP to the configured address, then TLS with [`client_config`]. tonic's
/// own TLS would insist on a hostname match, which a SPIFFE-only control-plane cert lacks.
#[derive(Clone)]
pub struct TlsConnectorService {
    pub address: String,
    pub server_name: ServerName<'static>,
    pub config: Arc<rustls::ClientConfig>,
}

impl tonic::codegen::Service<http::Uri> for TlsConnectorService {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.address).await?;
            // gRPC streams are long-lived and latency-sensitive small messages.
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(this.config)
                .connect(this.server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
