//! The replay server over real HTTP (hyper's client), checking the wire shapes clients rely on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::query::{parse_path, parse_query, ListWatch, Selector};
use super::*;

#[test]
fn paths() {
    let t = parse_path("/api/v1/pods").unwrap();
    assert_eq!(
        (t.group.as_str(), t.plural.as_str(), t.namespace, t.name),
        ("", "pods", None, None)
    );
    let t = parse_path("/api/v1/namespaces/shop/pods/cart").unwrap();
    assert_eq!(t.namespace.as_deref(), Some("shop"));
    assert_eq!(t.name.as_deref(), Some("cart"));
    let t = parse_path("/api/v1/namespaces/shop").unwrap();
    assert_eq!(
        (t.plural.as_str(), t.name.as_deref()),
        ("namespaces", Some("shop"))
    );
    let t = parse_path("/apis/discovery.k8s.io/v1/namespaces/a/endpointslices").unwrap();
    assert_eq!(
        (t.group.as_str(), t.plural.as_str()),
        ("discovery.k8s.io", "endpointslices")
    );
    for bad in [
        "/",
        "/healthz",
        "/api",
        "/apis//v1/x",
        "/api/v1/namespaces/a/pods/b/c",
    ] {
        assert!(parse_path(bad).is_err(), "{bad}");
    }
}

#[test]
fn queries_and_selectors() {
    let q = parse_query("watch=1&fieldSelector=spec.nodeName%3Dn1&labelSelector=app%3Dx%2C%21tier&limit=0&resourceVersion=12&allowWatchBookmarks=true&timeoutSeconds=290").unwrap();
    let lw = ListWatch::from_query(&q).unwrap();
    assert!(lw.watch && lw.allow_bookmarks);
    assert_eq!(lw.resource_version, "12");
    assert_eq!(lw.timeout_seconds, Some(290));
    assert_eq!(lw.limit, None, "limit=0 is no limit");
    let pod = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"nodeName": "n1", "hostNetwork": false}});
    assert!(lw.fields.matches(&pod) && lw.labels.matches(&pod));
    let other =
        json!({"metadata": {"labels": {"app": "x", "tier": "db"}}, "spec": {"nodeName": "n1"}});
    assert!(!lw.labels.matches(&other));
    assert!(Selector::parse("spec.hostNetwork=false", false)
        .unwrap()
        .matches(&pod));
    assert!(Selector::parse("spec.nodeName!=n2", false)
        .unwrap()
        .matches(&pod));
    assert!(Selector::parse("app in (x,y)", true).is_err());
    assert!(Selector::parse("nodeName", false).is_err());
    assert!(ListWatch::from_query(&parse_query("watch=maybe").unwrap()).is_err());
    assert!(ListWatch::from_query(&parse_query("limit=-1").unwrap()).is_err());
    assert!(parse_query("a=%zz").is_err());
}

/// `GET path` over a fresh connection; the response with its body still streaming.
async fn get(replay: &KubeReplay, path: &str) -> http::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(replay.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "replay")
        .body(Empty::<Bytes>::new())
        .unwrap();
    send.send_request(req).await.unwrap()
}

async fn get_json(replay: &KubeReplay, path: &str) -> (u16, Value) {
    let resp = get(replay, path).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

/// Reads watch lines as they come.
struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    async fn next(&mut self) -> Option<Result<Value, String>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(Ok(serde_json::from_slice(&line).unwrap()));
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("watch line in time");
            match frame {
                None => return None,
                Some(Err(e)) => return Some(Err(e.to_string())),
                Some(Ok(f)) => self
                    .buf
                    .extend_from_slice(&f.into_data().unwrap_or_default()),
            }
        }
    }
}

async fn watch(replay: &KubeReplay, path: &str) -> (u16, Lines) {
    let resp = get(replay, path).await;
    let status = resp.status().as_u16();
    (
        status,
        Lines {
            body: resp.into_body(),
            buf: Vec::new(),
        },
    )
}

#[tokio::test]
async fn list_has_the_api_shape_and_honours_selectors_and_paging() {
    let replay = KubeReplay::start().await.unwrap();
    replay.apply(namespace("shop", &[])).unwrap();
    for (i, node) in ["n1", "n2", "n1", "n1"].iter().enumerate() {
        replay
            .apply(pod(
                "shop",
                &format!("p{i}"),
                node,
                &format!("10.0.0.{i}"),
                &[],
            ))
            .unwrap();
    }
    let (status, list) = get_json(&replay, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1").await;
    assert_eq!(status, 200);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        replay.resource_version().to_string()
    );
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items[0].get("kind").is_none(), "list items carry no kind");
    assert_eq!(items[0]["metadata"]["namespace"], "shop");
    assert!(items[0]["metadata"]["uid"].is_string());
    assert!(items[0]["metadata"]["creationTimestamp"].is_string());

    let (_, page1) = get_json(&replay, "/api/v1/namespaces/shop/pods?limit=3").await;
    assert_eq!(page1["items"].as_array().unwrap().len(), 3);
    assert_eq!(page1["metadata"]["remainingItemCount"], 1);
    let token = page1["metadata"]["continue"].as_str().unwrap().to_owned();
    replay
        .apply(pod("shop", "late", "n1", "10.0.0.9", &[]))
        .unwrap();
    let (_, page2) = get_json(
        &replay,
        &format!("/api/v1/namespaces/shop/pods?limit=3&continue={token}"),
    )
    .await;
    assert_eq!(
        page2["items"].as_array().unwrap().len(),
        1,
        "pages come from one snapshot"
    );
    assert_eq!(
        page2["metadata"]["resourceVersion"],
        page1["metadata"]["resourceVersion"]
    );
    assert!(page2["metadata"].get("continue").is_none());
    let (status, gone) = get_json(&replay, &format!("/api/v1/pods?continue={token}")).await;
    assert_eq!(
        (status, gone["kind"].as_str(), gone["code"].as_u64()),
        (410, Some("Status"), Some(410))
    );

    let (status, ns) = get_json(&replay, "/api/v1/namespaces/shop").await;
    assert_eq!(status, 200);
    assert_eq!(ns["kind"], "Namespace");
    let (status, nf) = get_json(&replay, "/api/v1/namespaces/nope").await;
    assert_eq!((status, nf["reason"].as_str()), (404, Some("NotFound")));
    let (status, _) = get_json(&replay, "/api/v1/widgets").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn watch_streams_history_then_live_events_with_selector_transitions() {
    let replay = KubeReplay::start().await.unwrap();
    let from = replay.resource_version();
    replay.apply(pod("a", "p", "n1", "10.0.0.1", &[])).unwrap();
    let (status, mut lines) = watch(
        &replay,
        &format!("/api/v1/pods?watch=true&resourceVersion={from}&allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dn1"),
    )
    .await;
    assert_eq!(status, 200);
    let ev = lines.next().await.unwrap().unwrap();
    assert_eq!(ev["type"], "ADDED", "history after {from} is replayed");
    assert_eq!(ev["object"]["kind"], "Pod");
    replay
        .wait_for_watches(&POD, 1, Duration::from_secs(5))
        .await
        .unwrap();

    let mut moved = pod("a", "p", "n1", "10.0.0.1", &[("v", "2")]);
    replay.apply(moved.clone()).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap()["type"], "MODIFIED");
    moved["spec"]["nodeName"] = json!("n2");
    replay.apply(moved).unwrap();
    let ev = lines.next().await.unwrap().unwrap();
    assert_eq!(
        ev["type"], "DELETED",
        "leaving the selector is a delete for this watch"
    );
    replay.apply(pod("a", "q", "n2", "10.0.0.2", &[])).unwrap(); // not selected: nothing
    replay.bookmark();
    let ev = lines.next().await.unwrap().unwrap();
    assert_eq!(ev["type"], "BOOKMARK");
    assert_eq!(
        ev["object"]["metadata"]["resourceVersion"],
        replay.resource_version().to_string()
    );

    replay.expire(Gone::ErrorEvent);
    let ev = lines.next().await.unwrap().unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["kind"], "Status");
    assert_eq!(ev["object"]["code"], 410);
    assert!(
        lines.next().await.is_none(),
        "the stream ends after the error"
    );

    // A watch from before the compaction is refused the same way; HTTP 410 when so scripted.
    let (status, mut lines) = watch(
        &replay,
        &format!("/api/v1/pods?watch=1&resourceVersion={from}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(lines.next().await.unwrap().unwrap()["object"]["code"], 410);
    replay.expire(Gone::HttpStatus);
    let (status, _) = watch(
        &replay,
        &format!("/api/v1/pods?watch=1&resourceVersion={from}"),
    )
    .await;
    assert_eq!(status, 410);
}

#[tokio::test]
async fn cut_watches_end_with_an_error_and_unseen_writes_only_show_in_lists() {
    let replay = KubeReplay::start().await.unwrap();
    let rv = replay.resource_version();
    let (_, mut lines) = watch(
        &replay,
        &format!("/api/v1/namespaces?watch=true&resourceVersion={rv}"),
    )
    .await;
    replay
        .wait_for_watches(&NAMESPACE, 1, Duration::from_secs(5))
        .await
        .unwrap();
    replay.apply_unseen(namespace("quiet", &[])).unwrap();
    replay.apply(namespace("loud", &[])).unwrap();
    let ev = lines.next().await.unwrap().unwrap();
    assert_eq!(
        ev["object"]["metadata"]["name"], "loud",
        "the unseen write is never streamed"
    );
    replay.drop_watches();
    assert!(
        matches!(lines.next().await, Some(Err(_))),
        "a cut is an error, not a clean end"
    );
    let (_, list) = get_json(&replay, "/api/v1/namespaces").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // The re-watch from the old version still gets only the seen write.
    let (_, mut lines) = watch(
        &replay,
        &format!("/api/v1/namespaces?watch=true&resourceVersion={rv}"),
    )
    .await;
    assert_eq!(
        lines.next().await.unwrap().unwrap()["object"]["metadata"]["name"],
        "loud"
    );

    replay.fail_next(&NAMESPACE, 1, 500);
    let (status, body) = get_json(&replay, "/api/v1/namespaces").await;
    assert_eq!((status, body["code"].as_u64()), (500, Some(500)));
    assert_eq!(get_json(&replay, "/api/v1/namespaces").await.0, 200);
    let reqs = replay.requests();
    assert!(reqs.iter().filter(|r| r.is_watch(&NAMESPACE)).count() == 2);
    assert_eq!(reqs.last().unwrap().status, 200);
}

#[test]
fn scripting_errors_are_typed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let replay = rt.block_on(KubeReplay::start()).unwrap();
    assert!(matches!(
        replay.apply(json!({"apiVersion": "v9", "kind": "Gizmo", "metadata": {"name": "g"}})),
        Err(ReplayError::UnknownKind(_))
    ));
    assert_eq!(
        replay.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}})),
        Err(ReplayError::MissingName)
    );
    assert!(matches!(
        replay.delete("Pod", "a", "nope"),
        Err(ReplayError::NotFound { .. })
    ));
    let stored = replay.apply(namespace("x", &[])).unwrap();
    let again = replay.apply(namespace("x", &[("k", "v")])).unwrap();
    assert_eq!(
        stored["metadata"]["uid"], again["metadata"]["uid"],
        "uid survives updates"
    );
    assert_ne!(
        stored["metadata"]["resourceVersion"],
        again["metadata"]["resourceVersion"]
    );
    assert!(replay.get("Namespace", "", "x").is_some());
}
