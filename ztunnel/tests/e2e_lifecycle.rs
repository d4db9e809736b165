//! End to end: ztunnel's lifecycle under real traffic — certificate rotation, SIGTERM drain,
//! config file reload, node-agent reconnects, IPv6, and dedicated mode.

mod common;
#[path = "common/lifecycle.rs"]
mod lifecycle;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use lifecycle::*;
use mesh::identity::Identity;

fn id(sa: &str) -> String {
    format!("{ID_PREFIX}default/sa/{sa}")
}

/// Connect + greeting: Ok(greeting) when the mesh delivered the connection to the app.
fn try_greeting(pod: &testbed::Pod, dst: SocketAddr) -> std::io::Result<String> {
    Client::connect(pod, dst)?.greeting()
}

#[test]
fn cert_rotation_keeps_long_lived_connections_and_new_ones_use_the_new_cert() {
    let mut fx = fixture("rotate");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_captured_pod(&n1, "client");
    let client2 = fx.add_captured_pod(&n1, "client2");
    let server = fx.add_captured_pod(&n2, "server");
    fx.write_config(&format!(
        "workloads:\n{}{}{}",
        workload_yaml(&client, "default", "client-sa", "n1", &[]),
        workload_yaml(&client2, "default", "client-sa", "n1", &[]),
        workload_yaml(&server, "default", "server-sa", "n2", &[]),
    ));
    let echo = EchoServer::start(&server, 8080);
    let ttl = [("SECRET_TTL", "4s")];
    let z1 = fx.start_ztunnel(&n1, &ttl);
    let z2 = fx.start_ztunnel(&n2, &ttl);
    z1.serve(&[
        (&client, "default", "client-sa"),
        (&client2, "default", "client-sa"),
    ]);
    z2.serve(&[(&server, "default", "server-sa")]);

    let mut conn = Client::connect(&client, echo.addr).expect("connect");
    conn.greeting().expect("greeting");
    assert_eq!(conn.echo("before rotation").unwrap(), "before rotation");
    let (client_id, server_id) = (id("client-sa"), id("server-sa"));
    let (old_client, client_not_after) =
        cert_row(&z1.config_dump(), &client_id).expect("client cert in z1's dump");
    let (old_server, server_not_after) =
        cert_row(&z2.config_dump(), &server_id).expect("server cert in z2's dump");

    // Both sides renew at about half of the 4 s lifetime.
    wait_until("both certificates rotated", Duration::from_secs(10), || {
        cert_row(&z1.config_dump(), &client_id).is_some_and(|(s, _)| s != old_client)
            && cert_row(&z2.config_dump(), &server_id).is_some_and(|(s, _)| s != old_server)
    });
    for (zt, side) in [(&z1, "z1"), (&z2, "z2")] {
        let rotations = metric_sum(
            &zt.metrics(),
            "ambit_cert_rotations_total",
            &[("result", "ok")],
        );
        assert!(
            rotations >= 1.0,
            "{side}: ambit_cert_rotations_total={rotations}"
        );
    }
    // Let the certificates the first connection was made with expire (dump times are whole
    // RFC 3339 seconds, so string order is time order): any handshake from now on must use
    // the new ones, and the old connection must not depend on its certificates staying valid.
    let latest = client_not_after.max(server_not_after);
    wait_until(
        "original certificates expired",
        Duration::from_secs(10),
        || mesh::cert::rfc3339(SystemTime::now()) > latest,
    );

    assert_eq!(conn.echo("after rotation").unwrap(), "after rotation");
    // client2 has its own source address, so z1 opens a fresh HBONE connection for it: a full
    // mutual handshake that only succeeds with the rotated certificates on both sides.
    let mut fresh = Client::connect(&client2, echo.addr).expect("connect after rotation");
    assert!(fresh
        .greeting()
        .unwrap()
        .starts_with(&format!("server saw {}:", client2.ip)));
    assert_eq!(fresh.echo("fresh").unwrap(), "fresh");

    // And the certificate a new handshake gets is the one the dump now lists.
    let (current, _) = cert_row(&z2.config_dump(), &server_id).unwrap();
    let presented = presented_serial(
        &n2.netns,
        SocketAddr::new(IpAddr::V4(server.ip), 15008),
        &fx.ca_dir,
        &Identity::parse(&client_id).unwrap(),
        &Identity::parse(&server_id).unwrap(),
    );
    assert_eq!(presented, current);
    assert_ne!(presented, old_server);
}

/// Two nodes, one client and one server pod, the server's ztunnel started with `z2_env`.
struct Pair {
    fx: Fixture,
    client: testbed::Pod,
    server: testbed::Pod,
    echo: EchoServer,
    z1: Ztunnel,
    z2: Ztunnel,
}

fn pair(name: &str, z2_env: &[(&str, &str)]) -> Pair {
    let mut fx = fixture(name);
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_captured_pod(&n1, "client");
    let server = fx.add_captured_pod(&n2, "server");
    fx.write_config(&format!(
        "workloads:\n{}{}",
        workload_yaml(&client, "default", "client-sa", "n1", &[]),
        workload_yaml(&server, "default", "server-sa", "n2", &[]),
    ));
    let echo = EchoServer::start(&server, 8080);
    let z1 = fx.start_ztunnel(&n1, &[]);
    let z2 = fx.start_ztunnel(&n2, z2_env);
    z1.serve(&[(&client, "default", "client-sa")]);
    z2.serve(&[(&server, "default", "server-sa")]);
    Pair {
        fx,
        client,
        server,
        echo,
        z1,
        z2,
    }
}

#[test]
fn sigterm_drains_without_cutting_an_in_flight_transfer() {
    let mut p = pair("drain", &[("AMBIT_DRAIN_DEADLINE", "30s")]);
    let mut transfer = Transfer::open(&p.client, p.echo.addr).expect("open transfer");
    for n in 0..8 {
        transfer.round(n).expect("transfer before SIGTERM");
    }

    sigterm(p.z2.pid());
    // Draining: readiness says no while the connection finishes.
    wait_until(
        "readiness 503 while draining",
        Duration::from_secs(5),
        || readiness_status(&p.z2) == 503,
    );
    for n in 8..24 {
        transfer.round(n).expect("transfer after SIGTERM");
    }
    // New connections are refused: the HBONE listener is closed and the pooled connection
    // got GOAWAY.
    assert!(
        try_greeting(&p.client, p.echo.addr).is_err(),
        "a new connection got through a draining ztunnel"
    );
    assert_eq!(p.echo.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(readiness_status(&p.z2), 503, "still draining");
    assert_eq!(transfer.echoed, 24 * CHUNK);

    // Closing the last connection ends the drain at once, long before the 30 s deadline.
    let closed = Instant::now();
    drop(transfer);
    let child = p.z2.child.as_mut().unwrap();
    let status = wait_exit(child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(
        closed.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        closed.elapsed()
    );
    p.z2.child = None;
    assert!(!p.z2.log_text().contains("drain deadline passed"));
}

#[test]
fn drain_deadline_closes_what_is_left_and_exits_zero() {
    let mut p = pair("deadline", &[("AMBIT_DRAIN_DEADLINE", "1s")]);
    let mut conn = Client::connect(&p.client, p.echo.addr).expect("connect");
    conn.greeting().expect("greeting");
    assert_eq!(conn.echo("idle but open").unwrap(), "idle but open");

    let start = Instant::now();
    let status = p.z2.terminate();
    let took = start.elapsed();
    assert!(status.success(), "exit status {status}");
    // It waited for the deadline (the connection was open), then did not linger.
    assert!(took >= Duration::from_millis(900), "exited after {took:?}");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert!(p.z2.log_text().contains("drain deadline passed"));
    // The connection left open was closed, not left dangling.
    assert!(conn.echo("after the deadline").is_err());
}

#[test]
fn config_reload_applies_valid_changes_and_keeps_the_last_good_config() {
    let mut p = pair("reload", &[]);
    let n2 = p.z2.node.clone();
    let server2 = p.fx.add_captured_pod(&n2, "server2");
    let echo2 = EchoServer::start(&server2, 8080);
    p.z2.agent
        .add_pod(&server2, "default", "server2-sa")
        .expect("serve server2");
    let base = format!(
        "workloads:\n{}{}",
        workload_yaml(&p.client, "default", "client-sa", "n1", &[]),
        workload_yaml(&p.server, "default", "server-sa", "n2", &[]),
    );
    // Not in the config yet: z1 sends it in plaintext (an unknown address) and z2, which has
    // no config entry for the pod it serves there, refuses it.
    assert!(try_greeting(&p.client, echo2.addr).is_err());
    assert_eq!(echo2.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(p.z2.config_version(), 1);

    let good = format!(
        "{base}{}",
        workload_yaml(&server2, "default", "server2-sa", "n2", &[])
    );
    p.fx.write_config(&good);
    wait_until(
        "both ztunnels applied version 2",
        Duration::from_secs(5),
        || p.z1.config_version() == 2 && p.z2.config_version() == 2,
    );
    let mut conn = Client::connect(&p.client, echo2.addr).expect("connect to server2");
    assert!(conn
        .greeting()
        .unwrap()
        .starts_with(&format!("server2 saw {}:", p.client.ip)));
    assert_eq!(conn.echo("to the new pod").unwrap(), "to the new pod");
    let over_hbone = |zt: &Ztunnel| {
        metric_sum(
            &zt.metrics(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("destination_principal", &id("server2-sa")),
                ("source_principal", &id("client-sa")),
                ("connection_security_policy", "mutual_tls"),
            ],
        )
    };
    assert_eq!(over_hbone(&p.z2), 1.0);
    assert!(
        metric_sum(
            &p.z2.metrics(),
            "ambit_config_reloads_total",
            &[("result", "ok")]
        ) >= 1.0
    );

    // A bad address in the new pod's entry: rejected as a whole, with the field named.
    let bad = good.replace(&format!("[\"{}\"]", server2.ip), "[\"10.2.0.300\"]");
    assert_ne!(bad, good);
    p.fx.write_config(&bad);
    wait_until("z2 rejected the bad config", Duration::from_secs(5), || {
        metric_sum(
            &p.z2.metrics(),
            "ambit_config_reloads_total",
            &[("result", "failed")],
        ) >= 1.0
    });
    let dump = p.z2.config_dump();
    assert_eq!(dump["configStatus"]["version"], 2);
    let last_error = dump["configStatus"]["lastError"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last_error.contains("workloads[2].workloadIps[0]"),
        "lastError: {last_error}"
    );
    // The last good config is still in force: both servers reachable, still over HBONE.
    assert_eq!(conn.echo("still open").unwrap(), "still open");
    assert!(try_greeting(&p.client, echo2.addr)
        .unwrap()
        .starts_with("server2 saw"));
    assert!(try_greeting(&p.client, p.echo.addr)
        .unwrap()
        .starts_with("server saw"));
    assert_eq!(over_hbone(&p.z2), 2.0);
}

#[test]
fn agent_reconnect_replays_snapshot_and_drops_pods_not_replayed() {
    let p = pair("reconnect", &[]);
    let uids = |zt: &Ztunnel| served_uids(&zt.config_dump());
    let inode = |zt: &Ztunnel| zt.config_dump()["servedWorkloads"][0]["netnsInode"].clone();
    let before = inode(&p.z2);
    let mut conn = Client::connect(&p.client, p.echo.addr).expect("connect");
    conn.greeting().unwrap();
    assert_eq!(conn.echo("one").unwrap(), "one");

    // The node agent restarts; ztunnel reconnects by itself and the agent replays its pods.
    p.z2.agent.disconnect();
    p.z2.agent.accept();
    p.z2.agent
        .add_pod(&p.server, "default", "server-sa")
        .expect("replay");
    p.z2.agent.snapshot_sent().expect("snapshot");
    assert_eq!(uids(&p.z2), ["server"]);
    assert_eq!(inode(&p.z2), before, "replay re-bound the pod");
    assert_eq!(
        conn.echo("two").unwrap(),
        "two",
        "replay cut the connection"
    );
    assert!(try_greeting(&p.client, p.echo.addr)
        .unwrap()
        .starts_with("server saw"));
    assert_eq!(p.echo.accepted.load(Ordering::SeqCst), 2);

    // Another restart that does not replay the pod: it is no longer served.
    p.z2.agent.disconnect();
    p.z2.agent.accept();
    p.z2.agent.snapshot_sent().expect("snapshot");
    assert!(uids(&p.z2).is_empty(), "{:?}", uids(&p.z2));
    assert!(
        conn.echo("three").is_err(),
        "connection of a dropped pod kept running"
    );
    // Its listeners are gone: z1's HBONE dial to the pod is refused.
    assert!(try_greeting(&p.client, p.echo.addr).is_err());
    assert_eq!(p.echo.accepted.load(Ordering::SeqCst), 2);

    // Added again, then deleted: `del` stops serving it the same way.
    p.z2.agent
        .add_pod(&p.server, "default", "server-sa")
        .expect("add");
    assert!(try_greeting(&p.client, p.echo.addr).is_ok());
    assert_eq!(p.echo.accepted.load(Ordering::SeqCst), 3);
    p.z2.agent.del_pod("server").expect("del");
    assert!(uids(&p.z2).is_empty());
    assert!(try_greeting(&p.client, p.echo.addr).is_err());
    assert_eq!(p.echo.accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn ipv6_pod_to_pod_over_hbone() {
    let mut fx = fixture("ipv6");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_captured_pod(&n1, "client");
    let server = fx.add_captured_pod(&n2, "server");
    fx.write_config(&format!(
        "workloads:\n{}{}",
        dual_stack_workload_yaml(&client, "default", "client-sa", "n1"),
        dual_stack_workload_yaml(&server, "default", "server-sa", "n2"),
    ));
    let echo = Echo::start_v6(&server, 8080);
    let z1 = fx.start_ztunnel(&n1, &[]);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z1.serve(&[(&client, "default", "client-sa")]);
    z2.serve(&[(&server, "default", "server-sa")]);

    let mut conn = Client::connect(&client, echo.addr).expect("connect over IPv6");
    let greeting = conn.greeting().expect("greeting");
    // The app sees the client's IPv6 address: original source preserved over IPv6 too.
    let client6 = SocketAddr::new(IpAddr::V6(client.ip6.unwrap()), 0);
    assert!(
        greeting.starts_with(&format!("server saw [{}]:", client6.ip())),
        "{greeting}"
    );
    assert_eq!(conn.echo("v6").unwrap(), "v6");
    assert_eq!(
        metric_sum(
            &z2.metrics(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_principal", &id("client-sa")),
                ("connection_security_policy", "mutual_tls"),
            ],
        ),
        1.0
    );
}

#[test]
fn ipv6_disabled_serves_ipv4_with_ipv4_listeners_only() {
    let p = pair("noipv6", &[("IPV6_ENABLED", "false")]);
    let mut conn = Client::connect(&p.client, p.echo.addr).expect("connect");
    assert!(conn.greeting().unwrap().starts_with("server saw"));
    assert_eq!(conn.echo("v4").unwrap(), "v4");
    // Only an IPv4 HBONE listener in the pod.
    let n2 = &p.z2.node.netns;
    let v4 = SocketAddr::new(IpAddr::V4(p.server.ip), 15008);
    let v6 = SocketAddr::new(IpAddr::V6(p.server.ip6.unwrap()), 15008);
    let connect = |a: SocketAddr| n2.run(|| TcpStream::connect_timeout(&a, Duration::from_secs(2)));
    assert!(connect(v4).is_ok());
    let err = connect(v6).expect_err("IPv6 HBONE listener with IPV6_ENABLED=false");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn dedicated_mode_serves_its_own_pod_over_hbone() {
    let mut fx = fixture("dedicated");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_captured_pod(&n1, "client");
    let server = fx.add_captured_pod(&n2, "server");
    fx.write_config(&format!(
        "workloads:\n{}{}",
        workload_yaml(&client, "default", "client-sa", "n1", &[]),
        workload_yaml(&server, "default", "server-sa", "n2", &[]),
    ));
    let echo = EchoServer::start(&server, 8080);
    let dedicated = DedicatedZtunnel::start(
        &fx,
        &client,
        "default/client/client-sa",
        &[("ENABLE_ORIG_SRC", "false"), ("PACKET_MARK", "1337")],
    );
    let z2 = fx.start_ztunnel(&n2, &[]);
    z2.serve(&[(&server, "default", "server-sa")]);

    let mut conn = Client::connect(&client, echo.addr).expect("connect");
    let greeting = conn.greeting().unwrap();
    assert!(
        greeting.starts_with(&format!("server saw {}:", client.ip)),
        "{greeting}"
    );
    assert_eq!(conn.echo("dedicated").unwrap(), "dedicated");
    // The dedicated ztunnel originated it as the pod's identity, over mTLS.
    assert_eq!(
        metric_sum(
            &dedicated.metrics(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_principal", &id("server-sa")),
                ("connection_security_policy", "mutual_tls"),
            ],
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &z2.metrics(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_principal", &id("client-sa")),
            ],
        ),
        1.0
    );
    let dump = dedicated.config_dump();
    assert_eq!(dump["servedWorkloads"][0]["identity"], id("client-sa"));
}
