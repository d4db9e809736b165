//! The synthetic cluster, as the YAML a Kubernetes API server (or a config folder) would hand
//! the control plane: namespaces, services with selectors, the pods they select, and
//! authorization policies of every scope.
//!
//! Shape (deterministic, so runs compare): `NAMESPACES` namespaces enrolled in ambient, each
//! with `SERVICES / NAMESPACES` services; every service selects `PODS / SERVICES` pods through
//! an `app` label; pods are spread over `NODES` nodes. Policies, `POLICIES / NAMESPACES` per
//! namespace, cycle through four shapes: a namespace-wide ALLOW from two namespaces, a
//! selector ALLOW from two principals on one port, a selector DENY from outside the namespace
//! on the metrics port, and a selector ALLOW from a service account on two ports.

use std::fmt::Write;

pub const NAMESPACES: usize = 50;
pub const SERVICES: usize = 1_000;
pub const PODS: usize = 10_000;
pub const POLICIES: usize = 500;
pub const NODES: usize = 50;

const SERVICES_PER_NS: usize = SERVICES / NAMESPACES;
const PODS_PER_SERVICE: usize = PODS / SERVICES;
const POLICIES_PER_NS: usize = POLICIES / NAMESPACES;

pub fn ns(i: usize) -> String {
    format!("ns-{i:02}")
}

/// Service `s`'s name; it lives in namespace `s / SERVICES_PER_NS`.
pub fn svc(s: usize) -> String {
    format!("svc-{s:04}")
}

fn svc_ns(s: usize) -> String {
    ns(s / SERVICES_PER_NS)
}

/// Pod `p`'s IP: 10.1.0.0/16 holds all 10,000.
pub fn pod_ip(p: usize) -> String {
    format!("10.1.{}.{}", p / 256, p % 256)
}

/// Pod `p`: (namespace, name). Pod `p` backs service `p / PODS_PER_SERVICE`.
pub fn pod_ref(p: usize) -> (String, String) {
    let s = p / PODS_PER_SERVICE;
    (svc_ns(s), format!("{}-{}", svc(s), p % PODS_PER_SERVICE))
}

/// One pod's document; `ip` is a parameter so the change scenario can move a pod.
pub fn pod_yaml(p: usize, ip: &str) -> String {
    let s = p / PODS_PER_SERVICE;
    let (namespace, name) = pod_ref(p);
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: uid-{p}\n  \
         labels: {{app: {app}, version: v{v}}}\n  ownerReferences: [{{kind: ReplicaSet, name: {app}-7d9f8c, controller: true}}]\n\
         spec:\n  nodeName: node-{node}\n  serviceAccountName: {app}-sa\n  containers:\n  - name: app\n    \
         ports: [{{name: http, containerPort: 8080}}, {{name: metrics, containerPort: 9090}}]\n\
         status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
        app = svc(s),
        v = p % 2 + 1,
        node = p % NODES,
    )
}

/// The whole cluster, one multi-document YAML text.
pub fn cluster_yaml() -> String {
    let mut out = String::with_capacity(PODS * 700);
    for n in 0..NAMESPACES {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {}, labels: {{istio.io/dataplane-mode: ambient}}}}\n",
            ns(n)
        );
    }
    for s in 0..SERVICES {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  type: ClusterIP\n  clusterIP: 10.96.{hi}.{lo}\n  selector: {{app: {name}}}\n  \
             ports:\n  - {{name: http, port: 80, targetPort: http}}\n  - {{name: metrics, port: 9090, targetPort: 9090}}\n",
            name = svc(s),
            namespace = svc_ns(s),
            hi = s / 256,
            lo = s % 256,
        );
    }
    for p in 0..PODS {
        out.push_str(&pod_yaml(p, &pod_ip(p)));
    }
    for k in 0..POLICIES {
        out.push_str(&policy_yaml(k));
    }
    out
}

fn policy_yaml(k: usize) -> String {
    let n = k / POLICIES_PER_NS;
    let namespace = ns(n);
    // A service of this namespace, and principals from elsewhere in the mesh.
    let local = n * SERVICES_PER_NS + k % SERVICES_PER_NS;
    let other = |d: usize| {
        let s = (local + d * 37) % SERVICES;
        format!("cluster.local/ns/{}/sa/{}-sa", svc_ns(s), svc(s))
    };
    let head = format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: pol-{k:03}, namespace: {namespace}}}\nspec:\n"
    );
    let body = match k % 4 {
        0 => format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{namespaces: [{namespace}, {}]}}}}]\n",
            ns((n + 1) % NAMESPACES)
        ),
        1 => format!(
            "  selector: {{matchLabels: {{app: {}}}}}\n  action: ALLOW\n  rules:\n  \
             - from: [{{source: {{principals: [\"{}\", \"{}\"]}}}}]\n    to: [{{operation: {{ports: [\"8080\"]}}}}]\n",
            svc(local),
            other(1),
            other(2)
        ),
        2 => format!(
            "  selector: {{matchLabels: {{app: {}}}}}\n  action: DENY\n  rules:\n  \
             - from: [{{source: {{notNamespaces: [{namespace}]}}}}]\n    to: [{{operation: {{ports: [\"9090\"]}}}}]\n",
            svc(local)
        ),
        _ => format!(
            "  selector: {{matchLabels: {{app: {}, version: v1}}}}\n  action: ALLOW\n  rules:\n  \
             - from: [{{source: {{principals: [\"{}\"]}}}}]\n    to: [{{operation: {{ports: [\"8080\", \"9090\"]}}}}]\n",
            svc(local),
            other(3)
        ),
    };
    head + &body
}
