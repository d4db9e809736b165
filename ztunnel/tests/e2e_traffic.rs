//! End to end: real ztunnel processes carrying pod traffic across two nodes over HBONE.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn pod_to_pod_over_hbone_carries_identity_and_source_address() {
    let mut fx = fixture("p2p");
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
    let z2 = fx.start_ztunnel(&n2, &[]);
    z1.serve(&[(&client, "default", "client-sa")]);
    z2.serve(&[(&server, "default", "server-sa")]);

    let mut conn = Client::connect(&client, echo.addr).expect("connect through the mesh");
    let greeting = conn.greeting().expect("greeting");
    // The app sees the client pod's own address: original source preserved end to end.
    assert!(
        greeting.starts_with(&format!("server saw {}:", client.ip)),
        "{greeting}"
    );
    assert_eq!(conn.echo("hello over hbone").unwrap(), "hello over hbone");
    drop(conn);

    // The destination ztunnel authenticated the client's SPIFFE identity over mutual TLS.
    let client_id = format!("{ID_PREFIX}default/sa/client-sa");
    let server_id = format!("{ID_PREFIX}default/sa/server-sa");
    wait_until("destination close metric", Duration::from_secs(10), || {
        metric_sum(
            &z2.metrics(),
            "istio_tcp_connections_closed_total",
            &[
                ("reporter", "destination"),
                ("source_principal", &client_id),
                ("destination_principal", &server_id),
                ("connection_security_policy", "mutual_tls"),
            ],
        ) >= 1.0
    });
    let z2_metrics = z2.metrics();
    assert!(
        metric_sum(
            &z2_metrics,
            "istio_tcp_received_bytes_total",
            &[
                ("reporter", "destination"),
                ("source_principal", &client_id)
            ]
        ) >= "hello over hbone\n".len() as f64
    );
    // The source side reported it too, with the destination's identity.
    assert!(
        metric_sum(
            &z1.metrics(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_principal", &server_id)
            ]
        ) >= 1.0
    );
    // And the access log names the peer identity.
    let log = z2.access_log();
    assert!(
        log.iter().any(|r| r.to_string().contains(&client_id)),
        "no access log record with {client_id}: {log:?}"
    );
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}
