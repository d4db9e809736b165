//! The ztunnel end of ZDS: connect to the node agent, then receive requests and ack each one.

use std::path::Path;

use super::codec::{decode_request, encode_ack, encode_hello};
use super::socket::SeqPacket;
use super::{ZdsError, ZdsRequest};

/// ztunnel's connection to the node agent.
///
/// Usage: [`ZdsClient::connect`], then loop [`ZdsClient::recv`] → act → [`ZdsClient::ack`]. The
/// agent sends nothing new until it has the ack, so every received request (including ones that
/// fail to decode with a non-fatal error, see [`ZdsError::is_fatal`]) must be answered exactly once.
#[derive(Debug)]
pub struct ZdsClient {
    pub(super) sock: SeqPacket,
}

impl ZdsClient {
    /// Connects to the agent's socket at `path` and announces protocol V1.
    pub async fn connect(path: &Path) -> Result<ZdsClient, ZdsError> {
        let sock = SeqPacket::connect(path)?;
        sock.send(&encode_hello(), None).await?;
        Ok(ZdsClient { sock })
    }

    /// Waits for the agent's next request. [`ZdsError::Closed`] when the agent hung up.
    ///
    /// Cancel safe: a datagram is either received whole by a completed call or left queued.
    pub async fn recv(&mut self) -> Result<ZdsRequest, ZdsError> {
        let datagram = self.sock.recv().await?;
        decode_request(&datagram.bytes, datagram.fds)
    }

    /// Answers the last request: `None` for success, `Some(reason)` for failure.
    ///
    /// The reason is cut to fit one datagram, and an empty reason is sent as
    /// "unspecified error" because an empty error string means success on the wire.
    pub async fn ack(&mut self, error: Option<String>) -> Result<(), ZdsError> {
        self.sock.send(&encode_ack(error.as_deref()), None).await
    }
}
