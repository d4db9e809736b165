//! Pool behaviour over real TCP: stream limits, shared dials, idle close, peer limits.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::e2e_tests::*;
use super::*;

#[tokio::test]
async fn streams_spread_over_connections_at_the_limit() {
    let srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let opens =
        (0..150).map(|_| pool.connect(key(srv.addr), target(80), counting_dial(srv.addr, &dials)));
    // All 150 are held open at once, so they need ceil(150 / 100) connections.
    let mut streams: Vec<H2Stream> = within(join_all(opens))
        .await
        .into_iter()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(pool.connections(), 2);
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    assert_eq!(srv.accepted.load(Ordering::SeqCst), 2);
    // And every one of them is a working tunnel.
    for (i, s) in streams.iter_mut().enumerate() {
        within(echo_once(s, format!("stream {i}").as_bytes())).await;
    }
    // Freed slots are reused: another 50 fit without a new dial.
    let mut more = Vec::new();
    streams.truncate(100);
    for _ in 0..50 {
        let (s, _) =
            within(pool.connect(key(srv.addr), target(80), counting_dial(srv.addr, &dials)))
                .await
                .unwrap();
        more.push(s);
    }
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn racing_first_connects_share_one_dial() {
    let srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let opens = (0..50).map(|_| {
        let pool = pool.clone();
        let dial = counting_dial(srv.addr, &dials);
        let addr = srv.addr;
        tokio::spawn(async move { pool.connect(key(addr), target(80), dial).await })
    });
    let results = within(join_all(opens)).await;
    let streams: Vec<_> = results.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!(streams.len(), 50);
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.connections(), 1);
}

#[tokio::test]
async fn a_failed_dial_fails_its_waiters_without_redialing() {
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let dst = "127.0.0.1:9".parse().unwrap();
    let opens = (0..10).map(|_| {
        let dials = dials.clone();
        pool.connect(key(dst), target(80), move || async move {
            dials.fetch_add(1, Ordering::SeqCst);
            // Yield once so the other callers queue up behind this dial.
            tokio::task::yield_now().await;
            Err::<TcpStream, _>(io::Error::new(io::ErrorKind::ConnectionRefused, "nope"))
        })
    });
    for r in within(join_all(opens)).await {
        match r {
            Err(HboneError::Dial(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("expected a dial error, got {other:?}"),
        }
    }
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(pool.connections(), 0);
    // The failure is not sticky: the next caller dials again.
    let err = within(pool.connect(key(dst), target(80), || async {
        Err::<TcpStream, _>(io::Error::other("again"))
    }))
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn a_cancelled_dialer_hands_over_to_a_waiter() {
    let srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let (started_tx, started_rx) = oneshot::channel();
    let stuck = {
        let pool = pool.clone();
        let addr = srv.addr;
        tokio::spawn(async move {
            pool.connect(key(addr), target(80), move || async move {
                let _ = started_tx.send(());
                std::future::pending::<io::Result<TcpStream>>().await
            })
            .await
        })
    };
    within(started_rx).await.unwrap();
    let dials = Arc::new(AtomicUsize::new(0));
    let waiter = {
        let pool = pool.clone();
        let dial = counting_dial(srv.addr, &dials);
        let addr = srv.addr;
        tokio::spawn(async move { pool.connect(key(addr), target(80), dial).await })
    };
    // Let the waiter queue behind the stuck dial, then cancel the dialer.
    tokio::task::yield_now().await;
    stuck.abort();
    let (mut s, _) = within(waiter).await.unwrap().unwrap();
    within(echo_once(&mut s, b"took over")).await;
    assert_eq!(dials.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idle_connections_close_and_busy_ones_do_not() {
    const IDLE: Duration = Duration::from_millis(100);
    let mut srv = start_server().await;
    let pool = Pool::new(PoolConfig {
        idle_timeout: IDLE,
        ..PoolConfig::default()
    });
    let dials = Arc::new(AtomicUsize::new(0));
    let (mut s, _) =
        within(pool.connect(key(srv.addr), target(80), counting_dial(srv.addr, &dials)))
            .await
            .unwrap();
    let served = within(srv.conns.recv()).await.unwrap();

    // Time passing is the subject here, not a synchronisation: a connection with an open stream
    // outlives several idle periods.
    tokio::time::sleep(IDLE * 4).await;
    within(echo_once(&mut s, b"still busy")).await;
    assert_eq!(pool.connections(), 1);
    assert!(!served.done.is_finished());

    drop(s);
    // Once idle, the client closes the connection: the server side sees it end cleanly.
    within(served.done).await.unwrap().unwrap();
    assert_eq!(pool.connections(), 0);

    // The pool recovers by dialing anew.
    let (mut s, _) =
        within(pool.connect(key(srv.addr), target(80), counting_dial(srv.addr, &dials)))
            .await
            .unwrap();
    within(echo_once(&mut s, b"fresh")).await;
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn keys_do_not_share_connections() {
    let srv = start_server().await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let mut other = key(srv.addr);
    other.src_ip = "127.0.0.2".parse().unwrap();
    let (_a, _) = within(pool.connect(key(srv.addr), target(80), counting_dial(srv.addr, &dials)))
        .await
        .unwrap();
    let (_b, _) = within(pool.connect(other, target(80), counting_dial(srv.addr, &dials)))
        .await
        .unwrap();
    assert_eq!(pool.connections(), 2);
    // The identity order does not matter to PoolKey::new.
    let k = key(srv.addr);
    let mut reversed = k.dst_identities.clone();
    reversed.reverse();
    assert_eq!(
        PoolKey::new(k.src_identity.clone(), reversed, k.dst, k.src_ip),
        k
    );
}

/// A bare h2 server that advertises `max_streams` and answers every CONNECT with 200,
/// holding the stream open until the client ends it.
async fn limited_server(max_streams: u32) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut b = settings::server_builder();
                b.max_concurrent_streams(max_streams);
                let mut conn = b.handshake::<_, Bytes>(tcp).await.unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let send = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    tokio::spawn(async move {
                        let mut s = H2Stream::new(send, req.into_body(), None);
                        let _ = s.recv_bytes().await;
                    });
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn peer_stream_limit_lowers_the_per_connection_cap() {
    let (addr, accepted) = limited_server(5).await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    // The first response proves the peer's SETTINGS (sent before it) have been applied.
    let (first, resp) = within(pool.connect(key(addr), target(80), counting_dial(addr, &dials)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let opens = (0..9).map(|_| pool.connect(key(addr), target(80), counting_dial(addr, &dials)));
    let streams: Vec<_> = within(join_all(opens))
        .await
        .into_iter()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(streams.len() + 1, 10);
    assert_eq!(
        dials.load(Ordering::SeqCst),
        2,
        "10 streams at 5 per connection"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.connections(), 2);
    drop(first);
}
