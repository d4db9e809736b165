//! Small HTTP servers for the operations ports: readiness (15021), metrics (15020), and the
//! shared accept loop the admin server (15000) also uses.
//!
//! The caller binds the listener, so a bind failure stops start-up before anything runs, and
//! tests can bind port 0. Each server stops accepting when `shutdown` resolves, asks open
//! connections to finish their in-flight request, and gives them [`DRAIN_TIMEOUT`] before
//! dropping them, so a stuck client cannot hold up process exit.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::readiness::Readiness;

#[cfg(test)]
pub(crate) mod test_client;
#[cfg(test)]
mod tests;

/// How long in-flight requests may take to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Back-off after a failed accept (e.g. out of file descriptors), so the loop doesn't spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Content type of the Prometheus exposition produced by prometheus-client (OpenMetrics).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) type Body = Full<Bytes>;

/// A `text/plain` response.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", body.into())
}

pub(crate) fn with_type(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// 405 unless the request is a GET or HEAD (probes and scrapers only read).
fn read_only(req: &Request<Incoming>) -> Option<Response<Body>> {
    match *req.method() {
        Method::GET | Method::HEAD => None,
        _ => Some(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        )),
    }
}

/// Serves `handler` on `listener` until `shutdown` resolves. HTTP/1 and HTTP/2 (prior
/// knowledge) are both accepted.
pub(crate) async fn serve<H, Fut>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    shutdown: impl Future,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    match listener.local_addr() {
        Ok(addr) => tracing::info!(server = name, %addr, "listening"),
        Err(e) => tracing::warn!(server = name, error = %e, "listening on unknown address"),
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(serve_conn(name, stream, peer, handler.clone(), stop_rx.clone()));
                }
                Err(e) => {
                    tracing::warn!(server = name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reap finished connections so the set doesn't grow with every request.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            server = name,
            open = conns.len(),
            "connections still open after drain timeout; closing them"
        );
        conns.abort_all();
    }
    tracing::info!(server = name, "stopped");
}

async fn serve_conn<H, Fut>(
    name: &'static str,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let resp = handler(req);
        async move { Ok::<_, Infallible>(resp.await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // The watch `Ref` must not live across the await below (it is not Send).
        () = async { drop(stop.wait_for(|stopping| *stopping).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Clients hanging up mid-request are routine for probes; not worth more than debug.
        tracing::debug!(server = name, %peer, error = %e, "connection error");
    }
}

/// Serves `GET /healthz/ready`: `200 ready` once every start-up task is done, otherwise
/// `503` naming the pending tasks (so `kubectl describe` shows why a pod is not ready).
pub async fn serve_readiness(listener: TcpListener, readiness: Readiness, shutdown: impl Future) {
    let handler = move |req: Request<Incoming>| {
        let resp = readiness_response(&req, &readiness);
        async move { resp }
    };
    serve("readiness", listener, handler, shutdown).await
}

fn readiness_response(req: &Request<Incoming>, readiness: &Readiness) -> Response<Body> {
    if req.uri().path() != "/healthz/ready" {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if let Some(resp) = read_only(req) {
        return resp;
    }
    let pending = readiness.pending();
    if pending.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready, pending: {}\n", pending.join(", ")),
        )
    }
}

/// Serves the Prometheus exposition on `GET /metrics` and `GET /stats/prometheus` (the path
/// Istio's scrape annotations use).
pub async fn serve_metrics(listener: TcpListener, metrics: Metrics, shutdown: impl Future) {
    let handler = move |req: Request<Incoming>| {
        let resp = metrics_response(&req, &metrics);
        async move { resp }
    };
    serve("metrics", listener, handler, shutdown).await
}

fn metrics_response(req: &Request<Incoming>, metrics: &Metrics) -> Response<Body> {
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => {}
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    }
    if let Some(resp) = read_only(req) {
        return resp;
    }
    with_type(StatusCode::OK, OPENMETRICS, metrics.encode())
}
