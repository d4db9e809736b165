//! The unix socket the CNI plugin talks to: one JSON [`PodEvent`] line in, one JSON [`Reply`]
//! line out, per connection (see `crate::protocol`).
//!
//! A request that is too long, too slow or not a valid event gets a `Failed` reply naming the
//! problem and changes nothing; one bad client cannot affect other requests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::capture::Agent;
use crate::protocol::{PodEvent, Reply};

/// Longest request line accepted.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// Time a client has to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the plugin socket, replacing a stale socket file, readable by root only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Parses one request line.
pub fn parse_request(line: &str) -> Result<PodEvent, String> {
    serde_json::from_str(line.trim_end()).map_err(|e| format!("malformed plugin request: {e}"))
}

/// Accepts plugin connections forever; each is answered on its own task.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &agent).await {
                        debug!(error = %e, "plugin connection ended early");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a plugin connection failed");
                // E.g. out of fds: don't spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, agent: &Agent) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST + 1));
    let mut line = String::new();
    let reply = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Reply::Failed {
            message: format!("no request line within {READ_TIMEOUT:?}"),
        },
        Ok(Err(e)) => Reply::Failed {
            message: format!("reading the request: {e}"),
        },
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST => Reply::Failed {
            message: format!("request longer than {MAX_REQUEST} bytes"),
        },
        Ok(Ok(_)) => match parse_request(&line) {
            Ok(event) => agent.handle(event).await,
            Err(message) => Reply::Failed { message },
        },
    };
    let mut out = serde_json::to_string(&reply)
        .unwrap_or_else(|e| format!(r#"{{"outcome":"failed","message":"encoding reply: {e}"}}"#));
    out.push('\n');
    write.write_all(out.as_bytes()).await?;
    write.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;

    #[test]
    fn requests_parse_or_name_the_problem() {
        let ev = parse_request(
            r#"{"command":"ADD","container_id":"c","netns":"/x","pod_name":"p","pod_namespace":"n","pod_uid":"u","pod_ips":["10.0.0.1"]}"#,
        )
        .unwrap();
        assert_eq!(ev.command, Command::Add);
        let err = parse_request(r#"{"command":"ADD"}"#).unwrap_err();
        assert!(err.contains("missing field"), "{err}");
        let err = parse_request(r#"{"command":"PATCH","container_id":"c","netns":"","pod_name":"p","pod_namespace":"n","pod_uid":"","pod_ips":[]}"#).unwrap_err();
        assert!(err.contains("PATCH"), "{err}");
        assert!(parse_request("").is_err());
    }
}
