//! Least privilege: what each component may do through the Kubernetes API, and that the
//! names it writes are the ones its RBAC allows and its consumers read.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::*;

fn rules_of(objects: &[Object], kind: &str, name: &str) -> Vec<PolicyRule> {
    objects
        .iter()
        .find_map(|o| match o {
            Object::ClusterRole(ClusterRole {
                metadata, rules, ..
            }) if kind == "ClusterRole" && metadata.name.as_deref() == Some(name) => rules.clone(),
            Object::Role(Role { metadata, rules })
                if kind == "Role" && metadata.name.as_deref() == Some(name) =>
            {
                rules.clone()
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Flattens rules into (group, resource, verb, resourceName-or-*) grants for exact comparison.
fn grants(rules: &[PolicyRule]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in rules {
        let names = r
            .resource_names
            .clone()
            .unwrap_or_else(|| vec!["*".to_string()]);
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    for n in &names {
                        out.insert(format!("{g}/{res} {v} {n}"));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn control_plane_rbac_is_least_privilege() {
    let objects = default_objects();
    let mut want = BTreeSet::new();
    for (group, res) in [
        ("", "namespaces"),
        ("", "pods"),
        ("", "services"),
        ("", "serviceaccounts"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        ("security.istio.io", "authorizationpolicies"),
        ("security.istio.io", "peerauthentications"),
    ] {
        for verb in ["get", "list", "watch"] {
            want.insert(format!("{group}/{res} {verb} *"));
        }
    }
    want.insert("authentication.k8s.io/tokenreviews create *".to_string());
    // Events about config problems, on the objects they concern (any namespace).
    want.insert("/events create *".to_string());
    assert_eq!(
        grants(&rules_of(&objects, "ClusterRole", CONTROL_PLANE)),
        want
    );

    // Secrets only in its own namespace (a Role), reading only its own, and never updating it
    // (the root Secret is create-only); the root ConfigMap is updated when the root changes.
    let role = grants(&rules_of(&objects, "Role", CONTROL_PLANE));
    let want: BTreeSet<String> = [
        "/secrets get ambit-ca-root",
        "/secrets create *",
        "/configmaps get ambit-ca-root-cert",
        "/configmaps update ambit-ca-root-cert",
        "/configmaps create *",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(role, want);
}

/// The names the Deployment and ztunnel's DaemonSet use are the ones the control plane reads
/// and writes: the root Secret (`--ca-root-secret`), the published ConfigMap and its key.
#[test]
fn control_plane_persists_its_root_where_rbac_allows_and_publishes_what_ztunnel_mounts() {
    use ::control_plane::ca_service::root;
    let objects = default_objects();
    let spec = deployment(&objects, CONTROL_PLANE)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let cp = main_container(spec);
    let args = cp.args.clone().unwrap_or_default();
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    assert!(args.iter().any(|a| a == "--kube"), "{args:?}");
    assert_eq!(after("--cacerts"), Some("/etc/cacerts"));
    assert_eq!(after("--ca-root-secret"), Some(CA_ROOT_SECRET));
    assert_eq!(CA_ROOT_SECRET, root::DEFAULT_SECRET);
    assert!(
        cp.env
            .iter()
            .flatten()
            .any(|e| e.name == "POD_NAMESPACE" && e.value_from.is_some()),
        "--namespace comes from POD_NAMESPACE, set from the downward API"
    );

    assert_eq!(CA_ROOT_CERT_CONFIGMAP, root::ROOT_CERT_CONFIGMAP);
    let zt_spec = daemonset(&objects, ZTUNNEL)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let zt = main_container(zt_spec);
    let volume = zt_spec
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.config_map
                .as_ref()
                .is_some_and(|c| c.name == CA_ROOT_CERT_CONFIGMAP)
        })
        .expect("ztunnel mounts the root ConfigMap");
    let mount = zt
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("and mounts that volume");
    assert_eq!(
        env_value(zt, "XDS_ROOT_CA"),
        Some(format!("{}/{}", mount.mount_path, root::ROOT_CERT_KEY).as_str()),
        "ztunnel reads the key the control plane publishes"
    );
}

#[test]
fn node_agents_get_only_what_they_use_from_the_api() {
    let objects = default_objects();
    let want: BTreeSet<String> = ["/namespaces", "/pods"]
        .iter()
        .flat_map(|r| ["get", "list", "watch"].map(|v| format!("{r} {v} *")))
        .collect();
    assert_eq!(grants(&rules_of(&objects, "ClusterRole", CNI_AGENT)), want);
    // ztunnel has no RBAC at all and no API token mounted.
    for o in &objects {
        if let Object::ClusterRoleBinding(b) = o {
            assert!(
                b.subjects.iter().flatten().all(|s| s.name != ZTUNNEL),
                "{}",
                o.name()
            );
        }
        if let Object::RoleBinding(b) = o {
            assert!(
                b.subjects.iter().flatten().all(|s| s.name != ZTUNNEL),
                "{}",
                o.name()
            );
        }
    }
    let zt = daemonset(&objects, ZTUNNEL)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(zt.automount_service_account_token, Some(false));
}
