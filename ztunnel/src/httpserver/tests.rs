use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::test_client::{get, request};
use super::*;
use crate::metrics::{ConnectionLabels, Metrics};

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// A running server: its address, the trigger that stops it, and its task.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap();
    }
}

async fn start_readiness(r: Readiness) -> Running {
    let (listener, addr) = bind().await;
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_readiness(listener, r, rx));
    Running { addr, stop, task }
}

#[tokio::test]
async fn readiness_is_503_until_all_blockers_are_released() {
    let r = Readiness::new();
    let xds = r.register("xds");
    let cert = r.register("cert");
    let s = start_readiness(r.clone()).await;

    let reply = get(s.addr, "/healthz/ready").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "not ready, pending: cert, xds\n");

    xds.ready();
    let reply = get(s.addr, "/healthz/ready").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "not ready, pending: cert\n");

    drop(cert);
    let reply = get(s.addr, "/healthz/ready").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ready\n");
    s.shutdown().await;
}

#[tokio::test]
async fn readiness_rejects_other_paths_and_methods() {
    let s = start_readiness(Readiness::new()).await;
    assert_eq!(get(s.addr, "/healthz/live").await.status, 404);
    assert_eq!(request(s.addr, "POST", "/healthz/ready").await.status, 405);
    assert_eq!(request(s.addr, "HEAD", "/healthz/ready").await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_served_on_both_paths() {
    let m = Metrics::new();
    let conn = m.open_connection(ConnectionLabels::default());
    conn.received(42);
    let (listener, addr) = bind().await;
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_metrics(listener, m.clone(), rx));
    let s = Running { addr, stop, task };

    for path in ["/metrics", "/stats/prometheus"] {
        let reply = get(s.addr, path).await;
        assert_eq!(reply.status, 200);
        assert!(reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"));
        let line = reply
            .body
            .lines()
            .find(|l| l.starts_with("istio_tcp_received_bytes_total{"))
            .expect(&reply.body);
        assert!(line.ends_with(" 42"), "{line}");
    }
    assert_eq!(get(s.addr, "/").await.status, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let s = start_readiness(Readiness::new()).await;
    let addr = s.addr;
    assert_eq!(get(addr, "/healthz/ready").await.status, 200);
    s.shutdown().await;
    // The listener was dropped when serve returned, so the port refuses connections.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_closes_idle_keepalive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start_readiness(Readiness::new()).await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // A keep-alive request: the server would hold this connection open indefinitely.
    stream
        .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(std::str::from_utf8(&buf[..n])
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    // Shutdown must finish promptly (graceful close of the idle connection), not wait for the
    // drain timeout; start_paused is not used, so a hang here would show up as a slow test.
    let started = std::time::Instant::now();
    s.shutdown().await;
    assert!(started.elapsed() < DRAIN_TIMEOUT);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}
