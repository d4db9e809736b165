use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use prost::Message;

use super::proto::{ambit as pa, security as ps, workload as pw};
use super::*;
use crate::authz::{
    Action, Authorization, Clause, ConnInfo, Match, MtlsMode, PeerAuthentication, Rule, Scope,
    StringMatch,
};
use crate::identity::Identity;
use crate::model::{HealthStatus, Protocol, Service, Workload};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn workload() -> Workload {
    Workload {
        uid: "Kubernetes//Pod/shop/web-1".into(),
        name: "web-1".into(),
        namespace: "shop".into(),
        service_account: "web".into(),
        trust_domain: "cluster.local".into(),
        node: "node-a".into(),
        network: "net1".into(),
        cluster_id: "Kubernetes".into(),
        canonical_name: "web".into(),
        canonical_revision: "v1".into(),
        workload_type: "deployment".into(),
        workload_name: "web".into(),
        workload_ips: vec![ip("10.0.0.5"), ip("fd00::5")],
        protocol: Protocol::Hbone,
        status: HealthStatus::Unhealthy,
        authorization_policies: vec!["shop/only-frontend".into()],
        services: BTreeMap::from([(
            "shop/web.shop.svc.cluster.local".to_string(),
            BTreeMap::from([(80, 8080), (443, 8443)]),
        )])
        .into(),
    }
}

fn service() -> Service {
    Service {
        name: "web".into(),
        namespace: "shop".into(),
        hostname: "web.shop.svc.cluster.local".into(),
        vips: vec![ip("10.96.0.10"), ip("fd00:96::10")],
        ports: BTreeMap::from([(80, 8080), (9090, 0)]),
        subject_alt_names: vec!["spiffe://cluster.local/ns/shop/sa/web".into()],
        network: "net1".into(),
    }
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn policy(action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: "p".into(),
        namespace: "shop".into(),
        scope: Scope::WorkloadSelector,
        action,
        rules,
        dry_run: true,
    }
}

fn full_match() -> Match {
    Match {
        namespaces: vec![exact("shop"), StringMatch::Presence],
        not_namespaces: vec![StringMatch::Prefix("kube-".into())],
        service_accounts: vec![exact("shop/web")],
        not_service_accounts: vec![exact("shop/bad")],
        principals: vec![StringMatch::Suffix("/sa/web".into())],
        not_principals: vec![exact("cluster.local/ns/x/sa/y")],
        source_ips: vec!["10.0.0.0/8".parse().unwrap()],
        not_source_ips: vec!["10.1.0.0/16".parse().unwrap()],
        destination_ips: vec!["fd00::/64".parse().unwrap()],
        not_destination_ips: vec!["192.168.1.1/32".parse().unwrap()],
        destination_ports: vec![80, 443],
        not_destination_ports: vec![22],
        l7_fields: vec![],
    }
}

#[test]
fn workload_round_trips_through_the_wire() {
    let w = workload();
    let bytes = workload_address(&w).encode_to_vec();
    let decoded = pw::Address::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        proto_to_address(&decoded).unwrap(),
        AddressResource::Workload(w)
    );
}

#[test]
fn service_round_trips_through_the_wire() {
    let s = service();
    let bytes = service_address(&s).encode_to_vec();
    let decoded = pw::Address::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        proto_to_address(&decoded).unwrap(),
        AddressResource::Service(s)
    );
}

#[test]
fn workload_types_round_trip_and_unknown_ones_become_deployment() {
    for t in ["deployment", "cronjob", "pod", "job"] {
        let w = Workload {
            workload_type: t.into(),
            ..workload()
        };
        assert_eq!(
            proto_to_workload(&workload_to_proto(&w))
                .unwrap()
                .workload_type,
            t
        );
    }
    let w = Workload {
        workload_type: "statefulset".into(),
        ..workload()
    };
    assert_eq!(workload_to_proto(&w).workload_type, 0);
}

/// Field numbers are Istio's: a peer built from Istio's .proto reads what we write.
#[test]
fn field_numbers_match_istio() {
    // uid is field 20 (tag byte 0xa2 0x01: (20 << 3) | 2, varint).
    let w = pw::Workload {
        uid: "u".into(),
        ..Default::default()
    };
    assert_eq!(w.encode_to_vec(), [0xa2, 0x01, 1, b'u']);
    // services is field 22; tunnel_protocol 5.
    let w = pw::Workload {
        tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
        ..Default::default()
    };
    assert_eq!(w.encode_to_vec(), [5 << 3, 1]);
    // Authorization.dry_run is 6, Match.service_accounts 11.
    let a = ps::Authorization {
        dry_run: true,
        ..Default::default()
    };
    assert_eq!(a.encode_to_vec(), [6 << 3, 1]);
    let m = ps::Match {
        service_accounts: vec![ps::ServiceAccountMatch::default()],
        ..Default::default()
    };
    assert_eq!(m.encode_to_vec(), [(11 << 3) | 2, 0]);
}

#[test]
fn authorization_round_trips_through_the_wire() {
    let a = policy(
        Action::Deny,
        vec![
            Rule(vec![Clause(vec![full_match()]), Clause(vec![])]),
            Rule(vec![]),
        ],
    );
    let bytes = to_any(AUTHORIZATION_TYPE_URL, &authorization_to_proto(&a));
    let decoded: ps::Authorization = from_any(AUTHORIZATION_TYPE_URL, &bytes).unwrap();
    assert_eq!(proto_to_authorization(&decoded).unwrap(), a);
}

#[test]
fn every_scope_and_action_round_trips() {
    for scope in [Scope::Global, Scope::Namespace, Scope::WorkloadSelector] {
        for action in [Action::Allow, Action::Deny] {
            let a = Authorization {
                scope,
                dry_run: false,
                ..policy(action, vec![Rule(vec![Clause(vec![full_match()])])])
            };
            assert_eq!(proto_to_authorization(&authorization_to_proto(&a)), Ok(a));
        }
    }
}

fn conn(src: &str, sa: &str, port: u16) -> ConnInfo {
    ConnInfo {
        src_identity: Some(Identity::new("cluster.local", src, sa).unwrap()),
        src_ip: ip("10.2.0.1"),
        dst_ip: ip("10.0.0.5"),
        dst_port: port,
    }
}

#[test]
fn allow_rules_with_l7_fields_are_not_sent_and_evaluate_the_same() {
    let l7 = Match {
        namespaces: vec![exact("shop")],
        l7_fields: vec!["methods".into()],
        ..Match::default()
    };
    let plain = Match {
        destination_ports: vec![9000],
        ..Match::default()
    };
    let a = Authorization {
        dry_run: false,
        ..policy(
            Action::Allow,
            vec![
                Rule(vec![Clause(vec![l7])]),
                Rule(vec![Clause(vec![plain])]),
            ],
        )
    };
    let back = proto_to_authorization(&authorization_to_proto(&a)).unwrap();
    assert_eq!(back.rules.len(), 1, "only the L4 rule is sent");
    for c in [conn("shop", "web", 80), conn("shop", "web", 9000)] {
        assert_eq!(a.matches(&c), back.matches(&c), "{c:?}");
    }
}

#[test]
fn deny_matches_drop_l7_fields_but_keep_their_l4_part() {
    let m = Match {
        namespaces: vec![exact("shop")],
        l7_fields: vec!["paths".into()],
        ..Match::default()
    };
    let a = policy(Action::Deny, vec![Rule(vec![Clause(vec![m])])]);
    let back = proto_to_authorization(&authorization_to_proto(&a)).unwrap();
    let sent = &back.rules[0].0[0].0[0];
    assert!(sent.l7_fields.is_empty());
    assert_eq!(sent.namespaces, [exact("shop")]);
    for c in [conn("shop", "web", 80), conn("other", "web", 80)] {
        assert_eq!(a.matches(&c), back.matches(&c), "{c:?}");
    }
}

#[test]
fn inexpressible_service_accounts_deny_more_never_less() {
    let prefix = StringMatch::Prefix("shop/".into());
    // ALLOW: the rule is left out, so nothing it would have allowed is allowed.
    let allow = policy(
        Action::Allow,
        vec![Rule(vec![Clause(vec![Match {
            service_accounts: vec![prefix.clone()],
            ..Match::default()
        }])])],
    );
    assert!(authorization_to_proto(&allow).rules.is_empty());
    // DENY, positive: the list stops constraining (a partial list would deny less).
    let deny = policy(
        Action::Deny,
        vec![Rule(vec![Clause(vec![Match {
            service_accounts: vec![exact("a/b"), prefix.clone()],
            destination_ports: vec![80],
            ..Match::default()
        }])])],
    );
    let back = proto_to_authorization(&authorization_to_proto(&deny)).unwrap();
    let sent = &back.rules[0].0[0].0[0];
    assert!(sent.service_accounts.is_empty());
    assert_eq!(sent.destination_ports, [80]);
    // DENY, negated: the entry is dropped, the others stay.
    let deny = policy(
        Action::Deny,
        vec![Rule(vec![Clause(vec![Match {
            not_service_accounts: vec![exact("a/b"), prefix],
            ..Match::default()
        }])])],
    );
    let sent = authorization_to_proto(&deny).rules[0].clauses[0].matches[0].clone();
    assert_eq!(sent.not_service_accounts.len(), 1);
    assert_eq!(sent.not_service_accounts[0].namespace, "a");
    assert_eq!(sent.not_service_accounts[0].service_account, "b");
}

#[test]
fn peer_authentication_round_trips_and_unset_inherits() {
    let p = PeerAuthentication {
        name: "default".into(),
        namespace: "istio-system".into(),
        mode: Some(MtlsMode::Strict),
        port_level_mtls: BTreeMap::from([(8080, MtlsMode::Permissive), (9090, MtlsMode::Disable)]),
    };
    let any = to_any(
        PEER_AUTHENTICATION_TYPE_URL,
        &peer_authentication_to_proto(&p),
    );
    let decoded: pa::PeerAuthentication = from_any(PEER_AUTHENTICATION_TYPE_URL, &any).unwrap();
    assert_eq!(proto_to_peer_authentication(&decoded), Ok(p));

    let wire = pa::PeerAuthentication {
        mode: pa::MtlsMode::Unset as i32,
        port_level_mtls: BTreeMap::from([(80, pa::MtlsMode::Unset as i32)]),
        ..Default::default()
    };
    let back = proto_to_peer_authentication(&wire).unwrap();
    assert_eq!(back.mode, None);
    assert!(back.port_level_mtls.is_empty());
}

#[test]
fn bad_wire_values_are_errors_naming_the_field() {
    let mut w = workload_to_proto(&workload());
    w.addresses.push(vec![1, 2, 3]);
    assert_eq!(
        proto_to_workload(&w),
        Err(XdsError::BadIp {
            field: "workload.addresses[2]".into(),
            len: 3
        })
    );

    let mut w = workload_to_proto(&workload());
    w.status = 7;
    assert!(matches!(
        proto_to_workload(&w),
        Err(XdsError::UnknownEnum { field, value: 7 }) if field == "workload.status"
    ));

    let mut s = service_to_proto(&service());
    s.ports.push(pw::Port {
        service_port: 70000,
        target_port: 1,
    });
    assert_eq!(
        proto_to_service(&s),
        Err(XdsError::PortOutOfRange {
            field: "service.ports[2].service_port".into(),
            value: 70000
        })
    );

    let mut s = service_to_proto(&service());
    s.ports.push(s.ports[0]);
    assert!(matches!(
        proto_to_service(&s),
        Err(XdsError::DuplicatePort { port: 80, .. })
    ));

    let mut s = service_to_proto(&service());
    s.addresses[1].network = "net2".into();
    assert!(matches!(
        proto_to_service(&s),
        Err(XdsError::MixedNetworks { .. })
    ));

    assert!(matches!(
        proto_to_address(&pw::Address { r#type: None }),
        Err(XdsError::Missing { .. })
    ));

    let mut a = authorization_to_proto(&policy(
        Action::Deny,
        vec![Rule(vec![Clause(vec![full_match()])])],
    ));
    a.rules[0].clauses[0].matches[0].source_ips[0].length = 40;
    assert!(matches!(
        proto_to_authorization(&a),
        Err(XdsError::BadPrefix { field, length: 40, .. })
            if field == "authorization.rules[0].clauses[0].matches[0].source_ips[0].length"
    ));

    let mut a = authorization_to_proto(&policy(Action::Deny, vec![]));
    a.rules.push(ps::Rule {
        clauses: vec![ps::Clause {
            matches: vec![ps::Match {
                principals: vec![ps::StringMatch { match_type: None }],
                ..Default::default()
            }],
        }],
    });
    assert!(matches!(
        proto_to_authorization(&a),
        Err(XdsError::Missing { .. })
    ));

    let wire = pa::PeerAuthentication {
        port_level_mtls: BTreeMap::from([(65536, pa::MtlsMode::Strict as i32)]),
        ..Default::default()
    };
    assert!(matches!(
        proto_to_peer_authentication(&wire),
        Err(XdsError::PortOutOfRange { value: 65536, .. })
    ));
}

#[test]
fn any_checks_its_type_and_reports_garbage() {
    let any = to_any(ADDRESS_TYPE_URL, &workload_address(&workload()));
    assert!(matches!(
        from_any::<ps::Authorization>(AUTHORIZATION_TYPE_URL, &any),
        Err(XdsError::WrongType { .. })
    ));
    let garbage = super::proto::google::Any {
        type_url: ADDRESS_TYPE_URL.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    assert!(matches!(
        from_any::<pw::Address>(ADDRESS_TYPE_URL, &garbage),
        Err(XdsError::Decode { .. })
    ));
}

/// Equal resources encode to equal bytes (maps are ordered), so a hash of the bytes is a
/// usable resource version.
#[test]
fn encoding_is_deterministic() {
    let mut w = workload();
    for i in 0..20u16 {
        w.services
            .insert(format!("ns/svc-{i}"), BTreeMap::from([(i + 1, i + 2)]));
    }
    let first = workload_to_proto(&w).encode_to_vec();
    for _ in 0..5 {
        assert_eq!(workload_to_proto(&w.clone()).encode_to_vec(), first);
    }
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

proptest! {
    #[test]
    fn any_workload_round_trips(
        uid in ".{0,20}",
        ips in proptest::collection::vec(arb_ip(), 0..4),
        hbone in any::<bool>(),
        healthy in any::<bool>(),
        kind in prop::sample::select(vec!["deployment", "cronjob", "pod", "job"]),
        services in proptest::collection::btree_map(
            "[a-z]{1,5}/[a-z.]{1,10}",
            proptest::collection::btree_map(any::<u16>(), any::<u16>(), 0..4),
            0..4,
        ),
    ) {
        let w = Workload {
            uid,
            workload_ips: ips,
            protocol: if hbone { Protocol::Hbone } else { Protocol::Tcp },
            status: if healthy { HealthStatus::Healthy } else { HealthStatus::Unhealthy },
            workload_type: kind.to_string(),
            services: services.into(),
            ..workload()
        };
        let bytes = workload_to_proto(&w).encode_to_vec();
        let back = proto_to_workload(&pw::Workload::decode(bytes.as_slice()).unwrap()).unwrap();
        prop_assert_eq!(back, w);
    }

    /// Decoding arbitrary bytes never panics: it yields a model value or an error.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(a) = pw::Address::decode(bytes.as_slice()) {
            let _ = proto_to_address(&a);
        }
        if let Ok(a) = ps::Authorization::decode(bytes.as_slice()) {
            let _ = proto_to_authorization(&a);
        }
        if let Ok(p) = pa::PeerAuthentication::decode(bytes.as_slice()) {
            let _ = proto_to_peer_authentication(&p);
        }
    }
}
