use super::capture::capture;
use super::*;

fn dir(target: Option<&str>, level: LevelFilter) -> LevelDirective {
    LevelDirective {
        target: target.map(str::to_string),
        level,
    }
}

#[test]
fn default_filter_is_valid_info() {
    let (f, err) = startup_filter(None);
    assert_eq!(f.to_string(), "info");
    assert!(err.is_none());
    assert!(parse_filter(DEFAULT_FILTER).is_ok());
}

#[test]
fn invalid_rust_log_falls_back_with_reason() {
    let (f, err) = startup_filter(Some("foo=notalevel"));
    assert_eq!(f.to_string(), "info");
    assert!(err.unwrap().contains("foo=notalevel"));
    let (f, err) = startup_filter(Some("warn,ztunnel=debug"));
    assert_eq!(f.to_string(), "ztunnel=debug,warn");
    assert!(err.is_none());
}

#[test]
fn set_filter_changes_what_is_emitted() {
    let (dispatch, handle, cap) = capture(LogFormat::Text, "info");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::debug!("hidden-before");
        handle.set_filter("debug").unwrap();
        tracing::debug!("shown-after");
    });
    let out = cap.contents();
    assert!(!out.contains("hidden-before"), "{out}");
    assert!(out.contains("shown-after"), "{out}");
    assert_eq!(handle.current(), "debug");
}

#[test]
fn set_filter_rejects_bad_spec_and_keeps_old_filter() {
    let (_dispatch, handle, _cap) = capture(LogFormat::Text, "info");
    let err = handle.set_filter("ztunnel=loud").unwrap_err();
    assert!(err.contains("ztunnel=loud"), "{err}");
    assert!(handle.set_filter("  ").is_err());
    assert_eq!(handle.current(), "info");
}

#[test]
fn update_replaces_same_target_and_reset_returns_to_default() {
    let (_dispatch, handle, _cap) = capture(LogFormat::Text, "info");
    handle
        .update(false, &[dir(Some("ztunnel::proxy"), LevelFilter::DEBUG)])
        .unwrap();
    handle
        .update(false, &[dir(Some("ztunnel::proxy"), LevelFilter::TRACE)])
        .unwrap();
    handle
        .update(false, &[dir(None, LevelFilter::WARN)])
        .unwrap();
    assert_eq!(handle.current(), "ztunnel::proxy=trace,warn");
    handle
        .update(true, &[dir(Some("access"), LevelFilter::OFF)])
        .unwrap();
    assert_eq!(handle.current(), "access=off,info");
    assert_eq!(handle.default_filter(), "info");
}

#[test]
fn merge_spec_replaces_keys_and_keeps_others() {
    assert_eq!(
        merge_spec("info", &[dir(None, LevelFilter::DEBUG)]),
        "debug"
    );
    assert_eq!(
        merge_spec("a=debug,info,b", &[dir(Some("b"), LevelFilter::WARN)]),
        "a=debug,info,b=warn"
    );
    // A span filter's inner commas and `=` are not directive separators.
    assert_eq!(
        merge_spec(
            "x[s{a=1,b=2}]=debug,info",
            &[dir(Some("x"), LevelFilter::ERROR)]
        ),
        "x[s{a=1,b=2}]=debug,info,x=error"
    );
    assert_eq!(merge_spec("", &[dir(None, LevelFilter::OFF)]), "off");
}

#[test]
fn parse_level_accepts_istio_levels_only() {
    for l in ["trace", "debug", "info", "warn", "error", "off", "DEBUG"] {
        assert!(parse_level(l).is_some(), "{l}");
    }
    for l in ["", "loud", "5", "debug,"] {
        assert!(parse_level(l).is_none(), "{l}");
    }
}

#[test]
fn json_format_puts_fields_at_top_level() {
    let (dispatch, _handle, cap) = capture(LogFormat::Json, "info");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!(answer = 42, "hello");
    });
    let lines = cap.json_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["answer"], 42);
    assert_eq!(lines[0]["message"], "hello");
    assert_eq!(lines[0]["level"], "INFO");
}

#[test]
fn init_twice_returns_the_same_handle() {
    let a = init(LogFormat::Text);
    let b = init(LogFormat::Json);
    assert!(Arc::ptr_eq(&a.inner, &b.inner));
}
