//! Properties of the generated install that schema validation cannot see: least privilege,
//! wiring between objects (selectors, service accounts, shared sockets), and option handling.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

mod rbac;

fn default_objects() -> Vec<Object> {
    objects(&Options::default()).expect("default options are valid")
}

fn find<'a, T>(
    objects: &'a [Object],
    name: &str,
    pick: impl Fn(&'a Object) -> Option<&'a T>,
) -> &'a T {
    objects
        .iter()
        .filter(|o| o.name() == name)
        .find_map(pick)
        .unwrap_or_else(|| panic!("no object named {name} of the wanted kind"))
}

fn daemonset<'a>(objects: &'a [Object], name: &str) -> &'a DaemonSet {
    find(objects, name, |o| match o {
        Object::DaemonSet(d) => Some(d),
        _ => None,
    })
}

fn deployment<'a>(objects: &'a [Object], name: &str) -> &'a Deployment {
    find(objects, name, |o| match o {
        Object::Deployment(d) => Some(d),
        _ => None,
    })
}

fn pod_specs(objects: &[Object]) -> Vec<(&str, &PodSpec)> {
    objects
        .iter()
        .filter_map(|o| {
            let spec = match o {
                Object::DaemonSet(d) => d.spec.as_ref()?.template.spec.as_ref(),
                Object::Deployment(d) => d.spec.as_ref()?.template.spec.as_ref(),
                _ => None,
            }?;
            Some((o.name(), spec))
        })
        .collect()
}

fn main_container(spec: &PodSpec) -> &Container {
    spec.containers.first().expect("one container")
}

fn added_caps(c: &Container) -> BTreeSet<String> {
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    caps.and_then(|c| c.add.clone())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn rendering_is_deterministic_and_free_of_nulls() {
    let a = generate(&Options::default()).unwrap();
    let b = generate(&Options::default()).unwrap();
    assert_eq!(a, b);
    // A `null` would be an optional struct left at its default: the API server reads it as
    // "unset", silently dropping what was meant (this caught `subresources.status`).
    for (i, line) in a.lines().enumerate() {
        assert!(!line.ends_with(": null"), "line {}: {line}", i + 1);
    }
    // The stream parses back into one document per object, in order.
    let objects = default_objects();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&a)
        .map(|d| k8s_openapi::serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    assert_eq!(docs.len(), objects.len());
    for (doc, o) in docs.iter().zip(&objects) {
        assert_eq!(doc["kind"].as_str(), Some(o.kind()));
        assert_eq!(doc["metadata"]["name"].as_str(), Some(o.name()));
    }
}

#[test]
fn every_namespaced_object_is_in_the_install_namespace() {
    let opts = Options {
        namespace: "mesh".to_string(),
        ..Options::default()
    };
    let objects = objects(&opts).unwrap();
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    for o in &objects {
        let ns = o.metadata().namespace.as_deref();
        if cluster_scoped.contains(&o.kind()) {
            assert_eq!(ns, None, "{} {}", o.kind(), o.name());
        } else {
            assert_eq!(ns, Some("mesh"), "{} {}", o.kind(), o.name());
        }
    }
    // The install namespace admits the node agents' privileges under Pod Security Admission.
    let namespace = &objects[0];
    assert_eq!((namespace.kind(), namespace.name()), ("Namespace", "mesh"));
    let labels = namespace.metadata().labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
    let zt = main_container(
        daemonset(&objects, ZTUNNEL)
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap(),
    );
    assert_eq!(
        env_value(zt, "XDS_ADDRESS"),
        Some("ambit-control-plane.mesh.svc:15012")
    );
    assert_eq!(
        env_value(zt, "CA_ADDRESS"),
        Some("ambit-control-plane.mesh.svc:15012")
    );
    // Bindings name the service accounts where they actually are.
    for o in &objects {
        let subjects = match o {
            Object::ClusterRoleBinding(ClusterRoleBinding { subjects, .. })
            | Object::RoleBinding(RoleBinding { subjects, .. }) => {
                subjects.clone().unwrap_or_default()
            }
            _ => continue,
        };
        for s in subjects {
            assert_eq!(s.namespace.as_deref(), Some("mesh"), "{}", o.name());
        }
    }
}

#[test]
fn images_follow_hub_and_tag() {
    let opts = Options {
        hub: "registry.example:5000/team/ambit".to_string(),
        tag: "v1.2.3-rc.1".to_string(),
        ..Options::default()
    };
    let objects = objects(&opts).unwrap();
    let mut images = BTreeSet::new();
    for (_, spec) in pod_specs(&objects) {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            images.insert(c.image.clone().unwrap());
        }
    }
    assert_eq!(
        images,
        set(&[
            "registry.example:5000/team/ambit/cni-agent:v1.2.3-rc.1",
            "registry.example:5000/team/ambit/control-plane:v1.2.3-rc.1",
            "registry.example:5000/team/ambit/ztunnel:v1.2.3-rc.1",
        ])
    );
}

#[test]
fn bad_options_are_rejected_naming_the_option() {
    let long_tag = "x".repeat(129);
    let long_ns = "a".repeat(64);
    let cases = [
        ("hub", ""),
        ("hub", "Ambit/X"),
        ("hub", "ambit/"),
        ("hub", "am bit"),
        ("tag", ""),
        ("tag", ".hidden"),
        ("tag", "1.0:latest"),
        ("tag", &long_tag),
        ("namespace", "Istio"),
        ("namespace", "-ns"),
        ("namespace", &long_ns),
    ];
    for (want, value) in cases {
        let mut opts = Options::default();
        match want {
            "hub" => opts.hub = value.to_string(),
            "tag" => opts.tag = value.to_string(),
            _ => opts.namespace = value.to_string(),
        }
        match objects(&opts) {
            Err(ManifestError::InvalidOption { option, .. }) => {
                assert_eq!(option, want, "{opts:?}")
            }
            other => panic!("{opts:?}: expected an invalid --{want}, got {other:?}"),
        }
    }
    let err = generate(&Options {
        tag: "a b".into(),
        ..Options::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().starts_with("invalid --tag \"a b\""),
        "{err}"
    );
}

#[test]
fn capabilities_are_exactly_what_each_component_needs() {
    let objects = default_objects();
    let want: [(&str, &[&str]); 3] = [
        (CONTROL_PLANE, &[]),
        (ZTUNNEL, &["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]),
        (CNI_AGENT, &["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]),
    ];
    let specs = pod_specs(&objects);
    assert_eq!(specs.len(), want.len());
    for (name, caps) in want {
        let (_, spec) = specs.iter().find(|(n, _)| *n == name).unwrap();
        assert_eq!(added_caps(main_container(spec)), set(caps), "{name}");
    }
    for (name, spec) in specs {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let sc = c
                .security_context
                .as_ref()
                .unwrap_or_else(|| panic!("{name}/{}", c.name));
            let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone());
            assert_eq!(drop, Some(vec!["ALL".to_string()]), "{name}/{}", c.name);
            assert_eq!(sc.privileged, Some(false), "{name}/{}", c.name);
            assert_eq!(
                sc.read_only_root_filesystem,
                Some(true),
                "{name}/{}",
                c.name
            );
            // Only what needs SYS_ADMIN may escalate (the API server insists on it there).
            let escalates = added_caps(c).contains("SYS_ADMIN");
            assert_eq!(
                sc.allow_privilege_escalation,
                Some(escalates),
                "{name}/{}",
                c.name
            );
        }
    }
    // The install step copies a file: no capability at all.
    let cni = daemonset(&objects, CNI_AGENT)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let init = &cni.init_containers.as_ref().unwrap()[0];
    assert!(added_caps(init).is_empty());
    // The control plane is the one component that needs no root.
    let cp = deployment(&objects, CONTROL_PLANE)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(
        main_container(cp)
            .security_context
            .as_ref()
            .unwrap()
            .run_as_non_root,
        Some(true)
    );
}

#[test]
fn every_container_has_requests_limits_and_readiness_on_15021() {
    for (name, spec) in pod_specs(&default_objects()) {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let r = c
                .resources
                .as_ref()
                .unwrap_or_else(|| panic!("{name}/{}", c.name));
            let requests = r.requests.clone().unwrap_or_default();
            assert!(
                requests.contains_key("cpu") && requests.contains_key("memory"),
                "{name}/{}",
                c.name
            );
            assert!(
                r.limits.clone().unwrap_or_default().contains_key("memory"),
                "{name}/{}",
                c.name
            );
        }
        for c in &spec.containers {
            let probe = c
                .readiness_probe
                .as_ref()
                .unwrap_or_else(|| panic!("{name}/{}", c.name));
            let get = probe.http_get.as_ref().unwrap();
            assert_eq!(get.port, IntOrString::Int(READINESS_PORT), "{name}");
            assert_eq!(get.path.as_deref(), Some("/healthz/ready"), "{name}");
        }
    }
}

#[test]
fn references_between_objects_resolve() {
    let objects = default_objects();
    let accounts: BTreeSet<&str> = objects
        .iter()
        .filter(|o| matches!(o, Object::ServiceAccount(ServiceAccount { .. })))
        .map(|o| o.name())
        .collect();
    for (name, spec) in pod_specs(&objects) {
        let sa = spec.service_account_name.as_deref().unwrap();
        assert!(
            accounts.contains(sa),
            "{name} runs as missing service account {sa}"
        );
        // Every mount has its volume.
        let volumes: BTreeSet<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for m in c.volume_mounts.iter().flatten() {
                assert!(
                    volumes.contains(m.name.as_str()),
                    "{name}/{}: no volume {}",
                    c.name,
                    m.name
                );
            }
        }
    }
    for o in &objects {
        let (role_ref, subjects) = match o {
            Object::ClusterRoleBinding(b) => (&b.role_ref, &b.subjects),
            Object::RoleBinding(b) => (&b.role_ref, &b.subjects),
            _ => continue,
        };
        let role_exists = objects
            .iter()
            .any(|r| r.kind() == role_ref.kind && r.name() == role_ref.name);
        assert!(
            role_exists,
            "{} binds missing {} {}",
            o.name(),
            role_ref.kind,
            role_ref.name
        );
        for s in subjects.iter().flatten() {
            assert!(
                accounts.contains(s.name.as_str()),
                "{} binds missing account {}",
                o.name(),
                s.name
            );
        }
    }

    // The Service and the PDB select exactly the Deployment's pods.
    let dep = deployment(&objects, CONTROL_PLANE).spec.as_ref().unwrap();
    let pod_labels = dep
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selects = |sel: &std::collections::BTreeMap<String, String>| {
        sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(selects(dep.selector.match_labels.as_ref().unwrap()));
    let svc = find(&objects, CONTROL_PLANE, |o| match o {
        Object::Service(s) => Some(s),
        _ => None,
    });
    let Service {
        spec: Some(svc_spec),
        ..
    } = svc
    else {
        panic!("service has no spec")
    };
    assert!(selects(svc_spec.selector.as_ref().unwrap()));
    let port = &svc_spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, XDS_PORT);
    let container_ports = main_container(dep.template.spec.as_ref().unwrap())
        .ports
        .clone()
        .unwrap();
    let target = match port.target_port.as_ref().unwrap() {
        IntOrString::String(s) => s.clone(),
        IntOrString::Int(i) => panic!("target port by number {i}"),
    };
    assert!(container_ports
        .iter()
        .any(|p| p.name.as_deref() == Some(&target) && p.container_port == XDS_PORT));
    let pdb = find(&objects, CONTROL_PLANE, |o| match o {
        Object::PodDisruptionBudget(p) => Some(p),
        _ => None,
    });
    let PodDisruptionBudget {
        spec: Some(pdb_spec),
        ..
    } = pdb
    else {
        panic!("pdb has no spec")
    };
    assert!(selects(
        pdb_spec
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()
    ));
    // The budget must leave room to evict one replica, or it blocks every node drain.
    let Some(IntOrString::Int(min)) = pdb_spec.min_available else {
        panic!("minAvailable not a number")
    };
    assert!(dep.replicas.unwrap() > min);
}

#[test]
fn ztunnel_and_cni_agent_share_the_zds_socket_through_the_same_host_path() {
    let objects = default_objects();
    let host_dir_of = |ds: &str, container: &Container, spec: &PodSpec, path: &str| -> String {
        let m = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| path.starts_with(&format!("{}/", m.mount_path)))
            .unwrap_or_else(|| panic!("{ds}: nothing mounted over {path}"));
        let v = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .unwrap();
        v.host_path
            .as_ref()
            .unwrap_or_else(|| panic!("{ds}: {} is not a host path", v.name))
            .path
            .clone()
    };
    let zt = daemonset(&objects, ZTUNNEL)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let cni = daemonset(&objects, CNI_AGENT)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let zt_socket = env_value(main_container(zt), "INPOD_UDS").unwrap();
    let agent_socket = env_value(main_container(cni), "AMBIT_CNI_ZDS_SOCKET").unwrap();
    assert_eq!(zt_socket, agent_socket);
    assert_eq!(
        host_dir_of(ZTUNNEL, main_container(zt), zt, zt_socket),
        host_dir_of(CNI_AGENT, main_container(cni), cni, agent_socket),
    );
    // The plugin socket is written into the node's CNI config and dialled by `ambit-cni` on
    // the host, so it must sit on a host path mounted at the identical path.
    let plugin = env_value(main_container(cni), "AMBIT_CNI_PLUGIN_SOCKET").unwrap();
    let host = host_dir_of(CNI_AGENT, main_container(cni), cni, plugin);
    assert!(
        plugin.starts_with(&format!("{host}/")),
        "{plugin} is under host {host}"
    );
}

#[test]
fn cni_agent_runs_on_the_host_network_and_installs_the_plugin_first() {
    let objects = default_objects();
    let cni = daemonset(&objects, CNI_AGENT)
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(cni.host_network, Some(true));
    let init = &cni.init_containers.as_ref().unwrap()[0];
    let script = init.command.as_ref().unwrap().join(" ");
    assert!(script.contains("cp /usr/local/bin/ambit-cni"), "{script}");
    assert!(
        script.contains("mv -f \"$tmp\" /host/opt/cni/bin/ambit-cni"),
        "{script}"
    );
    let bin_mount = init
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/host/opt/cni/bin")
        .unwrap();
    let bin_volume = cni
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == bin_mount.name)
        .unwrap();
    assert_eq!(bin_volume.host_path.as_ref().unwrap().path, "/opt/cni/bin");
    let agent = main_container(cni);
    let conf_dir = env_value(agent, "AMBIT_CNI_CONF_DIR").unwrap();
    let conf_mount = agent
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == conf_dir)
        .unwrap();
    let conf_volume = cni
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == conf_mount.name)
        .unwrap();
    assert_eq!(
        conf_volume.host_path.as_ref().unwrap().path,
        "/etc/cni/net.d"
    );
    let netns = agent
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/var/run/netns")
        .unwrap();
    assert_eq!(netns.mount_propagation.as_deref(), Some("HostToContainer"));
}

#[test]
fn crds_serve_v1_as_storage_with_structural_schemas() {
    let objects = default_objects();
    let crds: Vec<_> = objects
        .iter()
        .filter_map(|o| match o {
            Object::CustomResourceDefinition(c) => Some(c),
            _ => None,
        })
        .collect();
    let kinds: BTreeSet<&str> = crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["AuthorizationPolicy", "PeerAuthentication"])
    );
    for crd in crds {
        assert_eq!(crd.spec.group, "security.istio.io");
        let storage: Vec<_> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(storage, vec!["v1"]);
        for v in &crd.spec.versions {
            let schema = v
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap();
            assert_eq!(schema.type_.as_deref(), Some("object"));
            let spec = &schema.properties.as_ref().unwrap()["spec"];
            assert_eq!(spec.type_.as_deref(), Some("object"));
            assert_eq!(spec.x_kubernetes_preserve_unknown_fields, Some(true));
        }
    }
}
