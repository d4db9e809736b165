//! Route selection: the pure decision of where an outbound connection goes.

use super::*;

fn state() -> State {
    let yaml = r#"
workloads:
- uid: a
  name: a
  namespace: ns
  protocol: HBONE
  workloadIps: ["10.0.0.1"]
  services:
    "ns/svc.ns.svc.cluster.local": {80: 8080}
- uid: b
  name: b
  namespace: ns
  protocol: HBONE
  workloadIps: ["10.0.0.2"]
  services:
    "ns/svc.ns.svc.cluster.local": {80: 9090}
- uid: sick
  name: sick
  namespace: ns
  protocol: HBONE
  status: Unhealthy
  workloadIps: ["10.0.0.3"]
  services:
    "ns/svc.ns.svc.cluster.local": {80: 8080}
- uid: legacy
  name: legacy
  namespace: ns
  protocol: TCP
  workloadIps: ["10.0.0.4"]
services:
- name: svc
  namespace: ns
  hostname: svc.ns.svc.cluster.local
  vips: ["/10.96.0.1"]
  ports: {80: 8080}
  subjectAltNames: ["spiffe://cluster.local/ns/ns/sa/extra"]
- name: empty
  namespace: ns
  hostname: empty.ns.svc.cluster.local
  vips: ["/10.96.0.2"]
  ports: {80: 8080}
"#;
    mesh::model::local_config::parse(yaml)
        .and_then(|c| c.into_state())
        .expect("test config")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn vip_round_robins_over_healthy_endpoints_with_their_target_ports() {
    let st = state();
    let mut seen = Vec::new();
    for i in 0..4 {
        match route(&st, addr("10.96.0.1:80"), |_| i) {
            Route::Hbone {
                workload,
                target,
                service,
            } => {
                assert_eq!(service.unwrap().name, "svc");
                assert_ne!(workload.name, "sick", "unhealthy endpoint chosen");
                seen.push(target);
            }
            other => panic!("unexpected route {other:?}"),
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, vec![addr("10.0.0.1:8080"), addr("10.0.0.2:9090")]);
}

#[test]
fn pod_ip_goes_straight_to_that_workload_on_the_same_port() {
    match route(&state(), addr("10.0.0.2:7000"), |_| 0) {
        Route::Hbone {
            workload, target, ..
        } => {
            assert_eq!(workload.name, "b");
            assert_eq!(target, addr("10.0.0.2:7000"));
        }
        other => panic!("unexpected route {other:?}"),
    }
}

#[test]
fn non_mesh_and_tcp_destinations_pass_through_in_plain_tcp() {
    match route(&state(), addr("192.0.2.9:443"), |_| 0) {
        Route::Passthrough {
            target, workload, ..
        } => {
            assert_eq!(target, addr("192.0.2.9:443"));
            assert!(workload.is_none());
        }
        other => panic!("unexpected route {other:?}"),
    }
    match route(&state(), addr("10.0.0.4:5432"), |_| 0) {
        Route::Passthrough { workload, .. } => assert_eq!(workload.unwrap().name, "legacy"),
        other => panic!("unexpected route {other:?}"),
    }
}

#[test]
fn a_vip_without_healthy_endpoints_is_reported_not_passed_through() {
    assert!(matches!(
        route(&state(), addr("10.96.0.2:80"), |_| 0),
        Route::NoHealthyEndpoint { .. }
    ));
}

#[test]
fn expected_identities_include_the_service_sans() {
    let st = state();
    let w = st.workload_by_name("ns", "a").unwrap();
    let alone: Vec<String> = expected_identities(w, None)
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(alone, vec!["spiffe://cluster.local/ns/ns/sa/default"]);
    let svc = st.service_by_vip("10.96.0.1".parse().unwrap()).unwrap();
    let with_sans: Vec<String> = expected_identities(w, Some(svc))
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        with_sans,
        vec![
            "spiffe://cluster.local/ns/ns/sa/default",
            "spiffe://cluster.local/ns/ns/sa/extra"
        ]
    );
}
