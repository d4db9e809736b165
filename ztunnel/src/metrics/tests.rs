use super::*;

fn labels() -> ConnectionLabels {
    ConnectionLabels {
        reporter: Reporter::Destination,
        source_workload: "sleep".into(),
        source_workload_namespace: "default".into(),
        source_principal: "spiffe://cluster.local/ns/default/sa/sleep".into(),
        destination_workload: "echo".into(),
        destination_service: "echo.default.svc.cluster.local".into(),
        connection_security_policy: "mutual_tls".into(),
        ..Default::default()
    }
}

/// Returns the sample line of `metric` (exact name, with labels), if any.
fn sample<'a>(text: &'a str, metric: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
}

fn value(text: &str, metric: &str) -> Option<u64> {
    sample(text, metric)?.rsplit(' ').next()?.parse().ok()
}

/// Istio ztunnel's label keys for the TCP metrics, in the order we export them.
const ISTIO_LABEL_KEYS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

#[test]
fn tcp_metrics_use_istio_names_and_label_keys() {
    let m = Metrics::new();
    let _conn = m.open_connection(labels());
    let text = m.encode();
    let line = sample(&text, "istio_tcp_connections_opened_total").expect(&text);
    let inner = line
        .split_once('{')
        .and_then(|(_, rest)| rest.rsplit_once('}'))
        .map(|(inner, _)| inner)
        .unwrap();
    let keys: Vec<&str> = inner
        .split("\",")
        .map(|kv| kv.split_once('=').unwrap().0)
        .collect();
    assert_eq!(keys, ISTIO_LABEL_KEYS);
    assert!(line.contains(r#"reporter="destination""#), "{line}");
    assert!(line.contains(r#"destination_service="echo.default.svc.cluster.local""#));
    assert!(line.contains(r#"connection_security_policy="mutual_tls""#));
    // Absent values are Istio's placeholders, never empty.
    assert!(
        line.contains(r#"source_canonical_service="unknown""#),
        "{line}"
    );
    assert!(line.contains(r#"response_flags="-""#));
    assert!(line.contains(r#"request_protocol="tcp""#));
    for name in [
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
    ] {
        assert!(sample(&text, name).is_some(), "{name} missing:\n{text}");
    }
    assert!(text.contains("# TYPE istio_tcp_connections_closed counter"));
}

#[test]
fn empty_label_values_become_unknown() {
    let l = ConnectionLabels {
        source_workload: String::new(),
        response_flags: String::new(),
        request_protocol: String::new(),
        ..labels()
    }
    .normalized();
    assert_eq!(l.source_workload, "unknown");
    assert_eq!(l.response_flags, "-");
    assert_eq!(l.request_protocol, "tcp");
    assert_eq!(l.source_principal, labels().source_principal);
}

#[test]
fn bytes_are_visible_while_the_connection_is_open() {
    let m = Metrics::new();
    let conn = m.open_connection(labels());
    conn.received(100);
    conn.sent(7);
    conn.received(23);
    let text = m.encode();
    assert_eq!(value(&text, "istio_tcp_received_bytes_total"), Some(123));
    assert_eq!(value(&text, "istio_tcp_sent_bytes_total"), Some(7));
    assert_eq!(value(&text, "istio_tcp_connections_opened_total"), Some(1));
    assert_eq!(value(&text, "istio_tcp_connections_closed_total"), None);
    assert_eq!(conn.totals(), (7, 123));
}

#[test]
fn close_is_counted_on_drop() {
    let m = Metrics::new();
    let a = m.open_connection(labels());
    let b = m.open_connection(labels());
    drop(a);
    assert_eq!(
        value(&m.encode(), "istio_tcp_connections_closed_total"),
        Some(1)
    );
    drop(b);
    let text = m.encode();
    assert_eq!(value(&text, "istio_tcp_connections_closed_total"), Some(2));
    assert_eq!(value(&text, "istio_tcp_connections_opened_total"), Some(2));
}

#[test]
fn close_carries_late_response_flags() {
    let m = Metrics::new();
    let mut conn = m.open_connection(labels());
    conn.set_response_flags("CONNECT");
    drop(conn);
    let text = m.encode();
    let closed = sample(&text, "istio_tcp_connections_closed_total").unwrap();
    assert!(closed.contains(r#"response_flags="CONNECT""#), "{closed}");
    let opened = sample(&text, "istio_tcp_connections_opened_total").unwrap();
    assert!(opened.contains(r#"response_flags="-""#), "{opened}");
}

#[test]
fn distinct_labels_are_distinct_series() {
    let m = Metrics::new();
    let src = m.open_connection(ConnectionLabels {
        reporter: Reporter::Source,
        ..labels()
    });
    let dst = m.open_connection(labels());
    src.sent(1);
    dst.sent(2);
    let text = m.encode();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
}

#[test]
fn ztunnel_specific_metrics() {
    let m = Metrics::new();
    m.set_active_workloads(3);
    m.record_config_reload(true);
    m.record_config_reload(true);
    m.record_config_reload(false);
    m.record_cert_rotation(true);
    m.record_denied("policy");
    let text = m.encode();
    assert!(text.contains("istio_active_proxy_count 3"), "{text}");
    assert!(text.contains(r#"ambit_config_reloads_total{result="ok"} 2"#));
    assert!(text.contains(r#"ambit_config_reloads_total{result="failed"} 1"#));
    assert!(text.contains(r#"ambit_cert_rotations_total{result="ok"} 1"#));
    assert!(text.contains(r#"ambit_connections_denied_total{reason="policy"} 1"#));
    assert!(text.contains(r#"istio_build{component="ztunnel""#));
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn clones_share_counters() {
    let m = Metrics::new();
    let m2 = m.clone();
    drop(m2.open_connection(labels()));
    assert_eq!(
        value(&m.encode(), "istio_tcp_connections_closed_total"),
        Some(1)
    );
}
