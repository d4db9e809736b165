//! HBONE: TCP tunnelled as HTTP/2 CONNECT streams (inside mTLS, which `mesh::tls` provides).
//!
//! Layout, inner to outer:
//! - [`codec`]: the CONNECT request/response headers (`:authority`, `baggage`, `forwarded`,
//!   `traceparent`) as typed values. Pure: no tokio, no I/O, never panics on peer input.
//! - [`settings`]: the HTTP/2 settings Istio uses, applied to h2 builders, and the PING keepalive.
//! - [`stream`]: [`H2Stream`], one CONNECT stream as `AsyncRead + AsyncWrite`.
//! - [`server`]: [`serve_connection`], one inbound HBONE connection, one handler task per stream.
//! - [`pool`]: [`Pool`], outbound connections shared per [`PoolKey`], bounded streams each.
//!
//! All async entry points take an already-established byte stream, so TLS stays out of here and
//! the tests can run over plain TCP.

pub mod codec;
pub mod pool;
pub mod server;
pub mod settings;
pub mod stream;

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
mod pool_tests;

use std::io;

pub use codec::{
    build_connect_request, parse_connect_request, Baggage, ConnectError, ConnectRequest, Forwarded,
    TraceParent,
};
pub use pool::{Pool, PoolConfig, PoolKey};
pub use server::{serve_connection, IncomingConnect};
pub use stream::H2Stream;

/// Why an HBONE operation failed. The classification helpers ([`HboneError::is_retryable`],
/// [`HboneError::status`]) let callers pick a response flag or retry without downcasting.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// The peer answered the CONNECT with a non-200 status (401 denied, 503 unavailable, ...).
    #[error("peer answered CONNECT with status {0}")]
    Status(http::StatusCode),
    /// Opening the underlying connection failed (TCP connect, TLS handshake: whatever `dial` does).
    #[error("dialing the HBONE peer failed: {0}")]
    Dial(io::Error),
    /// The HTTP/2 preface/SETTINGS exchange failed on a freshly dialed connection.
    #[error("HTTP/2 handshake with the HBONE peer failed: {0}")]
    Handshake(h2::Error),
    /// An HTTP/2 protocol, stream or connection error after the handshake.
    #[error("HTTP/2 error: {0}")]
    H2(h2::Error),
    /// The connection went away (GOAWAY, close) before the CONNECT stream could be used.
    #[error("HBONE connection closed before the stream was established")]
    ConnectionClosed,
}

impl HboneError {
    /// The HTTP status the peer answered with, if that is what failed.
    pub fn status(&self) -> Option<http::StatusCode> {
        match self {
            HboneError::Status(s) => Some(*s),
            _ => None,
        }
    }

    /// Whether the request never reached the peer's application, so repeating it on another
    /// connection is safe: refused streams, GOAWAY before processing, a connection that closed
    /// under us, or a failed dial. A peer's status answer is never retryable here.
    pub fn is_retryable(&self) -> bool {
        match self {
            HboneError::Status(_) => false,
            HboneError::Dial(_) | HboneError::Handshake(_) | HboneError::ConnectionClosed => true,
            HboneError::H2(e) => {
                e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
            }
        }
    }
}

impl From<h2::Error> for HboneError {
    fn from(e: h2::Error) -> Self {
        HboneError::H2(e)
    }
}
