//! Tests of the xDS client against an in-process fake ADS server over real TLS, plus the pure
//! pieces (cache, address parsing, node id, backoff).
//!
//! The fake server hands each accepted stream to the test as a [`FakeConn`]; the test reads the
//! client's requests and writes responses itself, so every step is synchronised by a message,
//! never by a sleep. Timeouts only bound a broken test.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh::authz::{Action, Authorization, PeerAuthentication, Scope};
use mesh::ca::CertificateAuthority;
use mesh::identity::Identity;
use mesh::model::{State, Workload};
use mesh::xds::proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh::xds::proto::google::value::Kind as ValueKind;
use mesh::xds::{authorization_to_proto, peer_authentication_to_proto, to_any, workload_address};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::cache::{Kind, ResourceCache};
use super::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use super::*;
use crate::readiness::Readiness;

const TD: &str = "cluster.local";
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

mod fake;
mod pure;

use fake::*;

// Resources.

fn workload(name: &str, ip: &str) -> Workload {
    let mut w = Workload {
        name: name.into(),
        namespace: "default".into(),
        node: "node-a".into(),
        workload_ips: vec![ip.parse().unwrap()],
        ..Default::default()
    };
    w.apply_defaults();
    w
}

fn workload_res(w: &Workload, version: &str) -> Resource {
    Resource {
        name: w.uid.clone(),
        version: version.into(),
        resource: Some(to_any(mesh::xds::ADDRESS_TYPE_URL, &workload_address(w))),
        ..Default::default()
    }
}

fn policy(name: &str) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: Scope::Namespace,
        action: Action::Deny,
        rules: vec![],
        dry_run: false,
    }
}

fn policy_res(p: &Authorization, version: &str) -> Resource {
    Resource {
        name: p.key(),
        version: version.into(),
        resource: Some(to_any(
            mesh::xds::AUTHORIZATION_TYPE_URL,
            &authorization_to_proto(p),
        )),
        ..Default::default()
    }
}

fn peer_auth_res(name: &str) -> Resource {
    let pa = PeerAuthentication {
        name: name.into(),
        namespace: "default".into(),
        mode: Some(mesh::authz::MtlsMode::Strict),
        port_level_mtls: Default::default(),
    };
    Resource {
        name: format!("default/{name}"),
        version: "1".into(),
        resource: Some(to_any(
            mesh::xds::PEER_AUTHENTICATION_TYPE_URL,
            &peer_authentication_to_proto(&pa),
        )),
        ..Default::default()
    }
}

/// A resource whose body does not decode as an Address.
fn garbage_res(name: &str) -> Resource {
    Resource {
        name: name.into(),
        version: "1".into(),
        resource: Some(mesh::xds::proto::google::Any {
            type_url: mesh::xds::ADDRESS_TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        }),
        ..Default::default()
    }
}

fn assert_ack(req: &DeltaDiscoveryRequest) {
    assert!(
        req.error_detail.is_none(),
        "expected an ACK, got a NACK: {:?}",
        req.error_detail
    );
}

fn nack_message(req: &DeltaDiscoveryRequest) -> String {
    req.error_detail
        .as_ref()
        .map(|s| s.message.clone())
        .expect("expected a NACK")
}

fn uids(state: &State) -> Vec<String> {
    let mut v: Vec<String> = state.workloads().map(|w| w.uid.clone()).collect();
    v.sort();
    v
}

// Stream behaviour.

#[tokio::test]
async fn subscribes_with_node_token_and_wildcard() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    assert_eq!(conn.token.as_deref(), Some("Bearer s3cret"));
    let subs = conn.subscriptions().await;
    assert_eq!(subs.len(), 3, "one subscription per type");
    for req in subs.values() {
        let node = req.node.as_ref().expect("node on the first request");
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.5~ztunnel-abcde.istio-system~istio-system.svc.cluster.local"
        );
        let meta = &node.metadata.as_ref().expect("metadata").fields;
        let get = |k: &str| match meta.get(k).and_then(|v| v.kind.clone()) {
            Some(ValueKind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(get("NAME"), "ztunnel-abcde");
        assert_eq!(get("NAMESPACE"), "istio-system");
        assert_eq!(get("INSTANCE_IPS"), "10.0.0.5");
        assert_eq!(get("NODE_NAME"), "node-a");
        // Wildcard: nothing named, nothing held yet.
        assert!(req.resource_names_subscribe.is_empty());
        assert!(req.initial_resource_versions.is_empty());
        assert!(req.error_detail.is_none());
    }
}

#[tokio::test]
async fn publishes_only_after_first_complete_push() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.subscriptions().await;
    let w = workload("a", "10.1.0.1");
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&w, "1")], &[])
            .await,
    );
    assert_ack(&conn.push(Kind::Authorization, vec![], &[]).await);
    // Workloads without their policies must not be served: nothing published yet.
    assert_eq!(h.handle.status().version, 0);
    assert_eq!(h.handle.current().workloads().count(), 0);
    assert!(!h.readiness.is_ready());

    assert_ack(
        &conn
            .push(Kind::PeerAuthentication, vec![peer_auth_res("strict")], &[])
            .await,
    );
    assert!(
        h.readiness.is_ready(),
        "first complete push releases readiness"
    );
    let st = h.handle.current();
    assert_eq!(uids(&st), vec![w.uid.clone()]);
    assert_eq!(st.peer_authentications().len(), 1);
    assert_eq!(h.handle.status().version, 1);
}

#[tokio::test]
async fn empty_initial_push_is_complete() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    assert!(h.readiness.is_ready());
    assert_eq!(h.handle.status().version, 1);
}

#[tokio::test]
async fn applies_incremental_updates_and_removals() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    let mut changes = h.handle.subscribe();
    changes.borrow_and_update();

    let a = workload("a", "10.1.0.1");
    let b = workload("b", "10.1.0.2");
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&a, "1")], &[])
            .await,
    );
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&b, "1")], &[])
            .await,
    );
    within("a state change", changes.changed()).await.unwrap();
    // Delta: the second push added b without dropping a.
    assert_eq!(
        uids(&changes.borrow_and_update()),
        vec![a.uid.clone(), b.uid.clone()]
    );

    let p = policy("deny-all");
    assert_ack(
        &conn
            .push(Kind::Authorization, vec![policy_res(&p, "1")], &[])
            .await,
    );
    assert_eq!(h.handle.current().policies().count(), 1);

    assert_ack(&conn.push(Kind::Address, vec![], &[a.uid.as_str()]).await);
    assert_ack(
        &conn
            .push(Kind::Authorization, vec![], &["default/deny-all"])
            .await,
    );
    let st = h.handle.current();
    assert_eq!(uids(&st), vec![b.uid.clone()]);
    assert_eq!(st.policies().count(), 0);
    assert_eq!(h.handle.status().last_error, None);
}

#[tokio::test]
async fn nacks_invalid_resource_and_keeps_last_good() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    let a = workload("a", "10.1.0.1");
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&a, "1")], &[])
            .await,
    );
    let before = h.handle.status().version;

    // An undecodable resource: NACKed by name; the last good config stays.
    let reply = conn
        .push(Kind::Address, vec![garbage_res("bad-one")], &[])
        .await;
    let msg = nack_message(&reply);
    assert!(msg.contains("bad-one"), "{msg}");
    assert_eq!(reply.error_detail.as_ref().unwrap().code, 3);
    assert_eq!(uids(&h.handle.current()), vec![a.uid.clone()]);
    assert_eq!(h.handle.status().version, before);
    assert!(h.handle.status().last_error.unwrap().contains("bad-one"));
    assert_eq!(h.reloads.borrow().1, 1, "one failed reload counted");

    // A workload the model refuses (no namespace) replaces nothing: its previous
    // version stays; the valid resource in the same response is still applied.
    let mut broken = a.clone();
    broken.namespace = String::new();
    let b = workload("b", "10.1.0.2");
    let mut bad = workload_res(&broken, "2");
    bad.name = a.uid.clone();
    let reply = conn
        .push(Kind::Address, vec![bad, workload_res(&b, "1")], &[])
        .await;
    assert!(nack_message(&reply).contains(&a.uid));
    let st = h.handle.current();
    assert_eq!(uids(&st), vec![a.uid.clone(), b.uid.clone()]);
    assert_eq!(st.workload_by_uid(&a.uid).unwrap().namespace, "default");

    // The next good response clears the error.
    assert_ack(&conn.push(Kind::Address, vec![], &[b.uid.as_str()]).await);
    assert_eq!(h.handle.status().last_error, None);
}

#[tokio::test]
async fn nacks_conflicting_config_until_fixed() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    let a = workload("a", "10.1.0.1");
    assert_ack(
        &conn
            .push(Kind::Address, vec![workload_res(&a, "1")], &[])
            .await,
    );

    // Each resource is fine, but two workloads cannot share an IP: NACK, keep serving a.
    let clash = workload("b", "10.1.0.1");
    let reply = conn
        .push(Kind::Address, vec![workload_res(&clash, "1")], &[])
        .await;
    assert!(nack_message(&reply).contains("resulting config is invalid"));
    assert_eq!(uids(&h.handle.current()), vec![a.uid.clone()]);

    // The server then removes a (e.g. the old pod is gone): the held b now applies.
    assert_ack(&conn.push(Kind::Address, vec![], &[a.uid.as_str()]).await);
    assert_eq!(uids(&h.handle.current()), vec![clash.uid.clone()]);
}

#[tokio::test]
async fn nacks_unknown_type() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    conn.push_raw(DeltaDiscoveryResponse {
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        nonce: "x1".into(),
        ..Default::default()
    })
    .await;
    let reply = conn.recv().await;
    assert_eq!(reply.response_nonce, "x1");
    assert!(nack_message(&reply).contains("unsupported resource type"));
}

#[tokio::test]
async fn reconnects_keeps_serving_and_resyncs() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.subscriptions().await;
    let a = workload("a", "10.1.0.1");
    let b = workload("b", "10.1.0.2");
    let p = policy("deny-all");
    conn.push(
        Kind::Address,
        vec![workload_res(&a, "v1"), workload_res(&b, "v1")],
        &[],
    )
    .await;
    conn.push(Kind::Authorization, vec![policy_res(&p, "p1")], &[])
        .await;
    conn.push(Kind::PeerAuthentication, vec![], &[]).await;
    assert!(h.readiness.is_ready());

    // The control plane goes away: the stream ends with an error.
    conn.responses
        .send(Err(tonic::Status::unavailable("control plane restarting")))
        .await
        .unwrap();
    drop(conn);

    // The client comes back on its own and says what it holds.
    let mut conn = h.accept().await;
    // Meanwhile the last config stays in force.
    assert_eq!(
        uids(&h.handle.current()),
        vec![a.uid.clone(), b.uid.clone()]
    );
    assert!(
        h.readiness.is_ready(),
        "readiness does not drop with the stream"
    );
    let subs = conn.subscriptions().await;
    let held = &subs[&Kind::Address].initial_resource_versions;
    assert_eq!(
        held,
        &BTreeMap::from([(a.uid.clone(), "v1".into()), (b.uid.clone(), "v1".into())])
    );
    assert_eq!(
        subs[&Kind::Authorization].initial_resource_versions,
        BTreeMap::from([("default/deny-all".to_string(), "p1".to_string())])
    );
    assert!(subs[&Kind::PeerAuthentication]
        .initial_resource_versions
        .is_empty());

    // The resync: only what changed while away (b gone, c new).
    let c = workload("c", "10.1.0.3");
    let version = h.handle.status().version;
    assert_ack(
        &conn
            .push(
                Kind::Address,
                vec![workload_res(&c, "v1")],
                &[b.uid.as_str()],
            )
            .await,
    );
    assert_eq!(
        uids(&h.handle.current()),
        vec![a.uid.clone(), c.uid.clone()]
    );
    assert_eq!(h.handle.status().version, version + 1);
    assert_eq!(h.handle.current().policies().count(), 1, "policy kept");
}

#[tokio::test]
async fn reconnects_after_clean_close() {
    let mut h = start(&control_plane_id()).await;
    let mut conn = h.accept().await;
    conn.initial_empty_push().await;
    drop(conn); // closes the response stream cleanly
    let mut conn = h.accept().await;
    let subs = conn.subscriptions().await;
    assert_eq!(subs.len(), 3);
}

#[tokio::test]
async fn refuses_server_with_wrong_identity() {
    // A workload certificate from another namespace must not pass as the control plane.
    let impostor = Identity::new(TD, "default", "attacker").unwrap();
    let h = start(&impostor).await;
    let ca_roots = h.roots.clone();
    let tls = tls::client_config(
        &ca_roots,
        ServerIdentity::Namespace {
            trust_domain: TD.into(),
            namespace: "istio-system".into(),
        },
    )
    .unwrap();
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::from(h.addr.ip()), tcp)
        .await
        .expect_err("impostor accepted");
    assert!(err.to_string().contains("ns/default/sa/attacker"), "{err}");
    // Nor does the client ever open a stream to it.
    let mut conns = h.conns;
    assert!(conns.try_recv().is_err());
}

#[tokio::test]
async fn exact_server_identity() {
    let h = start(&control_plane_id()).await;
    let connect = |identity: ServerIdentity| {
        let tls = tls::client_config(&h.roots, identity).unwrap();
        let addr = h.addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(tls)
                .connect(ServerName::from(addr.ip()), tcp)
                .await
                .map(|_| ())
        }
    };
    connect(ServerIdentity::Exact(control_plane_id()))
        .await
        .expect("exact identity accepted");
    let other = Identity::new(TD, "istio-system", "someone-else").unwrap();
    assert!(connect(ServerIdentity::Exact(other)).await.is_err());
}
