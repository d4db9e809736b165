//! PeerAuthentication precedence and the YAML/JSON forms of policies (Istio ztunnel's local
//! config shape, ambit's extensions, and the errors for bad input).

use super::tests::{exact, net, plain, ports, tls_a, tls_b, with_l7};
use super::*;

fn pa(
    name: &str,
    ns: &str,
    mode: Option<MtlsMode>,
    ports: &[(u16, MtlsMode)],
) -> PeerAuthentication {
    PeerAuthentication {
        name: name.into(),
        namespace: ns.into(),
        mode,
        port_level_mtls: ports.iter().copied().collect(),
    }
}

#[test]
fn peer_authentication_precedence() {
    use MtlsMode::*;
    let eff = |pas: &[PeerAuthentication], port| {
        effective_mtls_mode(Permissive, "istio-system", pas, "app", port)
    };
    assert_eq!(eff(&[], 80), Permissive);
    assert_eq!(
        effective_mtls_mode(Strict, "istio-system", &[], "app", 80),
        Strict
    );
    let mesh_strict = pa("default", "istio-system", Some(Strict), &[(80, Disable)]);
    assert_eq!(
        eff(std::slice::from_ref(&mesh_strict), 80),
        Strict,
        "mesh port-level is not inherited"
    );
    let ns_unset = pa("ns", "app", None, &[(8080, Permissive)]);
    assert_eq!(
        eff(&[mesh_strict.clone(), ns_unset.clone()], 80),
        Strict,
        "unset inherits"
    );
    assert_eq!(
        eff(&[mesh_strict.clone(), ns_unset], 8080),
        Permissive,
        "port-level wins"
    );
    let ns_perm = pa("ns", "app", Some(Permissive), &[(443, Strict)]);
    assert_eq!(eff(&[mesh_strict.clone(), ns_perm.clone()], 80), Permissive);
    assert_eq!(eff(&[ns_perm.clone(), mesh_strict.clone()], 443), Strict);
    // Another namespace's policy is irrelevant.
    let other = pa("x", "other", Some(Disable), &[]);
    assert_eq!(eff(&[other, mesh_strict.clone()], 80), Strict);
    // Two policies in one namespace: the smallest name wins whatever the order.
    let a = pa("a", "app", Some(Strict), &[]);
    let b = pa("b", "app", Some(Disable), &[]);
    assert_eq!(eff(&[b.clone(), a.clone()], 80), Strict);
    assert_eq!(eff(&[a, b], 80), Strict);
    // A workload in the root namespace gets that policy's port-level modes.
    assert_eq!(
        effective_mtls_mode(
            Permissive,
            "istio-system",
            &[mesh_strict],
            "istio-system",
            80
        ),
        Disable
    );
}

#[test]
fn strict_requires_an_identity() {
    assert_eq!(
        check_mtls(MtlsMode::Strict, &plain()),
        Err(Denied::MtlsRequired)
    );
    assert_eq!(check_mtls(MtlsMode::Strict, &tls_a()), Ok(()));
    for mode in [MtlsMode::Permissive, MtlsMode::Disable] {
        assert_eq!(check_mtls(mode, &plain()), Ok(()));
    }
}

const ISTIO_DOC: &str = r#"
policies:
- name: allow-foo
  namespace: app
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - - - namespaces: [{Exact: foo}]
      - principals: [{Prefix: "other.td/"}]
        notPrincipals: [!Suffix "/sa/evil"]
    - - destinationPorts: [8080, 9090]
        notDestinationIps: ["10.9.0.0/16"]
- name: deny-plaintext
  namespace: istio-system
  scope: Global
  action: Deny
  dryRun: true
  rules:
  - - - notPrincipals:
        - Presence: []
  - - - notNamespaces: [!Presence []]
- name: deny-sa
  namespace: app
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - serviceAccounts:
        - namespace: baz
          serviceAccount: qux
        notServiceAccounts: [{Exact: "x/y"}]
        sourceIps: ["192.168.0.0/16", "2001:db8::/32"]
        notSourceIps: ["192.168.9.9/32"]
        destinationIps: ["10.0.0.0/8"]
        notDestinationPorts: [22]
        notNamespaces: [!Prefix "kube-"]
"#;

#[derive(Debug, Deserialize)]
struct Doc {
    policies: Vec<Authorization>,
}

#[test]
fn deserializes_istio_ztunnel_local_config_policies() {
    let doc: Doc = serde_yaml::from_str(ISTIO_DOC).unwrap();
    let [allow, deny_plain, deny_sa] = doc.policies.as_slice() else {
        panic!("expected three policies: {doc:?}");
    };
    assert_eq!(allow.key(), "app/allow-foo");
    assert_eq!(
        (allow.scope, allow.action, allow.dry_run),
        (Scope::Namespace, Action::Allow, false)
    );
    assert_eq!(allow.rules.len(), 1);
    let Rule(clauses) = &allow.rules[0];
    assert_eq!(clauses.len(), 2);
    assert_eq!(clauses[0].0[0].namespaces, vec![exact("foo")]);
    assert_eq!(
        clauses[0].0[1].principals,
        vec![StringMatch::Prefix("other.td/".into())]
    );
    assert_eq!(
        clauses[0].0[1].not_principals,
        vec![StringMatch::Suffix("/sa/evil".into())]
    );
    assert_eq!(clauses[1].0[0].destination_ports, vec![8080, 9090]);
    assert_eq!(
        clauses[1].0[0].not_destination_ips,
        vec![net("10.9.0.0/16")]
    );

    assert_eq!(
        (deny_plain.scope, deny_plain.action, deny_plain.dry_run),
        (Scope::Global, Action::Deny, true)
    );
    assert_eq!(
        deny_plain.rules[0].0[0].0[0].not_principals,
        vec![StringMatch::Presence]
    );

    let m = &deny_sa.rules[0].0[0].0[0];
    assert_eq!(deny_sa.scope, Scope::WorkloadSelector);
    assert_eq!(m.service_accounts, vec![exact("baz/qux")]);
    assert_eq!(m.not_service_accounts, vec![exact("x/y")]);
    assert_eq!(
        m.source_ips,
        vec![net("192.168.0.0/16"), net("2001:db8::/32")]
    );
    assert_eq!(m.not_namespaces, vec![StringMatch::Prefix("kube-".into())]);
    assert_eq!(
        deny_plain.rules[1].0[0].0[0].not_namespaces,
        vec![StringMatch::Presence]
    );

    // And they evaluate as written.
    let d = evaluate(&doc.policies, &tls_a());
    assert_eq!(
        d.result,
        Ok(Permit {
            policy: Some("app/allow-foo".into())
        })
    );
    let d = evaluate(&doc.policies, &plain());
    assert_eq!(d.result, Err(Denied::NoAllowMatch));
    assert_eq!(
        d.dry_run_matches,
        vec!["istio-system/deny-plaintext".to_string()]
    );
    let d = evaluate(&doc.policies, &tls_b());
    assert_eq!(
        d.result,
        Err(Denied::DenyPolicy {
            policy: "app/deny-sa".into()
        })
    );
}

#[test]
fn serialized_form_round_trips_and_matches_istio() {
    let doc: Doc = serde_yaml::from_str(ISTIO_DOC).unwrap();
    for p in &doc.policies {
        let yaml = serde_yaml::to_string(p).unwrap();
        assert_eq!(
            &serde_yaml::from_str::<Authorization>(&yaml).unwrap(),
            p,
            "{yaml}"
        );
        let json = serde_json::to_string(p).unwrap();
        assert_eq!(
            &serde_json::from_str::<Authorization>(&json).unwrap(),
            p,
            "{json}"
        );
    }
    // Istio's derive writes Presence() as an empty tuple variant.
    assert_eq!(
        serde_json::to_string(&StringMatch::Presence).unwrap(),
        r#"{"Presence":[]}"#
    );
    assert_eq!(
        serde_json::to_string(&exact("a")).unwrap(),
        r#"{"Exact":"a"}"#
    );
    assert_eq!(
        serde_json::from_str::<StringMatch>(r#""Presence""#).unwrap(),
        StringMatch::Presence
    );
    assert_eq!(
        serde_json::from_str::<StringMatch>(r#"{"Presence":null}"#).unwrap(),
        StringMatch::Presence
    );
}

#[track_caller]
fn yaml_err<T: serde::de::DeserializeOwned + std::fmt::Debug>(yaml: &str, needle: &str) {
    let err = serde_yaml::from_str::<T>(yaml).expect_err(yaml).to_string();
    assert!(
        err.contains(needle),
        "error for {yaml:?} is {err:?}, expected it to mention {needle:?}"
    );
}

#[test]
fn bad_policies_are_rejected_with_a_reason() {
    yaml_err::<StringMatch>("{Regex: '.*'}", "Regex");
    yaml_err::<StringMatch>("foo", "foo");
    yaml_err::<StringMatch>("{Exact: a, Prefix: b}", "exactly one key");
    yaml_err::<StringMatch>("{Presence: [x]}", "Presence");
    yaml_err::<StringMatch>("{}", "string match");
    yaml_err::<Match>("methods: [GET]", "methods");
    yaml_err::<Match>("destinationPorts: [70000]", "70000");
    yaml_err::<Match>("sourceIps: [not-an-ip]", "invalid");
    yaml_err::<Match>("serviceAccounts: [{namespace: a}]", "serviceAccount");
    yaml_err::<Match>(
        "serviceAccounts: [{namespace: a, serviceAccount: b, x: c}]",
        "`x`",
    );
    yaml_err::<Authorization>(
        "{name: a, namespace: b, scope: Namespace, action: Audit}",
        "Audit",
    );
    yaml_err::<Authorization>(
        "{name: a, namespace: b, scope: Cluster, action: Allow}",
        "Cluster",
    );
    yaml_err::<Authorization>(
        "{name: a, namespace: b, scope: Global, action: Allow, rule: []}",
        "rule",
    );
    yaml_err::<Authorization>("{name: a, scope: Global, action: Allow}", "namespace");
}

#[test]
fn l7_fields_extension_round_trips() {
    let m: Match = serde_yaml::from_str("{destinationPorts: [80], l7Fields: [methods]}").unwrap();
    assert_eq!(m, with_l7(ports(&[80]), &["methods"]));
    assert!(serde_yaml::to_string(&m).unwrap().contains("l7Fields"));
}

#[test]
fn peer_authentication_yaml() {
    let pas: Vec<PeerAuthentication> = serde_yaml::from_str(
        r#"
- name: default
  namespace: istio-system
  mode: STRICT
- name: app
  namespace: app
  mode: UNSET
  portLevelMtls:
    8080: PERMISSIVE
    9090: UNSET
    22: DISABLE
"#,
    )
    .unwrap();
    assert_eq!(
        pas[0],
        pa("default", "istio-system", Some(MtlsMode::Strict), &[])
    );
    assert_eq!(
        pas[1],
        pa(
            "app",
            "app",
            None,
            &[(8080, MtlsMode::Permissive), (22, MtlsMode::Disable)]
        )
    );
    let back: Vec<PeerAuthentication> =
        serde_yaml::from_str(&serde_yaml::to_string(&pas).unwrap()).unwrap();
    assert_eq!(back, pas);
    yaml_err::<PeerAuthentication>("{name: a, namespace: b, mode: strict}", "strict");
    yaml_err::<PeerAuthentication>(
        "{name: a, namespace: b, portLevelMtls: {http: STRICT}}",
        "http",
    );
}
