//! Kubernetes Events for invalid config, against the scripted fake API server through kube's
//! real client: one Warning Event per new problem, regarding the object, and no repost when the
//! same problem survives a retranslation or an edit of the object.

use std::time::Duration;

use control_plane::problems::ProblemSet;
use control_plane::run::{self, kube_client, KubeSettings, KubeSource};
use control_plane::TranslateConfig;
use serde_json::{json, Value};
use testbed::kube_replay::{self as kr, KubeReplay};

const WAIT: Duration = Duration::from_secs(20);

fn policy(name: &str, action: &str, note: &str) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop", "annotations": {"note": note}},
        "spec": {
            "selector": {"matchLabels": {"app": "db"}},
            "action": action,
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}]}]
        }
    })
}

fn event_posts(replay: &KubeReplay) -> usize {
    replay
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.plural.as_deref() == Some("events"))
        .count()
}

/// Polls (with a deadline) until the fake server holds `n` core/v1 Events.
async fn until_events(replay: &KubeReplay, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = replay.objects(&kr::CORE_EVENT);
        if events.len() >= n {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} events; have {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_new_problem_is_posted_once_as_a_warning_event_regarding_the_object() {
    let replay = KubeReplay::start_with([kr::MESH_CONFIG_RESOURCES, &[kr::CORE_EVENT]].concat())
        .await
        .expect("replay server");
    replay
        .apply(kr::namespace(
            "shop",
            &[("istio.io/dataplane-mode", "ambient")],
        ))
        .unwrap();
    replay
        .apply(kr::pod("shop", "db-1", "n1", "10.1.0.3", &[("app", "db")]))
        .unwrap();
    replay.apply(policy("good", "DENY", "v1")).unwrap();
    replay.apply(policy("bad", "PERMIT", "v1")).unwrap();

    let client = kube_client(Some(&replay.url())).await.expect("client");
    let problems = ProblemSet::default();
    let settings = KubeSettings {
        debounce: Duration::from_millis(20),
        ..KubeSettings::default()
    };
    let (_source, mut states) = KubeSource::start_reporting(
        client.clone(),
        TranslateConfig::default(),
        settings,
        problems.clone(),
    );
    let poster = tokio::spawn(run::post_events(client, problems, "cp-0".into()));

    // The good policy applies; the bad one is reported.
    tokio::time::timeout(WAIT, states.wait_for(|s| s.policies().count() == 1))
        .await
        .expect("first state")
        .unwrap();
    let events = until_events(&replay, 1).await;
    let event = &events[0];
    let stored = replay.get("AuthorizationPolicy", "shop", "bad").unwrap();
    assert_eq!(event["metadata"]["namespace"], "shop");
    let involved = &event["involvedObject"];
    assert_eq!(involved["kind"], "AuthorizationPolicy");
    assert_eq!(involved["apiVersion"], "security.istio.io/v1");
    assert_eq!(involved["namespace"], "shop");
    assert_eq!(involved["name"], "bad");
    assert_eq!(involved["uid"], stored["metadata"]["uid"]);
    assert_eq!(
        involved["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], run::REASON_INVALID);
    assert_eq!(event["reportingComponent"], run::REPORTING_CONTROLLER);
    let message = event["message"].as_str().unwrap();
    assert!(message.starts_with("spec.action: "), "{message}");
    assert!(message.contains("PERMIT"), "{message}");

    // Retranslations with the problem unchanged: a pod update, and an edit of the bad policy
    // itself (new resourceVersion, same complaint). Then a second bad policy: once its Event is
    // in, the poster has seen every set published before it, and it must not have reposted.
    replay
        .apply(kr::pod("shop", "db-2", "n1", "10.1.0.4", &[("app", "db")]))
        .unwrap();
    replay.apply(policy("bad", "PERMIT", "v2")).unwrap();
    tokio::time::timeout(WAIT, states.wait_for(|s| s.workloads().count() == 2))
        .await
        .expect("retranslation")
        .unwrap();
    replay.apply(policy("bad-2", "GRANT", "v1")).unwrap();
    let events = until_events(&replay, 2).await;
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["involvedObject"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"bad-2"), "{names:?}");
    assert_eq!(event_posts(&replay), 2, "a known problem was posted again");
    poster.abort();
}
