//! The pure pieces: cache semantics, address parsing, backoff, node metadata.

use super::*;

#[test]
fn cache_resend_of_same_version_is_no_change() {
    let mut cache = ResourceCache::default();
    let a = workload("a", "10.1.0.1");
    let resp = |v: &str| DeltaDiscoveryResponse {
        type_url: Kind::Address.type_url().into(),
        resources: vec![workload_res(&a, v)],
        nonce: "n".into(),
        ..Default::default()
    };
    assert!(cache.apply(&resp("1")).unwrap().changed);
    assert!(!cache.apply(&resp("1")).unwrap().changed);
    assert!(cache.apply(&resp("2")).unwrap().changed);
    assert!(!cache.complete());
    assert_eq!(
        cache.versions(Kind::Address),
        BTreeMap::from([(a.uid.clone(), "2".to_string())])
    );
    // Removing an unknown name is ignored, as the protocol says.
    let removal = DeltaDiscoveryResponse {
        type_url: Kind::Address.type_url().into(),
        removed_resources: vec!["nope".into()],
        ..Default::default()
    };
    assert!(!cache.apply(&removal).unwrap().changed);
}

#[test]
fn cache_rejects_resource_of_wrong_type_or_without_body() {
    let mut cache = ResourceCache::default();
    let p = policy("x");
    let mut wrong = policy_res(&p, "1");
    wrong.name = "w".into();
    let resp = DeltaDiscoveryResponse {
        type_url: Kind::Address.type_url().into(),
        resources: vec![
            wrong,
            Resource {
                name: "empty".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let applied = cache.apply(&resp).unwrap();
    assert!(!applied.changed);
    let names: Vec<&str> = applied.rejected.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["w", "empty"]);
    let msg = applied.nack_message().unwrap();
    assert!(msg.contains("istio.security.Authorization"), "{msg}");
    assert!(msg.contains("no body"), "{msg}");
}

#[test]
fn xds_addresses() {
    let ok = |s: &str, host: &str, port: u16| {
        assert_eq!(
            parse_xds_address(s).unwrap(),
            XdsAddress {
                host: host.into(),
                port
            },
            "{s}"
        )
    };
    ok(
        "istiod.istio-system.svc:15012",
        "istiod.istio-system.svc",
        15012,
    );
    ok(
        "https://ambit-cp.istio-system.svc:15012",
        "ambit-cp.istio-system.svc",
        15012,
    );
    ok("10.0.0.1:15012", "10.0.0.1", 15012);
    ok("[fd00::1]:15012", "fd00::1", 15012);
    assert_eq!(
        parse_xds_address("[fd00::1]:15012").unwrap().authority(),
        "[fd00::1]:15012"
    );
    for bad in [
        "http://cp:15012",
        "cp",
        "cp:0",
        "cp:99999",
        ":15012",
        "fd00::1:15012",
        "grpc://cp:1",
    ] {
        assert!(parse_xds_address(bad).is_err(), "{bad}");
    }
}

#[test]
fn backoff_grows_and_is_capped() {
    let b = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };
    for _ in 0..50 {
        let d1 = b.delay(1);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let d3 = b.delay(3);
        assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
        let big = b.delay(1000);
        assert!(big >= Duration::from_secs(1) && big <= Duration::from_secs(2));
    }
}

#[test]
fn node_metadata() {
    let n = node();
    assert_eq!(
        n.metadata(),
        vec![
            ("NAME", "ztunnel-abcde".to_string()),
            ("NAMESPACE", "istio-system".to_string()),
            ("INSTANCE_IPS", "10.0.0.5".to_string()),
            ("NODE_NAME", "node-a".to_string()),
        ]
    );
    let ip: IpAddr = "fd00::5".parse().unwrap();
    let v6 = NodeInfo {
        instance_ip: ip,
        ..n
    };
    assert!(v6.node_id().starts_with("ztunnel~fd00::5~"));
}
