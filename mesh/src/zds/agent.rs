//! The node-agent end of ZDS: listen, accept ztunnel, push requests and wait for their acks.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::codec::{decode_ack, decode_hello, encode_request, OutRequest};
use super::socket::{SeqPacket, SeqPacketListener};
use super::{Version, WorkloadInfo, ZdsError};

/// Default time a freshly connected ztunnel has to send its hello. Same as istio-cni's read
/// deadline; it keeps one silent connection from stalling the accept loop forever.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's listening ZDS socket.
#[derive(Debug)]
pub struct ZdsServer {
    listener: SeqPacketListener,
    path: PathBuf,
    hello_timeout: Duration,
}

impl ZdsServer {
    /// Listens at `path`, replacing a stale socket file from a previous run.
    /// Must be called inside a tokio runtime (an error otherwise).
    pub fn bind(path: &Path) -> Result<Self, ZdsError> {
        Ok(ZdsServer {
            listener: SeqPacketListener::bind(path)?,
            path: path.to_path_buf(),
            hello_timeout: HELLO_TIMEOUT,
        })
    }

    /// Replaces [`HELLO_TIMEOUT`] as the time a new connection has to send its hello.
    pub fn with_hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// The path the server listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the next ztunnel and reads its hello.
    ///
    /// Errors concern that one connection (bad or missing hello within the hello timeout,
    /// unsupported version); the server stays usable and the caller should keep accepting.
    pub async fn accept(&self) -> Result<ZdsAgentConn, ZdsError> {
        let sock = self.listener.accept().await?;
        let timeout = self.hello_timeout;
        let hello = tokio::time::timeout(timeout, sock.recv())
            .await
            .map_err(|_| {
                ZdsError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("ztunnel sent no ZDS hello within {timeout:?}"),
                ))
            })??;
        if !hello.fds.is_empty() {
            return Err(ZdsError::UnexpectedFds(hello.fds.len()));
        }
        let version = decode_hello(&hello.bytes)?;
        Ok(ZdsAgentConn {
            sock,
            version,
            unacked: 0,
        })
    }
}

/// One connected ztunnel, seen from the agent.
///
/// Each `send_*` sends one request and waits for its ack, so at most one request is in flight.
#[derive(Debug)]
pub struct ZdsAgentConn {
    pub(super) sock: SeqPacket,
    version: Version,
    /// Requests sent whose ack has not been read: non-zero only when a `send_*` future was
    /// dropped (e.g. by a timeout) after sending. Acks pair with requests only by order, so these
    /// stale acks are consumed before the next request's ack is awaited.
    unacked: usize,
}

impl ZdsAgentConn {
    /// The protocol version ztunnel announced (always [`Version::V1`] today).
    pub fn hello_version(&self) -> Version {
        self.version
    }

    /// Enrols pod `uid`, handing ztunnel (a duplicate of) `netns`. `Err(Rejected(text))` carries
    /// ztunnel's ack error.
    pub async fn send_add(
        &mut self,
        uid: &str,
        info: Option<WorkloadInfo>,
        netns: BorrowedFd<'_>,
    ) -> Result<(), ZdsError> {
        let request = OutRequest::Add {
            uid,
            info: info.as_ref(),
        };
        self.request(request, Some(netns)).await
    }

    /// Tells ztunnel to keep pod `uid` although its netns is not available (snapshot only).
    pub async fn send_keep(&mut self, uid: &str) -> Result<(), ZdsError> {
        self.request(OutRequest::Keep { uid }, None).await
    }

    /// Tells ztunnel pod `uid` is gone.
    pub async fn send_del(&mut self, uid: &str) -> Result<(), ZdsError> {
        self.request(OutRequest::Del { uid }, None).await
    }

    /// Tells ztunnel the snapshot replay is complete.
    pub async fn send_snapshot_sent(&mut self) -> Result<(), ZdsError> {
        self.request(OutRequest::SnapshotSent, None).await
    }

    async fn request(
        &mut self,
        request: OutRequest<'_>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ZdsError> {
        let bytes = encode_request(request)?;
        while self.unacked > 0 {
            match self.read_ack().await {
                Err(e) if e.is_fatal() => return Err(e),
                // The outcome of a request nobody is waiting for any more is of no use.
                _ => self.unacked -= 1,
            }
        }
        self.sock.send(&bytes, fd).await?;
        // No await between a completed send and this increment, so the count is exact even if
        // this future is dropped while waiting for the ack below.
        self.unacked += 1;
        let result = self.read_ack().await;
        if !matches!(&result, Err(e) if e.is_fatal()) {
            self.unacked -= 1;
        }
        result
    }

    async fn read_ack(&self) -> Result<(), ZdsError> {
        let reply = self.sock.recv().await?;
        if !reply.fds.is_empty() {
            return Err(ZdsError::UnexpectedFds(reply.fds.len()));
        }
        decode_ack(&reply.bytes)
    }
}
