//! Moves bytes both ways between two streams, counting them as they flow so metrics of
//! long-lived connections are live, and propagating half-close (EOF one way does not end the
//! other way).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::metrics::ConnectionMetrics;

/// Per-direction buffer. Large enough for near line-rate copies through TLS records.
const BUF_SIZE: usize = 64 * 1024;

/// Relays until both directions reached EOF or one failed. Returns (bytes downstream→upstream,
/// bytes upstream→downstream). Bytes from the client count as received, bytes back to it as
/// sent, as Istio's `istio_tcp_received_bytes_total` / `istio_tcp_sent_bytes_total`.
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
    metrics: &ConnectionMetrics,
) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut down_r, mut down_w) = tokio::io::split(downstream);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let request = copy_one(&mut down_r, &mut up_w, |n| metrics.received(n));
    let response = copy_one(&mut up_r, &mut down_w, |n| metrics.sent(n));
    tokio::try_join!(request, response)
}

async fn copy_one<R, W>(r: &mut R, w: &mut W, count: impl Fn(u64)) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        count(n as u64);
        total += n as u64;
    }
}
