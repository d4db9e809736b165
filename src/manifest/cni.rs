//! The cni-agent: one per node, in the node's network namespace.
//!
//! An init container copies `ambit-cni` into the node's `/opt/cni/bin`; the agent then chains
//! it into the primary CNI's config (`--cni-conf-dir`) and keeps it chained. Paths the
//! node's container runtime and `ambit-cni` see (the plugin socket, the pod netns bind mounts,
//! the ZDS socket) are mounted at the same path inside the container, because the agent
//! writes them into the CNI config and receives them in CNI requests as they are.
//!
//! Host `/proc` is deliberately not mounted (and `hostPID` not set): containerd and CRI-O hand
//! the plugin `/var/run/netns/...` paths, and the agent reads `/proc/net/tcp` from inside the
//! pod netns (via `nsenter`), where the container's own `/proc` already shows the right table.
//!
//! Capabilities: NET_ADMIN (iptables and routes in pod and node namespaces), NET_RAW (iptables
//! opens raw sockets), SYS_ADMIN (`setns` into pod network namespaces). Not privileged.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::common::{self, env, env_field, meta, mount, rule};
use super::ztunnel::{ZDS_DIR, ZDS_SOCKET};
use super::{Object, Options, CNI_AGENT};

/// Where the image holds the plugin binary, and where the node's runtime looks for plugins.
const PLUGIN_IN_IMAGE: &str = "/usr/local/bin/ambit-cni";
const HOST_CNI_BIN: &str = "/opt/cni/bin";
const HOST_CNI_CONF: &str = "/etc/cni/net.d";
/// Where the agent sees the node's CNI config directory. Unlike the sockets, no path inside it
/// is handed to the runtime, so it can live under `/host`.
const CNI_CONF_IN_CONTAINER: &str = "/host/etc/cni/net.d";
/// Host directory of the plugin socket and the agent's per-pod state.
const AMBIT_RUN_DIR: &str = "/var/run/ambit";
const PLUGIN_SOCKET: &str = "/var/run/ambit/cni-plugin.sock";
const NETNS_DIR: &str = "/var/run/netns";
/// The iptables lock: shared with the host so the agent's `iptables-restore` and kube-proxy's
/// (or the primary CNI's) never run at once (iptables-legacy takes it with flock).
const XTABLES_LOCK: &str = "/run/xtables.lock";

/// The install step: copy then rename, so a runtime exec'ing `ambit-cni` during an upgrade
/// sees the old or the new binary, never a half-written one (and the copy never hits
/// ETXTBSY on the running binary).
fn install_script() -> String {
    format!(
        "set -eu\n\
         tmp=/host{HOST_CNI_BIN}/.ambit-cni.tmp\n\
         cp {PLUGIN_IN_IMAGE} \"$tmp\"\n\
         chmod 0755 \"$tmp\"\n\
         mv -f \"$tmp\" /host{HOST_CNI_BIN}/ambit-cni\n"
    )
}

pub fn rbac(ns: &str) -> Vec<Object> {
    // Enrollment is decided from pod and namespace labels only; nothing else is read.
    let cluster_role = ClusterRole {
        metadata: meta(CNI_AGENT, None, CNI_AGENT),
        rules: Some(vec![rule(
            &[""],
            &["namespaces", "pods"],
            &["get", "list", "watch"],
            &[],
        )]),
        ..Default::default()
    };
    let binding = ClusterRoleBinding {
        metadata: meta(CNI_AGENT, None, CNI_AGENT),
        role_ref: common::role_ref("ClusterRole", CNI_AGENT),
        subjects: Some(vec![common::service_account_subject(CNI_AGENT, ns)]),
    };
    vec![
        ServiceAccount {
            metadata: meta(CNI_AGENT, Some(ns), CNI_AGENT),
            ..Default::default()
        }
        .into(),
        cluster_role.into(),
        binding.into(),
    ]
}

pub fn workload(opts: &Options) -> Vec<Object> {
    let ns = opts.namespace.as_str();
    let mut install = common::container("install-cni", opts.image("cni-agent"));
    install.command = Some(vec!["sh".to_string(), "-c".to_string(), install_script()]);
    install.resources = Some(common::resources("10m", "16Mi", Some("100m"), "64Mi"));
    // Root only to own the files it writes in the root-owned /opt/cni/bin; no capability.
    install.security_context = Some(common::root_security_context(&[]));
    install.volume_mounts = Some(vec![mount("cni-bin-dir", &format!("/host{HOST_CNI_BIN}"))]);

    let mut agent = common::container("cni-agent", opts.image("cni-agent"));
    agent.command = Some(vec!["cni-agent".to_string()]);
    agent.ports = Some(vec![
        common::port("metrics", 15020),
        common::port("http-ready", super::READINESS_PORT),
    ]);
    agent.env = Some(vec![
        env_field("NODE_NAME", "spec.nodeName"),
        env("AMBIT_CNI_CONF_DIR", CNI_CONF_IN_CONTAINER),
        env("AMBIT_CNI_PLUGIN_SOCKET", PLUGIN_SOCKET),
        env("AMBIT_CNI_ZDS_SOCKET", ZDS_SOCKET),
    ]);
    agent.readiness_probe = Some(common::readiness_probe());
    agent.resources = Some(common::resources("50m", "64Mi", Some("500m"), "256Mi"));
    agent.security_context = Some(common::root_security_context(&[
        "NET_ADMIN",
        "NET_RAW",
        "SYS_ADMIN",
    ]));
    let mut netns = mount("netns-dir", NETNS_DIR);
    // Pod netns bind mounts appear after the agent started; without propagation the agent
    // would see only those that existed at its start.
    netns.mount_propagation = Some("HostToContainer".to_string());
    agent.volume_mounts = Some(vec![
        mount("cni-conf-dir", CNI_CONF_IN_CONTAINER),
        mount("ambit-run-dir", AMBIT_RUN_DIR),
        mount("ztunnel-sock-dir", ZDS_DIR),
        netns,
        mount("xtables-lock", XTABLES_LOCK),
        mount("tmp", "/tmp"),
    ]);

    let volumes = vec![
        common::host_path_volume("cni-bin-dir", HOST_CNI_BIN, "DirectoryOrCreate"),
        common::host_path_volume("cni-conf-dir", HOST_CNI_CONF, "DirectoryOrCreate"),
        common::host_path_volume("ambit-run-dir", AMBIT_RUN_DIR, "DirectoryOrCreate"),
        common::host_path_volume("ztunnel-sock-dir", ZDS_DIR, "DirectoryOrCreate"),
        // DirectoryOrCreate: the runtime creates it only with the first non-host-network pod.
        common::host_path_volume("netns-dir", NETNS_DIR, "DirectoryOrCreate"),
        common::host_path_volume("xtables-lock", XTABLES_LOCK, "FileOrCreate"),
        common::empty_dir_volume("tmp"),
    ];

    let daemonset = DaemonSet {
        metadata: meta(CNI_AGENT, Some(ns), CNI_AGENT),
        spec: Some(DaemonSetSpec {
            selector: common::selector(CNI_AGENT),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(common::pod_labels(CNI_AGENT)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(CNI_AGENT.to_string()),
                    host_network: Some(true),
                    // Host network, yet the agent resolves the API server through cluster DNS.
                    dns_policy: Some("ClusterFirstWithHostNet".to_string()),
                    node_selector: Some(common::node_selector_linux()),
                    tolerations: Some(common::tolerate_everything()),
                    priority_class_name: Some("system-node-critical".to_string()),
                    init_containers: Some(vec![install]),
                    containers: vec![agent],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![daemonset.into()]
}
