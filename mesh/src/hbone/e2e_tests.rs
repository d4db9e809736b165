//! End-to-end tests over real TCP: pool client → serve_connection → handler, and the shared
//! test server the pool tests use.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::*;
use crate::identity::Identity;

/// Upper bound for any single step, so a bug shows as a failure rather than a hung test run.
const STEP: Duration = Duration::from_secs(20);

pub(super) async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("test step timed out")
}

/// Target ports the test handler treats specially; anything else is echoed.
pub(super) const PORT_DENY: u16 = 401;
pub(super) const PORT_UNAVAILABLE: u16 = 503;
pub(super) const PORT_DROP: u16 = 504;
/// Reads the whole request stream first, then answers `got:<bytes>`: proves half-close.
pub(super) const PORT_AFTER_EOF: u16 = 7;
/// Accepts, waits for the first bytes, then resets the stream with INTERNAL_ERROR.
pub(super) const PORT_RESET: u16 = 666;

pub(super) fn dest_baggage() -> Baggage {
    Baggage {
        namespace: Some("server-ns".into()),
        workload_type: Some("deployment".into()),
        workload_name: Some("echo".into()),
        ..Default::default()
    }
}

/// One served HBONE connection: trigger `drain` to GOAWAY it; `done` yields serve's result.
pub(super) struct ServedConn {
    pub drain: oneshot::Sender<()>,
    pub done: JoinHandle<Result<(), HboneError>>,
}

pub(super) struct TestServer {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Each accepted connection's controls, in accept order.
    pub conns: mpsc::UnboundedReceiver<ServedConn>,
    /// Each CONNECT the handler saw.
    pub requests: mpsc::UnboundedReceiver<ConnectRequest>,
}

pub(super) async fn start_server() -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (conn_tx, conns) = mpsc::unbounded_channel();
    let (req_tx, requests) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (drain_tx, drain_rx) = oneshot::channel::<()>();
            let req_tx = req_tx.clone();
            let handler = move |inc: IncomingConnect| handle(inc, req_tx.clone());
            // A dropped drain sender (test over) also drains, which is what we want then.
            let drain = async move {
                let _ = drain_rx.await;
            };
            let done = tokio::spawn(serve_connection(tcp, handler, drain));
            let _ = conn_tx.send(ServedConn {
                drain: drain_tx,
                done,
            });
        }
    });
    TestServer {
        addr,
        accepted,
        conns,
        requests,
    }
}

async fn handle(inc: IncomingConnect, seen: mpsc::UnboundedSender<ConnectRequest>) {
    let _ = seen.send(inc.request.clone());
    match inc.request.authority.port() {
        PORT_DENY => inc.reject(StatusCode::UNAUTHORIZED),
        PORT_UNAVAILABLE => inc.reject(StatusCode::SERVICE_UNAVAILABLE),
        PORT_DROP => drop(inc),
        PORT_AFTER_EOF => {
            let mut s = inc.accept(None).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(b"got:").await.unwrap();
            s.write_all(&got).await.unwrap();
            s.shutdown().await.unwrap();
        }
        PORT_RESET => {
            let mut s = inc.accept(None).unwrap();
            let _ = s.recv_bytes().await;
            s.reset(h2::Reason::INTERNAL_ERROR);
        }
        _ => {
            let s = inc.accept(Some(dest_baggage())).unwrap();
            let (mut r, mut w) = tokio::io::split(s);
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        }
    }
}

pub(super) fn key(dst: SocketAddr) -> PoolKey {
    let id = |sa: &str| Identity::new("cluster.local", "default", sa).unwrap();
    PoolKey::new(
        id("client"),
        vec![id("server-b"), id("server-a")],
        dst,
        "127.0.0.1".parse().unwrap(),
    )
}

pub(super) type Dial = Box<dyn FnOnce() -> BoxFuture<'static, io::Result<TcpStream>> + Send>;

/// A dial closure that counts how often it is actually called.
pub(super) fn counting_dial(addr: SocketAddr, dials: &Arc<AtomicUsize>) -> Dial {
    let dials = dials.clone();
    Box::new(move || {
        dials.fetch_add(1, Ordering::SeqCst);
        Box::pin(TcpStream::connect(addr))
    })
}

pub(super) fn target(port: u16) -> ConnectRequest {
    ConnectRequest::new(SocketAddr::from(([10, 0, 0, 1], port)))
}

/// Writes `msg` on `s` and reads the same number of bytes back.
pub(super) async fn echo_once(s: &mut H2Stream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

#[tokio::test]
async fn echo_round_trip_and_headers() {
    let mut srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let mut req = target(8080);
    req.baggage = Some(Baggage {
        namespace: Some("client-ns".into()),
        workload_name: Some("sleep".into()),
        workload_type: Some("deployment".into()),
        ..Default::default()
    });
    req.forwarded = Some(Forwarded {
        for_addr: Some("10.0.0.9:5555".parse().unwrap()),
        host: Some("echo.server-ns.svc.cluster.local".into()),
    });
    req.traceparent = Some(TraceParent::random());

    let (mut s, resp) =
        within(pool.connect(key(srv.addr), req.clone(), counting_dial(srv.addr, &dials)))
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        codec::baggage_from_headers(resp.headers()),
        Some(dest_baggage())
    );
    assert_eq!(within(srv.requests.recv()).await.unwrap(), req);

    within(echo_once(&mut s, b"hello through hbone")).await;
    // Half-close: our END_STREAM makes the echo finish and close its side too.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(s.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(dials.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn half_close_lets_peer_answer_after_eof() {
    let srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let (mut s, _) = within(pool.connect(
        key(srv.addr),
        target(PORT_AFTER_EOF),
        counting_dial(srv.addr, &dials),
    ))
    .await
    .unwrap();
    s.write_all(b"question").await.unwrap();
    s.shutdown().await.unwrap();
    // Shutting down twice is harmless.
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    within(s.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"got:question");
    // Writing after our half-close is an error, not a silent drop.
    assert!(s.write_all(b"late").await.is_err());
}

#[tokio::test]
async fn ten_mib_both_ways() {
    const LEN: usize = 10 * 1024 * 1024;
    let srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let (s, _) = within(pool.connect(key(srv.addr), target(9000), counting_dial(srv.addr, &dials)))
        .await
        .unwrap();
    // A pattern that is not periodic at any power of two, so a dropped or reordered frame shows.
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(s);
    let to_send = data.clone();
    // Write and read concurrently: the echo cannot buffer 10 MiB, flow control must work.
    let writer = tokio::spawn(async move {
        w.write_all(&to_send).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(LEN);
    within(r.read_to_end(&mut back)).await.unwrap();
    within(writer).await.unwrap();
    assert_eq!(back.len(), LEN);
    assert!(back == data, "echoed bytes differ");
}

#[tokio::test]
async fn zero_copy_bytes_api() {
    let srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let (mut s, _) =
        within(pool.connect(key(srv.addr), target(9001), counting_dial(srv.addr, &dials)))
            .await
            .unwrap();
    let payload = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    let sender = async {
        s.send_bytes(payload.clone()).await.unwrap();
    };
    within(sender).await;
    s.shutdown().await.unwrap();
    let mut total = 0;
    while let Some(chunk) = within(s.recv_bytes()).await.unwrap() {
        assert!(chunk.iter().all(|&b| b == 7));
        total += chunk.len();
    }
    assert_eq!(total, payload.len());
}

#[tokio::test]
async fn rejections_surface_as_status() {
    let srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    for (port, want) in [
        (PORT_DENY, StatusCode::UNAUTHORIZED),
        (PORT_UNAVAILABLE, StatusCode::SERVICE_UNAVAILABLE),
        // A handler that drops the request without answering yields 503, not a hang.
        (PORT_DROP, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let err =
            within(pool.connect(key(srv.addr), target(port), counting_dial(srv.addr, &dials)))
                .await
                .unwrap_err();
        assert!(
            matches!(err, HboneError::Status(s) if s == want),
            "{port}: {err}"
        );
        assert_eq!(err.status(), Some(want));
        assert!(!err.is_retryable());
    }
    // Rejected streams release their slot and share the one connection.
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(pool.connections(), 1);
}

#[tokio::test]
async fn server_answers_400_for_bad_requests() {
    let srv = start_server().await;
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let requests = [
        http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("example.com:80")
            .body(())
            .unwrap(),
        http::Request::builder()
            .method(http::Method::GET)
            .uri("http://10.0.0.1:80/")
            .body(())
            .unwrap(),
    ];
    for req in requests {
        let what = format!("{} {}", req.method(), req.uri());
        let (resp, _send) = client.send_request(req, false).unwrap();
        let resp = within(resp).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{what}");
    }
}

#[tokio::test]
async fn drain_finishes_in_flight_and_moves_new_streams() {
    let mut srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let (mut inflight, _) =
        within(pool.connect(key(srv.addr), target(80), counting_dial(srv.addr, &dials)))
            .await
            .unwrap();
    let first = within(srv.conns.recv()).await.unwrap();
    first.drain.send(()).unwrap();

    // The server acts on the drain before it reads this data, so its GOAWAY precedes the echo
    // on the wire: once the echo is back, the client knows the connection is going away.
    within(echo_once(&mut inflight, b"still here")).await;
    assert!(
        !first.done.is_finished(),
        "drained connection must wait for its in-flight stream"
    );

    // A new stream is not put on the draining connection: the pool dials a fresh one.
    let (mut fresh, _) =
        within(pool.connect(key(srv.addr), target(80), counting_dial(srv.addr, &dials)))
            .await
            .unwrap();
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    assert_eq!(srv.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.connections(), 1, "draining connection left the pool");
    within(echo_once(&mut fresh, b"new home")).await;

    // The in-flight stream still works to the end, and then the old connection closes.
    within(echo_once(&mut inflight, b"last words")).await;
    inflight.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(inflight.read_to_end(&mut rest)).await.unwrap();
    drop(inflight);
    within(first.done).await.unwrap().unwrap();
}

#[tokio::test]
async fn raw_stream_after_goaway_is_refused() {
    // Without the pool's rerouting, h2 itself refuses new streams on a draining connection.
    let mut srv = start_server().await;
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let (client, conn) = settings::client_builder(100).handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let (resp, send) = client
        .send_request(codec::build_connect_request(&target(80)), false)
        .unwrap();
    let resp = within(resp).await.unwrap();
    let mut s = H2Stream::new(send, resp.into_body(), None);
    let served = within(srv.conns.recv()).await.unwrap();
    served.drain.send(()).unwrap();
    within(echo_once(&mut s, b"x")).await;
    let refused = match client.clone().ready().await {
        Err(e) => HboneError::H2(e),
        Ok(mut c) => match c.send_request(codec::build_connect_request(&target(80)), false) {
            Err(e) => HboneError::H2(e),
            Ok((resp, _)) => HboneError::H2(within(resp).await.unwrap_err()),
        },
    };
    assert!(refused.is_retryable(), "{refused}");
}

#[tokio::test]
async fn peer_reset_is_an_io_error_not_eof() {
    let srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let (mut s, _) = within(pool.connect(
        key(srv.addr),
        target(PORT_RESET),
        counting_dial(srv.addr, &dials),
    ))
    .await
    .unwrap();
    s.write_all(b"trigger").await.unwrap();
    let mut buf = Vec::new();
    let err = within(s.read_to_end(&mut buf)).await.unwrap_err();
    // A proxy must see an abort here, or it would pass a truncated stream off as complete.
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn keepalive_gives_up_on_a_peer_that_ignores_pings() {
    const INTERVAL: Duration = Duration::from_millis(20);
    const TIMEOUT: Duration = Duration::from_millis(50);
    let (mut peer, server_io) = tokio::io::duplex(1024 * 1024);
    // A client that sends its preface and SETTINGS, then never reads or answers anything.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    peer.write_all(&preface).await.unwrap();
    let mut conn = within(settings::server_builder().handshake::<_, Bytes>(server_io))
        .await
        .unwrap();
    let keepalive = settings::keepalive(conn.ping_pong(), INTERVAL, TIMEOUT);
    let start = std::time::Instant::now();
    // Drive the connection alongside, as serve_connection does; it never yields a stream.
    let verdict = within(async {
        tokio::select! {
            e = keepalive => e,
            r = conn.accept() => panic!("unexpected accept result {r:?}"),
        }
    })
    .await;
    assert!(
        matches!(verdict, settings::KeepaliveError::Timeout(t) if t == TIMEOUT),
        "{verdict}"
    );
    assert!(start.elapsed() >= INTERVAL + TIMEOUT);
    drop(peer);
}
