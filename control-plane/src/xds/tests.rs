//! The protocol, without sockets: snapshots and subscriber state.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh::authz::{Action, Authorization, MtlsMode, PeerAuthentication, Scope};
use mesh::model::{Service, State, Workload};
use mesh::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use mesh::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, PEER_AUTHENTICATION_TYPE_URL};

use super::snapshot::{Snapshot, TYPE_URLS};
use super::subscriber::{Outcome, Subscriber};

pub(super) fn pod(name: &str, ip: &str) -> Workload {
    Workload {
        name: name.into(),
        namespace: "shop".into(),
        node: "node-a".into(),
        workload_ips: vec![ip.parse().unwrap()],
        ..Workload::default()
    }
}

pub(super) fn uid(name: &str) -> String {
    format!("Kubernetes//v1/Pod/shop/{name}")
}

pub(super) fn policy(name: &str) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "shop".into(),
        scope: Scope::Namespace,
        action: Action::Deny,
        rules: vec![],
        dry_run: false,
    }
}

pub(super) fn state(pods: Vec<Workload>, policies: Vec<Authorization>) -> Arc<State> {
    let svc = Service {
        name: "web".into(),
        namespace: "shop".into(),
        hostname: "web.shop.svc.cluster.local".into(),
        vips: vec!["10.96.0.1".parse().unwrap()],
        ports: BTreeMap::from([(80, 8080)]),
        ..Service::default()
    };
    let pa = PeerAuthentication {
        name: "default".into(),
        namespace: "istio-system".into(),
        mode: Some(MtlsMode::Strict),
        port_level_mtls: BTreeMap::new(),
    };
    Arc::new(State::new(pods, vec![svc], policies, vec![pa]).unwrap())
}

fn snap(generation: u64, s: &State) -> Snapshot {
    Snapshot::from_state(generation, s)
}

fn wildcard(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node {
            id: "ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local".into(),
            ..Node::default()
        }),
        type_url: type_url.into(),
        ..DeltaDiscoveryRequest::default()
    }
}

fn served(t: &str) -> bool {
    TYPE_URLS.contains(&t)
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

struct Nonces(u64);

impl Nonces {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

#[test]
fn snapshot_names_resources_as_istio_and_versions_by_content() {
    let s1 = snap(
        1,
        &state(vec![pod("a", "10.0.0.2"), pod("b", "10.0.0.3")], vec![]),
    );
    let addresses = s1.resources(ADDRESS_TYPE_URL).unwrap();
    assert_eq!(
        addresses.keys().collect::<Vec<_>>(),
        [&uid("a"), &uid("b"), "shop/web.shop.svc.cluster.local"]
    );
    let pas = s1.resources(PEER_AUTHENTICATION_TYPE_URL).unwrap();
    assert_eq!(pas.keys().collect::<Vec<_>>(), ["istio-system/default"]);

    let s2 = snap(
        2,
        &state(vec![pod("a", "10.0.0.2"), pod("b", "10.0.0.9")], vec![]),
    );
    let a2 = s2.resources(ADDRESS_TYPE_URL).unwrap();
    assert_eq!(a2[&uid("a")].version, addresses[&uid("a")].version);
    assert_ne!(a2[&uid("b")].version, addresses[&uid("b")].version);
    assert!(s2.resources("type.googleapis.com/other").is_none());
}

#[test]
fn wildcard_gets_everything_then_only_changes() {
    let mut n = Nonces(0);
    let mut sub = Subscriber::new();
    let s1 = snap(
        1,
        &state(vec![pod("a", "10.0.0.2"), pod("b", "10.0.0.3")], vec![]),
    );
    assert_eq!(sub.on_request(&wildcard(ADDRESS_TYPE_URL), served), None);
    assert!(sub.node_id.starts_with("ztunnel~"));
    let first = sub.response(ADDRESS_TYPE_URL, &s1, || n.next()).unwrap();
    assert_eq!(first.resources.len(), 3);
    assert_eq!(first.type_url, ADDRESS_TYPE_URL);
    assert!(!first.nonce.is_empty());
    // Nothing new: no response.
    assert!(sub.response(ADDRESS_TYPE_URL, &s1, || n.next()).is_none());

    let s2 = snap(
        2,
        &state(vec![pod("a", "10.0.0.2"), pod("b", "10.0.0.9")], vec![]),
    );
    let second = sub.response(ADDRESS_TYPE_URL, &s2, || n.next()).unwrap();
    assert_eq!(names(&second), [uid("b")]);
    assert!(second.removed_resources.is_empty());

    let s3 = snap(3, &state(vec![pod("b", "10.0.0.9")], vec![]));
    let third = sub.response(ADDRESS_TYPE_URL, &s3, || n.next()).unwrap();
    assert!(third.resources.is_empty());
    assert_eq!(third.removed_resources, [uid("a")]);
    // Unsubscribed types get nothing.
    assert!(sub
        .response(AUTHORIZATION_TYPE_URL, &s3, || n.next())
        .is_none());
}

#[test]
fn an_empty_initial_state_is_still_answered() {
    let mut sub = Subscriber::new();
    let s = snap(1, &state(vec![], vec![]));
    sub.on_request(&wildcard(AUTHORIZATION_TYPE_URL), served);
    let r = sub.response(AUTHORIZATION_TYPE_URL, &s, || "1".into());
    let r = r.expect("the client must learn its initial state is complete");
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
}

#[test]
fn a_reconnecting_client_gets_only_what_changed_while_it_was_away() {
    let old = snap(
        1,
        &state(vec![pod("a", "10.0.0.2"), pod("b", "10.0.0.3")], vec![]),
    );
    let have: BTreeMap<String, String> = old
        .resources(ADDRESS_TYPE_URL)
        .unwrap()
        .iter()
        .map(|(name, e)| (name.clone(), e.version.clone()))
        .collect();
    let now = snap(
        2,
        &state(vec![pod("b", "10.0.0.9"), pod("c", "10.0.0.4")], vec![]),
    );
    let mut sub = Subscriber::new();
    let req = DeltaDiscoveryRequest {
        initial_resource_versions: have,
        ..wildcard(ADDRESS_TYPE_URL)
    };
    sub.on_request(&req, served);
    let r = sub.response(ADDRESS_TYPE_URL, &now, || "1".into()).unwrap();
    assert_eq!(names(&r), [uid("b"), uid("c")]);
    assert_eq!(r.removed_resources, [uid("a")]);
}

#[test]
fn explicit_subscriptions_get_only_their_names_and_missing_ones_are_reported() {
    let s = snap(
        1,
        &state(vec![pod("a", "10.0.0.2"), pod("b", "10.0.0.3")], vec![]),
    );
    let mut sub = Subscriber::new();
    let req = DeltaDiscoveryRequest {
        resource_names_subscribe: vec![uid("a"), uid("nope")],
        ..wildcard(ADDRESS_TYPE_URL)
    };
    sub.on_request(&req, served);
    let r = sub.response(ADDRESS_TYPE_URL, &s, || "1".into()).unwrap();
    assert_eq!(names(&r), [uid("a")]);
    assert_eq!(r.removed_resources, [uid("nope")]);

    // Re-subscribing is answered even though nothing changed.
    let again = DeltaDiscoveryRequest {
        resource_names_subscribe: vec![uid("a")],
        ..DeltaDiscoveryRequest::default()
    };
    let again = DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        ..again
    };
    sub.on_request(&again, served);
    let r = sub.response(ADDRESS_TYPE_URL, &s, || "2".into()).unwrap();
    assert_eq!(names(&r), [uid("a")]);

    // Unsubscribed: changes to it are no longer sent, nor is its removal.
    let bye = DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_unsubscribe: vec![uid("a")],
        ..DeltaDiscoveryRequest::default()
    };
    sub.on_request(&bye, served);
    let s2 = snap(2, &state(vec![pod("b", "10.0.0.3")], vec![]));
    assert!(sub.response(ADDRESS_TYPE_URL, &s2, || "3".into()).is_none());
}

#[test]
fn acks_and_nacks_are_reported_and_nacked_config_is_not_resent() {
    let mut sub = Subscriber::new();
    let s1 = snap(1, &state(vec![pod("a", "10.0.0.2")], vec![policy("p1")]));
    sub.on_request(&wildcard(AUTHORIZATION_TYPE_URL), served);
    let r1 = sub
        .response(AUTHORIZATION_TYPE_URL, &s1, || "n1".into())
        .unwrap();
    let ack = DeltaDiscoveryRequest {
        type_url: AUTHORIZATION_TYPE_URL.into(),
        response_nonce: r1.nonce.clone(),
        ..DeltaDiscoveryRequest::default()
    };
    assert_eq!(
        sub.on_request(&ack, served),
        Some(Outcome::Ack {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            nonce: "n1".into()
        })
    );
    // An ACK changes no subscription: nothing to answer.
    assert!(sub
        .response(AUTHORIZATION_TYPE_URL, &s1, || "x".into())
        .is_none());

    let s2 = snap(
        2,
        &state(vec![pod("a", "10.0.0.2")], vec![policy("p1"), policy("p2")]),
    );
    let r2 = sub
        .response(AUTHORIZATION_TYPE_URL, &s2, || "n2".into())
        .unwrap();
    assert_eq!(names(&r2), ["shop/p2"]);
    let nack = DeltaDiscoveryRequest {
        type_url: AUTHORIZATION_TYPE_URL.into(),
        response_nonce: "n2".into(),
        error_detail: Some(Status {
            code: 3,
            message: "bad policy".into(),
            details: vec![],
        }),
        ..DeltaDiscoveryRequest::default()
    };
    assert_eq!(
        sub.on_request(&nack, served),
        Some(Outcome::Nack {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            nonce: "n2".into(),
            reason: "bad policy".into(),
            resources: vec!["shop/p2".into()],
        })
    );
    // Not retried: the same snapshot yields nothing...
    assert!(sub
        .response(AUTHORIZATION_TYPE_URL, &s2, || "x".into())
        .is_none());
    // ...and the next change carries only what changed.
    let s3 = snap(
        3,
        &state(
            vec![pod("a", "10.0.0.2")],
            vec![policy("p1"), policy("p2"), policy("p3")],
        ),
    );
    let r3 = sub
        .response(AUTHORIZATION_TYPE_URL, &s3, || "n3".into())
        .unwrap();
    assert_eq!(names(&r3), ["shop/p3"]);
}

#[test]
fn unknown_types_are_reported_and_not_answered() {
    let mut sub = Subscriber::new();
    let s = snap(1, &state(vec![], vec![]));
    let req = wildcard("type.googleapis.com/envoy.config.cluster.v3.Cluster");
    assert!(matches!(
        sub.on_request(&req, served),
        Some(Outcome::UnknownType { .. })
    ));
    assert!(sub.response(&req.type_url, &s, || "1".into()).is_none());
}

#[test]
fn a_client_that_never_acks_does_not_grow_server_memory() {
    let mut sub = Subscriber::new();
    sub.on_request(&wildcard(ADDRESS_TYPE_URL), served);
    for i in 0..200u32 {
        let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        let s = snap(u64::from(i), &state(vec![pod("a", &ip)], vec![]));
        sub.response(ADDRESS_TYPE_URL, &s, || i.to_string());
    }
    // The oldest nonces are forgotten: a late NACK for one is still reported, without names.
    let nack = DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        response_nonce: "0".into(),
        error_detail: Some(Status::default()),
        ..DeltaDiscoveryRequest::default()
    };
    assert!(matches!(
        sub.on_request(&nack, served),
        Some(Outcome::Nack { resources, .. }) if resources.is_empty()
    ));
}
