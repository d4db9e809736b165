//! Client writes over real HTTP: the answers clients branch on (201, 409 AlreadyExists, 409
//! Conflict, 404), watches seeing client writes, and TokenReview answers.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{json, Value};

use super::*;

async fn send(
    replay: &KubeReplay,
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
) -> (u16, Value) {
    let stream = tokio::net::TcpStream::connect(replay.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "replay")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

const JSON: &str = "application/json";

fn secret(name: &str, value: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
            "type": "Opaque", "data": { "k": value } })
}

#[tokio::test]
async fn create_is_create_only_and_replace_checks_the_resource_version() {
    let replay = KubeReplay::start().await.unwrap();
    let path = "/api/v1/namespaces/istio-system/secrets";
    let (status, first) = send(&replay, "POST", path, JSON, &secret("root", "YQ==")).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["metadata"]["namespace"], "istio-system");
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();

    // The loser of a create race gets AlreadyExists, and the winner's object stays.
    let (status, lost) = send(&replay, "POST", path, JSON, &secret("root", "Yg==")).await;
    assert_eq!(
        (status, lost["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let stored = replay.get("Secret", "istio-system", "root").unwrap();
    assert_eq!(stored["data"]["k"], "YQ==");

    // A replace from a stale resourceVersion is a Conflict; from the current one it lands.
    let mut update = stored.clone();
    update["data"]["k"] = json!("Yw==");
    update["metadata"]["resourceVersion"] = json!("1");
    let (status, conflict) = send(&replay, "PUT", &format!("{path}/root"), JSON, &update).await;
    assert_eq!(
        (status, conflict["reason"].as_str()),
        (409, Some("Conflict"))
    );
    update["metadata"]["resourceVersion"] = json!(rv);
    let (status, replaced) = send(&replay, "PUT", &format!("{path}/root"), JSON, &update).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(
        replay.get("Secret", "istio-system", "root").unwrap()["data"]["k"],
        "Yw=="
    );

    // Bodies that contradict the path are refused; missing objects are 404.
    let (status, _) = send(
        &replay,
        "POST",
        "/api/v1/namespaces/other/secrets",
        JSON,
        &{
            let mut s = secret("x", "YQ==");
            s["metadata"]["namespace"] = json!("istio-system");
            s
        },
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = send(
        &replay,
        "PUT",
        &format!("{path}/absent"),
        JSON,
        &secret("absent", ""),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(&replay, "POST", path, JSON, &json!({ "metadata": {} })).await;
    assert_eq!(status, 422, "a create without a name is invalid");

    // Every write was recorded with its body.
    let posts: Vec<_> = replay
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts[0].body.as_ref().unwrap()["data"]["k"], "YQ==");
}

#[tokio::test]
async fn patches_merge_and_deletes_reach_watches() {
    let replay = KubeReplay::start().await.unwrap();
    let path = "/api/v1/namespaces/istio-system/configmaps";
    let cm = json!({ "apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": { "name": "root-cert", "namespace": "istio-system" },
                     "data": { "root-cert.pem": "A", "old": "x" } });
    let (status, _) = send(&replay, "POST", path, JSON, &cm).await;
    assert_eq!(status, 201);
    let patch = json!({ "data": { "root-cert.pem": "B", "old": null } });
    let (status, patched) = send(
        &replay,
        "PATCH",
        &format!("{path}/root-cert"),
        "application/merge-patch+json",
        &patch,
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"], json!({ "root-cert.pem": "B" }));
    // Server-side apply creates what is missing.
    let (status, applied) = send(
        &replay,
        "PATCH",
        &format!("{path}/other?fieldManager=t&force=true"),
        "application/apply-patch+yaml",
        &json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "other" }, "data": {} }),
    )
    .await;
    assert_eq!(status, 201, "{applied}");
    let (status, _) = send(
        &replay,
        "DELETE",
        &format!("{path}/root-cert"),
        JSON,
        &json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(replay
        .get("ConfigMap", "istio-system", "root-cert")
        .is_none());
    // A watch from the start sees the client's writes as changes.
    let history = replay.shared.lock().history.clone();
    let kinds: Vec<ChangeKind> = history.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::Added,
            ChangeKind::Modified,
            ChangeKind::Added,
            ChangeKind::Deleted
        ]
    );
}

#[tokio::test]
async fn token_reviews_answer_scripted_tokens_for_their_audiences_only() {
    let replay = KubeReplay::start().await.unwrap();
    replay.review_token(
        "ztunnel-token",
        service_account_token(
            "istio-system",
            "ztunnel",
            Some(("ztunnel-abc", "node-1")),
            &["istio-ca"],
        ),
    );
    let path = "/apis/authentication.k8s.io/v1/tokenreviews";
    let review = |token: &str, audiences: &[&str]| {
        json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": { "token": token, "audiences": audiences } })
    };
    let (status, ok) = send(
        &replay,
        "POST",
        path,
        JSON,
        &review("ztunnel-token", &["istio-ca"]),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(ok["status"]["authenticated"], true);
    assert_eq!(
        ok["status"]["user"]["username"],
        "system:serviceaccount:istio-system:ztunnel"
    );
    assert_eq!(
        ok["status"]["user"]["extra"]["authentication.kubernetes.io/node-name"],
        json!(["node-1"])
    );
    let (_, wrong_audience) = send(
        &replay,
        "POST",
        path,
        JSON,
        &review("ztunnel-token", &["vault"]),
    )
    .await;
    assert_eq!(wrong_audience["status"]["authenticated"], Value::Null);
    assert!(wrong_audience["status"]["error"]
        .as_str()
        .unwrap()
        .contains("audiences"));
    let (_, unknown) = send(
        &replay,
        "POST",
        path,
        JSON,
        &review("forged", &["istio-ca"]),
    )
    .await;
    assert_eq!(unknown["status"]["authenticated"], Value::Null);
    assert!(
        replay.objects(&TOKEN_REVIEW).is_empty(),
        "reviews are not stored"
    );
}
