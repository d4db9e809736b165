//! Executing a parsed request: the one place the plugin does I/O (the agent's unix socket).
//!
//! Everything is blocking std I/O under one deadline of `timeout_ms`, shared by connect, send
//! and reply, so a stuck agent costs the runtime at most that long.

use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{parse_request, result_version, version_result, CniError, CniRequest, PodRequest};
use crate::protocol::{Command, PodEvent, Reply};

/// Longest reply accepted from the agent; a reply is a few dozen bytes, so more means garbage.
const MAX_REPLY: usize = 64 * 1024;

/// What the plugin process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The CNI result (success or error JSON); empty for a successful DEL or CHECK.
    pub stdout: String,
    /// Human-readable notes for the runtime's logs.
    pub stderr: String,
    /// 0 on success, 1 with an error result.
    pub exit_code: i32,
}

impl Outcome {
    /// The outcome for `err`: the error result on stdout, non-zero exit.
    pub fn error(err: &CniError, cni_version: &str) -> Outcome {
        Outcome {
            stdout: err.to_result_json(cni_version),
            stderr: format!("ambit-cni: {err}\n"),
            exit_code: 1,
        }
    }
}

/// Why the agent could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to {socket}: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("no reply from {socket} within {timeout_ms} ms (while {stage})")]
    Timeout {
        socket: String,
        timeout_ms: u128,
        stage: &'static str,
    },
    #[error("talking to {socket}: {reason}")]
    Io { socket: String, reason: String },
    #[error("bad reply from {socket}: {reason}")]
    BadReply { socket: String, reason: String },
}

/// Runs one plugin invocation end to end: parse, ask the agent if needed, render the result.
pub fn run(env: &impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let version = result_version(stdin);
    let request = match parse_request(env, stdin) {
        Ok(r) => r,
        Err(e) => return Outcome::error(&e, &version),
    };
    match request {
        CniRequest::Version => Outcome {
            stdout: version_result(),
            stderr: String::new(),
            exit_code: 0,
        },
        CniRequest::Pod(req) => match execute(&req) {
            Ok((stdout, stderr)) => Outcome {
                stdout,
                stderr,
                exit_code: 0,
            },
            Err(e) => Outcome::error(&e, &req.config.cni_version),
        },
    }
}

/// ADD/DEL/CHECK; returns (stdout, stderr) on success.
fn execute(req: &PodRequest) -> Result<(String, String), CniError> {
    let pod = format!("{}/{}", req.pod.namespace, req.pod.name);
    if req.is_excluded() {
        let note = format!(
            "ambit-cni: namespace {:?} is excluded from capture; passing {pod} through\n",
            req.pod.namespace
        );
        let stdout = match req.command {
            Command::Add => req.passthrough_result(),
            Command::Del | Command::Check => String::new(),
        };
        return Ok((stdout, note));
    }

    let opts = &req.config.options;
    let reply = ask_agent(&opts.agent_socket, &req.to_event(), opts.timeout);
    match req.command {
        Command::Add => match reply? {
            Reply::Captured | Reply::NotEnrolled => Ok((req.passthrough_result(), String::new())),
            Reply::Failed { message } => Err(CniError::CaptureFailed { pod, message }),
            Reply::Released => Err(CniError::CaptureFailed {
                pod,
                message: "agent answered ADD with `released`".to_owned(),
            }),
        },
        Command::Del => {
            // DEL must succeed with missing state; the agent notices vanished pods itself.
            let note = match reply {
                Ok(Reply::Failed { message }) => {
                    format!("ambit-cni: DEL {pod}: agent reported: {message} (ignored)\n")
                }
                Ok(_) => String::new(),
                Err(e) => format!("ambit-cni: DEL {pod}: {e} (ignored; the agent reconciles)\n"),
            };
            Ok((String::new(), note))
        }
        Command::Check => match reply? {
            Reply::Captured | Reply::NotEnrolled => Ok((String::new(), String::new())),
            Reply::Failed { message } => Err(CniError::CheckFailed { pod, message }),
            Reply::Released => Err(CniError::CheckFailed {
                pod,
                message: "the agent does not know this pod".to_owned(),
            }),
        },
    }
}

/// Sends `event` to the agent at `socket` and waits for its one-line reply, all within `timeout`.
pub fn ask_agent(socket: &Path, event: &PodEvent, timeout: Duration) -> Result<Reply, AgentError> {
    let deadline = Instant::now() + timeout;
    let name = socket.display().to_string();
    let timed_out = |stage| AgentError::Timeout {
        socket: name.clone(),
        timeout_ms: timeout.as_millis(),
        stage,
    };
    // A socket timeout surfaces as WouldBlock (or TimedOut): report it as the deadline it is.
    let io_error = |stage: &'static str, e: io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            timed_out(stage)
        } else {
            AgentError::Io {
                socket: name.clone(),
                reason: format!("{stage}: {e}"),
            }
        }
    };

    let mut stream = connect(socket, deadline).map_err(|e| match e {
        None => timed_out("connecting"),
        Some(e) => AgentError::Unreachable {
            socket: name.clone(),
            reason: e.to_string(),
        },
    })?;

    let mut line = serde_json::to_vec(event).map_err(|e| AgentError::Io {
        socket: name.clone(),
        reason: format!("encoding the request: {e}"),
    })?;
    line.push(b'\n');
    let remaining = time_left(deadline).ok_or_else(|| timed_out("sending"))?;
    stream
        .set_write_timeout(Some(remaining))
        .map_err(|e| io_error("sending", e))?;
    stream
        .write_all(&line)
        .and_then(|()| stream.flush())
        .map_err(|e| io_error("sending", e))?;

    let mut reply = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let remaining = time_left(deadline).ok_or_else(|| timed_out("waiting for the reply"))?;
        stream
            .set_read_timeout(Some(remaining))
            .map_err(|e| io_error("waiting for the reply", e))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&chunk[..n]);
                if reply.contains(&b'\n') {
                    break;
                }
                if reply.len() > MAX_REPLY {
                    return Err(AgentError::BadReply {
                        socket: name,
                        reason: format!("longer than {MAX_REPLY} bytes"),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error("waiting for the reply", e)),
        }
    }
    let line = reply.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(AgentError::BadReply {
            socket: name,
            reason: "connection closed without a reply".to_owned(),
        });
    }
    serde_json::from_slice(line).map_err(|e| AgentError::BadReply {
        socket: name,
        reason: e.to_string(),
    })
}

/// Time left before `deadline`, or `None` once it passed (a zero timeout would mean "forever"
/// to `set_read_timeout`, so it is never passed on).
fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Connects with a deadline. std has no connect timeout for unix sockets, and connect blocks
/// when the agent's accept backlog is full, so the connect runs on a helper thread; on timeout
/// the thread is abandoned (the process exits right after). `Err(None)` means timed out.
fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream, Option<io::Error>> {
    let (tx, rx) = mpsc::channel();
    let path = socket.to_owned();
    std::thread::Builder::new()
        .name("agent-connect".to_owned())
        .spawn(move || {
            // The receiver is gone only if we already timed out: nobody to tell.
            let _ = tx.send(UnixStream::connect(path));
        })
        .map_err(Some)?;
    let wait = time_left(deadline).ok_or(None)?;
    match rx.recv_timeout(wait) {
        Ok(result) => result.map_err(Some),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(None),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Some(io::Error::other(
            "connect thread ended without a result",
        ))),
    }
}
