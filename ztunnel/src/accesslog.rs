//! Per-connection access log, one record when a connection completes.
//!
//! Records are ordinary `tracing` events at target `access`, so they share the process's
//! output, format (text or JSON) and runtime filter: `POST /logging?access=off` silences them.
//! Field keys follow Istio ztunnel's access log (`src.addr`, `dst.workload`, `bytes_recv`,
//! `duration="12ms"`, ...) so log pipelines written for Istio parse ambit unchanged. Absent
//! values are omitted rather than logged as empty strings.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// The tracing target of access-log records.
pub const TARGET: &str = "access";

/// How log lines are rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human-readable single lines.
    #[default]
    Text,
    /// One JSON object per line, event fields as top-level keys.
    Json,
}

/// A log format name that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid log format {0:?}: expected \"text\" or \"json\"")]
pub struct InvalidLogFormat(pub String);

impl FromStr for LogFormat {
    type Err = InvalidLogFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "plain" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(InvalidLogFormat(s.to_string())),
        }
    }
}

/// Everything the access log says about one completed connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogRecord {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub src_workload: Option<String>,
    pub src_namespace: Option<String>,
    /// Only set when the identity was proven by mTLS.
    pub src_identity: Option<String>,
    pub dst_workload: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_identity: Option<String>,
    /// Service hostname the client addressed, if it addressed a service.
    pub dst_service: Option<String>,
    /// `"inbound"` or `"outbound"`, from this ztunnel's point of view.
    pub direction: &'static str,
    /// Bytes this ztunnel sent to the peer that opened the connection.
    pub bytes_sent: u64,
    /// Bytes this ztunnel received from the peer that opened the connection.
    pub bytes_received: u64,
    pub duration: Duration,
    /// Why the connection failed; `None` for a clean close.
    pub error: Option<String>,
    /// `"-"` for none, or e.g. `"DENY"`, `"CONNECT"` (as in the metrics).
    pub response_flags: String,
}

/// Istio renders durations as whole milliseconds with a unit, e.g. `"1503ms"`.
fn format_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Emits `record` at target `access`, level INFO.
pub fn emit(record: &AccessLogRecord) {
    let r = record;
    let flags = if r.response_flags.is_empty() {
        "-"
    } else {
        r.response_flags.as_str()
    };
    // `Option<&str>` fields are skipped by tracing when `None`, so absent values don't show up
    // as empty keys. `parent: None` keeps the record free of whatever span the proxy task is in.
    tracing::event!(
        target: TARGET,
        parent: None,
        tracing::Level::INFO,
        src.addr = %r.src,
        src.workload = r.src_workload.as_deref(),
        src.namespace = r.src_namespace.as_deref(),
        src.identity = r.src_identity.as_deref(),
        dst.addr = %r.dst,
        dst.service = r.dst_service.as_deref(),
        dst.workload = r.dst_workload.as_deref(),
        dst.namespace = r.dst_namespace.as_deref(),
        dst.identity = r.dst_identity.as_deref(),
        direction = r.direction,
        bytes_sent = r.bytes_sent,
        bytes_recv = r.bytes_received,
        duration = format_duration(r.duration),
        response_flags = flags,
        error = r.error.as_deref(),
        "connection complete"
    );
}
