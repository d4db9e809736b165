use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::*;
use crate::objects::ObjectRef;
use crate::problems::Report;
use crate::translate::{Problem, Severity};

/// A real HTTP/1.1 client (hyper), as curl or a browser would talk to the endpoint.
async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn serves_the_current_problems_as_json() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let problems = ProblemSet::default();
    let task = tokio::spawn(serve(listener, problems.clone()));

    let (status, content_type, body) = get(addr, "GET", PROBLEMS_PATH).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let empty: Report = serde_json::from_str(&body).unwrap();
    assert_eq!(empty, Report::default());

    // A new translation's problems are what the next request sees.
    problems.update(
        "test",
        [Problem {
            severity: Severity::Error,
            object: ObjectRef {
                kind: "AuthorizationPolicy".into(),
                namespace: "shop".into(),
                name: "bad".into(),
            },
            field: "spec.action".into(),
            message: "unknown action \"PERMIT\"".into(),
        }],
    );
    let (status, _, body) = get(addr, "GET", "/debug/problems?pretty").await;
    assert_eq!(status, 200);
    let report: Report = serde_json::from_str(&body).unwrap();
    assert_eq!((report.errors, report.warnings), (1, 0));
    assert_eq!(report.problems[0].name, "bad");
    assert_eq!(report.problems[0].field, "spec.action");

    assert_eq!(get(addr, "POST", PROBLEMS_PATH).await.0, 405);
    assert_eq!(get(addr, "GET", "/other").await.0, 404);
    task.abort();
}

#[test]
fn the_default_address_is_loopback() {
    let addr: SocketAddr = DEFAULT_ADMIN_ADDR.parse().unwrap();
    assert!(addr.ip().is_loopback());
}
