//! The HBONE server: one inbound HTTP/2 connection, one handler task per CONNECT stream.
//!
//! Invariants:
//! - Every stream gets exactly one answer: 400 from here for requests the codec rejects, else
//!   the handler's `accept`/`reject`, else 503 if the handler drops the request unanswered.
//! - Drain is graceful: GOAWAY goes out, streams already opened keep running, and
//!   `serve_connection` returns only when the connection has closed, i.e. once they are done.
//!   A caller that needs a deadline drops the future (which closes the connection abruptly).

use std::future::Future;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderValue, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, Instrument};

use super::codec::{parse_connect_request, Baggage, ConnectRequest, BAGGAGE_HEADER};
use super::settings;
use super::stream::H2Stream;
use super::HboneError;

/// A CONNECT request the codec accepted, waiting for the handler's decision.
pub struct IncomingConnect {
    pub request: ConnectRequest,
    parts: http::request::Parts,
    recv: Option<RecvStream>,
    respond: Option<SendResponse<Bytes>>,
}

impl std::fmt::Debug for IncomingConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingConnect")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl IncomingConnect {
    /// The raw request head, for headers the codec does not model.
    pub fn parts(&self) -> &http::request::Parts {
        &self.parts
    }

    /// Answers 200 (with `response_baggage` describing this destination, if given) and hands
    /// back the tunnel.
    pub fn accept(mut self, response_baggage: Option<Baggage>) -> Result<H2Stream, HboneError> {
        let (Some(mut respond), Some(recv)) = (self.respond.take(), self.recv.take()) else {
            // Both are only taken here or in `reject`, each of which consumes `self`.
            return Err(HboneError::ConnectionClosed);
        };
        let mut resp = Response::new(());
        if let Some(b) = response_baggage.filter(|b| !b.is_empty()) {
            if let Ok(v) = HeaderValue::from_bytes(b.to_string().as_bytes()) {
                resp.headers_mut().insert(BAGGAGE_HEADER, v);
            }
        }
        let send = respond.send_response(resp, false)?;
        Ok(H2Stream::new(send, recv, None))
    }

    /// Answers `status` (401 denied, 503 unavailable, ...) and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        if let Some(respond) = self.respond.take() {
            send_status(respond, status);
        }
    }
}

impl Drop for IncomingConnect {
    fn drop(&mut self) {
        // A handler that returns without deciding must not leave the client waiting forever.
        if let Some(respond) = self.respond.take() {
            send_status(respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

fn send_status(mut respond: SendResponse<Bytes>, status: StatusCode) {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    // Fails only when the stream is already reset, and then nobody is listening.
    let _ = respond.send_response(resp, true);
}

/// Serves one HBONE connection: calls `handler` once per CONNECT stream (spawned as its own
/// task); answers 400 itself for bad requests; stops accepting and sends GOAWAY when `drain`
/// resolves, then waits for in-flight streams to finish. A peer that stops answering PINGs is
/// dropped (`HboneError::ConnectionClosed`).
pub async fn serve_connection<IO, F, Fut>(
    io: IO,
    handler: F,
    drain: impl Future<Output = ()>,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(IncomingConnect) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conn = settings::server_builder()
        .handshake::<IO, Bytes>(io)
        .await
        .map_err(HboneError::Handshake)?;
    let keepalive = settings::keepalive(
        conn.ping_pong(),
        settings::PING_INTERVAL,
        settings::PING_TIMEOUT,
    );
    let mut keepalive = std::pin::pin!(keepalive);
    let mut drain = std::pin::pin!(drain);

    loop {
        tokio::select! {
            next = conn.accept() => match next {
                // The peer closed the connection (or sent GOAWAY and finished).
                None => return Ok(()),
                Some(Err(e)) => return Err(HboneError::H2(e)),
                Some(Ok((req, respond))) => dispatch(req, respond, &handler),
            },
            _ = &mut drain => {
                debug!("HBONE drain: sending GOAWAY");
                conn.graceful_shutdown();
                break;
            }
            e = &mut keepalive => {
                debug!(error = %e, "HBONE peer unresponsive, closing");
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                // Flush the GOAWAY if the transport still takes it; the error is the peer's.
                let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                return Err(HboneError::ConnectionClosed);
            }
        }
    }

    // Draining. Requests the client sent before it saw our GOAWAY are still served (h2 only
    // yields those with ids below the final GOAWAY's last-stream-id); the loop ends when every
    // stream is closed and the connection shuts.
    while let Some(next) = conn.accept().await {
        match next {
            Ok((req, respond)) => dispatch(req, respond, &handler),
            Err(e) => return Err(HboneError::H2(e)),
        }
    }
    Ok(())
}

fn dispatch<F, Fut>(req: http::Request<RecvStream>, mut respond: SendResponse<Bytes>, handler: &F)
where
    F: Fn(IncomingConnect) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let request = match parse_connect_request(&req) {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "rejecting HBONE request");
            let mut resp = Response::new(());
            *resp.status_mut() = e.status();
            let _ = respond.send_response(resp, true);
            return;
        }
    };
    let (parts, recv) = req.into_parts();
    let span = tracing::debug_span!("hbone_stream", authority = %request.authority);
    let incoming = IncomingConnect {
        request,
        parts,
        recv: Some(recv),
        respond: Some(respond),
    };
    let fut = handler(incoming);
    tokio::spawn(fut.instrument(span));
}
