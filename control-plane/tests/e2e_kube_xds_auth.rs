//! End to end under `--kube`: a ztunnel whose only credential is its projected service-account
//! token (as the shipped manifest gives it) gets both its config (xDS) and its certificates
//! from the control plane, which checks the token with a TokenReview against the fake API
//! server; a token the API server does not recognise gets neither. Real control-plane and
//! ztunnel processes in network namespaces (needs root).

mod common;

use std::time::Duration;

use common::*;
use testbed::kube_replay::{self as kr, KubeReplay};

/// What ztunnel-n1's projected token (audience `istio-ca`) is, as far as the fake API server
/// is concerned: the ztunnel service account, bound to a pod on node n1.
const ZTUNNEL_N1_TOKEN: &str = "projected-sa-token-ztunnel-n1";
/// A token the API server reviews as unauthenticated.
const UNKNOWN_TOKEN: &str = "projected-sa-token-nobody-knows";

fn resources() -> Vec<kr::Resource> {
    vec![
        kr::NAMESPACE,
        kr::POD,
        kr::SERVICE,
        kr::ENDPOINT_SLICE,
        kr::AUTHORIZATION_POLICY,
        kr::PEER_AUTHENTICATION,
        kr::TOKEN_REVIEW,
    ]
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

fn has_certificate(dump: &serde_json::Value, identity: &str) -> bool {
    dump["certificates"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["identity"] == identity))
}

#[test]
fn ztunnel_with_only_a_service_account_token_gets_config_and_certificates() {
    let mut fx = Fixture::new("cp-kube-sa", ztunnel_binary());
    let host = fx.bed.add_host("cp").expect("host");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_captured_pod(&n1, "client");
    let other = fx.add_captured_pod(&n2, "other");

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
    let client_id = format!("{ID_PREFIX}default/sa/client-sa");
    wait_until(
        "n1's ztunnel has the mesh config and the client's certificate",
        Duration::from_secs(20),
        || {
            let dump = z1.config_dump();
            has_workload(&dump, "client") && has_certificate(&dump, &client_id)
        },
    );
    // The xDS stream and the certificate request carried the same token: one review, the
    // rest answered from the control plane's cache.
    assert_eq!(reviews_of(&replay, ZTUNNEL_N1_TOKEN), 1);

    // n2's ztunnel presents a token the API server does not recognise, and has a pod to
    // serve (so it asks the CA too; its readiness never comes, so no `serve`).
    let z2 = start_ztunnel(&fx, &cp, &n2, UNKNOWN_TOKEN);
    z2.agent
        .add_pod(&other, "default", "other-sa")
        .expect("ztunnel takes the pod");
    z2.agent.snapshot_sent().expect("snapshot ack");
    let n2_ip = n2.ip.to_string();
    wait_until(
        "the control plane refuses n2's xDS stream and certificate request",
        Duration::from_secs(20),
        || {
            let log = cp.log_text();
            log.lines()
                .any(|l| l.contains("xDS stream refused") && l.contains(&n2_ip))
                && log.contains("CA request refused: not authenticated")
        },
    );
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
    assert!(
        !has_certificate(&dump, &format!("{ID_PREFIX}default/sa/other-sa")),
        "n2 got a certificate: {dump}"
    );
}
