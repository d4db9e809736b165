//! PeerAuthentication: every combination of mesh, namespace and workload level, with
//! port-level modes, judged by what the destination ztunnel then decides for a plaintext
//! connection (and that authenticated ones are never refused).

use mesh::authz::{MtlsMode, PeerAuthentication};

use super::peer::{CONVERTED_NAMESPACE_PA, CONVERTED_NAMESPACE_POLICY, CONVERTED_PREFIX};
use super::test_util::{allowed, namespace, pod, problems, run_with, state};
use super::*;

/// A PeerAuthentication; `selector` is `app=<selector>` when non-empty, `ports` is YAML
/// (`{8080: {mode: PERMISSIVE}}`), `created` a year.
fn pa(ns: &str, name: &str, selector: &str, mode: &str, ports: &str, created: &str) -> String {
    let mut s = format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
    );
    if !created.is_empty() {
        s.push_str(&format!(
            "  creationTimestamp: \"{created}-01-01T00:00:00Z\"\n"
        ));
    }
    s.push_str("spec:\n");
    if !selector.is_empty() {
        s.push_str(&format!(
            "  selector: {{matchLabels: {{app: {selector}}}}}\n"
        ));
    }
    if !mode.is_empty() {
        s.push_str(&format!("  mtls: {{mode: {mode}}}\n"));
    }
    if !ports.is_empty() {
        s.push_str(&format!("  portLevelMtls: {ports}\n"));
    }
    s
}

fn mesh_pods() -> String {
    [
        namespace("istio-system", false),
        namespace("shop", true),
        namespace("legacy-service", true),
        pod("shop", "web", "10.0.0.1", "{app: web}"),
        pod("shop", "db", "10.0.0.2", "{app: db}"),
        pod("legacy-service", "old", "10.0.0.3", "{app: old}"),
    ]
    .concat()
}

fn cfg(default_mtls: MtlsMode) -> TranslateConfig {
    TranslateConfig {
        default_mtls,
        ..TranslateConfig::default()
    }
}

struct Case {
    name: &'static str,
    pas: Vec<String>,
    default: MtlsMode,
    /// (namespace, pod, port, plaintext allowed)
    expect: &'static [(&'static str, &'static str, u16, bool)],
}

fn check(case: &Case) -> Translation {
    let yaml = format!("{}{}", mesh_pods(), case.pas.concat());
    let t = run_with(&yaml, &cfg(case.default));
    let s = state(&t);
    for &(ns, name, port, plaintext) in case.expect {
        assert_eq!(
            allowed(&s, case.default, (ns, name), port, None),
            plaintext,
            "{}: plaintext to {ns}/{name}:{port}\n{:#?}",
            case.name,
            t.state_inputs
        );
        assert!(
            allowed(&s, case.default, (ns, name), port, Some(("x", "y"))),
            "{}: mTLS to {ns}/{name}:{port} must always pass",
            case.name
        );
    }
    t
}

#[test]
fn mesh_and_namespace_modes_travel_as_peer_authentications() {
    // The seed document's example (shared/seeds/002): STRICT mesh-wide, one namespace
    // PERMISSIVE.
    let seed = r#"---
# PeerAuthentication — enforce mTLS across the entire mesh.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT

---
# Per-namespace override (e.g., allow plaintext for legacy service migration).
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: legacy-exception
  namespace: legacy-service
spec:
  mtls:
    mode: PERMISSIVE
"#;
    let t = check(&Case {
        name: "seed",
        pas: vec![seed.to_string()],
        default: MtlsMode::Permissive,
        expect: &[
            ("shop", "web", 80, false),
            ("legacy-service", "old", 80, true),
        ],
    });
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert!(t.state_inputs.policies.is_empty());
    assert_eq!(
        t.state_inputs.peer_authentications,
        [
            PeerAuthentication {
                name: "default".into(),
                namespace: "istio-system".into(),
                mode: Some(MtlsMode::Strict),
                port_level_mtls: Default::default(),
            },
            PeerAuthentication {
                name: "legacy-exception".into(),
                namespace: "legacy-service".into(),
                mode: Some(MtlsMode::Permissive),
                port_level_mtls: Default::default(),
            },
        ]
    );
}

#[test]
fn workload_overrides_and_port_level_modes() {
    use MtlsMode::{Permissive, Strict};
    let cases = [
        Case {
            name: "namespace STRICT, workload PERMISSIVE loosens",
            pas: vec![
                pa("shop", "ns", "", "STRICT", "", ""),
                pa("shop", "web", "web", "PERMISSIVE", "", ""),
            ],
            default: Permissive,
            expect: &[
                ("shop", "web", 80, true),
                ("shop", "db", 80, false),
                ("legacy-service", "old", 80, true),
            ],
        },
        Case {
            name: "mesh STRICT, workload DISABLE loosens like PERMISSIVE",
            pas: vec![
                pa("istio-system", "mesh", "", "STRICT", "", ""),
                pa("shop", "web", "web", "DISABLE", "", ""),
            ],
            default: Permissive,
            expect: &[
                ("shop", "web", 80, true),
                ("shop", "db", 80, false),
                ("legacy-service", "old", 80, false),
            ],
        },
        Case {
            name: "namespace PERMISSIVE, workload STRICT tightens",
            pas: vec![
                pa("shop", "ns", "", "PERMISSIVE", "", ""),
                pa("shop", "db", "db", "STRICT", "", ""),
            ],
            default: Strict,
            expect: &[
                ("shop", "web", 80, true),
                ("shop", "db", 80, false),
                ("legacy-service", "old", 80, false),
            ],
        },
        Case {
            name: "workload STRICT with a PERMISSIVE port",
            pas: vec![
                pa("istio-system", "mesh", "", "PERMISSIVE", "", ""),
                pa(
                    "shop",
                    "web",
                    "web",
                    "STRICT",
                    "{8080: {mode: PERMISSIVE}}",
                    "",
                ),
            ],
            default: Strict,
            expect: &[
                ("shop", "web", 8080, true),
                ("shop", "web", 9090, false),
                ("shop", "db", 9090, true),
            ],
        },
        Case {
            name: "workload PERMISSIVE with a STRICT port under a STRICT mesh",
            pas: vec![
                pa("istio-system", "mesh", "", "STRICT", "", ""),
                pa(
                    "shop",
                    "web",
                    "web",
                    "PERMISSIVE",
                    "{8080: {mode: STRICT}}",
                    "",
                ),
            ],
            default: Permissive,
            expect: &[
                ("shop", "web", 8080, false),
                ("shop", "web", 9090, true),
                ("shop", "db", 9090, false),
            ],
        },
        Case {
            name: "workload UNSET inherits the mesh's STRICT except its PERMISSIVE port",
            pas: vec![
                pa("istio-system", "mesh", "", "STRICT", "", ""),
                pa(
                    "shop",
                    "web",
                    "web",
                    "UNSET",
                    "{8080: {mode: PERMISSIVE}, 8081: {mode: UNSET}}",
                    "",
                ),
            ],
            default: Permissive,
            expect: &[
                ("shop", "web", 8080, true),
                ("shop", "web", 8081, false),
                ("shop", "db", 8080, false),
            ],
        },
        Case {
            name:
                "workload without mode inherits the namespace's PERMISSIVE except its STRICT port",
            pas: vec![
                pa("istio-system", "mesh", "", "STRICT", "", ""),
                pa("shop", "ns", "", "PERMISSIVE", "", ""),
                pa("shop", "web", "web", "", "{8080: {mode: STRICT}}", ""),
            ],
            default: Permissive,
            expect: &[
                ("shop", "web", 8080, false),
                ("shop", "web", 9090, true),
                ("shop", "db", 8080, true),
            ],
        },
        Case {
            name: "namespace UNSET falls through to the mesh mode",
            pas: vec![
                pa("istio-system", "mesh", "", "PERMISSIVE", "", ""),
                pa("shop", "ns", "", "UNSET", "", ""),
            ],
            default: Strict,
            expect: &[("shop", "web", 80, true)],
        },
        Case {
            name: "nothing set anywhere: the configured default decides",
            pas: vec![pa("shop", "db", "db", "STRICT", "", "")],
            default: Permissive,
            expect: &[("shop", "web", 80, true), ("shop", "db", 80, false)],
        },
        Case {
            name: "nothing set anywhere, STRICT default",
            pas: vec![pa("shop", "web", "web", "PERMISSIVE", "", "")],
            default: Strict,
            expect: &[
                ("shop", "web", 80, true),
                ("shop", "db", 80, false),
                ("legacy-service", "old", 80, false),
            ],
        },
        Case {
            name: "a namespace policy's port-level mode (ambit extension)",
            pas: vec![pa(
                "shop",
                "ns",
                "",
                "STRICT",
                "{8080: {mode: PERMISSIVE}}",
                "",
            )],
            default: Permissive,
            expect: &[("shop", "web", 8080, true), ("shop", "web", 9090, false)],
        },
        Case {
            name: "a workload mode replaces the namespace's port-level modes",
            pas: vec![
                pa("shop", "ns", "", "PERMISSIVE", "{8080: {mode: STRICT}}", ""),
                pa("shop", "web", "web", "PERMISSIVE", "", ""),
            ],
            default: Permissive,
            expect: &[
                ("shop", "web", 8080, true),
                ("shop", "db", 8080, false),
                ("shop", "db", 80, true),
            ],
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn converted_namespaces_use_reserved_names() {
    let t = check(&Case {
        name: "converted",
        pas: vec![
            pa("shop", "ns", "", "STRICT", "", ""),
            pa(
                "shop",
                "web",
                "web",
                "STRICT",
                "{8080: {mode: PERMISSIVE}}",
                "",
            ),
        ],
        default: MtlsMode::Permissive,
        expect: &[("shop", "web", 8080, true), ("shop", "db", 8080, false)],
    });
    let pas: Vec<_> = t
        .state_inputs
        .peer_authentications
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(pas, [format!("shop/{CONVERTED_NAMESPACE_PA}")]);
    let by_name = |n: &str| {
        t.state_inputs
            .workloads
            .iter()
            .find(|w| w.name == n)
            .unwrap()
            .authorization_policies
            .clone()
    };
    assert_eq!(by_name("web"), [format!("shop/{CONVERTED_PREFIX}web")]);
    assert_eq!(
        by_name("db"),
        [format!("shop/{CONVERTED_NAMESPACE_POLICY}")]
    );
    assert!(by_name("old").is_empty());
}

#[test]
fn the_oldest_policy_wins_and_the_others_are_reported() {
    let t = check(&Case {
        name: "oldest namespace policy",
        pas: vec![
            pa("shop", "a-new", "", "PERMISSIVE", "", "2024"),
            pa("shop", "b-old", "", "STRICT", "", "2020"),
        ],
        default: MtlsMode::Permissive,
        expect: &[("shop", "web", 80, false)],
    });
    let [w] = problems(&t, Severity::Warning, "").try_into().unwrap();
    assert_eq!(w.object.name, "a-new");

    check(&Case {
        name: "oldest selector policy",
        pas: vec![
            pa("shop", "a-new", "web", "STRICT", "", "2024"),
            pa("shop", "b-old", "web", "PERMISSIVE", "", "2020"),
        ],
        default: MtlsMode::Permissive,
        expect: &[("shop", "web", 80, true)],
    });
}

#[test]
fn invalid_and_ineffective_policies_are_reported() {
    let cases = [
        (
            pa("shop", "p", "", "STRIKT", "", ""),
            Severity::Error,
            "spec.mtls.mode",
        ),
        (
            pa("shop", "p", "web", "STRICT", "{http: {mode: STRICT}}", ""),
            Severity::Error,
            "spec.portLevelMtls.http",
        ),
        (
            pa("shop", "p", "web", "STRICT", "{0: {mode: STRICT}}", ""),
            Severity::Error,
            "spec.portLevelMtls.0",
        ),
        (
            pa("shop", "p", "web", "", "{80: {mode: strict}}", ""),
            Severity::Error,
            "spec.portLevelMtls.80.mode",
        ),
        (
            pa("istio-system", "p", "web", "STRICT", "", ""),
            Severity::Warning,
            "spec.selector",
        ),
    ];
    for (yaml, severity, field) in cases {
        let t = run_with(
            &format!("{}{yaml}", mesh_pods()),
            &cfg(MtlsMode::Permissive),
        );
        assert_eq!(
            problems(&t, severity, field).len(),
            1,
            "{yaml}: {:?}",
            t.problems
        );
        assert!(t.state_inputs.peer_authentications.is_empty(), "{yaml}");
        assert!(t.state_inputs.policies.is_empty(), "{yaml}");
        let s = state(&t);
        assert!(
            allowed(&s, MtlsMode::Permissive, ("shop", "web"), 80, None),
            "{yaml}"
        );
    }
    let t = run_with(
        &pa("shop", "ns", "", "STRICT", "{80: {mode: PERMISSIVE}}", ""),
        &cfg(MtlsMode::Strict),
    );
    assert_eq!(
        problems(&t, Severity::Warning, "spec.portLevelMtls").len(),
        1
    );
    assert_eq!(
        t.state_inputs.peer_authentications[0].port_level_mtls.len(),
        1
    );
}
