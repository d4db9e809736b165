//! Workloads and services from Pods, Services, EndpointSlices and Namespaces.

use std::collections::BTreeMap;

use mesh::model::{HealthStatus, Protocol};

use super::test_util::{namespace, pod, problems, run, run_with, state};
use super::*;

#[test]
fn an_enrolled_pod_becomes_an_hbone_workload_with_istio_fields() {
    let yaml = format!(
        "{}{}",
        namespace("shop", true),
        r#"---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f-abcde
  namespace: shop
  labels: {app: web, version: v2, pod-template-hash: 7d9f}
  ownerReferences: [{kind: ReplicaSet, name: web-7d9f, controller: true}]
spec: {nodeName: node-a, serviceAccountName: web}
status:
  phase: Running
  podIP: 10.0.0.5
  podIPs: [{ip: 10.0.0.5}, {ip: "fd00::5"}]
  conditions: [{type: Ready, status: "True"}]
"#
    );
    let cfg = TranslateConfig {
        cluster_id: "c1".into(),
        trust_domain: "example.org".into(),
        ..TranslateConfig::default()
    };
    let t = run_with(&yaml, &cfg);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let [w] = t.state_inputs.workloads.as_slice() else {
        panic!("{:?}", t.state_inputs.workloads)
    };
    assert_eq!(w.uid, "c1//Pod/shop/web-7d9f-abcde");
    assert_eq!(w.protocol, Protocol::Hbone);
    assert_eq!(w.status, HealthStatus::Healthy);
    assert_eq!(w.node, "node-a");
    assert_eq!(w.cluster_id, "c1");
    assert_eq!(
        w.identity().to_string(),
        "spiffe://example.org/ns/shop/sa/web"
    );
    assert_eq!(
        w.workload_ips,
        [
            "10.0.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(
        (w.workload_name.as_str(), w.workload_type.as_str()),
        ("web", "deployment")
    );
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("web", "v2")
    );
    state(&t);
}

use std::net::IpAddr;

#[test]
fn enrollment_follows_the_dataplane_mode_labels() {
    let cases = [
        // (namespace enrolled, pod labels, pod annotations, expected)
        (true, "{}", "{}", Protocol::Hbone),
        (true, "{istio.io/dataplane-mode: none}", "{}", Protocol::Tcp),
        (false, "{}", "{}", Protocol::Tcp),
        (
            false,
            "{istio.io/dataplane-mode: ambient}",
            "{}",
            Protocol::Hbone,
        ),
        (
            false,
            "{}",
            "{ambient.istio.io/redirection: enabled}",
            Protocol::Hbone,
        ),
        // A sidecar-injected pod is never captured by ambient.
        (true, "{}", "{sidecar.istio.io/status: '{}'}", Protocol::Tcp),
    ];
    for (enrolled, labels, annotations, expected) in cases {
        let yaml = format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns, labels: {labels}, annotations: {annotations}}}\n\
             status: {{phase: Running, podIP: 10.0.0.1}}\n",
            namespace("ns", enrolled)
        );
        let t = run(&yaml);
        assert_eq!(
            t.state_inputs.workloads[0].protocol, expected,
            "namespace enrolled={enrolled}, labels={labels}, annotations={annotations}"
        );
    }
}

#[test]
fn pods_that_cannot_receive_traffic_are_left_out_and_unready_ones_are_unhealthy() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: ns}
status: {phase: Succeeded, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: ns}
spec: {hostNetwork: true}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: ns}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: ns}
status: {phase: Running, podIP: 10.0.0.3, conditions: [{type: Ready, status: "False"}]}
"#;
    let t = run(yaml);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let names: Vec<_> = t
        .state_inputs
        .workloads
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(names, ["starting"]);
    assert_eq!(t.state_inputs.workloads[0].status, HealthStatus::Unhealthy);
    assert_eq!(t.state_inputs.workloads[0].service_account, "default");
}

#[test]
fn services_get_vips_ports_and_named_target_ports_resolved_per_pod() {
    let yaml = format!(
        "{}{}{}",
        pod("shop", "with-port", "10.0.0.1", "{app: web}"),
        // Same labels, but its container port has another name.
        r#"---
apiVersion: v1
kind: Pod
metadata: {name: without-port, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, ports: [{name: other, containerPort: 9000}]}]}
status: {phase: Running, podIP: 10.0.0.2, conditions: [{type: Ready, status: "True"}]}
"#,
        r#"---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 9090}
  - {name: admin, port: 81, targetPort: 8081}
  - {name: dns, port: 53, protocol: UDP}
"#
    );
    let t = run(&yaml);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let [svc] = t.state_inputs.services.as_slice() else {
        panic!()
    };
    assert_eq!(svc.hostname, "web.shop.svc.cluster.local");
    assert_eq!(svc.vips.len(), 2);
    // Named target: 0, "the endpoint says"; UDP is not proxied.
    assert_eq!(
        svc.ports,
        BTreeMap::from([(80, 0), (81, 8081), (9090, 9090)])
    );

    let key = "shop/web.shop.svc.cluster.local";
    let by_name = |n: &str| {
        t.state_inputs
            .workloads
            .iter()
            .find(|w| w.name == n)
            .unwrap()
            .services[key]
            .clone()
    };
    assert_eq!(
        by_name("with-port"),
        BTreeMap::from([(80, 8080), (81, 8081), (9090, 9090)])
    );
    assert_eq!(
        by_name("without-port"),
        BTreeMap::from([(81, 8081), (9090, 9090)])
    );

    let s = state(&t);
    let svc = s.service_by_key(key).unwrap();
    let eps: Vec<_> = s
        .endpoints(svc, 80)
        .iter()
        .map(|e| (e.workload.name.clone(), e.target_port))
        .collect();
    assert_eq!(eps, [("with-port".to_string(), 8080)]);
}

#[test]
fn a_service_selects_only_pods_of_its_namespace_and_headless_ones_have_no_vip() {
    let yaml = format!(
        "{}{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: a}}\n\
         spec: {{clusterIP: None, selector: {{app: web}}, ports: [{{port: 80}}]}}\n",
        pod("a", "in-a", "10.0.0.1", "{app: web}"),
        pod("b", "in-b", "10.0.0.2", "{app: web}"),
    );
    let t = run(&yaml);
    assert!(t.state_inputs.services[0].vips.is_empty());
    let backs: Vec<_> = t
        .state_inputs
        .workloads
        .iter()
        .map(|w| (w.name.as_str(), w.services.len()))
        .collect();
    assert_eq!(backs, [("in-a", 1), ("in-b", 0)]);
}

#[test]
fn endpoint_slices_back_services_without_a_selector() {
    let yaml = format!(
        "{}{}",
        pod("ext", "known", "10.0.0.1", "{}"),
        r#"---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ext}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: sql, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-abc, namespace: ext, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: sql, port: 15432}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [192.168.1.7]
  conditions: {ready: false}
- addresses: [not-an-ip]
"#
    );
    let t = run(&yaml);
    let key = "ext/db.ext.svc.cluster.local";
    let ws = &t.state_inputs.workloads;
    assert_eq!(ws.len(), 2);
    // An address that is a pod's joins that pod's workload...
    assert_eq!(ws[0].name, "known");
    assert_eq!(ws[0].services[key], BTreeMap::from([(5432, 15432)]));
    // ... any other becomes a plain-TCP workload of its own.
    assert_eq!(
        ws[1].uid,
        "Kubernetes/discovery.k8s.io/EndpointSlice/ext/db-abc/192.168.1.7"
    );
    assert_eq!(ws[1].protocol, Protocol::Tcp);
    assert_eq!(ws[1].status, HealthStatus::Unhealthy);
    assert_eq!(
        problems(&t, Severity::Error, "endpoints[2].addresses[0]").len(),
        1,
        "{:?}",
        t.problems
    );
    state(&t);
}

#[test]
fn conflicts_keep_the_first_object_and_report_the_rest() {
    let yaml = format!(
        "{}{}{}{}",
        pod("a", "first", "10.0.0.1", "{}"),
        pod("a", "same-ip", "10.0.0.1", "{}"),
        pod("a", "first", "10.0.0.9", "{}"),
        r#"---
apiVersion: v1
kind: Service
metadata: {name: s1, namespace: a}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: s2, namespace: a}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}, {port: 0}, {port: 81, targetPort: 70000}]}
---
apiVersion: v1
kind: Service
metadata: {name: s3, namespace: a}
spec: {clusterIP: 10.96.0.300}
"#
    );
    let t = run(&yaml);
    let names: Vec<_> = t
        .state_inputs
        .workloads
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(names, ["first"]);
    assert_eq!(
        t.state_inputs.workloads[0].workload_ips[0].to_string(),
        "10.0.0.1"
    );
    assert_eq!(
        problems(&t, Severity::Error, "metadata.name").len(),
        1,
        "duplicate pod"
    );
    assert_eq!(
        problems(&t, Severity::Error, "status.podIP").len(),
        1,
        "duplicate IP"
    );
    assert_eq!(
        problems(&t, Severity::Error, "spec.clusterIP").len(),
        2,
        "{:?}",
        t.problems
    );
    assert_eq!(problems(&t, Severity::Error, "spec.ports[1].port").len(), 1);
    assert_eq!(
        problems(&t, Severity::Error, "spec.ports[2].targetPort").len(),
        1
    );
    let s2 = &t.state_inputs.services[1];
    assert!(s2.vips.is_empty());
    assert_eq!(s2.ports, BTreeMap::from([(80, 80)]));
    state(&t);
}

#[test]
fn names_kubernetes_would_reject_are_reported_not_translated() {
    let yaml = format!(
        "{}{}",
        pod("Bad_NS", "p", "10.0.0.1", "{}"),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: a/b, namespace: ns}\n"
    );
    let t = run(&yaml);
    assert!(t.state_inputs.workloads.is_empty());
    assert!(t.state_inputs.services.is_empty());
    assert_eq!(problems(&t, Severity::Error, "metadata.namespace").len(), 1);
    assert_eq!(problems(&t, Severity::Error, "metadata.name").len(), 1);
}

#[test]
fn a_malformed_document_is_reported_and_the_rest_still_translates() {
    let yaml = format!(
        "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: broken, namespace: shop\n{}",
        pod("shop", "good", "10.0.0.1", "{}"),
        pod("shop", "also-good", "10.0.0.2", "{}"),
    );
    let mut objects = Vec::new();
    let mut reported = Vec::new();
    for r in crate::objects::parse_documents(&yaml) {
        match r {
            Ok(o) => objects.push(o),
            Err(e) => reported.push(Problem::from_object_error(&e, "shop.yaml")),
        }
    }
    let t = translate(&objects, &TranslateConfig::default());
    let names: Vec<_> = t
        .state_inputs
        .workloads
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(names, ["good", "also-good"]);
    let [p] = reported.as_slice() else {
        panic!("{reported:?}")
    };
    assert_eq!(p.severity, Severity::Error);
    assert!(p.message.contains("shop.yaml, document 2"), "{p}");
}

mod no_panics {
    use proptest::prelude::*;

    use super::*;

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("10.0.0.1".to_string()),
            Just("10.0.0.0/8".to_string()),
            Just("fd00::1".to_string()),
            Just("8080".to_string()),
            Just("0".to_string()),
            Just("http".to_string()),
            Just("*".to_string()),
            Just("".to_string()),
            Just("STRICT".to_string()),
            Just("PERMISSIVE".to_string()),
            "[a-z*/.]{0,6}",
        ]
    }

    proptest! {
        /// Arbitrary (but well-typed) objects translate without panicking and always build a
        /// State: translation never emits what the model rejects.
        #[test]
        fn arbitrary_objects_translate_into_a_valid_state(
            pods in prop::collection::vec((0..3usize, scalar(), 0..2usize), 0..5),
            svcs in prop::collection::vec((0..3usize, scalar(), scalar(), scalar()), 0..3),
            aps in prop::collection::vec((0..3usize, 0..3usize, scalar(), scalar(), scalar()), 0..3),
            pas in prop::collection::vec((0..3usize, 0..2usize, scalar(), scalar(), scalar()), 0..3),
        ) {
            let nss = ["istio-system", "a", "b"];
            let mut yaml = String::new();
            for ns in nss {
                yaml.push_str(&namespace(ns, true));
            }
            for (i, (ns, ip, app)) in pods.iter().enumerate() {
                yaml.push_str(&pod(nss[*ns], &format!("p{}", i % 3), ip, &format!("{{app: a{app}}}")));
            }
            for (i, (ns, vip, port, target)) in svcs.iter().enumerate() {
                yaml.push_str(&format!(
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {}}}\n\
                     spec: {{clusterIP: '{vip}', selector: {{app: a0}}, ports: [{{port: 80, targetPort: '{target}'}}, {{port: {}}}]}}\n",
                    nss[*ns], port.parse::<u16>().map_or(81, |p| p.max(1)),
                ));
            }
            for (i, (ns, action, a, b, c)) in aps.iter().enumerate() {
                let action = ["ALLOW", "DENY", "CUSTOM"][*action];
                yaml.push_str(&format!(
                    "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                     metadata: {{name: ap{i}, namespace: {}}}\nspec:\n  action: {action}\n  selector: {{matchLabels: {{app: a0}}}}\n  rules:\n\
                     - from: [{{source: {{principals: ['{a}'], ipBlocks: ['{b}']}}}}]\n    to: [{{operation: {{ports: ['{c}'], methods: ['{a}']}}}}]\n    when: [{{key: '{b}', values: ['{c}']}}]\n",
                    nss[*ns],
                ));
            }
            for (i, (ns, sel, mode, port, pmode)) in pas.iter().enumerate() {
                let selector = if *sel == 1 { "selector: {matchLabels: {app: a0}}" } else { "" };
                yaml.push_str(&format!(
                    "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
                     metadata: {{name: pa{i}, namespace: {}}}\nspec:\n  {selector}\n  mtls: {{mode: '{mode}'}}\n  portLevelMtls: {{'{port}': {{mode: '{pmode}'}}}}\n",
                    nss[*ns],
                ));
            }
            let objects: Vec<_> = crate::objects::parse_documents(&yaml)
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            let t = translate(&objects, &TranslateConfig::default());
            prop_assert!(t.into_state().is_ok());
        }
    }
}
