//! Prometheus metrics for ztunnel, exposed on port 15020.
//!
//! Traffic metrics use Istio ztunnel's exact names and label keys
//! (`istio_tcp_connections_opened_total`, ...), so existing Istio dashboards and Kiali read
//! ambit's numbers unchanged. Metrics Istio has no equivalent for carry an `ambit_` prefix so
//! nobody mistakes them for Istio's.
//!
//! Invariants:
//! - Label values come from the mesh model (workload, service, identity), never from raw
//!   request fields, so cardinality is bounded by the size of the mesh. Deny reasons are
//!   `&'static str` for the same reason: callers cannot pass an unbounded string.
//! - Absent values are exported as `"unknown"` (as Istio does), never as empty labels.
//! - Byte counters are bumped as bytes flow, not at close, so a long-lived connection's
//!   traffic is visible on every scrape while it is still open.
//!
//! No I/O here: [`Metrics::encode`] produces the text exposition; `httpserver` serves it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[cfg(test)]
mod tests;

/// The label value Istio uses for anything it does not know.
pub const UNKNOWN: &str = "unknown";

/// Which side of the connection reports the metric (Istio's `reporter` label).
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The client side: ztunnel capturing the source pod's outbound traffic.
    #[default]
    Source,
    /// The server side: ztunnel delivering to the destination pod.
    Destination,
}

impl Reporter {
    /// The label value Istio uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The label set of Istio's TCP metrics.
///
/// Field names are the exported label keys, so they must stay exactly Istio's. Empty strings
/// are normalised to `"unknown"` (and empty `response_flags` to `"-"`, empty
/// `request_protocol` to `"tcp"`) by [`Metrics::open_connection`], so callers may leave
/// anything they do not know empty or use [`Default`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    /// SPIFFE identity of the peer, only when it was proven by mTLS.
    pub source_principal: String,
    pub source_app: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    /// The service hostname, e.g. `echo.default.svc.cluster.local`.
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    /// `"tcp"` for ztunnel (L4 only).
    pub request_protocol: String,
    /// `"-"` for none, or Envoy-style flags such as `"DENY"` or `"CONNECT"`.
    pub response_flags: String,
    /// `"mutual_tls"` or `"unknown"`.
    pub connection_security_policy: String,
}

impl Default for ConnectionLabels {
    fn default() -> Self {
        let unknown = || UNKNOWN.to_string();
        ConnectionLabels {
            reporter: Reporter::Source,
            source_workload: unknown(),
            source_canonical_service: unknown(),
            source_canonical_revision: unknown(),
            source_workload_namespace: unknown(),
            source_principal: unknown(),
            source_app: unknown(),
            destination_workload: unknown(),
            destination_canonical_service: unknown(),
            destination_canonical_revision: unknown(),
            destination_workload_namespace: unknown(),
            destination_principal: unknown(),
            destination_service: unknown(),
            destination_service_namespace: unknown(),
            destination_service_name: unknown(),
            request_protocol: "tcp".to_string(),
            response_flags: "-".to_string(),
            connection_security_policy: UNKNOWN.to_string(),
        }
    }
}

impl ConnectionLabels {
    /// Replaces empty values with Istio's placeholders, so a caller that does not know a value
    /// never produces an empty label (which Prometheus treats as "label absent").
    pub fn normalized(mut self) -> Self {
        fn fill(v: &mut String, with: &str) {
            if v.is_empty() {
                v.push_str(with);
            }
        }
        for v in [
            &mut self.source_workload,
            &mut self.source_canonical_service,
            &mut self.source_canonical_revision,
            &mut self.source_workload_namespace,
            &mut self.source_principal,
            &mut self.source_app,
            &mut self.destination_workload,
            &mut self.destination_canonical_service,
            &mut self.destination_canonical_revision,
            &mut self.destination_workload_namespace,
            &mut self.destination_principal,
            &mut self.destination_service,
            &mut self.destination_service_namespace,
            &mut self.destination_service_name,
            &mut self.connection_security_policy,
        ] {
            fill(v, UNKNOWN);
        }
        fill(&mut self.request_protocol, "tcp");
        fill(&mut self.response_flags, "-");
        self
    }
}

/// Label set for outcome counters (`result="ok"|"failed"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl ResultLabels {
    fn of(ok: bool) -> Self {
        ResultLabels {
            result: if ok { "ok" } else { "failed" },
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    tag: &'static str,
}

struct Inner {
    registry: Registry,
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    sent_bytes: Family<ConnectionLabels, Counter>,
    received_bytes: Family<ConnectionLabels, Counter>,
    active_workloads: Gauge,
    config_reloads: Family<ResultLabels, Counter>,
    cert_rotations: Family<ResultLabels, Counter>,
    denied: Family<ReasonLabels, Counter>,
}

/// All of ztunnel's metrics. Cheap to clone: clones share the same counters.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();

        let opened = Family::<ConnectionLabels, Counter>::default();
        let closed = Family::<ConnectionLabels, Counter>::default();
        let sent_bytes = Family::<ConnectionLabels, Counter>::default();
        let received_bytes = Family::<ConnectionLabels, Counter>::default();
        let active_workloads = Gauge::default();
        let build = Family::<BuildLabels, Gauge>::default();
        {
            let istio = root.sub_registry_with_prefix("istio");
            // Help strings and names follow Istio ztunnel so `# HELP` lines match too.
            istio.register(
                "tcp_connections_opened",
                "The total number of TCP connections opened",
                opened.clone(),
            );
            istio.register(
                "tcp_connections_closed",
                "The total number of TCP connections closed",
                closed.clone(),
            );
            istio.register(
                "tcp_sent_bytes",
                "The size of total bytes sent during response in case of a TCP connection",
                sent_bytes.clone(),
            );
            istio.register(
                "tcp_received_bytes",
                "The size of total bytes received during request in case of a TCP connection",
                received_bytes.clone(),
            );
            istio.register(
                "active_proxy_count",
                "The total number of active in-pod workloads this ztunnel proxies",
                active_workloads.clone(),
            );
            istio.register("build", "Istio component build info", build.clone());
        }
        build
            .get_or_create(&BuildLabels {
                component: "ztunnel",
                tag: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        let config_reloads = Family::<ResultLabels, Counter>::default();
        let cert_rotations = Family::<ResultLabels, Counter>::default();
        let denied = Family::<ReasonLabels, Counter>::default();
        {
            let ambit = root.sub_registry_with_prefix("ambit");
            ambit.register(
                "config_reloads",
                "xDS/config updates applied (result=ok) or rejected (result=failed)",
                config_reloads.clone(),
            );
            ambit.register(
                "cert_rotations",
                "Workload certificate rotations, by result",
                cert_rotations.clone(),
            );
            ambit.register(
                "connections_denied",
                "Connections refused by ztunnel, by reason",
                denied.clone(),
            );
        }

        Metrics {
            inner: Arc::new(Inner {
                registry: root,
                opened,
                closed,
                sent_bytes,
                received_bytes,
                active_workloads,
                config_reloads,
                cert_rotations,
                denied,
            }),
        }
    }

    /// Counts `istio_tcp_connections_opened_total` now and returns the per-connection guard.
    ///
    /// The guard counts bytes straight into `istio_tcp_{sent,received}_bytes_total` (one atomic
    /// add each) and counts `istio_tcp_connections_closed_total` when dropped.
    pub fn open_connection(&self, labels: ConnectionLabels) -> ConnectionMetrics {
        let labels = labels.normalized();
        self.inner.opened.get_or_create(&labels).inc();
        // Resolve the byte counters once: a family lookup hashes ~20 strings, far too slow to
        // repeat on every read/write. The counters are Arc-backed, so clones share the value.
        let sent_metric = self.inner.sent_bytes.get_or_create(&labels).clone();
        let received_metric = self.inner.received_bytes.get_or_create(&labels).clone();
        ConnectionMetrics {
            metrics: self.clone(),
            labels,
            sent_metric,
            received_metric,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// Sets the number of in-pod workloads this ztunnel currently proxies.
    pub fn set_active_workloads(&self, n: u64) {
        self.inner
            .active_workloads
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one xDS/config update, applied (`ok`) or rejected.
    pub fn record_config_reload(&self, ok: bool) {
        self.inner
            .config_reloads
            .get_or_create(&ResultLabels::of(ok))
            .inc();
    }

    /// Counts one certificate rotation attempt, successful (`ok`) or not.
    pub fn record_cert_rotation(&self, ok: bool) {
        self.inner
            .cert_rotations
            .get_or_create(&ResultLabels::of(ok))
            .inc();
    }

    /// Counts a connection ztunnel refused. `reason` is a fixed token such as `"policy"`,
    /// `"no_identity"` or `"waypoint_bypass"`; `'static` keeps label cardinality bounded.
    pub fn record_denied(&self, reason: &'static str) {
        self.inner
            .denied
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            // Writing into a String cannot fail; an error here means a broken encoder impl.
            tracing::error!(error = %e, "failed to encode metrics");
            out.clear();
            let _ = writeln!(out, "# EOF");
        }
        out
    }
}

/// Metrics of one open connection. Dropping it counts the connection as closed.
///
/// `received` is the request direction (client → destination) and `sent` the response
/// direction (destination → client), for both reporters, matching Istio's metric semantics.
#[derive(Debug)]
pub struct ConnectionMetrics {
    metrics: Metrics,
    labels: ConnectionLabels,
    sent_metric: Counter,
    received_metric: Counter,
    sent: AtomicU64,
    received: AtomicU64,
}

impl ConnectionMetrics {
    /// Records `n` bytes sent back towards the client (response direction).
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.sent_metric.inc_by(n);
    }

    /// Records `n` bytes received from the client (request direction).
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        self.received_metric.inc_by(n);
    }

    /// `(sent, received)` bytes of this connection so far, for the access log.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    /// Sets the response flags the close is counted with, for failures found after the
    /// connection was opened (e.g. `"CONNECT"` when the upstream dial fails). Istio likewise
    /// counts the open with `-` and the close with the final flag.
    pub fn set_response_flags(&mut self, flags: &str) {
        self.labels.response_flags = if flags.is_empty() { "-" } else { flags }.to_string();
    }

    /// The (normalised) labels this connection is counted under.
    pub fn labels(&self) -> &ConnectionLabels {
        &self.labels
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        self.metrics.inner.closed.get_or_create(&self.labels).inc();
    }
}
