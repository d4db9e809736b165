//! cni-agent: enrollment of running pods by label edits, and per-pod exclusions, with a real
//! ztunnel and real traffic.

mod agent_common;

use std::net::SocketAddr;
use std::time::Duration;

use agent_common::*;
use istio_cni_like::protocol::{Command, Reply};

#[test]
fn label_edits_enroll_and_unenroll_a_running_pod() {
    let mut fx = fixture("cni_labels");
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
    let agent = AgentProc::start(&n1, &fx.dir.0.join("agent"), "1h", "10s");
    let manifest = agent.manifests.join("shop.yaml");
    let write = |ambient: bool, pod_labels: &[(&str, &str)]| {
        write_atomic(
            &manifest,
            &format!(
                "{}---\n{}",
                namespace_yaml("shop", ambient),
                pod_yaml(&client, "shop", "client-sa", pod_labels, &[])
            ),
        )
    };
    write(false, &[]);
    let z1 = ZtunnelProc::start(&fx, &n1, &agent.zds_socket);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z2.serve(&[(&server, "shop", "server-sa")]);

    assert_eq!(
        agent.send(&event(Command::Add, &client, "shop")),
        Reply::NotEnrolled
    );
    assert!(!pod_rules(&client).contains("ISTIO"));
    // Uncaptured, the client speaks plaintext, which the (STRICT) server side refuses.
    assert!(greeting_from(&client.netns, echo.addr).is_err());

    // The namespace gets the ambient label: the running pod is captured.
    write(true, &[]);
    wait_until("pod captured after label", Duration::from_secs(10), || {
        agent.pod_state("client").as_deref() == Some("captured")
    });
    assert_eq!(z1.served(), vec!["client".to_owned()]);
    assert!(pod_rules(&client).contains("-A OUTPUT -j ISTIO_OUTPUT"));
    let greeting = greeting_from(&client.netns, echo.addr).expect("traffic once captured");
    assert!(
        greeting.starts_with(&format!("server saw {}:", client.ip)),
        "{greeting}"
    );

    // The pod opts out: released from ztunnel, rules removed.
    write(true, &[("istio.io/dataplane-mode", "none")]);
    wait_until(
        "pod released after opt-out",
        Duration::from_secs(10),
        || agent.pod_state("client").as_deref() == Some("not_enrolled"),
    );
    assert!(z1.served().is_empty(), "{:?}", z1.served());
    assert!(
        !pod_rules(&client).contains("ISTIO"),
        "{}",
        pod_rules(&client)
    );
    assert_eq!(
        agent.send(&event(Command::Check, &client, "shop")),
        Reply::NotEnrolled
    );

    // And back in.
    write(true, &[]);
    wait_until("pod captured again", Duration::from_secs(10), || {
        agent.pod_state("client").as_deref() == Some("captured")
    });
    assert_eq!(z1.served(), vec!["client".to_owned()]);
}

#[test]
fn exclusions_leave_exactly_the_named_ports_and_cidrs_uncaptured() {
    let mut fx = fixture("cni_excl");
    let n1 = fx.add_node("n1");
    let h1 = fx.bed.add_host("h1").unwrap();
    let h2 = fx.bed.add_host("h2").unwrap();
    let pod = fx.add_plain_pod(&n1, "app");
    fx.write_config(&format!(
        "workloads:\n{}",
        workload_yaml(&pod, "shop", "app-sa", "n1", &[])
    ));
    let agent = AgentProc::start(&n1, &fx.dir.0.join("agent"), "1h", "10s");
    write_atomic(
        &agent.manifests.join("shop.yaml"),
        &format!(
            "{}---\n{}",
            namespace_yaml("shop", true),
            pod_yaml(
                &pod,
                "shop",
                "app-sa",
                &[],
                &[
                    ("traffic.sidecar.istio.io/excludeInboundPorts", "8081"),
                    ("traffic.sidecar.istio.io/excludeOutboundPorts", "9000"),
                    (
                        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                        &format!("{}/32", h1.ip),
                    ),
                ],
            )
        ),
    );
    let z1 = ZtunnelProc::start(&fx, &n1, &agent.zds_socket);
    assert_eq!(
        agent.send(&event(Command::Add, &pod, "shop")),
        Reply::Captured
    );
    let _app8080 = EchoServer::start(&pod, 8080);
    let app8081 = EchoServer::start(&pod, 8081);
    let h1_7000 = echo_in(&h1.netns, "h1", h1.ip, 7000);
    let h2_7000 = echo_in(&h2.netns, "h2", h2.ip, 7000);
    let h2_9000 = echo_in(&h2.netns, "h2", h2.ip, 9000);

    // Outbound: ztunnel counts every connection it proxies (reporter=source).
    let proxied = || {
        metric_sum(
            &z1.metrics(),
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")],
        )
    };
    let before = proxied();
    for (what, addr) in [
        ("excluded CIDR", h1_7000.addr),
        ("excluded port", h2_9000.addr),
    ] {
        let g = greeting_from(&pod.netns, addr).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(g.contains(&format!("saw {}:", pod.ip)), "{what}: {g}");
    }
    assert_eq!(
        proxied(),
        before,
        "an excluded destination went through ztunnel"
    );
    greeting_from(&pod.netns, h2_7000.addr).expect("captured outbound");
    wait_until(
        "captured connection counted",
        Duration::from_secs(5),
        || proxied() >= before + 1.0,
    );

    // Inbound: the excluded port reaches the app directly; any other port is captured, and
    // ztunnel (STRICT mTLS by default) refuses plaintext.
    let g = greeting_from(&h2.netns, app8081.addr).expect("excluded inbound port");
    assert!(g.starts_with(&format!("app saw {}:", h2.ip)), "{g}");
    let captured = SocketAddr::new(pod.ip.into(), 8080);
    assert!(
        greeting_from(&h2.netns, captured).is_err(),
        "plaintext to a captured port reached the app"
    );
}
