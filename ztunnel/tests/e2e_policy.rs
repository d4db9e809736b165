//! End to end: routing (service VIPs, passthrough) and L4 policy (ALLOW/DENY, PeerAuthentication,
//! re-authorization of open connections, HBONE request checks) through real ztunnel processes.
//!
//! Every test checks what crossed the wire (greetings, echoes, the peer address the app saw, the
//! status an HBONE client got) plus the telemetry of the ztunnel that made the decision.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mesh::ca::CertificateAuthority;
use mesh::hbone::{ConnectRequest, Pool, PoolConfig, PoolKey};
use mesh::identity::Identity;
use rustls_pki_types::ServerName;
use testbed::{Node, Pod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// The servers' namespace: policies and PeerAuthentications below are scoped to it.
const SRV_NS: &str = "srv";
const APP_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(10);

fn spiffe(ns: &str, sa: &str) -> String {
    format!("{ID_PREFIX}{ns}/sa/{sa}")
}

/// A non-mesh host dressed as a pod, so the fixture's `EchoServer` and `Client` run from it.
/// Its address is its wire address; nothing captures its traffic.
fn host_as_pod(host: &Node) -> Pod {
    Pod {
        name: host.name.clone(),
        netns: host.netns.clone(),
        ip: host.ip,
        ip6: host.ip6,
        node: String::new(),
    }
}

/// Writes `yaml` and waits until `zt` has applied it (its config version moved past the one in
/// force before the write): the observable signal that the new policy is enforced.
fn apply_config(fx: &Fixture, zt: &Ztunnel, yaml: &str) {
    let before = zt.config_version();
    fx.write_config(yaml);
    wait_until("config version to increase", WAIT, || {
        zt.config_version() > before
    });
}

/// Asserts that a connection from `pod` to `dst` is closed before any greeting, i.e. a
/// ztunnel refused it. A read timeout would not be a refusal, so only EOF or reset count.
fn assert_refused(pod: &Pod, dst: SocketAddr) {
    match Client::connect(pod, dst) {
        // Refused at TCP level (nothing listening): also a refusal.
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connect from {} to {dst}: {e}", pod.name),
        Ok(mut c) => match c.greeting() {
            Ok(g) => panic!(
                "{} reached {dst} although it must be refused: {g}",
                pod.name
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ),
                "{} to {dst}: expected a close, got {e} ({:?})",
                pod.name,
                e.kind()
            ),
        },
    }
}

/// The access-log records of `zt` whose flattened fields contain every `(key, value)`.
fn log_records(zt: &Ztunnel, fields: &[(&str, &str)]) -> Vec<serde_json::Value> {
    zt.access_log()
        .into_iter()
        .filter(|r| {
            fields
                .iter()
                .all(|(k, v)| r[*k].as_str().is_some_and(|s| s.contains(v)))
        })
        .collect()
}

fn wait_for_log(zt: &Ztunnel, what: &str, fields: &[(&str, &str)]) -> serde_json::Value {
    let mut found = None;
    wait_until(what, WAIT, || {
        found = log_records(zt, fields).into_iter().next();
        found.is_some()
    });
    found.expect("checked by wait_until")
}

#[test]
fn service_vip_spreads_connections_over_endpoints() {
    const N: usize = 10;
    const HOST: &str = "echo.srv.svc.cluster.local";
    let svc_key = format!("{SRV_NS}/{HOST}");
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let mut fx = fixture("vip");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let n3 = fx.add_node("n3");
    let client = fx.add_captured_pod(&n1, "client");
    let a = fx.add_captured_pod(&n2, "server-a");
    let b = fx.add_captured_pod(&n3, "server-b");
    let backs = [(svc_key.as_str(), 80, APP_PORT)];
    fx.write_config(&format!(
        "workloads:\n{}{}{}services:\n- name: echo\n  namespace: {SRV_NS}\n  hostname: {HOST}\n  vips: [\"/{}\"]\n  ports: {{80: {APP_PORT}}}\n",
        workload_yaml(&client, "default", "client-sa", "n1", &[]),
        workload_yaml(&a, SRV_NS, "server-sa", "n2", &backs),
        workload_yaml(&b, SRV_NS, "server-sa", "n3", &backs),
        vip.ip(),
    ));
    let echo_a = EchoServer::start(&a, APP_PORT);
    let echo_b = EchoServer::start(&b, APP_PORT);
    let z1 = fx.start_ztunnel(&n1, &[]);
    let z2 = fx.start_ztunnel(&n2, &[]);
    let z3 = fx.start_ztunnel(&n3, &[]);
    z1.serve(&[(&client, "default", "client-sa")]);
    z2.serve(&[(&a, SRV_NS, "server-sa")]);
    z3.serve(&[(&b, SRV_NS, "server-sa")]);

    // The VIP has no route of its own: the client pod's default route carries the SYN as far
    // as its nat OUTPUT chain, which redirects it to ztunnel before it ever leaves the pod.
    let mut greeted = std::collections::HashMap::<String, usize>::new();
    for i in 0..N {
        let mut conn = Client::connect(&client, vip).expect("connect to the VIP");
        let greeting = conn.greeting().expect("greeting through the VIP");
        let (pod, saw) = greeting.split_once(" saw ").expect("greeting shape");
        // Each endpoint sees the client pod itself, not ztunnel or the VIP.
        assert!(saw.starts_with(&format!("{}:", client.ip)), "{greeting}");
        let msg = format!("call {i}");
        assert_eq!(conn.echo(&msg).unwrap(), msg);
        *greeted.entry(pod.to_string()).or_default() += 1;
    }
    let (hits_a, hits_b) = (
        echo_a.accepted.load(Ordering::SeqCst),
        echo_b.accepted.load(Ordering::SeqCst),
    );
    assert!(hits_a > 0 && hits_b > 0, "a={hits_a} b={hits_b}");
    assert_eq!(hits_a + hits_b, N);
    // What the client read agrees with what each app accepted.
    assert_eq!(greeted.get("server-a").copied().unwrap_or(0), hits_a);
    assert_eq!(greeted.get("server-b").copied().unwrap_or(0), hits_b);

    // The source ztunnel attributed every connection to the service, over mTLS.
    let opened = metric_sum(
        &z1.metrics(),
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("destination_service", HOST),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert_eq!(opened, N as f64);
    let rec = wait_for_log(
        &z1,
        "source access log naming the service",
        &[("direction", "outbound"), ("dst.service", HOST)],
    );
    let dst_port = rec["dst.addr"].as_str().unwrap_or_default();
    assert!(dst_port.ends_with(&format!(":{APP_PORT}")), "{rec}");

    // A port the service does not define has no endpoint: closed at the source, flagged UH.
    assert_refused(&client, SocketAddr::new(vip.ip(), 81));
    assert_eq!(
        metric_sum(
            &z1.metrics(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_service", HOST),
                ("response_flags", "UH"),
            ],
        ),
        1.0
    );
    assert_eq!(
        echo_a.accepted.load(Ordering::SeqCst) + echo_b.accepted.load(Ordering::SeqCst),
        N,
        "nothing more reached the apps"
    );
}

#[test]
fn allow_policy_admits_only_the_named_service_account() {
    let mut fx = fixture("allow");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let good = fx.add_captured_pod(&n1, "good");
    let other = fx.add_captured_pod(&n1, "other");
    let server = fx.add_captured_pod(&n2, "server");
    fx.write_config(&format!(
        "workloads:\n{}{}{}policies:\n- name: only-allowed\n  namespace: {SRV_NS}\n  scope: Namespace\n  action: Allow\n  rules:\n  - - - serviceAccounts: [{{namespace: default, serviceAccount: allowed-sa}}]\n",
        workload_yaml(&good, "default", "allowed-sa", "n1", &[]),
        workload_yaml(&other, "default", "other-sa", "n1", &[]),
        workload_yaml(&server, SRV_NS, "server-sa", "n2", &[]),
    ));
    let echo = EchoServer::start(&server, APP_PORT);
    let z1 = fx.start_ztunnel(&n1, &[]);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z1.serve(&[
        (&good, "default", "allowed-sa"),
        (&other, "default", "other-sa"),
    ]);
    z2.serve(&[(&server, SRV_NS, "server-sa")]);

    let mut conn = Client::connect(&good, echo.addr).expect("connect");
    let greeting = conn.greeting().expect("allowed-sa is admitted");
    assert!(greeting.starts_with(&format!("server saw {}:", good.ip)));
    assert_eq!(conn.echo("ok").unwrap(), "ok");
    drop(conn);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);

    assert_refused(&other, echo.addr);
    // The destination ztunnel refused it: counted as a denial with its reason...
    let m2 = z2.metrics();
    assert_eq!(
        metric_sum(
            &m2,
            "ambit_connections_denied_total",
            &[("reason", "no_allow_match")]
        ),
        1.0,
        "{m2}"
    );
    let other_id = spiffe("default", "other-sa");
    assert_eq!(
        metric_sum(
            &m2,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("response_flags", "DENY"),
                ("source_principal", &other_id),
            ]
        ),
        1.0,
        "{m2}"
    );
    // ...logged with the policy reason at the destination, and as a 401 at the source.
    wait_for_log(
        &z2,
        "destination access log of the denial",
        &[
            ("response_flags", "DENY"),
            ("src.identity", &other_id),
            ("error", "no ALLOW policy matched"),
        ],
    );
    wait_for_log(
        &z1,
        "source access log of the 401",
        &[("direction", "outbound"), ("error", "401")],
    );
    // ...and the app never saw it.
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn deny_policy_beats_allow() {
    let mut fx = fixture("deny");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let good = fx.add_captured_pod(&n1, "good");
    let bad = fx.add_captured_pod(&n1, "bad");
    let evil = fx.add_captured_pod(&n1, "evil");
    let server = fx.add_captured_pod(&n2, "server");
    // ALLOW admits both client namespaces; DENY singles out one principal and one namespace.
    let policies = format!(
        "policies:\n\
         - name: allow-clients\n  namespace: {SRV_NS}\n  scope: Namespace\n  action: Allow\n  rules:\n  - - - namespaces: [{{Exact: default}}, {{Exact: evil}}]\n\
         - name: deny-some\n  namespace: {SRV_NS}\n  scope: Namespace\n  action: Deny\n  rules:\n  - - - principals: [{{Exact: \"cluster.local/ns/default/sa/bad-sa\"}}]\n      - namespaces: [{{Exact: evil}}]\n"
    );
    fx.write_config(&format!(
        "workloads:\n{}{}{}{}{policies}",
        workload_yaml(&good, "default", "good-sa", "n1", &[]),
        workload_yaml(&bad, "default", "bad-sa", "n1", &[]),
        workload_yaml(&evil, "evil", "any-sa", "n1", &[]),
        workload_yaml(&server, SRV_NS, "server-sa", "n2", &[]),
    ));
    let echo = EchoServer::start(&server, APP_PORT);
    let z1 = fx.start_ztunnel(&n1, &[]);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z1.serve(&[
        (&good, "default", "good-sa"),
        (&bad, "default", "bad-sa"),
        (&evil, "evil", "any-sa"),
    ]);
    z2.serve(&[(&server, SRV_NS, "server-sa")]);

    assert_refused(&bad, echo.addr);
    assert_refused(&evil, echo.addr);
    let mut conn = Client::connect(&good, echo.addr).expect("connect");
    assert!(conn
        .greeting()
        .expect("good-sa is not denied")
        .starts_with(&format!("server saw {}:", good.ip)));
    assert_eq!(conn.echo("still allowed").unwrap(), "still allowed");

    let m2 = z2.metrics();
    assert_eq!(
        metric_sum(
            &m2,
            "ambit_connections_denied_total",
            &[("reason", "deny_policy")]
        ),
        2.0,
        "{m2}"
    );
    assert_eq!(
        metric_sum(
            &m2,
            "ambit_connections_denied_total",
            &[("reason", "no_allow_match")]
        ),
        0.0
    );
    for (ns, sa) in [("default", "bad-sa"), ("evil", "any-sa")] {
        wait_for_log(
            &z2,
            "DENY policy named in the access log",
            &[
                ("src.identity", &spiffe(ns, sa)),
                ("error", &format!("DENY policy {SRV_NS}/deny-some")),
            ],
        );
    }
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn strict_refuses_plaintext_and_permissive_admits_it() {
    let mut fx = fixture("mtls");
    let n2 = fx.add_node("n2");
    let outside = fx.bed.add_host("outside").expect("host");
    let outside = host_as_pod(&outside);
    let server = fx.add_captured_pod(&n2, "server");
    let workloads = format!(
        "workloads:\n{}",
        workload_yaml(&server, SRV_NS, "server-sa", "n2", &[])
    );
    fx.write_config(&workloads);
    let echo = EchoServer::start(&server, APP_PORT);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z2.serve(&[(&server, SRV_NS, "server-sa")]);

    // Default STRICT: the plaintext connection lands on 15006 and is closed unanswered.
    assert_refused(&outside, echo.addr);
    assert_eq!(
        metric_sum(
            &z2.metrics(),
            "ambit_connections_denied_total",
            &[("reason", "mtls_required")]
        ),
        1.0
    );
    wait_for_log(
        &z2,
        "plaintext denial in the access log",
        &[("response_flags", "DENY"), ("error", "mTLS is required")],
    );
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 0);

    apply_config(
        &fx,
        &z2,
        &format!("{workloads}peerAuthentications:\n- name: permissive\n  namespace: {SRV_NS}\n  mode: PERMISSIVE\n"),
    );
    let mut conn = Client::connect(&outside, echo.addr).expect("connect");
    let greeting = conn.greeting().expect("PERMISSIVE admits plaintext");
    // The app sees the outside host's own address, not ztunnel's.
    assert!(
        greeting.starts_with(&format!("server saw {}:", outside.ip)),
        "{greeting}"
    );
    assert_eq!(conn.echo("plain").unwrap(), "plain");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        metric_sum(
            &z2.metrics(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("response_flags", "-"),
                ("connection_security_policy", "unknown"),
                ("source_principal", "unknown"),
            ]
        ),
        1.0
    );

    // Back to STRICT: the open plaintext connection is re-checked and closed.
    apply_config(&fx, &z2, &workloads);
    assert_closed(&mut conn);
}

/// Asserts the server side closed `conn` (EOF or reset) within a bounded wait.
fn assert_closed(conn: &mut Client) {
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    match conn.stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "unexpected data on a connection that should close: {:?}",
            &buf[..n]
        ),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "connection still open after the policy change: {e} ({:?})",
            e.kind()
        ),
    }
}

#[test]
fn passthrough_to_a_non_mesh_host_is_plain_tcp() {
    let mut fx = fixture("passthru");
    let n1 = fx.add_node("n1");
    let outside = fx.bed.add_host("outside").expect("host");
    let outside = host_as_pod(&outside);
    let client = fx.add_captured_pod(&n1, "client");
    fx.write_config(&format!(
        "workloads:\n{}",
        workload_yaml(&client, "default", "client-sa", "n1", &[])
    ));
    let external = EchoServer::start(&outside, 9090);
    let z1 = fx.start_ztunnel(&n1, &[]);
    z1.serve(&[(&client, "default", "client-sa")]);

    let mut conn = Client::connect(&client, external.addr).expect("connect");
    let greeting = conn.greeting().expect("greeting from the outside host");
    // Plain TCP from the pod's own address: the host needs no mesh to answer.
    assert!(
        greeting.starts_with(&format!("outside saw {}:", client.ip)),
        "{greeting}"
    );
    assert_eq!(conn.echo("out of mesh").unwrap(), "out of mesh");
    drop(conn);
    assert_eq!(external.accepted.load(Ordering::SeqCst), 1);

    // It went through ztunnel (so the redirect did capture it), recorded without mTLS.
    let m1 = z1.metrics();
    assert_eq!(
        metric_sum(
            &m1,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("connection_security_policy", "unknown"),
                ("destination_workload", "unknown"),
                ("source_principal", &spiffe("default", "client-sa")),
            ]
        ),
        1.0,
        "{m1}"
    );
    assert_eq!(
        metric_sum(
            &m1,
            "istio_tcp_connections_opened_total",
            &[("connection_security_policy", "mutual_tls")]
        ),
        0.0
    );
    let rec = wait_for_log(
        &z1,
        "outbound passthrough record",
        &[
            ("direction", "outbound"),
            ("dst.addr", &external.addr.to_string()),
        ],
    );
    assert!(rec.get("dst.identity").is_none(), "{rec}");
}

#[test]
fn policy_change_closes_an_open_connection() {
    let mut fx = fixture("recheck");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_captured_pod(&n1, "client");
    let server = fx.add_captured_pod(&n2, "server");
    let workloads = format!(
        "workloads:\n{}{}",
        workload_yaml(&client, "default", "client-sa", "n1", &[]),
        workload_yaml(&server, SRV_NS, "server-sa", "n2", &[]),
    );
    fx.write_config(&workloads);
    let echo = EchoServer::start(&server, APP_PORT);
    let z1 = fx.start_ztunnel(&n1, &[]);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z1.serve(&[(&client, "default", "client-sa")]);
    z2.serve(&[(&server, SRV_NS, "server-sa")]);

    let mut conn = Client::connect(&client, echo.addr).expect("connect");
    conn.greeting().expect("greeting");
    assert_eq!(conn.echo("before").unwrap(), "before");

    apply_config(
        &fx,
        &z2,
        &format!("{workloads}policies:\n- name: deny-client\n  namespace: {SRV_NS}\n  scope: Namespace\n  action: Deny\n  rules:\n  - - - principals: [{{Exact: \"cluster.local/ns/default/sa/client-sa\"}}]\n"),
    );
    assert_closed(&mut conn);
    wait_for_log(
        &z2,
        "destination record of the closed connection",
        &[
            ("direction", "inbound"),
            ("error", "denied by updated policy"),
        ],
    );
    assert_refused(&client, echo.addr);
    assert_eq!(
        metric_sum(
            &z2.metrics(),
            "ambit_connections_denied_total",
            &[("reason", "deny_policy")]
        ),
        1.0
    );
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
}

/// What a raw HBONE CONNECT got: the status, and for a 200 the echoed greeting line.
type Probe = Result<String, String>;

#[test]
fn bad_hbone_requests_get_the_right_status() {
    let mut fx = fixture("hbonereq");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    // Not captured: the probe speaks HBONE itself, as another ztunnel would.
    let prober = fx.add_plain_pod(&n1, "prober");
    let server = fx.add_captured_pod(&n2, "server");
    fx.write_config(&format!(
        "workloads:\n{}",
        workload_yaml(&server, SRV_NS, "server-sa", "n2", &[])
    ));
    let echo = EchoServer::start(&server, APP_PORT);
    let z2 = fx.start_ztunnel(&n2, &[]);
    z2.serve(&[(&server, SRV_NS, "server-sa")]);

    let ca = CertificateAuthority::from_cacerts_dir(&fx.ca_dir).expect("fixture CA");
    let prober_id = Identity::new(TRUST_DOMAIN, "default", "prober-sa").unwrap();
    let server_id = Identity::new(TRUST_DOMAIN, SRV_NS, "server-sa").unwrap();
    let cert = ca
        .issue(&prober_id, Duration::from_secs(3600))
        .expect("issue");
    let tls = mesh::tls::client_config(&cert, vec![server_id.clone()]).expect("client config");
    let hbone = SocketAddr::new(server.ip.into(), 15008);
    let srv_ip = IpAddr::V4(server.ip);
    let targets = vec![
        // A control: a good request reaches the app, so the failures below are the checks'.
        SocketAddr::new(srv_ip, APP_PORT),
        // Not this workload's address.
        "10.2.0.99:8080".parse().unwrap(),
        // ztunnel's own HBONE port: never a tunnel target (no loops).
        SocketAddr::new(srv_ip, 15008),
        // Nobody listens there.
        SocketAddr::new(srv_ip, 9999),
    ];
    let src_ip = IpAddr::V4(prober.ip);
    let results: Vec<Probe> = prober
        .netns
        .spawn(move || async move {
            let pool = Pool::new(PoolConfig::default());
            let mut out = Vec::new();
            for target in targets {
                let key = PoolKey::new(prober_id.clone(), vec![server_id.clone()], hbone, src_ip);
                let tls = tls.clone();
                let dial = move || async move {
                    let tcp = tokio::net::TcpStream::connect(hbone).await?;
                    TlsConnector::from(tls)
                        .connect(ServerName::IpAddress(hbone.ip().into()), tcp)
                        .await
                };
                // The whole probe is bounded: a CONNECT that is wrongly accepted may never
                // produce a greeting (e.g. when tunnelled into ztunnel's own port).
                let attempt = async {
                    let (mut stream, _response) = pool
                        .connect(key, ConnectRequest::new(target), dial)
                        .await
                        .map_err(|e| match e.status() {
                            Some(s) => s.as_u16().to_string(),
                            None => format!("not a status: {e}"),
                        })?;
                    let mut line = Vec::new();
                    let mut byte = [0u8; 1];
                    while !line.ends_with(b"\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => line.push(byte[0]),
                            _ => break,
                        }
                    }
                    let _ = stream.shutdown().await;
                    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
                };
                let probe = tokio::time::timeout(WAIT, attempt)
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_string()));
                out.push(probe);
            }
            out
        })
        .join()
        .expect("probe task");

    let greeting = results[0].as_ref().expect("control request succeeds");
    // Tunnelled with the prober's address as the original source.
    assert!(
        greeting.starts_with(&format!("server saw {}:", prober.ip)),
        "{greeting}"
    );
    assert_eq!(
        results[1..].to_vec(),
        vec![
            Err("400".to_string()),
            Err("503".to_string()),
            Err("503".to_string())
        ]
    );
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    // The destination ztunnel says why in each refusal.
    for (flag, why) in [
        ("NR", "is not this workload"),
        ("NR", "ztunnel's own"),
        ("UF", "connect to app"),
    ] {
        wait_for_log(&z2, why, &[("response_flags", flag), ("error", why)]);
    }
}
