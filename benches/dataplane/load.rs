//! Servers and load generators. Each runs on a current-thread tokio runtime inside a pod's netns
//! (`Netns::spawn`), so its sockets are the pod's own sockets: the meshed pair's traffic is
//! captured by the in-pod rules exactly as an application's would be.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Body size of every HTTP response (the "1 KiB responses").
pub const RESPONSE_BYTES: usize = 1024;
/// Write size of the bulk sender: big enough that syscalls are not what is measured.
const CHUNK: usize = 128 * 1024;

/// Bulk sink: reads each connection to EOF, then answers with the byte count (u64 BE), so the
/// sender knows every byte crossed the path before it stops the clock.
pub async fn sink_server(port: u16) {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .expect("bind sink");
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = conn.write_all(&total.to_be_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Result of one bulk run: bytes the sink confirmed, and the time from first write to the last
/// confirmation.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Bulk {
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// `streams` parallel connections each writing as fast as they can for `duration`.
pub async fn bulk_send(dst: SocketAddr, streams: usize, duration: Duration) -> Bulk {
    let mut conns = Vec::new();
    for _ in 0..streams {
        let c = TcpStream::connect(dst).await.expect("connect to sink");
        conns.push(c);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let chunk = vec![0x5au8; CHUNK];
                while Instant::now() < deadline {
                    c.write_all(&chunk).await.expect("bulk write");
                }
                c.shutdown().await.expect("bulk shutdown");
                let mut count = [0u8; 8];
                c.read_exact(&mut count).await.expect("sink count");
                u64::from_be_bytes(count)
            })
        })
        .collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.expect("bulk task");
    }
    Bulk {
        bytes,
        elapsed: start.elapsed(),
    }
}

/// HTTP/1.1 server answering every request with a 1 KiB body; keep-alive unless the client
/// asks for `Connection: close`.
pub async fn http_server(port: u16) {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .expect("bind http");
    let body = Bytes::from(vec![b'x'; RESPONSE_BYTES]);
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http_connect(dst: SocketAddr) -> std::io::Result<Sender> {
    let tcp = TcpStream::connect(dst).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One GET, reading the whole body; returns the body length.
async fn get(sender: &mut Sender, dst: SocketAddr, close: bool) -> Result<usize, hyper::Error> {
    let mut req = Request::get("/").header(hyper::header::HOST, dst.to_string());
    if close {
        req = req.header(hyper::header::CONNECTION, "close");
    }
    let req = req.body(Empty::new()).expect("static request");
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    Ok(resp.into_body().collect().await?.to_bytes().len())
}

/// Closed loop: `conns` kept-alive connections, each sending its next request as soon as the
/// previous response is complete. Returns requests per second.
pub async fn closed_loop(dst: SocketAddr, conns: usize, duration: Duration) -> f64 {
    let mut senders = Vec::new();
    for _ in 0..conns {
        let mut s = http_connect(dst).await.expect("http connect");
        // Warm the connection (and, meshed, the HBONE stream) before the clock starts.
        get(&mut s, dst, false).await.expect("warm-up request");
        senders.push(s);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let len = get(&mut s, dst, false).await.expect("closed-loop request");
                    assert_eq!(len, RESPONSE_BYTES);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("closed-loop task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Latencies of a paced run, measured from each request's *scheduled* send time.
pub struct Paced {
    /// Sorted, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Requests completed per second of schedule (should equal the target rate).
    pub achieved_rps: f64,
}

impl Paced {
    /// The `q` quantile (0..=1) in microseconds, nearest-rank.
    pub fn quantile_us(&self, q: f64) -> f64 {
        quantile_us(&self.latencies_ns, q)
    }
}

pub fn quantile_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1e3
}

/// Open loop at `rate` req/s over `conns` kept-alive connections for `duration`.
///
/// A pacer thread (not the runtime: tokio's timer has millisecond granularity, too coarse for a
/// 500 µs schedule) sleeps to each send time and hands the scheduled instant to connection
/// `i % conns`. A connection still busy with an earlier request queues the new one, and its
/// latency still counts from the scheduled time, so a stall shows as latency instead of
/// silently lowering the rate (coordinated omission).
pub async fn paced(dst: SocketAddr, conns: usize, rate: u32, duration: Duration) -> Paced {
    let mut txs = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut s = http_connect(dst).await.expect("http connect");
        get(&mut s, dst, false).await.expect("warm-up request");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        txs.push(tx);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(scheduled) = rx.recv().await {
                let len = get(&mut s, dst, false).await.expect("paced request");
                assert_eq!(len, RESPONSE_BYTES);
                lat.push(scheduled.elapsed().as_nanos() as u64);
            }
            lat
        }));
    }
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let pacer = std::thread::spawn(move || {
        // Default timer slack (50 µs) would make every wake-up late by up to that much.
        let _ = nix::sys::prctl::set_timerslack(1);
        let t0 = Instant::now() + Duration::from_millis(20);
        for i in 0..total {
            let at = t0 + interval * i as u32;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            // A closed channel means that connection's task died; its panic surfaces below.
            let _ = txs[(i % txs.len() as u64) as usize].send(at);
        }
        // Dropping the senders ends the connection tasks once their queues are drained.
    });
    let mut latencies_ns = Vec::new();
    for t in tasks {
        latencies_ns.extend(t.await.expect("paced task"));
    }
    pacer.join().expect("pacer thread");
    latencies_ns.sort_unstable();
    Paced {
        achieved_rps: latencies_ns.len() as f64 / duration.as_secs_f64(),
        latencies_ns,
    }
}

/// Connection rate: `workers` loops, each opening a connection, making one request with
/// `Connection: close` (the server closes first, so TIME_WAIT stays off the client's ports) and
/// dropping it. Returns (connections/s, failures).
pub async fn conn_rate(dst: SocketAddr, workers: usize, duration: Duration) -> (f64, u64) {
    let start = Instant::now();
    let deadline = start + duration;
    let failed_hard = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let failed_hard = failed_hard.clone();
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline && !failed_hard.load(Ordering::Relaxed) {
                    let one = async {
                        let mut s = http_connect(dst).await.map_err(|e| e.to_string())?;
                        get(&mut s, dst, true).await.map_err(|e| e.to_string())
                    };
                    match one.await {
                        Ok(RESPONSE_BYTES) => ok += 1,
                        Ok(_) | Err(_) => {
                            errors += 1;
                            // Many failures mean something is broken, not slow: stop early.
                            if errors > 1000 {
                                failed_hard.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.expect("conn-rate task");
        ok += o;
        errors += e;
    }
    (ok as f64 / start.elapsed().as_secs_f64(), errors)
}

/// One request on a fresh connection: used as warm-up and as a "path works" check.
pub async fn one_request(dst: SocketAddr) -> std::io::Result<usize> {
    let mut s = http_connect(dst).await?;
    get(&mut s, dst, true).await.map_err(std::io::Error::other)
}
