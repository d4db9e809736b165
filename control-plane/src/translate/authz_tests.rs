//! AuthorizationPolicy → Authorization: scopes, selectors, each L4 field, L7 fields, actions,
//! targetRefs and invalid values; plus end-to-end decisions through the evaluator.

use ipnet::IpNet;
use mesh::authz::{Action, Authorization, Clause, Match, MtlsMode, Rule, Scope, StringMatch};

use super::test_util::{allowed, namespace, pod, problems, run, state};
use super::*;

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

fn only_policy(t: &Translation) -> &Authorization {
    let [p] = t.state_inputs.policies.as_slice() else {
        panic!(
            "expected one policy: {:?} {:?}",
            t.state_inputs.policies, t.problems
        )
    };
    p
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.to_string())
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The seed document's example (shared/seeds/002), verbatim.
const SEED_PAYMENT_POLICY: &str = r#"
# Only allow order-service to call payment-service.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: payment-service-access
  namespace: payment-prod
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: payment-service
  rules:
    - from:
        - source:
            principals:
              - "cluster.local/ns/order-prod/sa/order-service"
      to:
        - operation:
            methods: ["POST"]
            paths: ["/v1/payments", "/v1/payments/*/refund"]
    - from:
        - source:
            principals:
              - "cluster.local/ns/admin-prod/sa/admin-service"
      to:
        - operation:
            methods: ["GET"]
            paths: ["/v1/payments/*"]
"#;

#[test]
fn seed_payment_policy_is_fail_safe_at_l4() {
    let yaml = format!(
        "{}{}{}{}{}",
        namespace("payment-prod", true),
        pod(
            "payment-prod",
            "payment",
            "10.0.0.1",
            "{app.kubernetes.io/name: payment-service}"
        ),
        pod("payment-prod", "other", "10.0.0.2", "{app: other}"),
        "---",
        SEED_PAYMENT_POLICY,
    );
    let t = run(&yaml);
    let p = only_policy(&t);
    assert_eq!(p.scope, Scope::WorkloadSelector);
    assert_eq!(p.action, Action::Allow);
    // Istio's clause order: to, then from.
    assert_eq!(
        p.rules[0],
        Rule(vec![
            Clause(vec![Match {
                l7_fields: vec!["methods".into(), "paths".into()],
                ..Match::default()
            }]),
            Clause(vec![Match {
                principals: vec![exact("cluster.local/ns/order-prod/sa/order-service")],
                ..Match::default()
            }]),
        ])
    );
    // One warning per rule, naming the HTTP fields and the consequence.
    for field in ["spec.rules[0]", "spec.rules[1]"] {
        let [w] = problems(&t, Severity::Warning, field).try_into().unwrap();
        assert!(w.message.contains("methods, paths"), "{w}");
        assert!(w.message.contains("ALLOW"), "{w}");
    }
    let ws = &t.state_inputs.workloads;
    assert_eq!(
        ws[0].authorization_policies,
        ["payment-prod/payment-service-access"]
    );
    assert!(ws[1].authorization_policies.is_empty());

    // At L4 the HTTP-only rules never match: even order-service is refused (more restrictive
    // than written, never less); the unselected pod is unaffected.
    let s = state(&t);
    let order = Some(("order-prod", "order-service"));
    assert!(!allowed(
        &s,
        MtlsMode::Strict,
        ("payment-prod", "payment"),
        8080,
        order
    ));
    assert!(allowed(
        &s,
        MtlsMode::Strict,
        ("payment-prod", "other"),
        8080,
        order
    ));
}

#[test]
fn scope_follows_namespace_and_selector() {
    let cases = [
        ("istio-system", "", Scope::Global),
        ("shop", "", Scope::Namespace),
        (
            "shop",
            "  selector: {matchLabels: {app: web}}\n",
            Scope::WorkloadSelector,
        ),
        // An empty selector selects everything: the same as none.
        ("shop", "  selector: {matchLabels: {}}\n", Scope::Namespace),
        (
            "istio-system",
            "  selector: {matchLabels: {app: web}}\n",
            Scope::WorkloadSelector,
        ),
    ];
    for (ns, selector, scope) in cases {
        let t = run(&policy(ns, "p", &format!("{selector}  rules: [{{}}]\n")));
        assert_eq!(only_policy(&t).scope, scope, "{ns} {selector:?}");
    }
}

#[test]
fn a_root_namespace_selector_selects_workloads_of_every_namespace() {
    let yaml = format!(
        "{}{}{}{}",
        pod("a", "web-a", "10.0.0.1", "{app: web}"),
        pod("b", "web-b", "10.0.0.2", "{app: web}"),
        policy(
            "istio-system",
            "mesh-web",
            "  selector: {matchLabels: {app: web}}\n"
        ),
        policy("a", "only-a", "  selector: {matchLabels: {app: web}}\n"),
    );
    let t = run(&yaml);
    let keys: Vec<_> = t
        .state_inputs
        .workloads
        .iter()
        .map(|w| w.authorization_policies.clone())
        .collect();
    assert_eq!(
        keys,
        [
            vec!["a/only-a".to_string(), "istio-system/mesh-web".to_string()],
            vec!["istio-system/mesh-web".to_string()],
        ]
    );
}

#[test]
fn every_l4_field_becomes_a_match() {
    let spec = r#"  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/a/sa/x", "*/sa/admin"]
        notPrincipals: ["cluster.local/ns/a/*"]
        namespaces: [a, "*"]
        notNamespaces: [kube-system]
        serviceAccounts: [b/builder, local]
        notServiceAccounts: [c/bad]
        ipBlocks: [10.0.0.0/8, 192.168.1.7, "10.1.2.3/16"]
        notIpBlocks: ["fd00::/8"]
    to:
    - operation: {ports: ["8080", 9090], notPorts: ["22"]}
    when:
    - {key: source.ip, values: [10.0.0.1], notValues: [10.0.0.2]}
    - {key: source.namespace, values: [a]}
    - {key: source.principal, notValues: ["*"]}
    - {key: destination.ip, values: [10.96.0.0/12]}
    - {key: destination.port, values: ["443"], notValues: ["444"]}
"#;
    let t = run(&policy("shop", "all-fields", spec));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let p = only_policy(&t);
    assert_eq!(p.action, Action::Deny);
    let want = Rule(vec![
        Clause(vec![Match {
            destination_ports: vec![8080, 9090],
            not_destination_ports: vec![22],
            ..Match::default()
        }]),
        Clause(vec![Match {
            principals: vec![
                exact("cluster.local/ns/a/sa/x"),
                StringMatch::Suffix("/sa/admin".into()),
            ],
            not_principals: vec![StringMatch::Prefix("cluster.local/ns/a/".into())],
            namespaces: vec![exact("a"), StringMatch::Presence],
            not_namespaces: vec![exact("kube-system")],
            // A bare service account is in the policy's namespace.
            service_accounts: vec![exact("b/builder"), exact("shop/local")],
            not_service_accounts: vec![exact("c/bad")],
            // Host bits are cleared, bare addresses are single hosts.
            source_ips: vec![net("10.0.0.0/8"), net("192.168.1.7/32"), net("10.1.0.0/16")],
            not_source_ips: vec![net("fd00::/8")],
            ..Match::default()
        }]),
        Clause(vec![Match {
            source_ips: vec![net("10.0.0.1/32")],
            not_source_ips: vec![net("10.0.0.2/32")],
            ..Match::default()
        }]),
        Clause(vec![Match {
            namespaces: vec![exact("a")],
            ..Match::default()
        }]),
        Clause(vec![Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        }]),
        Clause(vec![Match {
            destination_ips: vec![net("10.96.0.0/12")],
            ..Match::default()
        }]),
        Clause(vec![Match {
            destination_ports: vec![443],
            not_destination_ports: vec![444],
            ..Match::default()
        }]),
    ]);
    assert_eq!(p.rules, [want]);
}

#[test]
fn l7_fields_are_carried_with_a_warning_and_deny_keeps_its_l4_part() {
    let spec = r#"  action: DENY
  rules:
  - from: [{source: {requestPrincipals: ["*"], notRemoteIpBlocks: [1.2.3.4], namespaces: [evil]}}]
    to: [{operation: {hosts: [x], notMethods: [GET], ports: ["80"], notPaths: [/a]}}]
    when: [{key: "request.headers[x-user]", values: [bob]}]
"#;
    let t = run(&policy("shop", "l7", spec));
    let p = only_policy(&t);
    let clauses = &p.rules[0].0;
    assert_eq!(
        clauses[0].0[0].l7_fields,
        ["hosts", "notMethods", "notPaths"]
    );
    assert_eq!(clauses[0].0[0].destination_ports, [80]);
    assert_eq!(
        clauses[1].0[0].l7_fields,
        ["requestPrincipals", "notRemoteIpBlocks"]
    );
    assert_eq!(clauses[1].0[0].namespaces, [exact("evil")]);
    assert_eq!(clauses[2].0[0].l7_fields, ["when:request.headers[x-user]"]);
    let [w] = problems(&t, Severity::Warning, "spec.rules[0]")
        .try_into()
        .unwrap();
    assert!(w.message.contains("DENY"), "{w}");
    assert!(w.message.contains("when:request.headers[x-user]"), "{w}");

    // Enforced without the HTTP parts: namespace `evil` on port 80 is denied whatever its
    // request would have said; others are not.
    let yaml = format!(
        "{}{}",
        pod("shop", "web", "10.0.0.1", "{}"),
        policy("shop", "l7", spec)
    );
    let s = state(&run(&yaml));
    assert!(!allowed(
        &s,
        MtlsMode::Strict,
        ("shop", "web"),
        80,
        Some(("evil", "x"))
    ));
    assert!(allowed(
        &s,
        MtlsMode::Strict,
        ("shop", "web"),
        81,
        Some(("evil", "x"))
    ));
    assert!(allowed(
        &s,
        MtlsMode::Strict,
        ("shop", "web"),
        80,
        Some(("good", "x"))
    ));
}

#[test]
fn target_refs_custom_audit_and_unknown_actions_are_left_out() {
    let cases = [
        (
            "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n",
            Severity::Warning,
            "spec.targetRefs",
        ),
        (
            "  targetRef: {kind: Service, name: web}\n",
            Severity::Warning,
            "spec.targetRef",
        ),
        (
            "  action: CUSTOM\n  provider: {name: ext-authz}\n",
            Severity::Error,
            "spec.action",
        ),
        ("  action: AUDIT\n", Severity::Error, "spec.action"),
        ("  action: ALOW\n", Severity::Error, "spec.action"),
    ];
    for (spec, severity, field) in cases {
        let t = run(&policy("shop", "p", spec));
        assert!(t.state_inputs.policies.is_empty(), "{spec}");
        assert_eq!(
            problems(&t, severity, field).len(),
            1,
            "{spec}: {:?}",
            t.problems
        );
    }
    let t = run(&policy(
        "shop",
        "wp",
        "  targetRefs: [{kind: Gateway, name: wp}]\n",
    ));
    assert!(
        t.problems[0].message.contains("waypoints"),
        "{}",
        t.problems[0]
    );
}

#[test]
fn allow_nothing_allow_all_and_dry_run() {
    let yaml = format!(
        "{}{}{}{}",
        pod("a", "web", "10.0.0.1", "{}"),
        policy("a", "allow-nothing", "  action: ALLOW\n"),
        policy("b", "allow-all", "  rules: [{}]\n"),
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: shadow, namespace: c, annotations: {istio.io/dry-run: \"true\"}}\n\
         spec: {action: DENY, rules: [{}]}\n",
    );
    let t = run(&yaml);
    let ps = &t.state_inputs.policies;
    assert!(ps[0].rules.is_empty());
    assert_eq!(ps[1].rules, [Rule(vec![])]);
    assert!(ps[2].dry_run && !ps[0].dry_run);
    let s = state(&t);
    assert!(!allowed(
        &s,
        MtlsMode::Strict,
        ("a", "web"),
        80,
        Some(("a", "x"))
    ));
}

#[test]
fn invalid_values_fail_closed() {
    // ALLOW: the source whose only ipBlock is garbage matches nothing, so the whole rule goes
    // (keeping the IP-less alternative would have allowed more than written).
    let allow = r#"  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/x"], ipBlocks: [not-an-ip]}}]
  - from: [{source: {namespaces: [b], ipBlocks: [10.0.0.0/8, bad]}}]
"#;
    let t = run(&policy("shop", "p", allow));
    let p = only_policy(&t);
    assert_eq!(p.rules.len(), 1, "{:?}", p.rules);
    assert_eq!(p.rules[0].0[0].0[0].source_ips, [net("10.0.0.0/8")]);
    assert_eq!(
        problems(&t, Severity::Error, "spec.rules[0]").len(),
        1,
        "{:?}",
        t.problems
    );
    assert_eq!(
        problems(
            &t,
            Severity::Error,
            "spec.rules[0].from[0].source.ipBlocks[0]"
        )
        .len(),
        1
    );
    assert_eq!(
        problems(
            &t,
            Severity::Error,
            "spec.rules[1].from[0].source.ipBlocks[1]"
        )
        .len(),
        1
    );

    // An ALLOW `from` with one impossible alternative keeps the possible one.
    let t = run(&policy(
        "shop",
        "p",
        "  rules:\n  - from: [{source: {ipBlocks: [bad]}}, {source: {namespaces: [a]}}]\n",
    ));
    assert_eq!(only_policy(&t).rules[0].0[0].0.len(), 1);

    // DENY: a field left empty stops constraining, which denies more.
    let deny = "  action: DENY\n  rules:\n  - to: [{operation: {ports: [\"http\"]}}]\n";
    let yaml = format!(
        "{}{}",
        pod("shop", "web", "10.0.0.1", "{}"),
        policy("shop", "d", deny)
    );
    let t = run(&yaml);
    assert_eq!(only_policy(&t).rules[0].0[0].0[0], Match::default());
    let s = state(&t);
    assert!(!allowed(
        &s,
        MtlsMode::Strict,
        ("shop", "web"),
        1234,
        Some(("a", "x"))
    ));
}

#[test]
fn unknown_fields_never_widen_an_allow() {
    // `namespace` (singular) is not a field: ignoring it would allow principal x from anywhere.
    let spec = r#"  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/x"], namespace: [a]}}]
"#;
    let yaml = format!(
        "{}{}",
        pod("shop", "web", "10.0.0.1", "{}"),
        policy("shop", "p", spec)
    );
    let t = run(&yaml);
    assert_eq!(
        problems(
            &t,
            Severity::Error,
            "spec.rules[0].from[0].source.namespace"
        )
        .len(),
        1,
        "{:?}",
        t.problems
    );
    assert_eq!(only_policy(&t).rules[0].0[0].0[0].l7_fields, ["namespace"]);
    assert!(
        problems(&t, Severity::Warning, "spec.rules[0]").is_empty(),
        "a misspelling is an error, not an HTTP attribute: {:?}",
        t.problems
    );
    let s = state(&t);
    assert!(!allowed(
        &s,
        MtlsMode::Strict,
        ("shop", "web"),
        80,
        Some(("a", "x"))
    ));

    // A misspelt rule key (`form`) adds an unmatchable clause to an ALLOW rule, too.
    let t = run(&policy(
        "shop",
        "p",
        "  rules:\n  - form: [{source: {namespaces: [a]}}]\n",
    ));
    assert_eq!(only_policy(&t).rules[0].0[0].0[0].l7_fields, ["form"]);
}

#[test]
fn selector_policies_allow_only_what_they_say() {
    let spec = r#"  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web-sa"]}}]
    to: [{operation: {ports: ["5432"]}}]
"#;
    let yaml = format!(
        "{}{}{}{}",
        namespace("shop", true),
        pod("shop", "db", "10.0.0.1", "{app: db}"),
        pod("shop", "web", "10.0.0.2", "{app: web}"),
        policy("shop", "db-access", spec),
    );
    let s = state(&run(&yaml));
    let web = Some(("shop", "web-sa"));
    assert!(allowed(&s, MtlsMode::Strict, ("shop", "db"), 5432, web));
    assert!(!allowed(&s, MtlsMode::Strict, ("shop", "db"), 22, web));
    assert!(!allowed(
        &s,
        MtlsMode::Strict,
        ("shop", "db"),
        5432,
        Some(("shop", "other"))
    ));
    // Not selected: no ALLOW policy applies, so anything authenticated is allowed.
    assert!(allowed(
        &s,
        MtlsMode::Strict,
        ("shop", "web"),
        22,
        Some(("shop", "other"))
    ));
}
