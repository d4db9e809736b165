//! cni-agent: capture survives restarts of the agent and of ztunnel, and rules deleted by hand
//! are detected and repaired.

mod agent_common;

use std::time::Duration;

use agent_common::*;
use istio_cni_like::protocol::{Command, Reply};

fn flush_nat(pod: &testbed::Pod) {
    let save = testbed::Iptables::get()
        .unwrap()
        .save_program(mesh::redirect::Family::V4)
        .to_owned();
    pod.netns
        .exec(&[save.trim_end_matches("-save"), "-t", "nat", "-F"])
        .unwrap();
}

fn captured(agent: &AgentProc, uid: &str) -> bool {
    agent.pod_state(uid).as_deref() == Some("captured")
}

#[test]
fn agent_restart_reapplies_rules_replays_pods_and_forgets_vanished_ones() {
    let mut fx = fixture("cni_agent_restart");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_plain_pod(&n1, "client");
    let doomed = fx.add_plain_pod(&n1, "doomed");
    let server = fx.add_captured_pod(&n2, "server");
    fx.write_config(&format!(
        "workloads:\n{}{}{}",
        workload_yaml(&client, "shop", "client-sa", "n1", &[]),
        workload_yaml(&doomed, "shop", "client-sa", "n1", &[]),
        workload_yaml(&server, "shop", "server-sa", "n2", &[]),
    ));
    let echo = EchoServer::start(&server, 8080);
    let mut agent = AgentProc::start(&n1, &fx.dir.0.join("agent"), "1h", "10s");
    write_atomic(
        &agent.manifests.join("shop.yaml"),
        &[
            namespace_yaml("shop", true),
            pod_yaml(&client, "shop", "client-sa", &[], &[]),
            pod_yaml(&doomed, "shop", "client-sa", &[], &[]),
        ]
        .join("---\n"),
    );
    let z1 = ZtunnelProc::start(&fx, &n1, &agent.zds_socket);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z2.serve(&[(&server, "shop", "server-sa")]);
    for pod in [&client, &doomed] {
        assert_eq!(
            agent.send(&event(Command::Add, pod, "shop")),
            Reply::Captured
        );
    }

    // The agent crashes; meanwhile someone flushes the client's rules and the other pod's
    // sandbox disappears without a DEL.
    agent.kill();
    flush_nat(&client);
    // Only the mangle table's jump is left.
    assert_eq!(
        pod_rules(&client)
            .matches("-A OUTPUT -j ISTIO_OUTPUT")
            .count(),
        1
    );
    let doomed_ns = doomed.netns.name().to_owned();
    std::process::Command::new("ip")
        .args(["netns", "del", &doomed_ns])
        .status()
        .unwrap();
    // ztunnel keeps serving while the agent is away.
    let mut served = z1.served();
    served.sort();
    assert_eq!(served, vec!["client".to_owned(), "doomed".to_owned()]);

    agent.spawn();
    // Start-up reconciled before reporting ready: the rules are back already.
    let save = pod_rules(&client);
    assert_eq!(
        save.matches("-A OUTPUT -j ISTIO_OUTPUT").count(),
        2,
        "rules not restored:\n{save}"
    );
    assert_eq!(
        agent.pod_state("doomed"),
        None,
        "vanished pod not forgotten"
    );
    // ztunnel reconnects and gets the snapshot: the vanished pod is dropped, the other kept.
    wait_until("ztunnel replayed", Duration::from_secs(15), || {
        captured(&agent, "client") && z1.served() == vec!["client".to_owned()]
    });
    let greeting = greeting_from(&client.netns, echo.addr).expect("traffic after restart");
    assert!(
        greeting.starts_with(&format!("server saw {}:", client.ip)),
        "{greeting}"
    );
    assert_eq!(
        agent.send(&event(Command::Check, &client, "shop")),
        Reply::Captured
    );
}

#[test]
fn ztunnel_restart_is_detected_replayed_and_traffic_resumes() {
    let mut fx = fixture("cni_zt_restart");
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
    let agent = AgentProc::start(&n1, &fx.dir.0.join("agent"), "200ms", "10s");
    write_atomic(
        &agent.manifests.join("shop.yaml"),
        &format!(
            "{}---\n{}",
            namespace_yaml("shop", true),
            pod_yaml(&client, "shop", "client-sa", &[], &[])
        ),
    );
    let mut z1 = ZtunnelProc::start(&fx, &n1, &agent.zds_socket);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z2.serve(&[(&server, "shop", "server-sa")]);
    assert_eq!(
        agent.send(&event(Command::Add, &client, "shop")),
        Reply::Captured
    );
    greeting_from(&client.netns, echo.addr).expect("traffic before the restart");

    z1.kill();
    // The health check notices the listeners are gone and says so.
    wait_until("capture reported failed", Duration::from_secs(10), || {
        agent.pod_state("client").as_deref() == Some("failed")
    });
    assert_eq!(
        metric_sum(&agent.metrics(), "ambit_cni_pods", &[("state", "failed")]),
        1.0
    );
    // Captured but unserved: the pod's traffic is blocked, never bypasses the mesh.
    assert!(greeting_from(&client.netns, echo.addr).is_err());

    z1.spawn(); // returns once ztunnel is ready, i.e. after the agent's snapshot
    assert_eq!(z1.served(), vec!["client".to_owned()]);
    let greeting = greeting_from(&client.netns, echo.addr).expect("traffic after the restart");
    assert!(
        greeting.starts_with(&format!("server saw {}:", client.ip)),
        "{greeting}"
    );
    wait_until("capture healthy again", Duration::from_secs(10), || {
        captured(&agent, "client")
    });
}

#[test]
fn rules_deleted_by_hand_are_repaired_and_counted() {
    let mut fx = fixture("cni_repair");
    let n1 = fx.add_node("n1");
    let pod = fx.add_plain_pod(&n1, "app");
    fx.write_config(&format!(
        "workloads:\n{}",
        workload_yaml(&pod, "shop", "app-sa", "n1", &[])
    ));
    let agent = AgentProc::start(&n1, &fx.dir.0.join("agent"), "200ms", "10s");
    write_atomic(
        &agent.manifests.join("shop.yaml"),
        &format!(
            "{}---\n{}",
            namespace_yaml("shop", true),
            pod_yaml(&pod, "shop", "app-sa", &[], &[])
        ),
    );
    let _z1 = ZtunnelProc::start(&fx, &n1, &agent.zds_socket);
    assert_eq!(
        agent.send(&event(Command::Add, &pod, "shop")),
        Reply::Captured
    );
    let installed = pod_rules(&pod);
    let repairs = || {
        metric_sum(
            &agent.metrics(),
            "ambit_cni_repairs_total",
            &[("kind", "rules")],
        )
    };
    assert_eq!(repairs(), 0.0);

    flush_nat(&pod);
    wait_until("rules repaired", Duration::from_secs(10), || {
        repairs() >= 1.0
    });
    wait_until("pod captured again", Duration::from_secs(10), || {
        captured(&agent, "app")
    });
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(strip(&pod_rules(&pod)), strip(&installed));
    assert_eq!(
        agent.send(&event(Command::Check, &pod, "shop")),
        Reply::Captured
    );
    assert!(
        agent
            .log_text()
            .contains("redirect rules drifted; repairing"),
        "repair not logged"
    );
}
