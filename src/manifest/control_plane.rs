//! The control plane: Deployment, Service `:15012`, PodDisruptionBudget, ServiceAccount and
//! least-privilege RBAC.
//!
//! RBAC: cluster-wide it may only read the kinds it translates (docs/architecture.md,
//! "Inputs"), create TokenReviews (to authenticate ztunnels' service-account tokens) and
//! create Events (on invalid config objects). Its only other writes are to its own CA root
//! Secret and root-certificate ConfigMap, through a Role in its own namespace.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Affinity, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, SecretVolumeSource,
    Service, ServiceAccount, ServicePort, ServiceSpec, Volume, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::common::{self, env_field, meta, rule};
use super::{
    Object, Options, CA_ROOT_CERT_CONFIGMAP, CA_ROOT_SECRET, CONTROL_PLANE, READINESS_PORT,
    XDS_PORT,
};

/// Two replicas: with one, the PodDisruptionBudget would block every node drain; with two,
/// a drain moves one while the other keeps serving xDS and certificates. Both share the CA
/// root through the `ambit-ca-root` Secret, so either can sign.
const REPLICAS: i32 = 2;

pub fn rbac(ns: &str) -> Vec<Object> {
    let cluster_role = ClusterRole {
        metadata: meta(CONTROL_PLANE, None, CONTROL_PLANE),
        rules: Some(vec![
            rule(
                &[""],
                &["namespaces", "nodes", "pods", "serviceaccounts", "services"],
                &["get", "list", "watch"],
                &[],
            ),
            rule(
                &["discovery.k8s.io"],
                &["endpointslices"],
                &["get", "list", "watch"],
                &[],
            ),
            rule(
                &["security.istio.io"],
                &["authorizationpolicies", "peerauthentications"],
                &["get", "list", "watch"],
                &[],
            ),
            rule(
                &["authentication.k8s.io"],
                &["tokenreviews"],
                &["create"],
                &[],
            ),
            // Warning Events on invalid config objects, in the object's namespace. Create
            // only: each new problem is one new Event, never an update of an existing one.
            rule(&[""], &["events"], &["create"], &[]),
        ]),
        ..Default::default()
    };
    let cluster_binding = ClusterRoleBinding {
        metadata: meta(CONTROL_PLANE, None, CONTROL_PLANE),
        role_ref: common::role_ref("ClusterRole", CONTROL_PLANE),
        subjects: Some(vec![common::service_account_subject(CONTROL_PLANE, ns)]),
    };
    // RBAC cannot restrict `create` by name (the object has no name yet when the request is
    // authorized), so create is granted on the kind and get/update only on the named objects:
    // the control plane can add Secrets here but read no Secret other than its own. Its root
    // Secret is create-only (never rewritten, docs/ca.md), so it gets no `update` at all; the
    // root-certificate ConfigMap is updated when the published bundle changes.
    let role = Role {
        metadata: meta(CONTROL_PLANE, Some(ns), CONTROL_PLANE),
        rules: Some(vec![
            rule(&[""], &["secrets"], &["get"], &[CA_ROOT_SECRET]),
            rule(&[""], &["secrets"], &["create"], &[]),
            rule(
                &[""],
                &["configmaps"],
                &["get", "update"],
                &[CA_ROOT_CERT_CONFIGMAP],
            ),
            rule(&[""], &["configmaps"], &["create"], &[]),
        ]),
    };
    let binding = RoleBinding {
        metadata: meta(CONTROL_PLANE, Some(ns), CONTROL_PLANE),
        role_ref: common::role_ref("Role", CONTROL_PLANE),
        subjects: Some(vec![common::service_account_subject(CONTROL_PLANE, ns)]),
    };
    vec![
        ServiceAccount {
            metadata: meta(CONTROL_PLANE, Some(ns), CONTROL_PLANE),
            ..Default::default()
        }
        .into(),
        cluster_role.into(),
        cluster_binding.into(),
        role.into(),
        binding.into(),
    ]
}

pub fn workload(opts: &Options) -> Vec<Object> {
    let ns = opts.namespace.as_str();
    let service = Service {
        metadata: meta(CONTROL_PLANE, Some(ns), CONTROL_PLANE),
        spec: Some(ServiceSpec {
            selector: Some(common::labels(&[("app", CONTROL_PLANE)])),
            ports: Some(vec![ServicePort {
                name: Some("grpc-xds".to_string()),
                port: XDS_PORT,
                target_port: Some(IntOrString::String("grpc-xds".to_string())),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let mut container = common::container("control-plane", opts.image("control-plane"));
    container.ports = Some(vec![
        common::port("grpc-xds", XDS_PORT),
        common::port("http-ready", READINESS_PORT),
    ]);
    container.env = Some(vec![
        // Where the CA Secret and root ConfigMap live (`--namespace`) and which identity the
        // serving certificate names.
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("POD_NAME", "metadata.name"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]);
    // Kubernetes watches as the source; the signing CA from Istio's `cacerts` Secret when it
    // exists, else the root generated once and kept in the `ambit-ca-root` Secret (create-only,
    // so both replicas end up with the same root). No `--ca-store`: an emptyDir store would
    // give each replica its own root. The namespace comes from POD_NAMESPACE.
    container.args = Some(
        [
            "--kube",
            "--cacerts",
            CACERTS_PATH,
            "--ca-root-secret",
            CA_ROOT_SECRET,
            "--listen",
            "[::]:15012",
            "--readiness-addr",
            "[::]:15021",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect(),
    );
    container.readiness_probe = Some(common::readiness_probe());
    container.resources = Some(common::resources("100m", "128Mi", Some("1"), "512Mi"));
    container.security_context = Some(common::non_root_security_context());
    let mut cacerts_mount = common::mount("cacerts", CACERTS_PATH);
    cacerts_mount.read_only = Some(true);
    container.volume_mounts = Some(vec![common::mount("tmp", "/tmp"), cacerts_mount]);

    let deployment = Deployment {
        metadata: meta(CONTROL_PLANE, Some(ns), CONTROL_PLANE),
        spec: Some(DeploymentSpec {
            replicas: Some(REPLICAS),
            selector: common::selector(CONTROL_PLANE),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(common::pod_labels(CONTROL_PLANE)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(CONTROL_PLANE.to_string()),
                    node_selector: Some(common::node_selector_linux()),
                    affinity: Some(spread_over_nodes()),
                    containers: vec![container],
                    volumes: Some(vec![common::empty_dir_volume("tmp"), cacerts_volume()]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };

    let pdb = PodDisruptionBudget {
        metadata: meta(CONTROL_PLANE, Some(ns), CONTROL_PLANE),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(common::selector(CONTROL_PLANE)),
            // An unready replica (e.g. stuck on an unreachable API server) must not block
            // drains: the budget protects serving replicas only.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };

    vec![service.into(), deployment.into(), pdb.into()]
}

/// Where the plug-in CA is mounted.
const CACERTS_PATH: &str = "/etc/cacerts";

/// Istio's `cacerts` Secret, optional as with istiod: absent means "no plug-in CA".
fn cacerts_volume() -> Volume {
    Volume {
        name: "cacerts".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some("cacerts".to_string()),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Prefer replicas on different nodes, so one node failing does not take the control plane.
/// Preferred, not required: a one-node cluster must still run both.
fn spread_over_nodes() -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(common::selector(CONTROL_PLANE)),
                        topology_key: "kubernetes.io/hostname".to_string(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
