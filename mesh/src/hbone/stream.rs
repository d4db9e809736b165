//! [`H2Stream`]: one HBONE CONNECT stream as a byte pipe (`AsyncRead + AsyncWrite`).
//!
//! Invariants:
//! - Flow-control capacity is released only as the reader consumes bytes, so a slow reader
//!   back-pressures the peer (at most one DATA frame, <= 1 MiB, sits in `pending`).
//! - `poll_shutdown` sends END_STREAM once (half-close); reading continues until the peer's
//!   END_STREAM, which reads as EOF.
//! - A peer reset maps to an `io::Error` (kind `ConnectionReset`, or `ConnectionRefused` for
//!   REFUSED_STREAM), except RST NO_ERROR, which HTTP/2 uses for "I have all I need" and is EOF.
//! - An optional drop guard (the pool's stream slot) lives exactly as long as the stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest chunk reserved per write: one frame's worth keeps a single writer from hogging the
/// connection window while still sending full frames.
const MAX_WRITE_CHUNK: usize = super::settings::MAX_FRAME_SIZE as usize;

/// One CONNECT stream, client or server side.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Bytes of the last DATA frame not yet handed to the reader (capacity not yet released).
    pending: Bytes,
    write_closed: bool,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id().as_u32())
            .field("pending", &self.pending.len())
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            write_closed: false,
            _guard: guard,
        }
    }

    /// The HTTP/2 stream id (odd: client-initiated).
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }

    /// Next chunk of received bytes without copying; `Ok(None)` at EOF. Interleaving this with
    /// `poll_read` is fine: both consume the same buffered frame first.
    pub fn poll_recv_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if self.pending.is_empty() {
            match ready!(self.poll_fill(cx)) {
                Ok(true) => {}
                Ok(false) => return Poll::Ready(Ok(None)),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let chunk = std::mem::take(&mut self.pending);
        self.release(chunk.len());
        Poll::Ready(Ok(Some(chunk)))
    }

    /// Async form of [`H2Stream::poll_recv_bytes`].
    pub async fn recv_bytes(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_recv_bytes(cx)).await
    }

    /// Sends `data` without copying, waiting for flow-control capacity as needed.
    pub async fn send_bytes(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_send_capacity(cx, data.len())).await?;
            let chunk = data.split_to(n);
            self.send.send_data(chunk, false).map_err(h2_to_io)?;
        }
        Ok(())
    }

    /// Sends RST_STREAM with `reason`: an abortive close, as opposed to `shutdown`.
    pub fn reset(&mut self, reason: Reason) {
        self.send.send_reset(reason);
    }

    /// Fills `pending` with the next non-empty DATA frame. `Ok(false)` means EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            return Poll::Ready(match ready!(self.recv.poll_data(cx)) {
                None => Ok(false),
                // Empty DATA frames (e.g. a bare END_STREAM) carry nothing; look again.
                Some(Ok(b)) if b.is_empty() => continue,
                Some(Ok(b)) => {
                    self.pending = b;
                    Ok(true)
                }
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) && e.is_remote() => Ok(false),
                Some(Err(e)) => Err(h2_to_io(e)),
            });
        }
    }

    fn release(&mut self, n: usize) {
        // Fails only if the stream is already gone, in which case there is nothing to release.
        let _ = self.recv.flow_control().release_capacity(n);
    }

    /// Waits until at least one byte (at most `wanted`, at most a frame) may be sent.
    fn poll_send_capacity(
        &mut self,
        cx: &mut Context<'_>,
        wanted: usize,
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "HBONE stream already shut down for writing",
            )));
        }
        self.send.reserve_capacity(wanted.min(MAX_WRITE_CHUNK));
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(n)) if n > 0 => Poll::Ready(Ok(n.min(wanted))),
            // No capacity will ever come: the stream was reset or the connection closed. The
            // reset reason, when there is one, says which.
            _ => self.poll_reset_error(cx),
        }
    }

    fn poll_reset_error<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        Poll::Ready(Err(match ready!(self.send.poll_reset(cx)) {
            Ok(reason) => reason_to_io(reason),
            Err(e) => h2_to_io(e),
        }))
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.pending.is_empty() {
            match ready!(this.poll_fill(cx)) {
                Ok(true) => {}
                Ok(false) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending.split_to(n));
        this.release(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        match this
            .send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
        {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => this.poll_reset_error(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes frames out as soon as they are queued; there is no
        // per-stream buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Ok(()));
        }
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                this.write_closed = true;
                Poll::Ready(Ok(()))
            }
            Err(_) => match ready!(this.send.poll_reset(cx)) {
                // The peer finished with the stream cleanly: our half is closed either way.
                Ok(Reason::NO_ERROR) => {
                    this.write_closed = true;
                    Poll::Ready(Ok(()))
                }
                Ok(reason) => Poll::Ready(Err(reason_to_io(reason))),
                Err(e) => Poll::Ready(Err(h2_to_io(e))),
            },
        }
    }
}

/// Maps an RST_STREAM reason onto the io error a TCP proxy would see for the same event.
fn reason_to_io(reason: Reason) -> io::Error {
    let kind = match reason {
        Reason::REFUSED_STREAM => io::ErrorKind::ConnectionRefused,
        Reason::NO_ERROR | Reason::STREAM_CLOSED => io::ErrorKind::BrokenPipe,
        _ => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, format!("HBONE stream reset by peer: {reason}"))
}

/// Maps an h2 error to io: transport errors pass through; resets and GOAWAYs become the kind a
/// proxy copying bytes should react to (abort the other side, not treat as EOF).
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 transport error"));
    }
    let kind = if e.is_go_away() {
        io::ErrorKind::ConnectionAborted
    } else if e.reason() == Some(Reason::REFUSED_STREAM) {
        io::ErrorKind::ConnectionRefused
    } else if e.is_reset() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}
