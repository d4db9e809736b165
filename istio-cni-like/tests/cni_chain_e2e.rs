//! The whole capture path as a container runtime drives it: the real Debian CNI chain
//! (bridge + host-local + loopback) followed by `ambit-cni`, the real `cni-agent` installing
//! the rules and handing the new pod to a real ztunnel, and the pod's first connection
//! crossing to another node over HBONE. Then DEL releases everything.

mod agent_common;
mod plugin_support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

use agent_common::*;
use plugin_support::{first_ipv4, Chain, PodNetns, TempDir};
use serde_json::Value;
use testbed::Netns;

/// host-local hands out the first address after the gateway of node 1's CNI range.
const CLIENT_IP: &str = "10.1.0.130";

#[test]
fn real_cni_chain_captures_a_new_pod_before_it_starts_and_del_releases_it() {
    let mut fx = fixture("cni_chain_e2e");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let server = fx.add_captured_pod(&n2, "server");
    fx.write_config(&format!(
        "workloads:\n- uid: uid-client\n  name: client\n  namespace: shop\n  serviceAccount: client-sa\n  node: n1\n  protocol: HBONE\n  workloadIps: [\"{CLIENT_IP}\"]\n{}",
        workload_yaml(&server, "shop", "server-sa", "n2", &[]),
    ));
    let echo = EchoServer::start(&server, 8080);

    // The cluster's view the agent decides enrollment from: namespace `shop` is ambient.
    let agent_dir = fx.dir.0.join("agent");
    std::fs::create_dir_all(agent_dir.join("manifests")).unwrap();
    write_atomic(
        &agent_dir.join("manifests").join("shop.yaml"),
        &format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: shop\n  uid: uid-client\nspec:\n  nodeName: n1\n  serviceAccountName: client-sa\n",
            namespace_yaml("shop", true)
        ),
    );
    let agent = AgentProc::start(&n1, &agent_dir, "1h", "10s");
    let z1 = ZtunnelProc::start(&fx, &n1, &agent.zds_socket);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z2.serve(&[(&server, "shop", "server-sa")]);

    // The runtime creates the sandbox netns and runs the chain.
    let ipam = TempDir::new("ipam").unwrap();
    let chain = Chain::new(&n1, &ipam, &agent.plugin_socket, 10_000);
    let sandbox = PodNetns::create(&fx.bed, "client").unwrap();
    let added = chain.add(&sandbox, "client", "shop", "uid-client").unwrap();
    assert_eq!(
        added.ours.code,
        Some(0),
        "ambit-cni ADD failed: {:?}",
        added.ours
    );
    let ours: Value = serde_json::from_str(&added.ours.stdout).unwrap();
    assert_eq!(
        ours, added.before_ours,
        "prevResult must pass through unchanged"
    );
    assert_eq!(
        first_ipv4(&added.before_ours).unwrap().to_string(),
        CLIENT_IP
    );

    // ADD returned, so ztunnel already serves the pod: no window where it runs uncaptured.
    assert!(
        z1.served().contains(&"uid-client".to_owned()),
        "ztunnel does not serve the pod after ADD: {:?}",
        z1.served()
    );

    // The pod's very first connection is captured and carried over HBONE.
    let pod_netns = Netns::from_name(&sandbox.name);
    let stream = pod_netns
        .run(|| TcpStream::connect_timeout(&echo.addr, Duration::from_secs(5)))
        .expect("connect from the new pod");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = String::new();
    BufReader::new(&stream).read_line(&mut greeting).unwrap();
    assert!(
        greeting.starts_with(&format!("server saw {CLIENT_IP}:")),
        "{greeting}"
    );
    drop(stream);
    let client_id = format!("{ID_PREFIX}shop/sa/client-sa");
    wait_until(
        "the destination to count the mTLS connection",
        Duration::from_secs(10),
        || {
            metric_sum(
                &z2.metrics(),
                "istio_tcp_connections_closed_total",
                &[
                    ("reporter", "destination"),
                    ("source_principal", &client_id),
                    ("connection_security_policy", "mutual_tls"),
                ],
            ) >= 1.0
        },
    );

    // DEL through the chain: the pod is released in ztunnel and its rules are gone.
    let dels = chain
        .del(&sandbox, "client", "shop", &added.before_ours)
        .unwrap();
    for out in &dels {
        assert_eq!(out.code, Some(0), "DEL failed: {out:?}");
    }
    wait_until(
        "ztunnel to release the pod",
        Duration::from_secs(10),
        || !z1.served().contains(&"uid-client".to_owned()),
    );
    let save = sandbox.exec(&["iptables-save"]).unwrap_or_default();
    assert!(
        !save.contains("ISTIO_OUTPUT"),
        "rules left after DEL:\n{save}"
    );
}
