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
use mesh::identity::Identity;
use mesh::tls::{ServerAcceptance, SpiffeServerVerifier};
use rustls::client::verify_server_name;
use rustls::server::ParsedCertificate;
use rustls_pki_types::{CertificateDer, ServerName};
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
    let verifier = SpiffeServerVerifier::new(roots, identity)
        .map_err(|e| XdsTlsError::BadRoot(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(mesh::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![mesh::tls::ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

impl ServerAcceptance for ServerIdentity {
    fn accept(
        &self,
        found: &[Identity],
        leaf: &ParsedCertificate<'_>,
        server_name: &ServerName<'_>,
    ) -> Result<(), Arc<dyn std::error::Error + Send + Sync>> {
        if found.iter().any(|id| self.accepts(id)) || verify_server_name(leaf, server_name).is_ok()
        {
            return Ok(());
        }
        Err(Arc::new(UnexpectedServer {
            host: server_name.to_str().into_owned(),
            expected: self.to_string(),
            found: found.iter().map(ToString::to_string).collect(),
        }))
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
