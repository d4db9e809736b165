//! Pure ZDS message logic: bytes (plus received fds) in, typed values out, and back.
//!
//! No I/O and no tokio here, so everything is unit-, property- and fuzz-testable. Decoding never
//! panics on any input; fds handed in are either moved into the result or dropped (closed).

use std::os::fd::OwnedFd;

use prost::Message;

use super::proto::{
    workload_request, workload_response, Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent,
    Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
};
use super::{ZdsError, ZdsRequest};

/// Largest datagram either side sends or accepts.
///
/// Istio's ztunnel and istio-cni both receive into 1024-byte buffers, so anything longer would be
/// truncated by them; we hold ourselves to the same limit in both directions.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// What an ack carries in place of an empty error string when the caller asked to report a failure
/// but gave no text: on the wire an empty error means success, which would invert the meaning.
const UNSPECIFIED_ERROR: &str = "unspecified error";

/// Bytes an `Ack` error adds around its text inside a `WorkloadResponse`: two tags and two
/// length varints of at most two bytes each (lengths stay below 16384).
const ACK_OVERHEAD: usize = 6;

/// Decodes one agent → ztunnel datagram and the fds that came with it.
///
/// An `add` must come with exactly one fd (its netns); every other request with none. On any
/// error the fds are closed. Never panics, whatever the bytes.
pub fn decode_request(bytes: &[u8], mut fds: Vec<OwnedFd>) -> Result<ZdsRequest, ZdsError> {
    let request = WorkloadRequest::decode(bytes)
        .map_err(|e| ZdsError::Decode(format!("WorkloadRequest: {e}")))?;
    // An unknown oneof member (a newer agent, or the removed `no_snapshot_present`) decodes as
    // an unknown field, i.e. as no payload at all.
    let payload = request
        .payload
        .ok_or_else(|| ZdsError::Decode("WorkloadRequest has no known payload".to_string()))?;
    match payload {
        workload_request::Payload::Add(add) => {
            if fds.len() > 1 {
                return Err(ZdsError::UnexpectedFds(fds.len()));
            }
            let netns = fds.pop().ok_or(ZdsError::MissingFd)?;
            Ok(ZdsRequest::Add {
                uid: non_empty_uid("add", add.uid)?,
                workload_info: add.workload_info,
                netns,
            })
        }
        _ if !fds.is_empty() => Err(ZdsError::UnexpectedFds(fds.len())),
        workload_request::Payload::Keep(keep) => Ok(ZdsRequest::Keep {
            uid: non_empty_uid("keep", keep.uid)?,
        }),
        workload_request::Payload::Del(del) => Ok(ZdsRequest::Del {
            uid: non_empty_uid("del", del.uid)?,
        }),
        workload_request::Payload::SnapshotSent(SnapshotSent {}) => Ok(ZdsRequest::SnapshotSent),
    }
}

/// A pod UID is the key of everything ztunnel tracks; an empty one would alias every other
/// message that lost its UID, so it is refused rather than enrolled.
fn non_empty_uid(kind: &str, uid: String) -> Result<String, ZdsError> {
    if uid.is_empty() {
        return Err(ZdsError::Decode(format!("{kind} request has an empty uid")));
    }
    Ok(uid)
}

/// The agent → ztunnel requests this crate sends, borrowed so callers need not clone.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OutRequest<'a> {
    Add {
        uid: &'a str,
        info: Option<&'a WorkloadInfo>,
    },
    Keep {
        uid: &'a str,
    },
    Del {
        uid: &'a str,
    },
    SnapshotSent,
}

/// Encodes a request, refusing ones the peer could not receive whole.
pub(crate) fn encode_request(request: OutRequest<'_>) -> Result<Vec<u8>, ZdsError> {
    let payload = match request {
        OutRequest::Add { uid, info } => workload_request::Payload::Add(AddWorkload {
            uid: uid.to_string(),
            workload_info: info.cloned(),
        }),
        OutRequest::Keep { uid } => workload_request::Payload::Keep(KeepWorkload {
            uid: uid.to_string(),
        }),
        OutRequest::Del { uid } => workload_request::Payload::Del(DelWorkload {
            uid: uid.to_string(),
        }),
        OutRequest::SnapshotSent => workload_request::Payload::SnapshotSent(SnapshotSent {}),
    };
    let bytes = WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec();
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ZdsError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Encodes ztunnel's hello.
pub(crate) fn encode_hello() -> Vec<u8> {
    ZdsHello {
        version: Version::V1 as i32,
    }
    .encode_to_vec()
}

/// Decodes ztunnel's hello, accepting only V1.
pub(crate) fn decode_hello(bytes: &[u8]) -> Result<Version, ZdsError> {
    let hello = ZdsHello::decode(bytes).map_err(|e| ZdsError::Decode(format!("ZdsHello: {e}")))?;
    match Version::try_from(hello.version) {
        Ok(Version::V1) => Ok(Version::V1),
        _ => Err(ZdsError::VersionMismatch(hello.version)),
    }
}

/// Encodes ztunnel's ack: `None` is success, `Some(text)` a failure.
///
/// A long error is cut (at a character boundary) so the ack always fits [`MAX_MESSAGE_LEN`]:
/// losing the tail of a message beats the agent discarding the whole ack as truncated.
pub(crate) fn encode_ack(error: Option<&str>) -> Vec<u8> {
    let error = match error {
        None => String::new(),
        Some("") => UNSPECIFIED_ERROR.to_string(),
        Some(text) => truncate_at_char_boundary(text, MAX_MESSAGE_LEN - ACK_OVERHEAD).to_string(),
    };
    WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack { error })),
    }
    .encode_to_vec()
}

fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Decodes ztunnel's answer: `Ok(())` for success, `Err(ZdsError::Rejected)` with its error text.
pub(crate) fn decode_ack(bytes: &[u8]) -> Result<(), ZdsError> {
    let response = WorkloadResponse::decode(bytes)
        .map_err(|e| ZdsError::Decode(format!("WorkloadResponse: {e}")))?;
    match response.payload {
        Some(workload_response::Payload::Ack(Ack { error })) if error.is_empty() => Ok(()),
        Some(workload_response::Payload::Ack(Ack { error })) => Err(ZdsError::Rejected(error)),
        None => Err(ZdsError::Decode(
            "WorkloadResponse has no known payload".to_string(),
        )),
    }
}
