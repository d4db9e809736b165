//! `/healthz/ready`: 200 once the first translation is in and the xDS/CA port is bound (and,
//! with `--ca-root-secret`, the root certificate is published); 503 before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::StatusCode;
use mesh::ops_http;
use tokio::net::TcpListener;

/// Shared readiness flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Answers probes on `listener` until the task is aborted.
    pub async fn serve(self, listener: TcpListener) {
        ops_http::serve(
            listener,
            Arc::new(move |path| match path {
                "/healthz/ready" | "/ready" if self.is_ready() => {
                    ops_http::text(StatusCode::OK, "ready\n")
                }
                "/healthz/ready" | "/ready" => {
                    ops_http::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
                _ => ops_http::text(StatusCode::NOT_FOUND, "not found\n"),
            }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// The status code of a one-shot HTTP/1.0 GET, as the kubelet's prober sends it.
    async fn get(addr: std::net::SocketAddr, path: &str) -> u16 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn reports_not_ready_then_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Readiness::default();
        let task = tokio::spawn(r.clone().serve(listener));
        assert_eq!(get(addr, "/healthz/ready").await, 503);
        r.set_ready();
        assert_eq!(get(addr, "/healthz/ready").await, 200);
        assert_eq!(get(addr, "/other").await, 404);
        task.abort();
    }
}
