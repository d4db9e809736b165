use super::*;
use crate::logging::capture::capture;

fn record() -> AccessLogRecord {
    AccessLogRecord {
        src: "10.0.0.1:40000".parse().unwrap(),
        dst: "10.0.0.2:8080".parse().unwrap(),
        src_workload: Some("sleep-7d9c".into()),
        src_namespace: Some("default".into()),
        src_identity: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
        dst_workload: Some("echo-5f6b".into()),
        dst_namespace: Some("default".into()),
        dst_identity: Some("spiffe://cluster.local/ns/default/sa/echo".into()),
        dst_service: Some("echo.default.svc.cluster.local".into()),
        direction: "inbound",
        bytes_sent: 512,
        bytes_received: 128,
        duration: Duration::from_millis(1503),
        error: None,
        response_flags: "-".into(),
    }
}

fn emitted_json(r: &AccessLogRecord) -> serde_json::Value {
    let (dispatch, _handle, cap) = capture(LogFormat::Json, "info");
    tracing::dispatcher::with_default(&dispatch, || emit(r));
    let mut lines = cap.json_lines();
    assert_eq!(lines.len(), 1, "{}", cap.contents());
    lines.remove(0)
}

#[test]
fn json_record_has_istio_field_keys() {
    let v = emitted_json(&record());
    assert_eq!(v["target"], "access");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["message"], "connection complete");
    assert_eq!(v["src.addr"], "10.0.0.1:40000");
    assert_eq!(v["src.workload"], "sleep-7d9c");
    assert_eq!(v["src.namespace"], "default");
    assert_eq!(
        v["src.identity"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(v["dst.addr"], "10.0.0.2:8080");
    assert_eq!(v["dst.workload"], "echo-5f6b");
    assert_eq!(v["dst.namespace"], "default");
    assert_eq!(
        v["dst.identity"],
        "spiffe://cluster.local/ns/default/sa/echo"
    );
    assert_eq!(v["dst.service"], "echo.default.svc.cluster.local");
    assert_eq!(v["direction"], "inbound");
    assert_eq!(v["bytes_sent"], 512);
    assert_eq!(v["bytes_recv"], 128);
    assert_eq!(v["duration"], "1503ms");
    assert_eq!(v["response_flags"], "-");
    assert!(v.get("error").is_none());
}

#[test]
fn absent_values_are_omitted_and_errors_shown() {
    let r = AccessLogRecord {
        src_workload: None,
        src_identity: None,
        dst_service: None,
        error: Some("connection refused".into()),
        response_flags: "CONNECT".into(),
        ..record()
    };
    let v = emitted_json(&r);
    assert!(v.get("src.workload").is_none(), "{v}");
    assert!(v.get("src.identity").is_none(), "{v}");
    assert!(v.get("dst.service").is_none(), "{v}");
    assert_eq!(v["error"], "connection refused");
    assert_eq!(v["response_flags"], "CONNECT");
}

#[test]
fn access_target_can_be_silenced() {
    let (dispatch, handle, cap) = capture(LogFormat::Json, "info");
    handle.set_filter("info,access=off").unwrap();
    tracing::dispatcher::with_default(&dispatch, || emit(&record()));
    assert_eq!(cap.contents(), "");
}

#[test]
fn text_format_is_one_line_with_fields() {
    let (dispatch, _handle, cap) = capture(LogFormat::Text, "info");
    tracing::dispatcher::with_default(&dispatch, || emit(&record()));
    let out = cap.contents();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("access: connection complete"), "{out}");
    assert!(out.contains("src.addr=10.0.0.1:40000"), "{out}");
    assert!(out.contains("bytes_recv=128"), "{out}");
}

#[test]
fn log_format_parses() {
    assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
    assert_eq!("Text".parse::<LogFormat>(), Ok(LogFormat::Text));
    let err = "yaml".parse::<LogFormat>().unwrap_err();
    assert!(err.to_string().contains("yaml"));
}
