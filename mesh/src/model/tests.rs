//! State construction, indices, endpoint selection, policy scoping and validation, built from
//! Rust values (the YAML side is in `config_tests.rs`).

use std::net::IpAddr;

use super::*;
use crate::authz::{Action, Authorization, MtlsMode, PeerAuthentication, Scope};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn wl(ns: &str, name: &str, ips: &[&str]) -> Workload {
    Workload {
        name: name.to_string(),
        namespace: ns.to_string(),
        workload_ips: ips.iter().map(|s| ip(s)).collect(),
        ..Workload::default()
    }
}

fn backing(mut w: Workload, svc_key: &str, ports: &[(u16, u16)]) -> Workload {
    w.services
        .insert(svc_key.to_string(), ports.iter().copied().collect());
    w
}

fn svc(ns: &str, hostname: &str, vips: &[&str], ports: &[(u16, u16)]) -> Service {
    Service {
        name: format!("svc-{hostname}"),
        namespace: ns.to_string(),
        hostname: hostname.to_string(),
        vips: vips.iter().map(|s| ip(s)).collect(),
        ports: ports.iter().copied().collect(),
        ..Service::default()
    }
}

fn policy(ns: &str, name: &str, scope: Scope) -> Authorization {
    Authorization {
        name: name.to_string(),
        namespace: ns.to_string(),
        scope,
        action: Action::Allow,
        rules: Vec::new(),
        dry_run: false,
    }
}

fn err_of(
    workloads: Vec<Workload>,
    services: Vec<Service>,
    policies: Vec<Authorization>,
) -> ModelError {
    State::new(workloads, services, policies, Vec::new()).expect_err("must be rejected")
}

#[test]
fn defaults_follow_istio() {
    let state = State::new(
        vec![wl("default", "a", &["10.0.0.1"])],
        vec![],
        vec![],
        vec![],
    )
    .unwrap();
    let w = state.workload_by_ip(ip("10.0.0.1")).unwrap();
    assert_eq!(w.uid, "Kubernetes//v1/Pod/default/a");
    assert_eq!(w.trust_domain, DEFAULT_TRUST_DOMAIN);
    assert_eq!(w.service_account, DEFAULT_SERVICE_ACCOUNT);
    assert_eq!(w.protocol, Protocol::Tcp);
    assert_eq!(w.status, HealthStatus::Healthy);
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/default"
    );

    // An explicit uid and identity parts are kept as given.
    let mut custom = wl("prod", "b", &[]);
    custom.uid = "c1//v1/Pod/prod/b".into();
    custom.trust_domain = "example.org".into();
    custom.service_account = "api".into();
    custom.cluster_id = "c1".into();
    let state = State::new(vec![custom], vec![], vec![], vec![]).unwrap();
    let w = state.workload_by_uid("c1//v1/Pod/prod/b").unwrap();
    assert_eq!(
        w.identity().to_string(),
        "spiffe://example.org/ns/prod/sa/api"
    );
}

#[test]
fn identity_of_an_unvalidated_workload_never_impersonates() {
    let mut w = wl("bad ns", "a", &[]);
    assert!(w.try_identity().is_err());
    assert_eq!(w.identity().trust_domain(), "ambit.invalid");
    // Without defaults applied, identity() still uses Istio's.
    w.namespace = "ok".into();
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/ok/sa/default"
    );
}

#[test]
fn indices_answer_lookups() {
    let mut remote = wl("default", "remote", &["10.0.0.1"]);
    remote.network = "west".into();
    let state = State::new(
        vec![
            remote,
            wl("default", "local", &["10.0.0.1", "fd00::1"]),
            wl("other", "local", &["10.0.0.2"]),
        ],
        vec![svc(
            "default",
            "web.default.svc",
            &["10.96.0.1"],
            &[(80, 8080)],
        )],
        vec![],
        vec![],
    )
    .unwrap();

    // The same IP in two networks: the default network wins an unqualified lookup.
    assert_eq!(state.workload_by_ip(ip("10.0.0.1")).unwrap().name, "local");
    assert_eq!(
        state.workload_by_addr("west", ip("10.0.0.1")).unwrap().name,
        "remote"
    );
    assert_eq!(state.workload_by_ip(ip("fd00::1")).unwrap().name, "local");
    assert!(state.workload_by_ip(ip("10.0.0.9")).is_none());
    assert_eq!(
        state
            .workload_by_name("other", "local")
            .unwrap()
            .workload_ips,
        vec![ip("10.0.0.2")]
    );
    assert!(state.workload_by_name("nope", "local").is_none());
    assert_eq!(
        state
            .workload_by_uid("Kubernetes//v1/Pod/default/remote")
            .unwrap()
            .network,
        "west"
    );
    assert_eq!(
        state.service_by_vip(ip("10.96.0.1")).unwrap().hostname,
        "web.default.svc"
    );
    assert!(state.service_by_vip(ip("10.0.0.1")).is_none());
    assert!(state.service_by_key("default/web.default.svc").is_some());
    assert_eq!(state.workloads().count(), 3);
    assert_eq!(state.services().count(), 1);
}

#[test]
fn endpoints_respect_health_target_ports_and_order() {
    let key = "default/web.default.svc";
    let mut sick = backing(wl("default", "sick", &["10.0.0.3"]), key, &[]);
    sick.status = HealthStatus::Unhealthy;
    let state = State::new(
        vec![
            // Given out of uid order on purpose: endpoints come back sorted by uid.
            backing(wl("default", "c", &["10.0.0.4"]), key, &[(80, 9090)]),
            backing(wl("default", "a", &["10.0.0.1"]), key, &[]),
            sick,
            wl("default", "unrelated", &["10.0.0.5"]),
        ],
        vec![svc(
            "default",
            "web.default.svc",
            &["10.96.0.1"],
            &[(80, 8080), (443, 0)],
        )],
        vec![],
        vec![],
    )
    .unwrap();
    let web = state.service_by_vip(ip("10.96.0.1")).unwrap().clone();

    let eps: Vec<(String, u16)> = state
        .endpoints(&web, 80)
        .into_iter()
        .map(|e| (e.workload.name.clone(), e.target_port))
        .collect();
    // The workload's own mapping wins; otherwise the service's target port.
    assert_eq!(eps, vec![("a".to_string(), 8080), ("c".to_string(), 9090)]);

    // Service target port 0 ("ask the endpoint") with no workload mapping: no endpoint.
    assert!(state.endpoints(&web, 443).is_empty());
    // Not a port of the service at all.
    assert!(state.endpoints(&web, 81).is_empty());
    // A service nobody backs.
    let lonely = svc("default", "lonely", &[], &[(80, 80)]);
    assert!(state.endpoints(&lonely, 80).is_empty());
}

#[test]
fn policies_for_selects_by_scope_exactly() {
    let policies = vec![
        policy("istio-system", "mesh-wide", Scope::Global),
        policy("default", "ns-default", Scope::Namespace),
        policy("other", "ns-other", Scope::Namespace),
        policy("default", "selects-a", Scope::WorkloadSelector),
        policy("default", "selects-b", Scope::WorkloadSelector),
        // A WorkloadSelector policy nobody names applies nowhere.
        policy("default", "selects-nobody", Scope::WorkloadSelector),
    ];
    let mut a = wl("default", "a", &["10.0.0.1"]);
    a.authorization_policies = vec![
        "default/selects-a".into(),
        "default/selects-a".into(),
        // Naming a namespace policy of another namespace does not pull it in.
        "other/ns-other".into(),
        "default/missing".into(),
    ];
    let b = wl("other", "b", &["10.0.0.2"]);
    let state = State::new(vec![a.clone(), b.clone()], vec![], policies, vec![]).unwrap();

    let keys = |w: &Workload| -> Vec<String> { state.policies_for(w).map(|p| p.key()).collect() };
    assert_eq!(
        keys(&a),
        vec![
            "istio-system/mesh-wide",
            "default/ns-default",
            "default/selects-a"
        ]
    );
    assert_eq!(keys(&b), vec!["istio-system/mesh-wide", "other/ns-other"]);
    assert_eq!(state.policies().count(), 6);
    assert!(state.policy_by_key("default/selects-b").is_some());
    // The missing reference is tolerated, and reported.
    assert_eq!(
        state.warnings(),
        &[ModelWarning::MissingPolicy {
            path: "workloads[0].authorizationPolicies[3]".into(),
            policy: "default/missing".into(),
        }]
    );
}

#[test]
fn each_validation_error_names_its_field() {
    let ok = || wl("default", "a", &["10.0.0.1"]);
    let cases: Vec<(ModelError, &str)> = vec![
        (
            err_of(vec![wl("default", "", &[])], vec![], vec![]),
            "workloads[0].name",
        ),
        (
            err_of(vec![ok(), wl("", "b", &[])], vec![], vec![]),
            "workloads[1].namespace",
        ),
        (err_of(vec![ok(), ok()], vec![], vec![]), "workloads[1].uid"),
        (
            err_of(
                vec![ok(), wl("default", "b", &["10.0.0.2", "10.0.0.1"])],
                vec![],
                vec![],
            ),
            "workloads[1].workloadIps[1]",
        ),
        (
            err_of(
                vec![Workload {
                    service_account: "a/b".into(),
                    ..ok()
                }],
                vec![],
                vec![],
            ),
            "workloads[0].serviceAccount",
        ),
        (
            err_of(
                vec![Workload {
                    trust_domain: "td with space".into(),
                    ..ok()
                }],
                vec![],
                vec![],
            ),
            "workloads[0].trustDomain",
        ),
        (
            err_of(vec![wl("Bad\0ns", "a", &[])], vec![], vec![]),
            "workloads[0].namespace",
        ),
        (
            err_of(vec![backing(ok(), "no-slash", &[])], vec![], vec![]),
            "workloads[0].services.\"no-slash\"",
        ),
        (
            err_of(
                vec![backing(ok(), "default/web", &[(80, 0)])],
                vec![],
                vec![],
            ),
            "workloads[0].services.\"default/web\".80",
        ),
        (
            err_of(vec![], vec![svc("default", "web", &[], &[(0, 80)])], vec![]),
            "services[0].ports.0",
        ),
        (
            err_of(vec![], vec![svc("default", "", &[], &[])], vec![]),
            "services[0].hostname",
        ),
        (
            err_of(
                vec![],
                vec![
                    svc("default", "web", &["10.96.0.1"], &[]),
                    svc("default", "api", &["10.96.0.2", "10.96.0.1"], &[]),
                ],
                vec![],
            ),
            "services[1].vips[1]",
        ),
        (
            err_of(
                vec![],
                vec![
                    svc("default", "web", &[], &[]),
                    svc("default", "web", &[], &[]),
                ],
                vec![],
            ),
            "services[1]",
        ),
        (
            err_of(
                vec![],
                vec![Service {
                    subject_alt_names: vec!["spiffe://td/ns/a/sa/b".into(), "not-spiffe".into()],
                    ..svc("default", "web", &[], &[])
                }],
                vec![],
            ),
            "services[0].subjectAltNames[1]",
        ),
        (
            err_of(
                vec![],
                vec![],
                vec![
                    policy("default", "p", Scope::Namespace),
                    policy("default", "p", Scope::Global),
                ],
            ),
            "policies[1]",
        ),
        (
            err_of(
                vec![],
                vec![],
                vec![policy("default", "", Scope::Namespace)],
            ),
            "policies[0].name",
        ),
    ];
    for (err, path) in cases {
        assert_eq!(err.path, path, "{err}");
        assert!(err.to_string().starts_with(&format!("{path}: ")), "{err}");
    }

    let dup_pa = State::new(
        vec![],
        vec![],
        vec![],
        vec![
            peer_auth("default", "strict"),
            peer_auth("default", "strict"),
        ],
    )
    .unwrap_err();
    assert_eq!(dup_pa.path, "peerAuthentications[1]");
}

#[test]
fn error_kinds_carry_the_details() {
    let a = wl("default", "a", &["10.0.0.1"]);
    let err = err_of(vec![a.clone(), a], vec![], vec![]);
    assert_eq!(
        err.kind,
        ModelErrorKind::DuplicateUid {
            uid: "Kubernetes//v1/Pod/default/a".into(),
            first: "workloads[0]".into()
        }
    );
    let err = err_of(
        vec![
            wl("default", "a", &["10.0.0.1"]),
            wl("default", "b", &["10.0.0.1"]),
        ],
        vec![],
        vec![],
    );
    assert!(
        matches!(&err.kind, ModelErrorKind::DuplicateIp { ip: i, network, first }
            if *i == ip("10.0.0.1") && network.is_empty() && first.starts_with("workloads[0]")),
        "{err}"
    );
}

#[test]
fn same_ip_or_vip_in_different_networks_is_fine() {
    let mut west = wl("default", "b", &["10.0.0.1"]);
    west.network = "west".into();
    let mut west_svc = svc("default", "api", &["10.96.0.1"], &[]);
    west_svc.network = "west".into();
    let state = State::new(
        vec![wl("default", "a", &["10.0.0.1"]), west],
        vec![svc("default", "web", &["10.96.0.1"], &[]), west_svc],
        vec![],
        vec![],
    )
    .unwrap();
    assert_eq!(
        state.service_by_vip(ip("10.96.0.1")).unwrap().hostname,
        "web"
    );
    assert_eq!(
        state
            .service_by_addr("west", ip("10.96.0.1"))
            .unwrap()
            .hostname,
        "api"
    );
}

fn peer_auth(ns: &str, name: &str) -> PeerAuthentication {
    PeerAuthentication {
        name: name.into(),
        namespace: ns.into(),
        mode: Some(MtlsMode::Strict),
        port_level_mtls: Default::default(),
    }
}

#[test]
fn dump_has_istio_shape() {
    let key = "default/web";
    let state = State::new(
        vec![backing(
            wl("default", "a", &["10.0.0.1"]),
            key,
            &[(80, 8080)],
        )],
        vec![svc("default", "web", &["10.96.0.1"], &[(80, 8080)])],
        vec![policy("default", "p", Scope::Namespace)],
        vec![peer_auth("default", "strict")],
    )
    .unwrap();
    let dump = state.to_dump();
    assert_eq!(dump["workloads"][0]["workloadIps"][0], "10.0.0.1");
    assert_eq!(dump["workloads"][0]["serviceAccount"], "default");
    assert_eq!(dump["workloads"][0]["protocol"], "TCP");
    assert_eq!(dump["services"][0]["vips"][0], "/10.96.0.1");
    assert_eq!(dump["services"][0]["ports"]["80"], 8080);
    let ep = &dump["services"][0]["endpoints"]["Kubernetes//v1/Pod/default/a"];
    assert_eq!(ep["port"]["80"], 8080);
    assert_eq!(ep["status"], "Healthy");
    assert_eq!(dump["policies"][0]["name"], "p");
    assert_eq!(dump["peerAuthentications"][0]["mode"], "STRICT");
    assert_eq!(dump["warnings"], serde_json::json!([]));
    assert_eq!(state.peer_authentications().len(), 1);
}

#[test]
fn network_address_parses_istio_form() {
    let a: NetworkAddress = "/10.0.0.1".parse().unwrap();
    assert_eq!((a.network.as_str(), a.address), ("", ip("10.0.0.1")));
    let a: NetworkAddress = "remote/fd00::1".parse().unwrap();
    assert_eq!((a.network.as_str(), a.address), ("remote", ip("fd00::1")));
    assert_eq!(a.to_string(), "remote/fd00::1");
    let a: NetworkAddress = "10.0.0.2".parse().unwrap();
    assert_eq!(a.network, "");
    for bad in ["", "/", "net/", "net/10.0.0", "10.0.0.1/24"] {
        assert!(bad.parse::<NetworkAddress>().is_err(), "{bad:?}");
    }
}

/// The position-based indices answer like the owned-key maps they replaced: a name used twice
/// (two clusters) gives the first in config order, a network-qualified lookup of an IP held in
/// one network only misses in another network, and a shared IP resolves per network.
#[test]
fn position_indices_keep_lookup_rules() {
    let mut east = wl("prod", "api", &["10.0.0.1"]);
    east.cluster_id = "east".into();
    let mut west = wl("prod", "api", &["10.0.0.2"]);
    west.cluster_id = "west".into();
    let mut west_shared = wl("prod", "db", &["10.0.0.3"]);
    west_shared.network = "west".into();
    let mut east_shared = wl("prod", "db-east", &["10.0.0.3"]);
    east_shared.network = "east".into();
    let state = State::new(
        vec![
            wl("a", "zz", &["10.0.0.9"]),
            east,
            west,
            west_shared,
            east_shared,
        ],
        vec![],
        vec![],
        vec![],
    )
    .unwrap();

    let api = state.workload_by_name("prod", "api").unwrap();
    assert_eq!(api.cluster_id, "east", "first in config order");
    assert!(state.workload_by_name("prod", "ap").is_none());
    assert!(state.workload_by_name("prod", "api2").is_none());
    assert!(state.workload_by_name("a", "api").is_none());
    assert_eq!(state.workload_by_name("a", "zz").unwrap().name, "zz");

    assert_eq!(
        state
            .workload_by_addr("", ip("10.0.0.2"))
            .unwrap()
            .cluster_id,
        "west"
    );
    assert!(state.workload_by_addr("east", ip("10.0.0.2")).is_none());
    // No default-network owner: the lexically first network wins the unqualified lookup.
    assert_eq!(
        state.workload_by_ip(ip("10.0.0.3")).unwrap().name,
        "db-east"
    );
    assert_eq!(
        state.workload_by_addr("west", ip("10.0.0.3")).unwrap().name,
        "db"
    );
    assert!(state.workload_by_addr("", ip("10.0.0.3")).is_none());

    let uid = "west//v1/Pod/prod/api";
    assert_eq!(
        state.workload_by_uid(uid).unwrap().workload_ips,
        vec![ip("10.0.0.2")]
    );
    assert!(state.workload_by_uid("west//v1/Pod/prod/ap").is_none());
}

/// A `State` is frozen: the per-workload lists keep no spare capacity from how they were built
/// (a `Vec` grown by pushes holds up to twice its length, once per workload of the mesh).
#[test]
fn state_lists_keep_no_spare_capacity() {
    let mut w = wl("prod", "api", &[]);
    for i in 0..5u8 {
        w.workload_ips.push(IpAddr::from([10, 0, 1, i]));
        w.authorization_policies.push(format!("prod/p{i}"));
        w.services
            .ports_mut(&format!("prod/s{i}.svc"))
            .insert(80, 8080);
    }
    assert!(w.workload_ips.capacity() > 5, "pushes leave spare capacity");
    let state = State::new(vec![w], vec![], vec![], vec![]).unwrap();
    let w = state.workloads().next().unwrap();
    assert_eq!(w.workload_ips.capacity(), 5);
    assert_eq!(w.authorization_policies.capacity(), 5);
    assert_eq!(w.services.capacity(), 5);
}
