//! The HTTP/2 settings of HBONE, as Istio's ztunnel uses them, so ambit and Istio peers see the
//! same flow-control behaviour; plus the PING keepalive both sides run.
//!
//! Why these numbers: a 4 MiB stream window lets one tunnel fill a fast link without waiting for
//! WINDOW_UPDATEs; the 16 MiB connection window lets four such streams run flat out at once;
//! 1 MiB frames cut per-frame overhead on bulk transfers.

use std::future::poll_fn;
use std::time::Duration;

/// Per-stream flow-control window (SETTINGS_INITIAL_WINDOW_SIZE).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Connection-level flow-control window.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// SETTINGS_MAX_FRAME_SIZE.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// SETTINGS_MAX_CONCURRENT_STREAMS a server advertises.
pub const SERVER_MAX_CONCURRENT_STREAMS: u32 = 200;
/// Streams a client opens on one connection at most (the peer may lower it).
pub const CLIENT_MAX_STREAMS_PER_CONN: usize = 100;
/// A PING is sent this long after the previous pong (and first after this long).
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// A connection whose PING is unanswered this long is considered dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// HBONE requests carry a handful of short headers; a bigger list is an attack, not a request.
pub const CLIENT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
pub const SERVER_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Client send buffer: one stream window, so a writer can fill the window and flush at once.
pub const CLIENT_MAX_SEND_BUFFER: usize = STREAM_WINDOW as usize;
/// Server send buffer per stream (hyper's default): bounds memory per accepted stream.
pub const SERVER_MAX_SEND_BUFFER: usize = 400 * 1024;

/// An h2 client builder with HBONE's settings. `max_streams` caps concurrent streams before the
/// peer's SETTINGS arrive (h2 then applies the lower of the two).
pub fn client_builder(max_streams: usize) -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .initial_max_send_streams(max_streams)
        .max_header_list_size(CLIENT_MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(CLIENT_MAX_SEND_BUFFER)
        .enable_push(false);
    b
}

/// An h2 server builder with HBONE's settings.
pub fn server_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(SERVER_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(SERVER_MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(SERVER_MAX_SEND_BUFFER);
    b
}

/// Why a keepalive gave up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum KeepaliveError {
    #[error("no PING answer within {0:?}")]
    Timeout(Duration),
    #[error("PING failed: {0}")]
    Ping(h2::Error),
}

/// Pings the peer every `interval` and resolves (with the reason) when a pong does not come
/// back within `timeout` or pinging fails. Pending forever when `ping_pong` is `None` (h2 hands
/// it out only once). The caller must keep driving the connection, or pongs are never read.
pub async fn keepalive(
    ping_pong: Option<h2::PingPong>,
    interval: Duration,
    timeout: Duration,
) -> KeepaliveError {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = ping_pong.send_ping(h2::Ping::opaque()) {
            return KeepaliveError::Ping(e);
        }
        match tokio::time::timeout(timeout, poll_fn(|cx| ping_pong.poll_pong(cx))).await {
            Err(_) => return KeepaliveError::Timeout(timeout),
            Ok(Err(e)) => return KeepaliveError::Ping(e),
            Ok(Ok(_pong)) => {}
        }
    }
}
