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
