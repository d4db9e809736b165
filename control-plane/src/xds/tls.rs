//! TLS for the xDS port (15012): the control plane's own certificate, issued by the CA it
//! holds and renewed at half-life, and an optional client certificate that must chain to the
//! mesh root. The connection's verified peer identity reaches the gRPC handler through
//! tonic's connect info ([`ConnInfo`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use mesh::ca::CertificateAuthority;
use mesh::identity::Identity;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;

/// How long a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the xDS TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("issuing the control plane's certificate for {identity}: {source}")]
    Issue {
        identity: Identity,
        #[source]
        source: Box<mesh::ca::CaError>,
    },
    #[error("the CA's root certificate is unusable as a trust anchor: {0}")]
    Root(rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("the issued key cannot sign: {0}")]
    Key(rustls::Error),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server side of the xDS port: the control plane proves `identity` (its SPIFFE id) with
/// certificates from `ca`, each valid for `lifetime` and replaced at half-life. Clients may
/// present a certificate; if they do it must chain to `ca`'s roots.
pub fn server_config(
    ca: Arc<CertificateAuthority>,
    identity: Identity,
    lifetime: Duration,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = mesh::tls::provider();
    let mut roots = RootCertStore::empty();
    for root in ca.roots() {
        roots.add(root.clone()).map_err(TlsSetupError::Root)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        // Bearer-token callers (ztunnel, as with istiod) have no client certificate.
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    let resolver = SelfCert::new(ca, identity, lifetime, provider.clone())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![mesh::tls::ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The control plane's own certificate, reissued from the CA it holds once past half-life.
/// Issuing is a local signature (no I/O), cheap enough to do inside a handshake.
struct SelfCert {
    ca: Arc<CertificateAuthority>,
    identity: Identity,
    lifetime: Duration,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl std::fmt::Debug for SelfCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfCert")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl SelfCert {
    fn new(
        ca: Arc<CertificateAuthority>,
        identity: Identity,
        lifetime: Duration,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, TlsSetupError> {
        let first = issue(&ca, &identity, lifetime, &provider)?;
        Ok(SelfCert {
            ca,
            identity,
            lifetime,
            provider,
            current: Mutex::new(first),
        })
    }
}

fn issue(
    ca: &CertificateAuthority,
    identity: &Identity,
    lifetime: Duration,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, SystemTime), TlsSetupError> {
    let cert = ca
        .issue(identity, lifetime)
        .map_err(|source| TlsSetupError::Issue {
            identity: identity.clone(),
            source: Box::new(source),
        })?;
    let key = provider
        .key_provider
        .load_private_key(cert.key().clone_key())
        .map_err(TlsSetupError::Key)?;
    let refresh = cert.refresh_at(0.0);
    Ok((
        Arc::new(CertifiedKey::new(cert.chain.clone(), key)),
        refresh,
    ))
}

impl ResolvesServerCert for SelfCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock only means another handshake panicked mid-swap; the pair inside is
        // still whole, so keep serving it.
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if SystemTime::now() >= current.1 {
            match issue(&self.ca, &self.identity, self.lifetime, &self.provider) {
                Ok(fresh) => *current = fresh,
                // The old certificate is still valid until its expiry: keep it and retry on
                // the next handshake.
                Err(e) => tracing::warn!(error = %e, "renewing the xDS server certificate"),
            }
        }
        Some(current.0.clone())
    }
}

/// What the gRPC handler learns about the connection (`request.extensions()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The first SPIFFE id of a client certificate that chained to the mesh root.
    pub peer_identity: Option<Identity>,
}

/// A server-side TLS connection carrying its [`ConnInfo`] into tonic.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes concurrently (a slow or
/// silent client holds up only itself), yielding finished connections. Stops when the
/// returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl futures::Stream<Item = io::Result<TlsConn>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<TlsConn>(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Per-connection errors (the peer reset before accept) or resource
                        // exhaustion (EMFILE), which clears up as connections close: pause
                        // briefly rather than spin.
                        tracing::debug!(error = %e, "xDS accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let stream = match handshake.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "xDS TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "xDS TLS handshake timed out");
                        return;
                    }
                };
                let peer_identity = mesh::tls::peer_identity_of(stream.get_ref().1);
                let info = ConnInfo {
                    remote: Some(remote),
                    peer_identity,
                };
                // The server is gone if this fails: nothing to do.
                let _ = tx
                    .send(TlsConn {
                        inner: stream,
                        info,
                    })
                    .await;
            });
        }
    });
    let guard = AbortOnDrop(accept);
    futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let conn = rx.recv().await?;
        Some((Ok(conn), (rx, guard)))
    })
}

/// Stops the accept loop with the stream that owns it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `service` on `listener` over TLS until `shutdown` completes.
pub async fn serve<S>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming(listener, config), shutdown)
        .await
}
