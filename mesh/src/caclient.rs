//! ztunnel's client of the control plane's CA (`istio.v1.auth.IstioCertificateService`).
//!
//! Per certificate: a fresh ECDSA P-256 key is generated here and never leaves the process; a
//! PKCS#10 CSR with an empty subject and one URI SAN (the SPIFFE id) is sent with the caller's
//! bearer token and `ImpersonatedIdentity` (ztunnel asks on behalf of the workloads on its
//! node); the returned chain is checked before it is handed out:
//! - it verifies against the configured mesh roots (a misconfigured or rotated-away CA shows up
//!   as a failed fetch, retried while the old certificate keeps serving, not as failed
//!   handshakes later);
//! - its leaf proves exactly the identity asked for and matches the generated key.
//!
//! The control plane is authenticated by TLS ([`tls::control_plane_client_config`]); the
//! connection is made lazily and re-made on failure by tonic, so a control plane that is down
//! at start-up or restarts later costs failed fetches, never a stuck client.
//! [`crate::certmanager::SecretManager`] supplies renewal at half-life and retries.

pub mod proto;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::ca::CaError;
use crate::cert::{parse_pem_certs, CertError, WorkloadCertificate};
use crate::certmanager::CertSource;
use crate::identity::Identity;
use crate::tls::TlsError;
use proto::{IstioCertificateRequest, Struct, IMPERSONATED_IDENTITY};

/// Port of the control plane's gRPC endpoint (xDS + CA) when the address names none.
pub const DEFAULT_PORT: u16 = 15012;
/// How long establishing a connection to the CA may take before the fetch fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the bearer token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// Re-read on every request: Kubernetes rotates projected service-account tokens in place,
    /// and an operator may replace a bootstrap token file without restarting ztunnel.
    File(PathBuf),
    /// A fixed token (tests, or a token handed over by a parent process).
    Static(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
            // Never print a credential.
            TokenSource::Static(_) => f.write_str("Static(<redacted>)"),
        }
    }
}

/// Everything the CA client needs.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `host:port`, `host` (port 15012) or `https://host:port` as Istio's `CA_ADDRESS` spells it.
    pub address: String,
    /// Mesh roots: the control plane's certificate and every returned chain must reach one.
    pub roots: Vec<CertificateDer<'static>>,
    /// The SPIFFE id the control plane's certificate must carry.
    pub server_identity: Identity,
    pub token: TokenSource,
    /// Certificate lifetime to ask for.
    pub lifetime: Duration,
    /// Sent as the `clusterid` header when set (Istio's multi-cluster CA routing).
    pub cluster_id: Option<String>,
}

/// Why a certificate could not be obtained from the control plane.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaClientError {
    #[error("CA address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("TLS towards the CA: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot read the CA token from {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("building the CSR failed: {0}")]
    Csr(String),
    #[error("CA refused or failed ({code:?}): {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("CA response unusable: {0}")]
    BadResponse(String),
    #[error("CA returned a chain that does not verify against the mesh roots: {0}")]
    Untrusted(String),
    #[error("CA returned a certificate for {got}, not {requested}")]
    WrongIdentity { requested: String, got: String },
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl CaClientError {
    /// Whether retrying the same request can succeed without an operator changing something.
    /// (The SecretManager retries everything with backoff; this is for logs and metrics.)
    pub fn is_retryable(&self) -> bool {
        match self {
            CaClientError::Rpc { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
                    | tonic::Code::Internal
                    | tonic::Code::Unknown
            ),
            // A token file being rewritten, or a pod not yet in the CA's view of the node.
            CaClientError::Token { .. } => true,
            _ => false,
        }
    }
}

/// A [`CertSource`] backed by the control plane's CA. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct CaClient {
    channel: Channel,
    roots: Arc<RootCertStore>,
    root_ders: Arc<Vec<CertificateDer<'static>>>,
    token: TokenSource,
    lifetime: Duration,
    cluster_id: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("token", &self.token)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl CaClient {
    /// Prepares the client; nothing is connected until the first fetch. Must be called within
    /// a Tokio runtime (the channel spawns its connection task).
    pub fn new(config: CaClientConfig) -> Result<Self, CaClientError> {
        let channel =
            control_plane_channel(&config.address, &config.roots, config.server_identity)?;
        let mut roots = RootCertStore::empty();
        for root in &config.roots {
            // Already accepted by the TLS config of the channel.
            roots
                .add(root.clone())
                .map_err(|e| TlsError::BadRoot(e.to_string()))?;
        }
        let cluster_id = match config.cluster_id {
            Some(id) => Some(MetadataValue::try_from(id.as_str()).map_err(|_| {
                CaClientError::BadAddress {
                    address: config.address.clone(),
                    reason: format!("cluster id {id:?} is not a valid header value"),
                }
            })?),
            None => None,
        };
        Ok(CaClient {
            channel,
            roots: Arc::new(roots),
            root_ders: Arc::new(config.roots),
            token: config.token,
            lifetime: config.lifetime,
            cluster_id,
        })
    }

    /// Asks the CA for a certificate for `id` (see the module doc for what is checked).
    pub async fn fetch_certificate(
        &self,
        id: &Identity,
    ) -> Result<WorkloadCertificate, CaClientError> {
        let (key, csr) = make_csr(id)?;
        let token = self.read_token()?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(Struct::with_string(IMPERSONATED_IDENTITY, &id.to_string())),
        });
        let bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            CaClientError::Token {
                path: self.token_path(),
                reason: "token is not a valid header value".to_string(),
            }
        })?;
        request.metadata_mut().insert("authorization", bearer);
        if let Some(cluster) = &self.cluster_id {
            request.metadata_mut().insert("clusterid", cluster.clone());
        }
        let response = proto::create_certificate(self.channel.clone(), request)
            .await
            .map_err(|s| CaClientError::Rpc {
                code: s.code(),
                message: s.message().to_string(),
            })?
            .into_inner();
        self.check_response(id, key, &response.cert_chain)
    }

    fn check_response(
        &self,
        id: &Identity,
        key: PrivateKeyDer<'static>,
        pems: &[String],
    ) -> Result<WorkloadCertificate, CaClientError> {
        if pems.is_empty() {
            return Err(CaClientError::BadResponse("empty certificate chain".into()));
        }
        // Each entry is normally one certificate, but a CA may bundle several in one string.
        let mut chain = Vec::new();
        for pem in pems {
            chain.extend(parse_pem_certs(pem, "CA response certificate chain")?);
        }
        let leaf = ParsedCertificate::try_from(&chain[0])
            .map_err(|e| CaClientError::Untrusted(e.to_string()))?;
        let algs = crate::tls::provider().signature_verification_algorithms;
        verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &self.roots,
            &chain[1..],
            UnixTime::now(),
            algs.all,
        )
        .map_err(|e| CaClientError::Untrusted(e.to_string()))?;
        let cert = WorkloadCertificate::from_parts(chain, key, self.root_ders.to_vec())?;
        if &cert.identity != id {
            return Err(CaClientError::WrongIdentity {
                requested: id.to_string(),
                got: cert.identity.to_string(),
            });
        }
        Ok(cert)
    }

    fn read_token(&self) -> Result<String, CaClientError> {
        let token = match &self.token {
            TokenSource::Static(t) => t.clone(),
            TokenSource::File(path) => {
                std::fs::read_to_string(path).map_err(|e| CaClientError::Token {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(CaClientError::Token {
                path: self.token_path(),
                reason: "token is empty".to_string(),
            });
        }
        Ok(token.to_string())
    }

    fn token_path(&self) -> PathBuf {
        match &self.token {
            TokenSource::File(p) => p.clone(),
            TokenSource::Static(_) => PathBuf::from("<static token>"),
        }
    }
}

impl CertSource for CaClient {
    fn fetch(&self, id: &Identity) -> BoxFuture<'static, Result<WorkloadCertificate, CaError>> {
        let client = self.clone();
        let id = id.clone();
        Box::pin(async move {
            client
                .fetch_certificate(&id)
                .await
                .map_err(|e| CaError::Unavailable {
                    identity: id.to_string(),
                    reason: e.to_string(),
                })
        })
    }
}

/// A lazily connected gRPC channel to the control plane at `address` (`host:port`, `host`, or
/// `https://host:port`), over TLS that accepts only a server proving `server_identity` under
/// `roots`. Reconnects by itself after failures. Must be called within a Tokio runtime.
pub fn control_plane_channel(
    address: &str,
    roots: &[CertificateDer<'static>],
    server_identity: Identity,
) -> Result<Channel, CaClientError> {
    let (host, port) = split_address(address)?;
    let tls = tls::control_plane_client_config(roots, server_identity)?;
    // The scheme only shapes the `:scheme` pseudo-header; TLS is done by our connector
    // (tonic refuses an `https` URI when its own TLS feature is off).
    let uri = format!("http://{}:{port}", bracket(&host));
    let endpoint = Endpoint::from_shared(uri).map_err(|e| CaClientError::BadAddress {
        address: address.to_string(),
        reason: e.to_string(),
    })?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(TlsConnector {
            tls: tokio_rustls::TlsConnector::from(tls),
        }))
}

/// A fresh P-256 key and a PEM CSR for `id`: empty subject, exactly one URI SAN, as
/// [`crate::ca::CertificateAuthority::sign_csr`] requires.
pub fn make_csr(id: &Identity) -> Result<(PrivateKeyDer<'static>, String), CaClientError> {
    let csr_err = |e: rcgen::Error| CaClientError::Csr(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| CaClientError::Csr(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(csr_err)?
        .pem()
        .map_err(csr_err)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((key, csr))
}

/// Splits `host:port` / `host` / `scheme://host:port[/]` into host and port.
fn split_address(address: &str) -> Result<(String, u16), CaClientError> {
    let bad = |reason: &str| CaClientError::BadAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let rest = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('/') {
        return Err(bad("expected host:port"));
    }
    // "[v6]:port", "[v6]", "host:port", "host"
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            ),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => return Err(bad("IPv6 addresses need [brackets]")),
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad("port is not a number 1-65535"))?,
        None => DEFAULT_PORT,
    };
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok((host.to_string(), port))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Dials TCP and runs the TLS handshake for tonic's channel.
#[derive(Clone)]
struct TlsConnector {
    tls: tokio_rustls::TlsConnector,
}

impl tonic::codegen::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let host = uri
                .host()
                .ok_or_else(|| invalid("CA URI has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(DEFAULT_PORT);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // SNI is off and the verifier ignores the name; it only has to be well-formed.
            let name = ServerName::try_from(host)
                .map_err(|_| invalid("CA host is neither an IP address nor a DNS name"))?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests;
