use serde_json::json;

use super::*;

const POD: WatchedKind = WATCHED_KINDS[1];
const POLICY: WatchedKind = WATCHED_KINDS[4];

fn dynamic(v: serde_json::Value) -> DynamicObject {
    serde_json::from_value(v).expect("a DynamicObject")
}

/// A pod as a list item arrives: no apiVersion/kind, server-set metadata.
fn pod(name: &str, ip: &str) -> DynamicObject {
    dynamic(json!({
        "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"),
                     "resourceVersion": "7", "managedFields": [{"manager": "kubelet"}]},
        "spec": {"nodeName": "n1", "serviceAccountName": "web"},
        "status": {"phase": "Running", "podIP": ip}
    }))
}

fn entry(kind: &WatchedKind, o: DynamicObject) -> (Key, Entry) {
    convert(kind, &o).expect("named object")
}

#[test]
fn converts_list_items_without_type_fields() {
    let (key, e) = entry(&POD, pod("web-1", "10.0.0.1"));
    assert_eq!(key, ("prod".to_string(), "web-1".to_string()));
    let Ok(Object::Pod(p)) = e else {
        panic!("not a pod: {e:?}")
    };
    assert_eq!(p.metadata.name, "web-1");
    assert_eq!(p.spec.service_account_name, "web");
    assert_eq!(p.status.pod_ip, "10.0.0.1");
}

#[test]
fn a_malformed_object_becomes_a_problem_naming_it_and_the_field() {
    let bad = dynamic(json!({
        "metadata": {"name": "deny-all", "namespace": "prod"},
        "spec": {"rules": "not a list"}
    }));
    let (_, e) = entry(&POLICY, bad);
    let p = e.expect_err("a problem");
    assert_eq!(p.severity, Severity::Error);
    assert_eq!(p.object.to_string(), "AuthorizationPolicy prod/deny-all");
    assert!(p.field.contains("rules"), "{p}");
}

#[test]
fn an_object_without_a_name_is_skipped() {
    let o = dynamic(json!({"metadata": {"namespace": "prod"}}));
    assert!(convert(&POD, &o).is_none());
}

#[test]
fn not_synced_until_every_kind_listed() {
    let mut s = Stores::new(2);
    assert!(!s.synced());
    s.apply(0, Step::Init);
    assert!(
        s.apply(0, Step::InitDone),
        "first list completion is a change"
    );
    assert!(!s.synced());
    s.apply(1, Step::Init);
    s.apply(1, Step::InitDone);
    assert!(s.synced());
    // A kind that does not exist changes nothing rather than panicking.
    assert!(!s.apply(7, Step::InitDone));
}

#[test]
fn relist_replaces_only_when_complete() {
    let mut s = Stores::new(1);
    let (ka, a) = entry(&POD, pod("a", "10.0.0.1"));
    let (kb, b) = entry(&POD, pod("b", "10.0.0.2"));
    s.apply(0, Step::Init);
    s.apply(0, Step::InitApply(ka.clone(), a.clone()));
    s.apply(0, Step::InitApply(kb, b));
    s.apply(0, Step::InitDone);
    assert_eq!(s.snapshot().0.len(), 2);

    // A relist (after 410) in which `b` is gone: nothing changes until it completes.
    assert!(!s.apply(0, Step::Init));
    assert!(!s.apply(0, Step::InitApply(ka, a)));
    assert_eq!(
        s.snapshot().0.len(),
        2,
        "half a relist must not empty the store"
    );
    assert!(s.apply(0, Step::InitDone));
    let (objects, _) = s.snapshot();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].metadata().name, "a");

    // The same relist again is no change.
    let (ka, a) = entry(&POD, pod("a", "10.0.0.1"));
    s.apply(0, Step::Init);
    s.apply(0, Step::InitApply(ka, a));
    assert!(!s.apply(0, Step::InitDone));
}

#[test]
fn equal_updates_and_unknown_deletes_are_no_change() {
    let mut s = Stores::new(1);
    s.apply(0, Step::InitDone);
    let (k, v) = entry(&POD, pod("a", "10.0.0.1"));
    assert!(s.apply(0, Step::Apply(k.clone(), v.clone())));
    // A status-only update (new resourceVersion) converts to an equal entry.
    let mut newer = pod("a", "10.0.0.1");
    newer.metadata.resource_version = Some("8".into());
    let (_, same) = entry(&POD, newer);
    assert!(!s.apply(0, Step::Apply(k.clone(), same)));
    let (_, moved) = entry(&POD, pod("a", "10.0.0.9"));
    assert!(s.apply(0, Step::Apply(k.clone(), moved)));
    assert!(s.apply(0, Step::Delete(k.clone())));
    assert!(!s.apply(0, Step::Delete(k)));
}

#[test]
fn conversion_problems_come_first_and_objects_still_translate() {
    let mut s = Stores::new(2);
    let ns = dynamic(json!({"metadata": {"name": "prod",
        "labels": {"istio.io/dataplane-mode": "ambient"}}}));
    let (kn, n) = entry(&WATCHED_KINDS[0], ns);
    let (kp, p) = entry(&POD, pod("a", "10.0.0.1"));
    s.apply(0, Step::Apply(kn, n));
    s.apply(1, Step::Apply(kp, p));
    let bad = dynamic(json!({"metadata": {"name": "x", "namespace": "prod"},
        "spec": {"rules": 3}}));
    let (kb, b) = entry(&POLICY, bad);
    s.apply(1, Step::Apply(kb, b));
    let (objects, problems) = s.snapshot();
    let t = translate_snapshot(&objects, problems, &TranslateConfig::default());
    assert_eq!(t.state_inputs.workloads.len(), 1);
    assert_eq!(t.problems[0].object.name, "x");
}

#[test]
fn each_problem_is_logged_once_while_it_persists() {
    let p = |name: &str| Problem {
        severity: Severity::Error,
        object: ObjectRef {
            kind: "Pod".into(),
            namespace: "prod".into(),
            name: name.into(),
        },
        field: String::new(),
        message: "bad".into(),
    };
    // The source records problems in the shared set, which logs only the difference.
    let logged = crate::problems::ProblemSet::default();
    assert_eq!(logged.update("kubernetes", [p("a")]).added.len(), 1);
    assert_eq!(
        logged.update("kubernetes", [p("a"), p("b")]).added,
        [p("b")]
    );
    assert_eq!(logged.current().len(), 2);
    // A fixed object leaves the set, so it is reported again if it breaks again.
    assert_eq!(logged.update("kubernetes", [p("b")]).resolved, [p("a")]);
    assert_eq!(
        logged
            .current()
            .iter()
            .map(|p| p.object.name.clone())
            .collect::<Vec<_>>(),
        ["b"]
    );
}

#[tokio::test]
async fn bad_api_urls_are_refused_by_name() {
    for url in ["not a url", "ftp://host", "/path/only"] {
        let e = client(Some(url)).await.err().expect("refused");
        assert!(e.to_string().contains(url), "{e}");
    }
}
