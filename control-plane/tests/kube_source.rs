//! The Kubernetes source against the scripted fake API server: first list, live changes, and
//! convergence through a `410 Gone` relist.

use std::sync::Arc;
use std::time::Duration;

use control_plane::run::{kube_client, KubeSettings, KubeSource};
use control_plane::TranslateConfig;
use mesh::authz::Action;
use mesh::model::{Protocol, State};
use serde_json::{json, Value};
use testbed::kube_replay::{self as kr, Gone, KubeReplay};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

fn resources() -> Vec<kr::Resource> {
    kr::MESH_CONFIG_RESOURCES.to_vec()
}

fn policy(name: &str, action: &str, app: &str) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "action": action,
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}]}]
        }
    })
}

fn settings() -> KubeSettings {
    KubeSettings {
        debounce: Duration::from_millis(20),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..KubeSettings::default()
    }
}

/// Waits for a published state satisfying `ok`.
async fn until(
    rx: &mut watch::Receiver<Arc<State>>,
    what: &str,
    ok: impl Fn(&State) -> bool,
) -> Arc<State> {
    let found = tokio::time::timeout(WAIT, rx.wait_for(|s| ok(s)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("source stopped");
    found.clone()
}

fn policy_names(s: &State) -> Vec<String> {
    let mut names: Vec<String> = s.policies().map(|p| p.name.clone()).collect();
    names.sort();
    names
}

async fn start() -> (KubeReplay, KubeSource, watch::Receiver<Arc<State>>) {
    let replay = KubeReplay::start_with(resources())
        .await
        .expect("replay server");
    replay
        .apply(kr::namespace(
            "shop",
            &[("istio.io/dataplane-mode", "ambient")],
        ))
        .unwrap();
    replay
        .apply(kr::pod(
            "shop",
            "web-1",
            "n1",
            "10.1.0.2",
            &[("app", "web")],
        ))
        .unwrap();
    replay
        .apply(kr::pod("shop", "db-1", "n1", "10.1.0.3", &[("app", "db")]))
        .unwrap();
    replay.apply(policy("allow-web", "ALLOW", "db")).unwrap();
    let client = kube_client(Some(&replay.url())).await.expect("client");
    let (source, rx) = KubeSource::start(client, TranslateConfig::default(), settings());
    (replay, source, rx)
}

#[tokio::test]
async fn first_list_then_live_changes() {
    let (replay, source, mut rx) = start().await;
    // The channel's initial (empty) value is not a publication.
    assert!(!rx.has_changed().unwrap());
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("first state")
        .unwrap();
    let first = rx.borrow_and_update().clone();
    // Nothing is published before every kind listed, so the first state is complete.
    assert_eq!(first.workloads().count(), 2);
    assert!(first.workloads().all(|w| w.protocol == Protocol::Hbone));
    assert_eq!(policy_names(&first), ["allow-web"]);
    let db = first.workload_by_name("shop", "db-1").expect("db-1");
    assert!(db
        .authorization_policies
        .iter()
        .any(|p| p.contains("allow-web")));

    // A label change moves the pod out of the policy's selector.
    replay
        .apply(kr::pod(
            "shop",
            "db-1",
            "n1",
            "10.1.0.3",
            &[("app", "other")],
        ))
        .unwrap();
    until(&mut rx, "db-1 leaving allow-web", |s| {
        s.workload_by_name("shop", "db-1")
            .is_some_and(|w| w.authorization_policies.is_empty())
    })
    .await;

    // A new DENY policy arrives.
    replay.apply(policy("deny-web", "DENY", "web")).unwrap();
    let s = until(&mut rx, "deny-web", |s| policy_names(s).len() == 2).await;
    let deny = s.policies().find(|p| p.name == "deny-web").unwrap();
    assert_eq!(deny.action, Action::Deny);
    drop(source);
}

#[tokio::test]
async fn converges_through_a_410_relist() {
    for gone in [Gone::ErrorEvent, Gone::HttpStatus] {
        let (replay, source, mut rx) = start().await;
        until(&mut rx, "first state", |s| s.workloads().count() == 2).await;
        replay
            .wait_for_watches(&kr::AUTHORIZATION_POLICY, 1, WAIT)
            .await
            .unwrap();
        // Changes the watches never see: only a relist finds them.
        replay.delete_unseen("Pod", "shop", "web-1").unwrap();
        replay
            .apply_unseen(policy("deny-web", "DENY", "db"))
            .unwrap();
        replay.expire(gone);
        until(&mut rx, &format!("relist after {gone:?}"), |s| {
            s.workloads().count() == 1 && policy_names(s) == ["allow-web", "deny-web"]
        })
        .await;
        drop(source);
    }
}
