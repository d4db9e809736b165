//! ZDS: the protocol by which the node agent (istio-cni, or ambit's cni-agent) hands each pod's
//! network namespace to ztunnel.
//!
//! Transport: a Unix `SOCK_SEQPACKET` socket (default `/var/run/ztunnel/ztunnel.sock`). The agent
//! listens, ztunnel connects and sends `ZdsHello{version: V1}`. From then on the agent sends one
//! `WorkloadRequest` per datagram and waits for ztunnel's `WorkloadResponse{ack{error}}` before
//! sending the next: acks correlate with requests only by order, so there is never more than one
//! request in flight. An `add` carries exactly one fd (the pod netns) as SCM_RIGHTS ancillary data.
//!
//! Invariants this module keeps:
//! - One datagram is one message. A datagram that does not fit [`MAX_MESSAGE_LEN`] is rejected
//!   ([`ZdsError::Truncated`]), never half-decoded.
//! - Every fd the kernel installs for us is wrapped in an [`OwnedFd`] before anything else can
//!   fail, so an error path closes it instead of leaking it; received fds are `O_CLOEXEC`.
//! - Per-message errors (bad bytes, wrong fd count) leave the connection usable; see
//!   [`ZdsError::is_fatal`].
//!
//! Layout: [`proto`] holds the hand-written prost messages, `codec` the pure (I/O-free)
//! encode/decode logic including [`decode_request`], `socket` the nonblocking SEQPACKET + fd
//! passing glue over tokio's `AsyncFd`, and `client` / `agent` the two ends.

use std::io;
use std::os::fd::OwnedFd;

mod agent;
mod client;
mod codec;
pub mod proto;
mod socket;

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod tests;

pub use agent::{ZdsAgentConn, ZdsServer, HELLO_TIMEOUT};
pub use client::ZdsClient;
pub use codec::{decode_request, MAX_MESSAGE_LEN};
pub use proto::{Version, WorkloadInfo};

/// Default path of the ZDS socket, shared with Istio.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/ztunnel/ztunnel.sock";

/// One decoded agent → ztunnel request, with the netns fd already taken out of the ancillary data.
#[derive(Debug)]
pub enum ZdsRequest {
    /// Enrol (or re-enrol, during a snapshot) the pod `uid`, whose network namespace is `netns`.
    Add {
        /// Pod UID.
        uid: String,
        /// Pod name, namespace and service account, when the agent knows them.
        workload_info: Option<WorkloadInfo>,
        /// The pod's network namespace (e.g. an open `/proc/<pid>/ns/net`), close-on-exec.
        netns: OwnedFd,
    },
    /// During a snapshot: keep the pod `uid` although the agent can no longer hand over its netns.
    Keep {
        /// Pod UID.
        uid: String,
    },
    /// The pod `uid` is gone; stop serving it.
    Del {
        /// Pod UID.
        uid: String,
    },
    /// The agent has replayed every enrolled pod; drop any pod not replayed since connecting.
    SnapshotSent,
}

/// Everything that can go wrong on a ZDS connection.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    /// The socket itself failed (connect, bind, send, receive).
    #[error("ZDS socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The datagram is not a valid message of the expected type.
    #[error("ZDS message does not decode: {0}")]
    Decode(String),
    /// An `add` request arrived without its netns fd.
    #[error("ZDS add request carries no netns fd")]
    MissingFd,
    /// A message carried fds it should not have (any fd on a non-`add`, more than one on `add`).
    /// They have been closed.
    #[error("ZDS message carries {0} unexpected fd(s)")]
    UnexpectedFds(usize),
    /// ztunnel announced a protocol version other than V1 (the raw enum value).
    #[error("ZDS hello announces version {0}, only V1 (1) is supported")]
    VersionMismatch(i32),
    /// A datagram was larger than [`MAX_MESSAGE_LEN`] (or its ancillary data did not fit) and the
    /// kernel truncated it.
    #[error(
        "ZDS datagram truncated (larger than {MAX_MESSAGE_LEN} bytes or too much ancillary data)"
    )]
    Truncated,
    /// A message to send encodes to more than [`MAX_MESSAGE_LEN`] bytes, which the peer (Istio's
    /// ztunnel and agent both read into 1024-byte buffers) would truncate.
    #[error("ZDS message of {0} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge(usize),
    /// ztunnel answered the request with a non-empty ack error.
    #[error("ztunnel rejected the ZDS request: {0}")]
    Rejected(String),
    /// The peer closed the connection.
    #[error("ZDS peer closed the connection")]
    Closed,
}

impl ZdsError {
    /// Whether the connection is unusable after this error.
    ///
    /// Per-message problems (a datagram that does not decode, has the wrong fds, was truncated,
    /// or was rejected by ztunnel) leave datagram boundaries intact, so the next message can still
    /// be exchanged; ztunnel answers them with an error ack and carries on, as Istio's does.
    pub fn is_fatal(&self) -> bool {
        match self {
            ZdsError::Io(_) | ZdsError::Closed | ZdsError::VersionMismatch(_) => true,
            ZdsError::Decode(_)
            | ZdsError::MissingFd
            | ZdsError::UnexpectedFds(_)
            | ZdsError::Truncated
            | ZdsError::TooLarge(_)
            | ZdsError::Rejected(_) => false,
        }
    }
}
