//! Small builders shared by the component modules, so each component states only what is
//! particular to it (its capabilities, mounts, environment).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::READINESS_PORT;

/// Label every object carries, so `kubectl get all -l app.kubernetes.io/part-of=ambit` lists
/// the install.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "ambit");

/// Metadata with a name, an optional namespace (None for cluster-scoped objects) and the
/// `part-of` label plus `app.kubernetes.io/name: <component>`.
pub fn meta(name: &str, namespace: Option<&str>, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels(&[PART_OF, ("app.kubernetes.io/name", component)])),
        ..Default::default()
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `app: <name>` selector each workload's pods, Service and PDB agree on. Kept to the one
/// immutable label: a Deployment's or DaemonSet's selector cannot change after creation.
pub fn selector(app: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(&[("app", app)])),
        ..Default::default()
    }
}

/// Pod template labels: the selector label, the install labels, and the two opt-outs that keep
/// the mesh's own pods out of capture and sidecar injection (Istio's label names).
pub fn pod_labels(app: &str) -> BTreeMap<String, String> {
    labels(&[
        ("app", app),
        PART_OF,
        ("app.kubernetes.io/name", app),
        ("istio.io/dataplane-mode", "none"),
        ("sidecar.istio.io/inject", "false"),
    ])
}

/// `/healthz/ready` on 15021. No liveness probe anywhere on purpose: a component is unready
/// while a dependency (the control plane, the API server) is away, and restarting it then
/// would only drop the state it keeps serving with.
pub fn readiness_probe() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz/ready".to_string()),
            port: IntOrString::Int(READINESS_PORT),
            ..Default::default()
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

pub fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: number,
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

/// CPU/memory requests, a memory limit, and a CPU limit only when `cpu_limit` is given.
pub fn resources(
    cpu_request: &str,
    memory_request: &str,
    cpu_limit: Option<&str>,
    memory_limit: &str,
) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    let mut limits = BTreeMap::from([("memory".to_string(), q(memory_limit))]);
    if let Some(cpu) = cpu_limit {
        limits.insert("cpu".to_string(), q(cpu));
    }
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q(cpu_request)),
            ("memory".to_string(), q(memory_request)),
        ])),
        limits: Some(limits),
        ..Default::default()
    }
}

/// A container that runs as root with ALL capabilities dropped and only `add` given back.
///
/// `allowPrivilegeEscalation` stays true when SYS_ADMIN is added: the API server rejects
/// `false` together with SYS_ADMIN (the capability implies it), as Istio's ztunnel chart notes.
pub fn root_security_context(add: &[&str]) -> SecurityContext {
    let sys_admin = add.contains(&"SYS_ADMIN");
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(sys_admin),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: (!add.is_empty()).then(|| add.iter().map(|c| c.to_string()).collect()),
        }),
        read_only_root_filesystem: Some(true),
        run_as_user: Some(0),
        run_as_group: Some(0),
        run_as_non_root: Some(false),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// A container with no capabilities at all, running as an unprivileged user.
pub fn non_root_security_context() -> SecurityContext {
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        run_as_user: Some(1337),
        run_as_group: Some(1337),
        run_as_non_root: Some(true),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..Default::default()
    }
}

pub fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

/// An environment variable filled by the downward API from a pod field.
pub fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        ..Default::default()
    }
}

pub fn host_path_volume(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some(type_.to_string()),
        }),
        ..Default::default()
    }
}

pub fn empty_dir_volume(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }
}

/// Node agents must run on every node, tainted or not: a node without them cannot start
/// enrolled pods (their CNI ADD fails closed).
pub fn tolerate_everything() -> Vec<Toleration> {
    vec![
        Toleration {
            effect: Some("NoSchedule".to_string()),
            operator: Some("Exists".to_string()),
            ..Default::default()
        },
        Toleration {
            key: Some("CriticalAddonsOnly".to_string()),
            operator: Some("Exists".to_string()),
            ..Default::default()
        },
        Toleration {
            effect: Some("NoExecute".to_string()),
            operator: Some("Exists".to_string()),
            ..Default::default()
        },
    ]
}

pub fn node_selector_linux() -> BTreeMap<String, String> {
    labels(&[("kubernetes.io/os", "linux")])
}

/// A policy rule; `names` restricts it to named objects (empty: any object).
pub fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        ..Default::default()
    }
}

pub fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

pub fn service_account_subject(name: &str, namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".to_string(),
        name: name.to_string(),
        namespace: Some(namespace.to_string()),
        ..Default::default()
    }
}

/// A plain container with the fields every ambit container sets.
pub fn container(name: &str, image: String) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".to_string()),
        ..Default::default()
    }
}
