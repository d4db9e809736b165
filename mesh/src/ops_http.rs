//! Small read-only HTTP endpoints for operations ports — readiness (15021), metrics, admin and
//! debug dumps — of the CNI agent and the control plane (ztunnel has its own, with drain
//! semantics, in `ztunnel/src/httpserver.rs`).
//!
//! hyper does the HTTP: keep-alive scrapers, HTTP/1.0 probes, pipelining and partial reads all
//! behave as clients expect, which a hand-rolled responder gets subtly wrong. Listeners are
//! bound by the caller before anything runs, so a port conflict stops start-up and tests can
//! bind port 0. Only GET and HEAD are answered (405 otherwise); the query string is ignored.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

pub type Body = Full<Bytes>;

/// Maps a GET path to a response.
pub type Routes = Arc<dyn Fn(&str) -> Response<Body> + Send + Sync>;

/// A response with a body and content type.
pub fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.into())
}

/// Serves `routes` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, routes: Routes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let routes = routes.clone();
                async move {
                    Ok::<_, Infallible>(match *req.method() {
                        Method::GET | Method::HEAD => routes(req.uri().path()),
                        _ => text(StatusCode::METHOD_NOT_ALLOWED, "read-only endpoint\n"),
                    })
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}
