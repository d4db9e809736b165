//! TLS on the control plane's gRPC port (15012), both ends: the client config the CA client
//! (and the xDS client) dial with, and the server side (config + a tonic-ready stream of
//! accepted connections) the CA and xDS services are served on.
//!
//! The control plane is authenticated by its certificate (chain to the mesh roots plus its
//! SPIFFE id); callers authenticate with a bearer token inside gRPC, so no client certificate
//! is asked for (a node agent has none before its first CA call anyway).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use rustls::server::ParsedCertificate;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::cert::WorkloadCertificate;
use crate::identity::Identity;
use crate::tls::{provider, ServerAcceptance, SpiffeServerVerifier, TlsError, ALPN_H2};

/// The control plane's certificate does not prove the expected identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("control plane certificate has identities {found:?}, expected {expected}")]
pub struct ControlPlaneIdentityError {
    pub found: Vec<String>,
    pub expected: String,
}

/// A TLS 1.3 client config (ALPN h2, no resumption, no client certificate) that accepts only a
/// server whose chain reaches `roots` and whose certificate carries `expected` as a URI SAN.
///
/// No hostname check: the control plane is addressed by IP or by any DNS name, and what matters
/// is which identity the mesh CA certified it as. Without the identity check, any workload
/// certificate from the same CA could pose as the control plane and collect node tokens.
pub fn control_plane_client_config(
    roots: &[CertificateDer<'static>],
    expected: Identity,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = SpiffeServerVerifier::new(roots, ControlPlaneIdentity(expected))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // A resumed session skips certificate verification, where the identity check lives.
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The control plane must prove exactly this identity.
#[derive(Debug)]
struct ControlPlaneIdentity(Identity);

impl ServerAcceptance for ControlPlaneIdentity {
    fn accept(
        &self,
        found: &[Identity],
        _leaf: &ParsedCertificate<'_>,
        _server_name: &ServerName<'_>,
    ) -> Result<(), Arc<dyn std::error::Error + Send + Sync>> {
        if found.contains(&self.0) {
            return Ok(());
        }
        let e = ControlPlaneIdentityError {
            found: found.iter().map(ToString::to_string).collect(),
            expected: self.0.to_string(),
        };
        tracing::warn!(error = %e, "control plane certificate rejected");
        Err(Arc::new(e))
    }
}

/// How long a client may take to complete the TLS handshake before it is dropped, so that idle
/// or slow sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server config for the control plane's gRPC port: TLS 1.3, ALPN h2, presenting `cert` (the
/// control plane's own identity, issued by the mesh CA); no client certificate requested.
pub fn control_plane_server_config(
    cert: &WorkloadCertificate,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key().clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// One accepted, handshaken TLS connection, in the shape tonic's `serve_with_incoming` wants.
pub struct ServerTlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    remote: Option<SocketAddr>,
}

/// What a tonic handler can learn about the connection (request extension).
#[derive(Debug, Clone)]
pub struct ServerTlsConnInfo {
    pub remote_addr: Option<SocketAddr>,
}

impl tonic::transport::server::Connected for ServerTlsConn {
    type ConnectInfo = ServerTlsConnInfo;

    fn connect_info(&self) -> ServerTlsConnInfo {
        ServerTlsConnInfo {
            remote_addr: self.remote,
        }
    }
}

impl AsyncRead for ServerTlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerTlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts on `listener` and yields connections whose TLS handshake completed. Handshakes run
/// in their own tasks, so one slow client cannot hold up the others; failed handshakes are
/// logged and dropped rather than yielded (an error item would end some servers' accept loop).
/// The accept task ends when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = Result<ServerTlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<ServerTlsConn>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: transient; back off a little instead of spinning.
                        tracing::warn!(error = %e, "control-plane accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx
                            .send(ServerTlsConn {
                                stream,
                                remote: Some(remote),
                            })
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok(conn), rx))
    })
}
