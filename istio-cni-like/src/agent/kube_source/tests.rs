use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as api;
use kube::runtime::watcher::Event;
use serde_json::json;

use super::*;

fn api_pod(v: serde_json::Value) -> api::Pod {
    serde_json::from_value(v).expect("pod JSON")
}

fn ns(name: &str, ambient: bool) -> Namespace {
    let mut labels = BTreeMap::new();
    if ambient {
        labels.insert("istio.io/dataplane-mode".to_owned(), "ambient".to_owned());
    }
    Namespace {
        name: name.to_owned(),
        labels,
    }
}

fn pod(ns: &str, name: &str, node: &str) -> Pod {
    Pod {
        name: name.to_owned(),
        namespace: ns.to_owned(),
        node_name: Some(node.to_owned()),
        service_account: "default".to_owned(),
        ..Pod::default()
    }
}

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_owned(), name.to_owned())
}

#[test]
fn mirror_replaces_its_set_only_when_a_relist_completes() {
    let mut m: Mirror<String, u32> = Mirror::default();
    assert!(!m.synced());
    assert!(!m.apply(Step::Init));
    assert!(!m.apply(Step::InitApply("a".into(), 1)));
    assert!(!m.synced(), "not synced before InitDone");
    assert!(
        m.apply(Step::InitDone),
        "first sync is a change, even if empty"
    );
    assert!(m.synced());
    assert!(m.apply(Step::Apply("b".into(), 2)));
    assert!(
        !m.apply(Step::Apply("b".into(), 2)),
        "same object again is no change"
    );
    assert!(m.apply(Step::Delete("a".into())));
    assert!(!m.apply(Step::Delete("a".into())));

    // A relist in progress leaves the live set alone, then replaces it whole.
    m.apply(Step::Init);
    m.apply(Step::InitApply("c".into(), 3));
    assert_eq!(m.objects().copied().collect::<Vec<_>>(), [2]);
    assert!(m.apply(Step::InitDone));
    assert_eq!(m.objects().copied().collect::<Vec<_>>(), [3]);

    // An identical relist changes nothing.
    m.apply(Step::Init);
    m.apply(Step::InitApply("c".into(), 3));
    assert!(!m.apply(Step::InitDone));

    // A relist restarted half-way (the list failed) starts from an empty buffer.
    m.apply(Step::Init);
    m.apply(Step::InitApply("x".into(), 9));
    m.apply(Step::Init);
    m.apply(Step::InitApply("c".into(), 3));
    assert!(!m.apply(Step::InitDone));
}

#[test]
fn view_waits_for_both_lists_and_keeps_only_this_node() {
    let mut s = SourceState::new("n1");
    s.apply(Update::Pod(Step::Init));
    s.apply(Update::Pod(Step::InitApply(
        key("a", "p"),
        pod("a", "p", "n1"),
    )));
    s.apply(Update::Pod(Step::InitApply(
        key("a", "q"),
        pod("a", "q", "n2"),
    )));
    s.apply(Update::Pod(Step::InitDone));
    assert_eq!(s.view(), None, "namespaces not listed yet");
    s.apply(Update::Namespace(Step::Init));
    s.apply(Update::Namespace(Step::InitApply(
        "a".into(),
        ns("a", true),
    )));
    assert!(s.apply(Update::Namespace(Step::InitDone)));
    let view = s.view().unwrap();
    assert!(view.pod("a", "p").is_some());
    assert!(
        view.pod("a", "q").is_none(),
        "another node's pod is filtered out"
    );
    assert_eq!(view.namespace("a"), Some(&ns("a", true)));

    assert!(s.apply(Update::Namespace(Step::Apply("a".into(), ns("a", false)))));
    assert_eq!(s.view().unwrap().namespace("a"), Some(&ns("a", false)));
}

#[test]
fn api_pod_converts_every_field_enrollment_uses() {
    let p = api_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "cart", "namespace": "shop", "uid": "u-1", "resourceVersion": "7",
            "labels": {"app": "cart"},
            "annotations": {"traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}
        },
        "spec": {
            "containers": [{"name": "app", "image": "x"}],
            "nodeName": "n1", "serviceAccountName": "cart-sa", "hostNetwork": false
        },
        "status": {"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00:10:1::5"}]}
    }));
    let (got, notes) = pod_from_api(&p).unwrap();
    assert!(notes.is_empty());
    assert_eq!(got.name, "cart");
    assert_eq!(got.namespace, "shop");
    assert_eq!(got.uid.as_deref(), Some("u-1"));
    assert_eq!(got.labels["app"], "cart");
    assert_eq!(
        got.annotations["traffic.sidecar.istio.io/excludeOutboundPorts"],
        "5432"
    );
    assert_eq!(got.node_name.as_deref(), Some("n1"));
    assert_eq!(got.service_account, "cart-sa");
    assert!(!got.host_network);
    assert_eq!(got.pod_ips.len(), 2);
}

#[test]
fn api_pod_defaults_and_bad_ips() {
    // A pending pod: no status, no service account, deprecated serviceAccount only.
    let p = api_pod(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [], "serviceAccount": "legacy", "hostNetwork": true}
    }));
    let (got, _) = pod_from_api(&p).unwrap();
    assert_eq!(got.namespace, "default");
    assert_eq!(got.service_account, "legacy");
    assert!(got.host_network);
    assert!(got.pod_ips.is_empty());
    assert!(got.uid.is_none());

    // Only podIP set; and a malformed address is dropped (with a note), not the pod.
    let p = api_pod(json!({"metadata": {"name": "p"}, "status": {"podIP": "10.0.0.9"}}));
    assert_eq!(pod_from_api(&p).unwrap().0.pod_ips.len(), 1);
    let p = api_pod(json!({
        "metadata": {"name": "p", "namespace": "x"},
        "status": {"podIPs": [{"ip": "not-an-ip"}, {"ip": "10.0.0.9"}]}
    }));
    let (got, notes) = pod_from_api(&p).unwrap();
    assert_eq!(got.pod_ips, ["10.0.0.9".parse::<IpAddr>().unwrap()]);
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].contains("x/p") && notes[0].contains("not-an-ip"),
        "{notes:?}"
    );

    assert!(pod_from_api(&api::Pod::default()).is_none(), "no name");
}

#[test]
fn watcher_events_become_steps() {
    let p = api_pod(json!({"metadata": {"name": "p", "namespace": "a"}}));
    assert_eq!(pod_step(Event::Init), Some(Step::Init));
    assert_eq!(pod_step(Event::InitDone), Some(Step::InitDone));
    assert!(matches!(
        pod_step(Event::Apply(p.clone())),
        Some(Step::Apply(k, _)) if k == key("a", "p")
    ));
    assert!(matches!(
        pod_step(Event::InitApply(p.clone())),
        Some(Step::InitApply(..))
    ));
    assert_eq!(
        pod_step(Event::Delete(p)),
        Some(Step::Delete(key("a", "p")))
    );
    assert_eq!(pod_step(Event::Apply(api::Pod::default())), None);

    let n: api::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "a", "labels": {"k": "v"}}})).unwrap();
    match namespace_step(Event::Apply(n.clone())) {
        Some(Step::Apply(k, v)) => {
            assert_eq!(k, "a");
            assert_eq!(v.labels["k"], "v");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        namespace_step(Event::Delete(n)),
        Some(Step::Delete("a".into()))
    );
}
