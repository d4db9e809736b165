//! The Kubernetes source against kube's real client and watcher, talking HTTP to the
//! `testbed::kube_replay` fake API server: list, watch events, bookmarks, 410 Gone and dropped
//! connections, checked through the published `ClusterView` and enrollment decisions.

use std::sync::Arc;
use std::time::Duration;

use istio_cni_like::agent::enrollment::{decide, Enrollment, NotEnrolledReason};
use istio_cni_like::agent::kube_source::{client, KubeSettings, KubeSource};
use istio_cni_like::agent::{ClusterView, PodSource};
use serde_json::{json, Value};
use testbed::kube_replay::{self, Gone, KubeReplay, NAMESPACE, POD};
use tokio::sync::watch;

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(15);

fn ambient_ns(name: &str) -> Value {
    kube_replay::namespace(name, &[("istio.io/dataplane-mode", "ambient")])
}

fn plain_ns(name: &str) -> Value {
    kube_replay::namespace(name, &[])
}

fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    kube_replay::pod(ns, name, node, ip, &[("app", name)])
}

/// A replay server holding `objects`, and a source started against it with fast back-off.
async fn start(objects: Vec<Value>) -> (KubeReplay, KubeSource) {
    let replay = KubeReplay::start().await.expect("replay server");
    for o in objects {
        replay.apply(o).expect("scripted object");
    }
    let client = client(Some(&replay.url())).await.expect("kube client");
    let settings = KubeSettings {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..KubeSettings::new(NODE)
    };
    let source = KubeSource::start(client, settings);
    (replay, source)
}

/// Waits for a view satisfying `pred` and returns it.
async fn view_where(
    rx: &mut watch::Receiver<Option<Arc<ClusterView>>>,
    what: &str,
    pred: impl Fn(&ClusterView) -> bool,
) -> Arc<ClusterView> {
    let got = tokio::time::timeout(WAIT, async {
        rx.wait_for(|v| v.as_deref().is_some_and(&pred))
            .await
            .map(|v| v.clone())
    })
    .await;
    match got {
        Ok(Ok(v)) => v.expect("checked Some"),
        Ok(Err(_)) => panic!("source stopped while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last view: {:#?}",
            rx.borrow().as_deref()
        ),
    }
}

fn enrollment(view: &ClusterView, ns: &str, name: &str) -> Enrollment {
    let pod = view.pod(ns, name).expect("pod in view");
    decide(view.namespace(ns), pod)
}

fn pod_names(view: &ClusterView) -> Vec<String> {
    view.pods
        .keys()
        .map(|(ns, n)| format!("{ns}/{n}"))
        .collect()
}

#[tokio::test]
async fn initial_list_publishes_this_nodes_pods_and_all_namespaces() {
    let mut p1 = pod("shop", "cart", NODE, "10.1.0.5");
    p1["metadata"]["annotations"] =
        json!({ "traffic.sidecar.istio.io/excludeInboundPorts": "9090" });
    p1["spec"]["serviceAccountName"] = json!("cart-sa");
    let (replay, source) = start(vec![
        ambient_ns("shop"),
        plain_ns("ops"),
        p1,
        pod("ops", "tool", NODE, "10.1.0.6"),
        pod("shop", "elsewhere", "node-b", "10.2.0.5"),
    ])
    .await;
    let mut rx = source.subscribe();
    let view = view_where(&mut rx, "first view", |_| true).await;

    assert_eq!(pod_names(&view), ["ops/tool", "shop/cart"]);
    assert!(view.namespace("shop").is_some() && view.namespace("ops").is_some());
    let cart = view.pod("shop", "cart").unwrap();
    assert_eq!(cart.service_account, "cart-sa");
    assert_eq!(cart.node_name.as_deref(), Some(NODE));
    assert_eq!(
        cart.pod_ips,
        ["10.1.0.5".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(cart.uid.is_some(), "the server-assigned uid is carried");
    match enrollment(&view, "shop", "cart") {
        Enrollment::Enrolled(cfg) => assert_eq!(cfg.exclude_inbound_ports, [9090]),
        other => panic!("shop/cart should be enrolled: {other:?}"),
    }
    assert_eq!(
        enrollment(&view, "ops", "tool"),
        Enrollment::NotEnrolled(NotEnrolledReason::NotAmbient)
    );

    // The pods were listed with this node's field selector (the server filtered on it).
    let reqs = replay.requests();
    let pod_list = reqs.iter().find(|r| r.is_list(&POD)).expect("a pod list");
    assert_eq!(
        pod_list.param("fieldSelector"),
        Some("spec.nodeName=node-a")
    );
    assert!(reqs.iter().any(|r| r.is_list(&NAMESPACE)));
}

#[tokio::test]
async fn added_and_modified_events_flip_enrollment_and_deleted_removes() {
    let (replay, source) = start(vec![
        plain_ns("shop"),
        pod("shop", "cart", NODE, "10.1.0.5"),
    ])
    .await;
    let mut rx = source.subscribe();
    let view = view_where(&mut rx, "first view", |_| true).await;
    assert_eq!(
        enrollment(&view, "shop", "cart"),
        Enrollment::NotEnrolled(NotEnrolledReason::NotAmbient)
    );
    replay.wait_for_watches(&POD, 1, WAIT).await.unwrap();
    replay.wait_for_watches(&NAMESPACE, 1, WAIT).await.unwrap();

    // MODIFIED namespace: labelled ambient → the pod is enrolled.
    replay.apply(ambient_ns("shop")).unwrap();
    let view = view_where(&mut rx, "namespace labelled ambient", |v| {
        matches!(
            v.pod("shop", "cart")
                .map(|p| decide(v.namespace("shop"), p)),
            Some(Enrollment::Enrolled(_))
        )
    })
    .await;
    assert_eq!(pod_names(&view), ["shop/cart"]);

    // ADDED pod on this node appears; one on another node does not.
    replay
        .apply(pod("shop", "other-node", "node-b", "10.2.0.9"))
        .unwrap();
    replay.apply(pod("shop", "web", NODE, "10.1.0.7")).unwrap();
    let view = view_where(&mut rx, "web added", |v| v.pod("shop", "web").is_some()).await;
    assert!(view.pod("shop", "other-node").is_none());
    assert!(matches!(
        enrollment(&view, "shop", "web"),
        Enrollment::Enrolled(_)
    ));

    // MODIFIED pod: opts out by label.
    let mut web = pod("shop", "web", NODE, "10.1.0.7");
    web["metadata"]["labels"]["istio.io/dataplane-mode"] = json!("none");
    replay.apply(web).unwrap();
    view_where(&mut rx, "web opted out", |v| {
        v.pod("shop", "web").map(|p| decide(v.namespace("shop"), p))
            == Some(Enrollment::NotEnrolled(NotEnrolledReason::PodOptedOut))
    })
    .await;

    // DELETED pod and namespace.
    replay.delete("Pod", "shop", "cart").unwrap();
    let view = view_where(&mut rx, "cart deleted", |v| v.pod("shop", "cart").is_none()).await;
    assert_eq!(pod_names(&view), ["shop/web"]);
    replay.delete("Namespace", "", "shop").unwrap();
    let view = view_where(&mut rx, "namespace deleted", |v| {
        v.namespace("shop").is_none()
    })
    .await;
    assert!(matches!(
        enrollment(&view, "shop", "web"),
        Enrollment::NotEnrolled(NotEnrolledReason::PodOptedOut)
    ));

    // All of it over one list per resource: the events came over the watches.
    let lists = replay.requests().iter().filter(|r| r.is_list(&POD)).count();
    assert_eq!(lists, 1, "no relist expected: {:#?}", replay.requests());
}

#[tokio::test]
async fn bookmark_advances_the_resource_version_a_rewatch_starts_from() {
    let (replay, source) = start(vec![
        ambient_ns("shop"),
        pod("shop", "cart", NODE, "10.1.0.5"),
    ])
    .await;
    let mut rx = source.subscribe();
    view_where(&mut rx, "first view", |_| true).await;
    replay.wait_for_watches(&POD, 1, WAIT).await.unwrap();
    let first_watch_rv = replay
        .requests()
        .iter()
        .find(|r| r.is_watch(&POD))
        .map(|r| r.resource_version().to_owned())
        .unwrap();
    assert_eq!(
        replay
            .requests()
            .iter()
            .find(|r| r.is_watch(&POD))
            .unwrap()
            .param("allowWatchBookmarks"),
        Some("true")
    );

    // Writes to other resources move the cluster's resourceVersion; only a bookmark tells the
    // pod watcher about it.
    replay.apply(plain_ns("ops")).unwrap();
    replay.apply(plain_ns("dev")).unwrap();
    view_where(&mut rx, "namespaces seen", |v| v.namespace("dev").is_some()).await;
    let bookmark_rv = replay.resource_version();
    assert_ne!(bookmark_rv.to_string(), first_watch_rv);
    replay.bookmark();
    // End the watch (as its timeout would): the re-watch must start from the bookmark's
    // version. The end is queued behind the bookmark on the same stream, so kube reads the
    // bookmark first.
    replay.end_watches();
    replay
        .wait_until("a pod re-watch from the bookmark", WAIT, |a| {
            a.requests
                .iter()
                .any(|r| r.is_watch(&POD) && r.resource_version() == bookmark_rv.to_string())
        })
        .await
        .unwrap();
    let lists = replay.requests().iter().filter(|r| r.is_list(&POD)).count();
    assert_eq!(lists, 1, "a bookmark must not cause a relist");
}

/// A change the watch missed, then 410 Gone: the relist must replace the mirrored state.
async fn relist_after_gone(how: Gone) {
    let (replay, source) = start(vec![
        ambient_ns("shop"),
        pod("shop", "old", NODE, "10.1.0.5"),
        pod("shop", "kept", NODE, "10.1.0.6"),
    ])
    .await;
    let mut rx = source.subscribe();
    let view = view_where(&mut rx, "first view", |_| true).await;
    assert_eq!(pod_names(&view), ["shop/kept", "shop/old"]);
    replay.wait_for_watches(&POD, 1, WAIT).await.unwrap();

    replay.delete_unseen("Pod", "shop", "old").unwrap();
    replay
        .apply_unseen(pod("shop", "new", NODE, "10.1.0.7"))
        .unwrap();
    let mut kept = pod("shop", "kept", NODE, "10.1.0.6");
    kept["metadata"]["labels"]["istio.io/dataplane-mode"] = json!("none");
    replay.apply_unseen(kept).unwrap();
    replay.expire(how);

    let view = view_where(&mut rx, "relisted state", |v| {
        v.pod("shop", "new").is_some()
    })
    .await;
    assert_eq!(pod_names(&view), ["shop/kept", "shop/new"]);
    assert_eq!(
        enrollment(&view, "shop", "kept"),
        Enrollment::NotEnrolled(NotEnrolledReason::PodOptedOut)
    );
    let reqs = replay.requests();
    assert_eq!(
        reqs.iter().filter(|r| r.is_list(&POD)).count(),
        2,
        "{reqs:#?}"
    );
    if how == Gone::HttpStatus {
        assert!(
            reqs.iter().any(|r| r.is_watch(&POD) && r.status == 410),
            "the re-watch should have been refused with HTTP 410: {reqs:#?}"
        );
    }
    // After the relist the source watches again, from the relist's version.
    replay
        .wait_until("a watch after the relist", WAIT, |a| a.watches(&POD) >= 1)
        .await
        .unwrap();
    replay
        .apply(pod("shop", "later", NODE, "10.1.0.8"))
        .unwrap();
    view_where(&mut rx, "event after relist", |v| {
        v.pod("shop", "later").is_some()
    })
    .await;
}

#[tokio::test]
async fn gone_error_event_forces_a_relist_and_the_relisted_state_wins() {
    relist_after_gone(Gone::ErrorEvent).await;
}

#[tokio::test]
async fn gone_http_status_on_rewatch_forces_a_relist_too() {
    relist_after_gone(Gone::HttpStatus).await;
}

#[tokio::test]
async fn dropped_connection_rewatches_from_the_last_version_without_losing_events() {
    let (replay, source) = start(vec![
        ambient_ns("shop"),
        pod("shop", "cart", NODE, "10.1.0.5"),
    ])
    .await;
    let mut rx = source.subscribe();
    view_where(&mut rx, "first view", |_| true).await;
    replay.wait_for_watches(&POD, 1, WAIT).await.unwrap();
    replay.apply(pod("shop", "web", NODE, "10.1.0.6")).unwrap();
    view_where(&mut rx, "web added", |v| v.pod("shop", "web").is_some()).await;
    let seen_rv = replay.resource_version().to_string();

    // Cut mid-stream; the change made while disconnected arrives over the re-watch.
    replay.drop_watches();
    replay.delete("Pod", "shop", "cart").unwrap();
    let view = view_where(&mut rx, "cart deleted after reconnect", |v| {
        v.pod("shop", "cart").is_none()
    })
    .await;
    assert_eq!(pod_names(&view), ["shop/web"]);
    let reqs = replay.requests();
    assert!(
        reqs.iter()
            .any(|r| r.is_watch(&POD) && r.resource_version() == seen_rv),
        "expected a pod re-watch from {seen_rv}: {reqs:#?}"
    );
    assert_eq!(
        reqs.iter().filter(|r| r.is_list(&POD)).count(),
        1,
        "no relist on a plain disconnect"
    );
}

#[tokio::test]
async fn nothing_is_published_until_both_lists_succeed() {
    let replay = KubeReplay::start().await.unwrap();
    replay.apply(ambient_ns("shop")).unwrap();
    replay.apply(pod("shop", "cart", NODE, "10.1.0.5")).unwrap();
    // The namespace list keeps failing (API server overloaded) until the test lifts that.
    replay.fail_next(&NAMESPACE, usize::MAX, 503);
    let client = client(Some(&replay.url())).await.unwrap();
    let settings = KubeSettings {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..KubeSettings::new(NODE)
    };
    let source = KubeSource::start(client, settings);
    let mut rx = source.subscribe();
    replay
        .wait_until("pods listed and namespaces refused twice", WAIT, |a| {
            a.requests
                .iter()
                .any(|r| r.is_list(&POD) && r.status == 200)
                && a.requests
                    .iter()
                    .filter(|r| r.is_list(&NAMESPACE) && r.status == 503)
                    .count()
                    >= 2
        })
        .await
        .unwrap();
    // Pods alone are not a view: enrollment needs the namespaces.
    assert!(
        rx.borrow().is_none(),
        "published before namespaces were listed"
    );
    replay.clear_failures();
    let view = view_where(&mut rx, "first view", |_| true).await;
    assert!(
        view.namespace("shop").is_some(),
        "the first view has the namespaces"
    );
    assert!(view.pod("shop", "cart").is_some());
    let last_ns_list = replay
        .requests()
        .iter()
        .rfind(|r| r.is_list(&NAMESPACE))
        .map(|r| r.status);
    assert_eq!(last_ns_list, Some(200));
}

#[tokio::test]
async fn bad_api_urls_are_typed_errors() {
    for bad in ["not a url", "ftp://x:1", "/just/a/path"] {
        let err = client(Some(bad)).await.err().expect(bad).to_string();
        assert!(err.contains(bad), "{err}");
    }
}

/// The `cni-agent` binary with `--kube-api`: its enrollment decisions follow the replayed
/// cluster, label edits included. No ztunnel runs, so an enrolled pod's ADD fails closed.
#[test]
fn cni_agent_binary_decides_from_the_kubernetes_source() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::{IpAddr, SocketAddr};
    use std::os::unix::net::UnixStream;

    use istio_cni_like::protocol::{Command, PodEvent, Reply};
    use testbed::fixture::{http_get, wait_until, TempDir};

    let mut bed = testbed::TestBed::new("cni_kube_agent").expect("test bed");
    let node = bed.add_node("n1").unwrap();
    let app = bed.add_pod(&node, "app").unwrap();
    let dir = TempDir::new("cni_kube_agent");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Bound inside the node's netns, where the agent runs, so 127.0.0.1 reaches it.
    let listener = node
        .netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let replay = {
        let _guard = rt.enter();
        KubeReplay::start_on(listener, kube_replay::DEFAULT_RESOURCES.to_vec()).unwrap()
    };
    replay.apply(plain_ns("shop")).unwrap();
    let mut app_obj = pod("shop", &app.name, &node.name, &app.ip.to_string());
    app_obj["metadata"]["uid"] = json!("uid-app");
    replay.apply(app_obj).unwrap();

    let log_path = dir.0.join("cni-agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let plugin_socket = dir.0.join("plugin.sock");
    let ready_port = 25121;
    let mut child = node
        .netns
        .command(env!("CARGO_BIN_EXE_cni-agent"))
        .args(["--kube-api", &replay.url(), "--node-name", &node.name])
        .arg("--plugin-socket")
        .arg(&plugin_socket)
        .arg("--zds-socket")
        .arg(dir.0.join("zds.sock"))
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .args(["--add-timeout", "1s", "--health-interval", "1h"])
        .args(["--metrics-addr", "0.0.0.0:25120"])
        .args(["--readiness-addr", &format!("0.0.0.0:{ready_port}")])
        .args(["--admin-addr", "127.0.0.1:25100"])
        .args(["--pod-cidr", "10.1.0.0/24"])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn cni-agent");
    struct Kill(std::process::Child, std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- cni-agent log ---\n{}",
                    std::fs::read_to_string(&self.1).unwrap_or_default()
                );
            }
        }
    }
    let ready_addr = SocketAddr::new(IpAddr::V4(node.ip), ready_port);
    wait_until("cni-agent readiness", Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "cni-agent exited ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        matches!(
            http_get(&node.netns, ready_addr, "/healthz/ready"),
            Ok((200, _))
        )
    });
    let _child = Kill(child, log_path);

    let add = || -> Reply {
        let event = PodEvent {
            command: Command::Add,
            container_id: "ctr-app".into(),
            netns: app.netns.path().display().to_string(),
            pod_name: app.name.clone(),
            pod_namespace: "shop".into(),
            pod_uid: "uid-app".into(),
            pod_ips: vec![IpAddr::V4(app.ip)],
        };
        let mut s = UnixStream::connect(&plugin_socket).expect("plugin socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        writeln!(s, "{}", serde_json::to_string(&event).unwrap()).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
    };
    assert_eq!(
        add(),
        Reply::NotEnrolled,
        "namespace shop is not ambient yet"
    );
    let reqs = replay.requests();
    assert!(
        reqs.iter()
            .any(|r| r.is_list(&POD) && r.param("fieldSelector") == Some("spec.nodeName=n1")),
        "{reqs:#?}"
    );

    // Label the namespace over the API: the agent now captures the pod, which without a
    // ztunnel to acknowledge it means a failed (retried) ADD, never a pod left uncaptured.
    replay.apply(ambient_ns("shop")).unwrap();
    wait_until(
        "the agent to see the label",
        Duration::from_secs(20),
        || match add() {
            Reply::NotEnrolled => false,
            Reply::Failed { message } => {
                assert!(message.contains("ztunnel"), "{message}");
                true
            }
            other => panic!("unexpected reply {other:?}"),
        },
    );
    drop(replay);
    drop(rt);
}
