//! The control plane's admin/debug endpoint (`--admin-addr`, default `127.0.0.1:15014`, the
//! port istiod uses for monitoring and debug): `GET /debug/problems` answers the current
//! [`Report`](crate::problems::Report) as JSON, which `ambit config problems` lists.
//!
//! It is served on loopback by default because debug output names every object in the mesh;
//! [`warn_if_exposed`] logs loudly when an operator binds it elsewhere. Like the readiness
//! endpoint it is a small HTTP/1.0 responder: one GET per connection, read to EOF.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::problems::ProblemSet;

/// The default admin address: loopback only.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15014";

/// Path of the problem listing.
pub const PROBLEMS_PATH: &str = "/debug/problems";

/// Logs a warning when `addr` is not a loopback address: the listing is then readable by
/// anyone who can reach the pod.
pub fn warn_if_exposed(addr: SocketAddr) {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the admin endpoint is bound beyond loopback; \
            its debug output names every object in the mesh");
    }
}

/// Answers admin requests on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, problems: ProblemSet) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            // EMFILE and the like clear up as connections close; do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let problems = problems.clone();
        tokio::spawn(async move {
            // A silent client must not hold a task forever.
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(conn, problems)).await;
        });
    }
}

async fn answer(mut conn: TcpStream, problems: ProblemSet) -> std::io::Result<()> {
    // Only the request line matters, but the whole head is read: closing a socket with unread
    // request bytes makes the kernel send RST, which can destroy the response before the
    // client has read it.
    let mut buf = [0u8; 8192];
    let mut len = 0;
    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    // `?query` is accepted and ignored, so `curl .../debug/problems?pretty` still works.
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", PROBLEMS_PATH) => match serde_json::to_string_pretty(&problems.report()) {
            Ok(json) => ("200 OK", "application/json", json + "\n"),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("encoding the report: {e}\n"),
            ),
        },
        (_, PROBLEMS_PATH) => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests;
