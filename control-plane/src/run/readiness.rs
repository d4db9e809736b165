//! `/healthz/ready`: 200 once the first translation is in and the xDS/CA port is bound, 503
//! before. A hand-rolled HTTP/1.0 responder: the kubelet probe and test pollers send one GET
//! and read to EOF, which does not justify a server framework.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                // EMFILE and the like clear up as connections close; do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let ready = self.is_ready();
            tokio::spawn(async move {
                // A silent prober must not hold a task forever.
                let _ = tokio::time::timeout(Duration::from_secs(5), answer(conn, ready)).await;
            });
        }
    }
}

async fn answer(mut conn: TcpStream, ready: bool) -> std::io::Result<()> {
    // Only the request line matters; read until it is complete (or the buffer is full).
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() && !buf[..len].windows(2).any(|w| w == b"\r\n") {
        let n = conn.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/healthz/ready" | "/ready" if ready => ("200 OK", "ready\n"),
        "/healthz/ready" | "/ready" => ("503 Service Unavailable", "not ready\n"),
        _ => ("404 Not Found", "not found\n"),
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn reports_not_ready_then_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Readiness::default();
        let task = tokio::spawn(r.clone().serve(listener));
        assert!(get(addr, "/healthz/ready")
            .await
            .starts_with("HTTP/1.0 503"));
        r.set_ready();
        assert!(get(addr, "/healthz/ready")
            .await
            .starts_with("HTTP/1.0 200"));
        assert!(get(addr, "/other").await.starts_with("HTTP/1.0 404"));
        task.abort();
    }
}
