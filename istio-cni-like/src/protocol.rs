//! The plugin ⇄ agent protocol: one JSON request line from the plugin, one JSON response line
//! from the agent, over a unix stream socket. Both ends are in this crate, so the format is
//! ours to evolve; it stays line-delimited JSON so an operator can poke it with `socat`.

use serde::{Deserialize, Serialize};

/// Where the agent listens for the plugin by default.
pub const DEFAULT_PLUGIN_SOCKET: &str = "/var/run/ambit/cni-plugin.sock";

/// The CNI command being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
}

/// A pod event, as the plugin learned it from the CNI request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: path of the pod's network namespace (may be empty on DEL).
    pub netns: String,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_name: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub pod_namespace: String,
    /// `K8S_POD_UID` from `CNI_ARGS` (may be empty with older runtimes).
    pub pod_uid: String,
    /// The pod's IPs, from the previous plugin's result.
    pub pod_ips: Vec<std::net::IpAddr>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reply {
    /// Rules installed and ztunnel acknowledged the pod (ADD), or released (DEL), or verified (CHECK).
    Captured,
    /// The pod's namespace is not enrolled (or the pod opted out): nothing was done.
    NotEnrolled,
    /// DEL of a pod the agent did not know, or a successful DEL.
    Released,
    /// The agent could not do it; the plugin turns this into a CNI error.
    Failed { message: String },
}
