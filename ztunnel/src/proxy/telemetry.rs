//! Metric labels and access-log records for one connection, derived only from the mesh model
//! (never from raw request fields), which keeps label cardinality bounded.

use std::net::SocketAddr;
use std::time::Instant;

use mesh::identity::Identity;
use mesh::model::{Service, Workload};

use crate::accesslog::{self, AccessLogRecord};
use crate::metrics::{ConnectionLabels, ConnectionMetrics, Metrics, Reporter};

/// What is known about each end of a connection.
#[derive(Clone, Default)]
pub struct Ends<'a> {
    pub src: Option<&'a Workload>,
    pub src_identity: Option<&'a Identity>,
    pub dst: Option<&'a Workload>,
    pub dst_identity: Option<&'a Identity>,
    pub service: Option<&'a Service>,
    pub mtls: bool,
}

fn or_unknown(s: Option<&str>) -> String {
    match s {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => "unknown".to_string(),
    }
}

fn workload_name(w: &Workload) -> &str {
    if w.workload_name.is_empty() {
        &w.name
    } else {
        &w.workload_name
    }
}

fn canonical_name(w: &Workload) -> &str {
    if w.canonical_name.is_empty() {
        workload_name(w)
    } else {
        &w.canonical_name
    }
}

/// Istio's connection label set for these ends.
pub fn labels(reporter: Reporter, ends: &Ends<'_>, response_flags: &str) -> ConnectionLabels {
    let src = ends.src;
    let dst = ends.dst;
    ConnectionLabels {
        reporter,
        source_workload: or_unknown(src.map(workload_name)),
        source_canonical_service: or_unknown(src.map(canonical_name)),
        source_canonical_revision: or_unknown(src.map(|w| w.canonical_revision.as_str())),
        source_workload_namespace: or_unknown(src.map(|w| w.namespace.as_str())),
        source_app: or_unknown(src.map(canonical_name)),
        source_principal: or_unknown(ends.src_identity.map(|i| i.to_string()).as_deref()),
        destination_workload: or_unknown(dst.map(workload_name)),
        destination_canonical_service: or_unknown(dst.map(canonical_name)),
        destination_canonical_revision: or_unknown(dst.map(|w| w.canonical_revision.as_str())),
        destination_workload_namespace: or_unknown(dst.map(|w| w.namespace.as_str())),
        destination_principal: or_unknown(ends.dst_identity.map(|i| i.to_string()).as_deref()),
        destination_service: or_unknown(ends.service.map(|s| s.hostname.as_str())),
        destination_service_namespace: or_unknown(ends.service.map(|s| s.namespace.as_str())),
        destination_service_name: or_unknown(ends.service.map(|s| s.name.as_str())),
        request_protocol: "tcp".to_string(),
        response_flags: response_flags.to_string(),
        connection_security_policy: if ends.mtls {
            "mutual_tls".to_string()
        } else {
            "unknown".to_string()
        },
    }
}

fn record(
    reporter: Reporter,
    ends: &Ends<'_>,
    src: SocketAddr,
    dst: SocketAddr,
) -> AccessLogRecord {
    AccessLogRecord {
        src,
        dst,
        src_workload: ends.src.map(|w| workload_name(w).to_string()),
        src_namespace: ends.src.map(|w| w.namespace.clone()),
        src_identity: ends.src_identity.map(|i| i.to_string()),
        dst_workload: ends.dst.map(|w| workload_name(w).to_string()),
        dst_namespace: ends.dst.map(|w| w.namespace.clone()),
        dst_identity: ends.dst_identity.map(|i| i.to_string()),
        dst_service: ends.service.map(|s| s.hostname.clone()),
        direction: match reporter {
            Reporter::Source => "outbound",
            Reporter::Destination => "inbound",
        },
        bytes_sent: 0,
        bytes_received: 0,
        duration: Default::default(),
        error: None,
        response_flags: "-".to_string(),
    }
}

/// One connection's telemetry: metrics while open, one access-log line when done.
pub struct ConnTelemetry {
    pub metrics: ConnectionMetrics,
    started: Instant,
    record: AccessLogRecord,
}

impl ConnTelemetry {
    pub fn open(
        metrics: &Metrics,
        reporter: Reporter,
        ends: &Ends<'_>,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Self {
        ConnTelemetry {
            metrics: metrics.open_connection(labels(reporter, ends, "-")),
            started: Instant::now(),
            record: record(reporter, ends, src, dst),
        }
    }

    /// Logs the finished connection.
    pub fn finish(mut self, error: Option<String>) {
        let (sent, received) = self.metrics.totals();
        self.record.bytes_sent = sent;
        self.record.bytes_received = received;
        self.record.duration = self.started.elapsed();
        self.record.error = error;
        accesslog::emit(&self.record);
    }
}

/// A connection refused before any byte was relayed: counted (opened and closed) with its
/// response flag, and logged with the reason.
pub fn refused(
    metrics: &Metrics,
    reporter: Reporter,
    ends: &Ends<'_>,
    src: SocketAddr,
    dst: SocketAddr,
    response_flags: &str,
    error: String,
) {
    drop(metrics.open_connection(labels(reporter, ends, response_flags)));
    let mut rec = record(reporter, ends, src, dst);
    rec.response_flags = response_flags.to_string();
    rec.error = Some(error);
    accesslog::emit(&rec);
}
