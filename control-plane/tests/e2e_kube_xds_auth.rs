//! End to end under `--kube`: a ztunnel whose only credential is its projected service-account
//! token (as the shipped manifest gives it) gets its config (xDS) from the control plane, which
//! checks the token with a TokenReview against the fake API server, and the same token gets
//! certificates for the node's pods; a token the API server does not recognise gets neither.
//! Real control-plane and ztunnel processes in network namespaces (needs root).

mod common;

use std::time::{Duration, Instant};

use common::*;
use mesh::caclient::CaClientError;
use testbed::kube_replay::{self as kr, KubeReplay};

/// What ztunnel-n1's projected token (audience `istio-ca`) is, as far as the fake API server
/// is concerned: the ztunnel service account, bound to a pod on node n1.
const ZTUNNEL_N1_TOKEN: &str = "projected-sa-token-ztunnel-n1";
/// A token the API server reviews as unauthenticated.
const UNKNOWN_TOKEN: &str = "projected-sa-token-nobody-knows";

fn resources() -> Vec<kr::Resource> {
    // The control plane publishes its root in a ConfigMap before it reports ready, and posts
    // Events for invalid objects.
    [
        kr::MESH_CONFIG_RESOURCES,
        &[kr::TOKEN_REVIEW, kr::CONFIG_MAP, kr::CORE_EVENT],
    ]
    .concat()
}

/// How many TokenReviews of `token` the API server was asked for.
fn reviews_of(replay: &KubeReplay, token: &str) -> usize {
    replay
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.plural.as_deref() == Some("tokenreviews"))
        .filter(|r| {
            r.body
                .as_ref()
                .is_some_and(|b| b["spec"]["token"].as_str() == Some(token))
        })
        .count()
}

fn has_workload(dump: &serde_json::Value, name: &str) -> bool {
    dump["workloads"]
        .as_array()
        .is_some_and(|ws| ws.iter().any(|w| w["name"] == name))
}

#[test]
fn ztunnel_with_only_a_service_account_token_gets_config_and_certificates() {
    let mut fx = Fixture::new("cp-kube-sa", ztunnel_binary());
    let host = fx.bed.add_host("cp").expect("host");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_captured_pod(&n1, "client");

    // The fake API server listens inside the control plane's host, where the process can
    // reach it; its tasks run on this runtime.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = host
        .netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind in host netns");
    let replay = {
        let _enter = rt.enter();
        KubeReplay::start_on(listener, resources()).expect("replay server")
    };
    replay
        .apply(kr::namespace(
            "default",
            &[("istio.io/dataplane-mode", "ambient")],
        ))
        .unwrap();
    let mut pod = kr::pod("default", "client", "n1", &client.ip.to_string(), &[]);
    pod["spec"]["serviceAccountName"] = "client-sa".into();
    pod["spec"]["serviceAccount"] = "client-sa".into();
    replay.apply(pod).unwrap();
    replay.review_token(
        ZTUNNEL_N1_TOKEN,
        kr::service_account_token(
            "istio-system",
            "ztunnel",
            Some(("ztunnel-n1", "n1")),
            &["istio-ca"],
        ),
    );

    // No --bootstrap-tokens: TokenReview is the only way in.
    let api = replay.url();
    let cacerts = fx.ca_dir.display().to_string();
    let cp = ControlPlane::start_with_args(
        &fx,
        &host,
        &["--kube", "--kube-api", &api, "--cacerts", &cacerts],
    );

    // n1's ztunnel: the same token file for xDS and the CA, as the manifest mounts it.
    let z1 = start_ztunnel(&fx, &cp, &n1, ZTUNNEL_N1_TOKEN);
    z1.serve(&[(&client, "default", "client-sa")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dump = z1.config_dump();
        if has_workload(&dump, "client") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1's ztunnel has no mesh config: {dump:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Certificates with the same token, as n1's ztunnel asks for them (it fetches lazily, on
    // first traffic): its pod's identity is granted, since the reviewed token binds the
    // caller to node n1; an identity of a pod on no node of the caller's is not.
    let (own, foreign) = fetch_certificates(&fx, &cp, &n1, ZTUNNEL_N1_TOKEN);
    assert_eq!(
        own.expect("the ztunnel SA token gets its pod's identity")
            .identity
            .to_string(),
        format!("{ID_PREFIX}default/sa/client-sa")
    );
    assert_eq!(rpc_code(foreign), Some(tonic::Code::PermissionDenied));
    // The xDS stream and both certificate requests carried the same token: one review, the
    // rest answered from the control plane's cache.
    assert_eq!(reviews_of(&replay, ZTUNNEL_N1_TOKEN), 1);

    // n2's ztunnel presents a token the API server does not recognise.
    let z2 = start_ztunnel(&fx, &cp, &n2, UNKNOWN_TOKEN);
    let n2_ip = n2.ip.to_string();
    wait_until(
        "the control plane refuses n2's xDS stream",
        Duration::from_secs(20),
        || {
            cp.log_text()
                .lines()
                .any(|l| l.contains("xDS stream refused") && l.contains(&n2_ip))
        },
    );
    let (own, _) = fetch_certificates(&fx, &cp, &n2, UNKNOWN_TOKEN);
    assert_eq!(rpc_code(own), Some(tonic::Code::Unauthenticated));
    assert!(reviews_of(&replay, UNKNOWN_TOKEN) >= 1);
    let refusal = cp
        .log_text()
        .lines()
        .find(|l| l.contains("xDS stream refused") && l.contains(&n2_ip))
        .unwrap()
        .to_string();
    assert!(refusal.contains("Unauthenticated"), "{refusal}");
    assert!(
        !refusal.contains(UNKNOWN_TOKEN),
        "token leaked to the log: {refusal}"
    );
    let dump = z2.config_dump();
    assert!(!has_workload(&dump, "client"), "n2 got config: {dump}");
}

fn rpc_code(result: Fetched) -> Option<tonic::Code> {
    match result {
        Err(CaClientError::Rpc { code, .. }) => Some(code),
        _ => None,
    }
}
