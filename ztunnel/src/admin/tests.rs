use std::net::SocketAddr;

use tokio::sync::oneshot;
use tracing::level_filters::LevelFilter;

use super::*;
use crate::accesslog::LogFormat;
use crate::httpserver::test_client::{get, request};
use crate::logging::capture::capture;

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), AdminError>>,
}

async fn start(state: AdminState) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_admin(listener, state, rx));
    Running { addr, stop, task }
}

impl Running {
    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn state(log: Option<LogHandle>) -> AdminState {
    AdminState {
        config_dump: Arc::new(|| serde_json::json!({"workloads": [{"name": "echo"}], "n": 1})),
        log,
    }
}

#[tokio::test]
async fn config_dump_returns_the_closures_json() {
    let s = start(state(None)).await;
    let reply = get(s.addr, "/config_dump").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"workloads": [{"name": "echo"}], "n": 1})
    );
    s.shutdown().await;
}

#[tokio::test]
async fn config_dump_is_fresh_on_each_request() {
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = counter.clone();
    let s = start(AdminState {
        config_dump: Arc::new(
            move || serde_json::json!({"n": c.fetch_add(1, std::sync::atomic::Ordering::SeqCst)}),
        ),
        log: None,
    })
    .await;
    let first: serde_json::Value =
        serde_json::from_str(&get(s.addr, "/config_dump").await.body).unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&get(s.addr, "/config_dump").await.body).unwrap();
    assert_eq!(
        (first["n"].as_u64(), second["n"].as_u64()),
        (Some(0), Some(1))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn index_and_not_found() {
    let s = start(state(None)).await;
    let index = get(s.addr, "/").await;
    assert_eq!(index.status, 200);
    assert!(index.body.contains("/config_dump") && index.body.contains("/logging"));
    assert_eq!(get(s.addr, "/quitquitquit").await.status, 404);
    assert_eq!(request(s.addr, "POST", "/config_dump").await.status, 405);
    s.shutdown().await;
}

#[tokio::test]
async fn logging_changes_the_effective_filter() {
    let (_dispatch, log, _cap) = capture(LogFormat::Text, "info");
    let s = start(state(Some(log.clone()))).await;

    let reply = get(s.addr, "/logging").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "current log level is info\n");

    let reply = request(s.addr, "POST", "/logging?level=debug").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(log.current(), "debug");

    let reply = request(s.addr, "POST", "/logging?ztunnel::proxy=trace").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // EnvFilter prints target directives before the global level.
    assert_eq!(log.current(), "ztunnel::proxy=trace,debug");

    // Istio's form, percent-encoded as curl --data-urlencode would send it.
    let reply = request(
        s.addr,
        "POST",
        "/logging?level=access%3Aoff%2Cztunnel%3A%3Aproxy%3Ainfo",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(log.current(), "ztunnel::proxy=info,access=off,debug");
    assert_eq!(
        reply.body,
        format!("current log level is {}\n", log.current())
    );

    let reply = request(s.addr, "POST", "/logging?reset").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(log.current(), "info");
    s.shutdown().await;
}

#[tokio::test]
async fn bad_logging_query_is_400_with_a_message() {
    let (_dispatch, log, _cap) = capture(LogFormat::Text, "info");
    let s = start(state(Some(log.clone()))).await;
    for (query, needle) in [
        ("level=loud", "invalid log level \"loud\""),
        (
            "ztunnel=verbose",
            "invalid log level \"verbose\" for ztunnel",
        ),
        ("a%2Cb=debug", "invalid log target \"a,b\""),
        ("level=%zz", "invalid percent-encoding"),
    ] {
        let reply = request(s.addr, "POST", &format!("/logging?{query}")).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert!(reply.body.contains(needle), "{query}: {}", reply.body);
        assert!(reply.body.contains("usage:"), "{}", reply.body);
    }
    assert_eq!(log.current(), "info");
    s.shutdown().await;
}

#[tokio::test]
async fn logging_changes_need_post() {
    let (_dispatch, log, _cap) = capture(LogFormat::Text, "info");
    let s = start(state(Some(log.clone()))).await;
    let reply = get(s.addr, "/logging?level=debug").await;
    assert_eq!(reply.status, 405);
    assert!(reply.body.contains("POST"));
    assert_eq!(log.current(), "info");
    s.shutdown().await;
}

#[tokio::test]
async fn logging_without_handle_is_404() {
    let s = start(state(None)).await;
    let reply = request(s.addr, "POST", "/logging?level=debug").await;
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("not available"));
    s.shutdown().await;
}

#[test]
fn admin_addr_must_be_loopback() {
    for ok in [
        "127.0.0.1:15000",
        "127.1.2.3:15000",
        "[::1]:15000",
        "[::ffff:127.0.0.1]:15000",
    ] {
        assert_eq!(check_admin_addr(ok.parse().unwrap()), Ok(()), "{ok}");
    }
    for bad in [
        "0.0.0.0:15000",
        "[::]:15000",
        "10.0.0.1:15000",
        "[::ffff:10.0.0.1]:15000",
    ] {
        let err = check_admin_addr(bad.parse().unwrap()).unwrap_err();
        assert!(err.contains("loopback"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn serve_admin_refuses_a_wildcard_listener() {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = serve_admin(listener, state(None), std::future::pending::<()>())
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::NotLoopback(a) if a.ip().is_unspecified()));
}

#[test]
fn logging_query_parsing() {
    use LoggingRequest::*;
    let d = |t: Option<&str>, l| LevelDirective {
        target: t.map(str::to_string),
        level: l,
    };
    assert_eq!(parse_logging_query(None), Ok(Show));
    assert_eq!(parse_logging_query(Some("")), Ok(Show));
    assert_eq!(
        parse_logging_query(Some("level=warn")),
        Ok(Update {
            reset: false,
            directives: vec![d(None, LevelFilter::WARN)]
        })
    );
    assert_eq!(
        parse_logging_query(Some("reset&level=ztunnel::proxy:debug")),
        Ok(Update {
            reset: true,
            directives: vec![d(Some("ztunnel::proxy"), LevelFilter::DEBUG)]
        })
    );
    assert_eq!(
        parse_logging_query(Some("access=off&hbone=trace")),
        Ok(Update {
            reset: false,
            directives: vec![
                d(Some("access"), LevelFilter::OFF),
                d(Some("hbone"), LevelFilter::TRACE)
            ]
        })
    );
    assert!(parse_logging_query(Some("level=")).is_err());
    assert!(parse_logging_query(Some("x[span]=debug")).is_err());
    assert!(parse_logging_query(Some("level=:debug")).is_err());
    assert!(parse_logging_query(Some("level=%+1")).is_err());
    assert!(parse_logging_query(Some("level=%4")).is_err());
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%3A%3Ab").unwrap(), "a::b");
    assert_eq!(percent_decode("a+b").unwrap(), "a b");
    assert!(percent_decode("%ff").is_err()); // not UTF-8
    assert!(percent_decode("%").is_err());
}
