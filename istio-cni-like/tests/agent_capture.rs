//! cni-agent end to end: plugin requests on the agent's socket, real rules in real pod netns,
//! a real ztunnel taking the pods over ZDS, traffic over HBONE to another node.

mod agent_common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use agent_common::*;
use istio_cni_like::protocol::{Command, Reply};

fn flush_nat(pod: &testbed::Pod) {
    // The test bed's backend binary (e.g. iptables-nft), so the flush hits the rules we check.
    let save = testbed::Iptables::get()
        .unwrap()
        .save_program(mesh::redirect::Family::V4)
        .to_owned();
    let iptables = save.trim_end_matches("-save");
    pod.netns.exec(&[iptables, "-t", "nat", "-F"]).unwrap();
}

#[test]
fn add_captures_pod_traffic_goes_over_hbone_check_and_del_release_it() {
    let mut fx = fixture("cni_add");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_plain_pod(&n1, "client");
    let server = fx.add_captured_pod(&n2, "server");
    fx.write_config(&format!(
        "workloads:\n{}{}",
        workload_yaml(&client, "shop", "client-sa", "n1", &[]),
        workload_yaml(&server, "shop", "server-sa", "n2", &[]),
    ));
    let echo = EchoServer::start(&server, 8080);
    let app = EchoServer::start(&client, 8080);
    // Long health interval: nothing repairs behind the test's back here.
    let agent = AgentProc::start(&n1, &fx.dir.0.join("agent"), "1h", "10s");
    write_atomic(
        &agent.manifests.join("shop.yaml"),
        &format!(
            "{}---\n{}",
            namespace_yaml("shop", true),
            pod_yaml(&client, "shop", "client-sa", &[], &[])
        ),
    );
    let z1 = ZtunnelProc::start(&fx, &n1, &agent.zds_socket);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z2.serve(&[(&server, "shop", "server-sa")]);

    assert_eq!(
        agent.send(&event(Command::Add, &client, "shop")),
        Reply::Captured
    );
    // Ordering guarantee: ADD returned only after ztunnel acked, so it serves the pod already.
    assert_eq!(z1.served(), vec!["client".to_owned()]);
    let rules = pod_rules(&client);
    assert!(rules.contains("-A OUTPUT -j ISTIO_OUTPUT"), "{rules}");
    assert!(rules.contains("--to-ports 15001"), "{rules}");
    assert_eq!(agent.pod_state("client").as_deref(), Some("captured"));
    assert_eq!(
        metric_sum(&agent.metrics(), "ambit_cni_pods", &[("state", "captured")]),
        1.0
    );

    // The app's traffic goes through ztunnel over HBONE with its identity.
    let mut conn = Client::connect(&client, echo.addr).expect("connect through the mesh");
    let greeting = conn.greeting().expect("greeting");
    assert!(
        greeting.starts_with(&format!("server saw {}:", client.ip)),
        "{greeting}"
    );
    drop(conn);
    let client_id = format!("{ID_PREFIX}shop/sa/client-sa");
    wait_until(
        "mTLS connection at the server",
        Duration::from_secs(10),
        || {
            metric_sum(
                &z2.metrics(),
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "destination"),
                    ("source_principal", &client_id),
                    ("connection_security_policy", "mutual_tls"),
                ],
            ) >= 1.0
        },
    );

    // Kubelet-style probe from the node: SNATed to the probe address, let through to the app.
    let probe = greeting_from(&n1.netns, app.addr).expect("probe from the node");
    assert!(
        probe.starts_with("client saw 169.254.7.127:"),
        "probe did not come from the probe SNAT address: {probe}"
    );

    assert_eq!(
        agent.send(&event(Command::Check, &client, "shop")),
        Reply::Captured
    );
    // ADD again (runtime retry) converges without duplicating anything.
    assert_eq!(
        agent.send(&event(Command::Add, &client, "shop")),
        Reply::Captured
    );
    assert_eq!(
        pod_rules(&client)
            .matches("-A OUTPUT -j ISTIO_OUTPUT")
            .count(),
        2
    ); // mangle + nat

    // CHECK names a rule deleted by hand.
    flush_nat(&client);
    match agent.send(&event(Command::Check, &client, "shop")) {
        Reply::Failed { message } => assert!(
            message.contains("ipv4 nat table: missing `-A OUTPUT -j ISTIO_OUTPUT`"),
            "{message}"
        ),
        other => panic!("CHECK after flush: {other:?}"),
    }

    // DEL: ztunnel releases the pod, the rules go, the agent forgets it.
    assert_eq!(
        agent.send(&event(Command::Del, &client, "shop")),
        Reply::Released
    );
    assert!(z1.served().is_empty(), "{:?}", z1.served());
    assert!(
        !pod_rules(&client).contains("ISTIO"),
        "{}",
        pod_rules(&client)
    );
    let routes = client.netns.exec(&["ip", "rule", "show"]).unwrap();
    assert!(!routes.contains("lookup 100"), "{routes}");
    assert_eq!(agent.pod_state("client"), None);
    assert_eq!(
        metric_sum(&agent.metrics(), "ambit_cni_pods", &[("state", "captured")]),
        0.0
    );
    // DEL is idempotent; CHECK of a forgotten enrolled pod fails.
    assert_eq!(
        agent.send(&event(Command::Del, &client, "shop")),
        Reply::Released
    );
    assert!(matches!(
        agent.send(&event(Command::Check, &client, "shop")),
        Reply::Failed { .. }
    ));
}

#[test]
fn bad_requests_and_unconfirmable_pods_fail_closed_with_nothing_installed() {
    let mut bed = testbed::TestBed::new("cni_bad").unwrap();
    let node = bed.add_node("n1").unwrap();
    let enrolled = bed.add_pod(&node, "enrolled").unwrap();
    let plain = bed.add_pod(&node, "plain").unwrap();
    let typo = bed.add_pod(&node, "typo").unwrap();
    let dir = TempDir::new("cni_bad");
    // No ztunnel at all, and a short ADD timeout.
    let agent = AgentProc::start(&node, &dir.0, "1h", "1s");
    write_atomic(
        &agent.manifests.join("all.yaml"),
        &[
            namespace_yaml("shop", true),
            namespace_yaml("plain", false),
            pod_yaml(&enrolled, "shop", "default", &[], &[]),
            pod_yaml(&plain, "plain", "default", &[], &[]),
            pod_yaml(
                &typo,
                "shop",
                "default",
                &[],
                &[("traffic.sidecar.istio.io/excludeOutboundPorts", "80,htp")],
            ),
        ]
        .join("---\n"),
    );

    let failed = |reply: Reply| match reply {
        Reply::Failed { message } => message,
        other => panic!("expected a failure, got {other:?}"),
    };
    let raw: Reply = serde_json::from_str(&agent.send_raw("{not json")).unwrap();
    assert!(failed(raw).contains("malformed plugin request"));

    let mut no_netns = event(Command::Add, &enrolled, "shop");
    no_netns.netns.clear();
    assert!(failed(agent.send(&no_netns)).contains("CNI_NETNS"));

    let mut gone = event(Command::Add, &enrolled, "shop");
    gone.netns = "/run/netns/ambit-does-not-exist".into();
    assert!(failed(agent.send(&gone)).contains("does not exist"));

    // Enrolled, but no ztunnel confirms it: fail closed, and roll the rules back.
    let msg = failed(agent.send(&event(Command::Add, &enrolled, "shop")));
    assert!(msg.contains("ztunnel is not connected"), "{msg}");
    assert!(
        !pod_rules(&enrolled).contains("ISTIO"),
        "{}",
        pod_rules(&enrolled)
    );
    assert_eq!(agent.pod_state("enrolled"), None);

    // Metadata not known (yet): never start the pod uncaptured.
    let msg = failed(agent.send(&event(Command::Add, &enrolled, "ghost")));
    assert!(msg.contains("not known"), "{msg}");

    // An unparsable exclusion names the annotation.
    let msg = failed(agent.send(&event(Command::Add, &typo, "shop")));
    assert!(
        msg.contains("traffic.sidecar.istio.io/excludeOutboundPorts") && msg.contains("\"htp\""),
        "{msg}"
    );
    assert!(!pod_rules(&typo).contains("ISTIO"));

    // Not enrolled: straight through, nothing installed.
    assert_eq!(
        agent.send(&event(Command::Add, &plain, "plain")),
        Reply::NotEnrolled
    );
    assert!(!pod_rules(&plain).contains("ISTIO"));
    assert_eq!(agent.pod_state("plain").as_deref(), Some("not_enrolled"));

    // The agent is unaffected by all of the above.
    let ready = SocketAddr::new(IpAddr::V4(node.ip), AGENT_READY);
    assert_eq!(
        http_get(&node.netns, ready, "/healthz/ready").unwrap().0,
        200
    );
    let metrics = agent.metrics();
    assert!(
        metric_sum(&metrics, "ambit_cni_events_total", &[("outcome", "failed")]) >= 5.0,
        "{metrics}"
    );
}
