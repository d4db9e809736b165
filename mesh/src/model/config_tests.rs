//! The local config file: Istio's formats load, the indices built from them answer, every
//! error names its field, and no input panics the parser.

use std::net::IpAddr;

use proptest::prelude::*;

use super::local_config::{load, parse, parse_bytes, ConfigError};
use super::*;
use crate::authz::{MtlsMode, Scope};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Equivalent of Istio ztunnel's original `examples/localhost.yaml`: the legacy form (a bare
/// list of workloads) with the old singular `workloadIp`.
const LEGACY_LOCALHOST: &str = r#"
# Two workloads on localhost: one reached over HBONE, one over plain TCP.
- name: local
  namespace: default
  serviceAccount: default
  workloadIp: "127.0.0.1"
  protocol: HBONE
  node: local
- name: local-tcp
  namespace: default
  serviceAccount: default
  workloadIp: "127.0.0.2"
  protocol: TCP
  node: local
"#;

/// The current `examples/localhost.yaml` shape: the mapping form with services and a policy,
/// network-qualified VIPs, Istio's triple-nested rules, and fields ambit ignores.
const LOCALHOST: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
  network: ""
  networkMode: Standard        # Istio field ambit does not use yet
  capacity: 1                  # likewise
  services:
    "default/example.com":
      80: 8080
    "default/example2.com":
      80: 8080
- uid: cluster1//v1/Pod/default/local-tcp
  name: local-tcp
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.2"]
  protocol: TCP
  node: local
  network: ""
  services:
    "default/example.com":
      80: 8080
    "default/example2.com":
      80: 8080
policies:
  - action: Allow
    rules:
    - - - notDestinationPorts:
          - 9999
    name: deny-9999
    namespace: default
    scope: Namespace
services:
- name: local
  namespace: default
  hostname: example.com
  vips:
    - /127.10.0.1
  ports:
    80: 8080
  subjectAltNames:
   - spiffe://cluster.local/ns/default/sa/local
- name: remote
  namespace: default
  hostname: example2.com
  vips:
    - remote/127.10.0.2
  ports:
    80: 8080
"#;

#[test]
fn legacy_list_form_loads() {
    let state = parse(LEGACY_LOCALHOST).unwrap().into_state().unwrap();
    let local = state.workload_by_ip(ip("127.0.0.1")).unwrap();
    assert_eq!(local.name, "local");
    assert_eq!(local.protocol, Protocol::Hbone);
    assert_eq!(local.node, "local");
    assert_eq!(local.uid, "Kubernetes//v1/Pod/default/local");
    assert_eq!(
        local.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/default"
    );
    let tcp = state.workload_by_name("default", "local-tcp").unwrap();
    assert_eq!(tcp.protocol, Protocol::Tcp);
    assert_eq!(tcp.workload_ips, vec![ip("127.0.0.2")]);
    assert!(state.warnings().is_empty());
}

#[test]
fn istio_mapping_form_loads_and_indexes() {
    let config = parse(LOCALHOST).unwrap();
    assert_eq!(config.workloads.len(), 2);
    assert_eq!(config.policies.len(), 1);
    let state = config.into_state().unwrap();

    let example = state.service_by_vip(ip("127.10.0.1")).unwrap().clone();
    assert_eq!(example.key(), "default/example.com");
    assert_eq!(
        example.subject_alt_names,
        vec!["spiffe://cluster.local/ns/default/sa/local"]
    );
    let remote = state.service_by_addr("remote", ip("127.10.0.2")).unwrap();
    assert_eq!(remote.network, "remote");
    // Not in the default network, but the only one with that VIP.
    assert_eq!(
        state.service_by_vip(ip("127.10.0.2")).unwrap().hostname,
        "example2.com"
    );

    let eps: Vec<(String, u16)> = state
        .endpoints(&example, 80)
        .iter()
        .map(|e| (e.workload.uid.clone(), e.target_port))
        .collect();
    assert_eq!(
        eps,
        vec![
            ("cluster1//v1/Pod/default/local".to_string(), 8080),
            ("cluster1//v1/Pod/default/local-tcp".to_string(), 8080),
        ]
    );
    let local = state
        .workload_by_uid("cluster1//v1/Pod/default/local")
        .unwrap();
    let applied: Vec<String> = state.policies_for(local).map(|p| p.key()).collect();
    assert_eq!(applied, vec!["default/deny-9999"]);
}

#[test]
fn full_config_with_all_sections_loads() {
    let yaml = r#"
workloads:
- name: productpage
  namespace: bookinfo
  serviceAccount: bookinfo-productpage
  trustDomain: example.org
  clusterId: east
  workloadIps: ["10.1.0.5", "fd00::5"]
  protocol: HBONE
  node: node-1
  canonicalName: productpage
  canonicalRevision: v1
  workloadName: productpage-v1
  workloadType: deployment
  authorizationPolicies: [bookinfo/productpage-viewer]
  services:
    "bookinfo/productpage.bookinfo.svc.cluster.local":
      9080: 9080
- name: reviews
  namespace: bookinfo
  workloadIps: ["10.1.0.6"]
  status: Unhealthy
  services:
    "bookinfo/productpage.bookinfo.svc.cluster.local": {}
services:
- name: productpage
  namespace: bookinfo
  hostname: productpage.bookinfo.svc.cluster.local
  vips: ["/10.96.1.1"]
  ports: {9080: 9080}
policies:
- name: productpage-viewer
  namespace: bookinfo
  scope: WorkloadSelector
  action: Allow
  rules:
  - - - principals: [{Exact: "spiffe://example.org/ns/bookinfo/sa/gateway"}]
- name: mesh-deny
  namespace: istio-system
  scope: Global
  action: Deny
  rules:
  - - - destinationPorts: [6666]
peerAuthentications:
- name: strict
  namespace: bookinfo
  mode: STRICT
  portLevelMtls:
    9080: PERMISSIVE
"#;
    let state = parse(yaml).unwrap().into_state().unwrap();
    let pp = state.workload_by_ip(ip("fd00::5")).unwrap();
    assert_eq!(pp.uid, "east//v1/Pod/bookinfo/productpage");
    assert_eq!(
        pp.identity().to_string(),
        "spiffe://example.org/ns/bookinfo/sa/bookinfo-productpage"
    );
    assert_eq!(pp.canonical_revision, "v1");
    assert_eq!(pp.workload_type, "deployment");
    let keys: Vec<String> = state.policies_for(pp).map(|p| p.key()).collect();
    assert_eq!(
        keys,
        vec!["bookinfo/productpage-viewer", "istio-system/mesh-deny"]
    );
    let selected = state.policy_by_key("bookinfo/productpage-viewer").unwrap();
    assert_eq!(selected.scope, Scope::WorkloadSelector);

    let reviews = state.workload_by_name("bookinfo", "reviews").unwrap();
    assert_eq!(reviews.status, HealthStatus::Unhealthy);
    assert!(state
        .policies_for(reviews)
        .all(|p| p.scope == Scope::Global));

    let svc = state.service_by_vip(ip("10.96.1.1")).unwrap();
    let eps = state.endpoints(svc, 9080);
    assert_eq!(eps.len(), 1, "the unhealthy backend is left out");
    assert_eq!(eps[0].workload.name, "productpage");

    let pa = &state.peer_authentications()[0];
    assert_eq!(pa.mode, Some(MtlsMode::Strict));
    assert_eq!(pa.port_level_mtls.get(&9080), Some(&MtlsMode::Permissive));
}

/// Parses `yaml` expecting an error and returns (path, display).
fn failure(yaml: &str) -> (Option<String>, String) {
    let err = parse(yaml).expect_err("must be rejected");
    (err.path().map(str::to_string), err.to_string())
}

#[test]
fn field_errors_name_the_path() {
    let (path, msg) = failure(
        "workloads:\n- {name: a, namespace: d, workloadIps: [10.0.0.1]}\n- {name: b, namespace: d, workloadIps: [10.0.0.300]}\n",
    );
    assert_eq!(path.as_deref(), Some("workloads[1].workloadIps[0]"));
    assert!(
        msg.starts_with("workloads[1].workloadIps[0]: invalid IP address syntax"),
        "{msg}"
    );
    assert!(msg.contains("line 3"), "{msg}");

    let (path, msg) = failure("- {name: a, namespace: d, workloadIp: nope}\n");
    assert_eq!(path.as_deref(), Some("workloads[0].workloadIp"), "{msg}");

    let (path, msg) = failure("- {name: a, namespace: d, protocol: QUIC}\n");
    assert_eq!(path.as_deref(), Some("workloads[0].protocol"));
    // The path appears once: serde_yaml's own copy of it (spelt `.[0].protocol`) is dropped.
    assert!(
        msg.starts_with("workloads[0].protocol: unknown variant `QUIC`"),
        "{msg}"
    );
    assert_eq!(msg.matches("protocol:").count(), 1, "{msg}");

    let (path, _) =
        failure("services:\n- {name: s, namespace: d, hostname: h, vips: [net/300.1.1.1]}\n");
    assert_eq!(path.as_deref(), Some("services[0].vips[0]"));

    let (path, _) =
        failure("services:\n- {name: s, namespace: d, hostname: h, ports: {80: 70000}}\n");
    assert_eq!(path.as_deref(), Some("services[0].ports.80"));

    let (path, msg) = failure("workloads: {name: a}\n");
    assert_eq!(path.as_deref(), Some("workloads"), "{msg}");

    let (path, _) =
        failure("policies:\n- {name: p, namespace: d, scope: Cluster, action: Allow}\n");
    assert_eq!(path.as_deref(), Some("policies[0].scope"));

    let (path, _) = failure("peerAuthentications:\n- {name: p, namespace: d, mode: SOMETIMES}\n");
    assert_eq!(path.as_deref(), Some("peerAuthentications[0].mode"));
}

#[test]
fn model_errors_name_the_path_too() {
    let cases = [
        ("- {name: '', namespace: d}\n", "workloads[0].name"),
        ("- {name: a}\n", "workloads[0].namespace"),
        (
            "- {name: a, namespace: d, uid: x}\n- {name: b, namespace: d, uid: x}\n",
            "workloads[1].uid",
        ),
        (
            "- {name: a, namespace: d, workloadIps: [10.0.0.1]}\n- {name: b, namespace: d, workloadIp: 10.0.0.1}\n",
            "workloads[1].workloadIps[0]",
        ),
        (
            "- {name: a, namespace: d, serviceAccount: 'x/y'}\n",
            "workloads[0].serviceAccount",
        ),
        (
            "services:\n- {name: s, namespace: d, hostname: h, ports: {0: 80}}\n",
            "services[0].ports.0",
        ),
        (
            "services:\n- {name: s, namespace: d, hostname: h, vips: [/10.0.0.1]}\n- {name: t, namespace: d, hostname: i, vips: [10.0.0.1]}\n",
            "services[1].vips[0]",
        ),
    ];
    for (yaml, path) in cases {
        let err = parse(yaml).expect_err(yaml);
        assert!(matches!(err, ConfigError::Model(_)), "{err}");
        assert_eq!(err.path(), Some(path), "{err}");
        assert!(err.to_string().starts_with(path), "{err}");
    }
}

#[test]
fn identity_errors_show_the_value_not_a_made_up_identity() {
    let err = parse("- {name: a, namespace: d, serviceAccount: 'x/y'}\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "workloads[0].serviceAccount: \"x/y\" contains '/', so it cannot be part of a SPIFFE identity"
    );
    let err = parse("- {name: a, namespace: d, trustDomain: 'a b'}\n").unwrap_err();
    assert_eq!(err.path(), Some("workloads[0].trustDomain"));
    assert!(err.to_string().contains("character outside"), "{err}");
}

#[test]
fn legacy_workload_ip_merges_with_workload_ips() {
    let config = parse(
        "- {name: a, namespace: d, workloadIp: 10.0.0.1, workloadIps: [10.0.0.2, 10.0.0.1]}\n",
    )
    .unwrap();
    assert_eq!(
        config.workloads[0].workload_ips,
        vec![ip("10.0.0.2"), ip("10.0.0.1")]
    );
    let config =
        parse("- {name: a, namespace: d, workloadIp: 10.0.0.1, workloadIps: [10.0.0.2]}\n")
            .unwrap();
    assert_eq!(
        config.workloads[0].workload_ips,
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
}

#[test]
fn a_service_spanning_networks_is_rejected_not_half_read() {
    let (path, msg) = failure(
        "services:\n- {name: s, namespace: d, hostname: h, vips: [a/10.0.0.1, b/10.0.0.2]}\n",
    );
    assert_eq!(path.as_deref(), Some("services[0]"));
    assert!(msg.contains("one network per service"), "{msg}");
}

#[test]
fn missing_policy_is_a_warning() {
    let config = parse("- {name: a, namespace: d, authorizationPolicies: [d/nope]}\n").unwrap();
    let warnings = config.validate().unwrap();
    assert_eq!(
        warnings,
        vec![ModelWarning::MissingPolicy {
            path: "workloads[0].authorizationPolicies[0]".into(),
            policy: "d/nope".into()
        }]
    );
    assert_eq!(config.into_state().unwrap().warnings(), &warnings[..]);
}

#[test]
fn not_a_config_at_all() {
    assert!(matches!(
        parse_bytes(b"workloads: []\n\xff\xfe"),
        Err(ConfigError::NotUtf8 { offset: 14 })
    ));
    assert!(matches!(
        parse("workloads: [\n"),
        Err(ConfigError::Syntax { line: Some(_), .. })
    ));
    assert!(matches!(
        parse("key: [unclosed"),
        Err(ConfigError::Syntax { .. })
    ));
    assert!(matches!(
        parse("just a string"),
        Err(ConfigError::Shape { found: "a string" })
    ));
    assert!(matches!(parse("42"), Err(ConfigError::Shape { .. })));
    assert!(matches!(
        parse("a: 1\n---\nb: 2\n"),
        Err(ConfigError::Syntax { .. })
    ));
    // An empty file is an empty config.
    let empty = parse("# nothing yet\n").unwrap().into_state().unwrap();
    assert_eq!(empty.workloads().count(), 0);
}

#[test]
fn load_reads_a_file() {
    let dir = std::env::temp_dir().join(format!(
        "ambit-model-load-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("localhost.yaml");
    std::fs::write(&file, LOCALHOST).unwrap();
    let state = load(&file).unwrap();
    assert_eq!(state.workloads().count(), 2);

    let missing = dir.join("missing.yaml");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Fragments that steer random input towards the interesting parts of the parser.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("workloads:".to_string()),
        Just("services:".to_string()),
        Just("policies:".to_string()),
        Just("peerAuthentications:".to_string()),
        Just("- ".to_string()),
        Just("  ".to_string()),
        Just("\n".to_string()),
        Just("name: a".to_string()),
        Just("namespace: d".to_string()),
        Just("workloadIps: [10.0.0.1]".to_string()),
        Just("workloadIp: ::1".to_string()),
        Just("vips: [/10.0.0.1]".to_string()),
        Just("ports: {0: 80}".to_string()),
        Just("protocol: HBONE".to_string()),
        Just("rules: [[[]]]".to_string()),
        Just("&a [*a]".to_string()),
        Just("<<: *a".to_string()),
        Just("{".to_string()),
        Just("]".to_string()),
        Just("!!binary".to_string()),
        "[ -~]{0,8}",
    ];
    prop::collection::vec(token, 0..24).prop_map(|t| t.concat())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_bytes(&bytes);
    }

    #[test]
    fn yaml_like_input_never_panics_and_errors_are_printable(s in yamlish()) {
        match parse(&s) {
            Ok(config) => { let _ = config.into_state().map(|st| st.to_dump()); }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
