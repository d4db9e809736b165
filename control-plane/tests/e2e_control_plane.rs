//! End to end: the control-plane binary serving a folder of YAML to real ztunnel processes
//! (shared mode) on two nodes, over xDS and its CA, in network namespaces.

mod common;

use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

/// Traffic flows pod → pod over HBONE with the identities the control plane's CA issued.
#[test]
fn ztunnels_configured_by_the_control_plane_carry_traffic_with_identities() {
    let m = mesh("cp-p2p", true);
    let (mut conn, greeting) = try_greeting(&m.client, m.echo.addr).expect("connect via mesh");
    assert!(
        greeting.starts_with(&format!("server saw {}:", m.client.ip)),
        "{greeting}"
    );
    assert_eq!(conn.echo("hello").unwrap(), "hello");
    drop(conn);

    let client_id = format!("{ID_PREFIX}default/sa/client-sa");
    let server_id = format!("{ID_PREFIX}default/sa/server-sa");
    wait_until("destination close metric", Duration::from_secs(10), || {
        metric_sum(
            &m.z2.metrics(),
            "istio_tcp_connections_closed_total",
            &[
                ("reporter", "destination"),
                ("source_principal", &client_id),
                ("destination_principal", &server_id),
                ("connection_security_policy", "mutual_tls"),
            ],
        ) >= 1.0
    });
    assert_eq!(m.echo.accepted.load(Ordering::SeqCst), 1);
}

/// Reads until the peer closes; the time it took.
fn wait_for_close(conn: &mut Client, limit: Duration) -> Duration {
    let start = Instant::now();
    conn.stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("connection still open after {:?}: {e}", start.elapsed()),
        }
    }
}

/// A DENY policy written to the folder closes a live connection within a second.
#[test]
fn deny_policy_file_closes_a_live_connection_within_a_second() {
    let m = mesh("cp-deny", true);
    let (mut conn, _) = try_greeting(&m.client, m.echo.addr).expect("connect via mesh");
    assert_eq!(conn.echo("before").unwrap(), "before");

    let written = Instant::now();
    m.cp.write("deny.yaml", &deny_client_policy());
    wait_for_close(&mut conn, Duration::from_secs(5));
    let took = written.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "closed {took:?} after the write"
    );
    // And new connections are refused.
    assert!(try_greeting(&m.client, m.echo.addr).is_err());
}

/// A pod file added to the folder makes that pod reachable through the mesh.
#[test]
fn adding_a_pod_file_makes_the_pod_reachable() {
    let m = mesh("cp-addpod", false);
    // Unknown to the control plane, the server has no certificate and no mesh identity: its
    // ztunnel cannot terminate HBONE for it.
    assert!(
        try_greeting(&m.client, m.echo.addr).is_err(),
        "reached a pod the control plane does not know"
    );

    m.cp.write(
        "server.yaml",
        &k8s_pod_yaml(&m.server, "default", "server-sa", SERVER_LABELS),
    );
    wait_until("server reachable", Duration::from_secs(10), || {
        try_greeting(&m.client, m.echo.addr).is_ok()
    });
    let (mut conn, _) = try_greeting(&m.client, m.echo.addr).unwrap();
    assert_eq!(conn.echo("now known").unwrap(), "now known");
}

/// A node's token obtains certificates for pods on that node only: asking for the identity of
/// a pod on another node is refused with PermissionDenied and logged by the control plane.
#[test]
fn node_token_cannot_obtain_an_identity_of_another_nodes_pod() {
    use mesh::caclient::CaClientError;

    let mut fx = Fixture::new("cp-nodeauthz", ztunnel_binary());
    let host = fx.bed.add_host("cp").expect("host");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_plain_pod(&n1, "client");
    let server = fx.add_plain_pod(&n2, "server");
    let config = config_dir(&fx);
    write_atomic(&config.join("ns.yaml"), &namespace_yaml("default", true));
    write_atomic(
        &config.join("pods.yaml"),
        &format!(
            "{}---\n{}",
            k8s_pod_yaml(&client, "default", "client-sa", &[]),
            k8s_pod_yaml(&server, "default", "server-sa", SERVER_LABELS)
        ),
    );
    let cp = ControlPlane::start(&fx, &host);

    // From n1's network, as n1's ztunnel would ask.
    let (own, other) = fetch_certificates(&fx, &cp, &n1, TOKEN_N1);
    assert_eq!(
        own.expect("n1 may have its own pod's identity")
            .identity
            .to_string(),
        format!("{ID_PREFIX}default/sa/client-sa")
    );
    match other {
        Err(CaClientError::Rpc { code, .. }) => {
            assert_eq!(code, tonic::Code::PermissionDenied)
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let log = cp.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("not authorized") && l.contains("n1") && l.contains("server-sa")),
        "refusal not logged with caller and identity:\n{log}"
    );
}

/// Without the control plane, traffic keeps flowing (old and new connections); a change made
/// while it was down takes effect once it is back and the ztunnels resync.
#[test]
fn traffic_survives_control_plane_outage_and_ztunnels_resync_after_restart() {
    let mut m = mesh("cp-outage", true);
    let (mut live, _) = try_greeting(&m.client, m.echo.addr).expect("connect via mesh");
    assert_eq!(live.echo("before").unwrap(), "before");

    assert!(m.cp.terminate().success(), "control plane exit status");
    assert_eq!(live.echo("during").unwrap(), "during");
    let (mut fresh, _) = try_greeting(&m.client, m.echo.addr).expect("new connection while down");
    assert_eq!(fresh.echo("new while down").unwrap(), "new while down");
    drop(fresh);

    // Changed while nobody serves it.
    m.cp.write("deny.yaml", &deny_client_policy());
    assert_eq!(live.echo("still allowed").unwrap(), "still allowed");

    m.cp.spawn();
    // The ztunnels reconnect (with backoff) and receive the policy: the live connection closes
    // and new ones are refused.
    wait_for_close(&mut live, Duration::from_secs(10));
    assert!(try_greeting(&m.client, m.echo.addr).is_err());
}
