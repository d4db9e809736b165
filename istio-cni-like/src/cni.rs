//! The CNI plugin `ambit-cni`: a chained plugin (CNI spec 1.0.0, also 0.3.x and 0.4.0) that the
//! container runtime execs after the primary CNI for every pod sandbox.
//!
//! Invariants:
//! - [`parse_request`] is pure apart from one `stat` of `CNI_NETNS`: environment and stdin in, a
//!   typed request or a typed [`CniError`] out. It never panics on input (fuzzed via
//!   [`fuzz_parse`]) and rejects a bad request before anything contacts the agent, so a bad
//!   request installs nothing.
//! - ADD prints a success result only after the agent answered `Captured` or `NotEnrolled`.
//!   Everything else (agent down, timeout, garbage reply, `Failed`) is a CNI error, so the runtime
//!   tears the sandbox down and retries: capture fails closed, never open.
//! - A success result is the previous plugin's result, unchanged except for `cniVersion`, which
//!   the spec requires to match the request's.
//! - DEL succeeds once the request parses, whatever the agent says: the spec requires DEL to
//!   tolerate missing state, and the agent reconciles pods that went away on its own.
//! - No async runtime and no start-up work: one exec handles one request and exits.

mod args;
mod exec;
mod netconf;
#[cfg(test)]
pub(crate) mod tests;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::protocol::Command;
use crate::protocol::PodEvent;

pub use exec::{ask_agent, run, AgentError, Outcome};

/// The plugin's `type` in a CNI config list; how the installer recognises its own entry.
pub const PLUGIN_TYPE: &str = "ambit-cni";
/// CNI versions this plugin speaks; the runtime picks one via the config's `cniVersion`.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version reported by VERSION and used in error results when the request's is unusable.
pub const LATEST_VERSION: &str = "1.0.0";
/// How long ADD waits for the agent (and, through it, ztunnel) by default. Generous because the
/// runtime retries a failed ADD from scratch, which is slower than waiting a little longer.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Upper bound on `timeout_ms`: kubelet gives up on a sandbox after a few minutes anyway.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Namespaces passed straight through without asking the agent, by default. `kube-system` holds
/// what the mesh itself needs to start (the CNI, DNS, the agent's own dependencies): asking an
/// agent that is not running yet would deadlock the node, and these pods are never enrolled.
pub const DEFAULT_EXCLUDE_NAMESPACES: &[&str] = &["kube-system"];

/// A parsed CNI invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CniRequest {
    /// `VERSION`: report the supported versions; nothing else is read.
    Version,
    /// ADD, DEL or CHECK of a pod sandbox's attachment.
    Pod(Box<PodRequest>),
}

/// ADD, DEL or CHECK, with everything the plugin needs to forward it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRequest {
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`; checked to exist for ADD and CHECK, possibly empty on DEL.
    pub netns: String,
    /// `CNI_IFNAME` (possibly empty on DEL).
    pub ifname: String,
    /// The pod's identity from `CNI_ARGS`.
    pub pod: PodArgs,
    /// The network configuration from stdin.
    pub config: NetConf,
}

/// Pod identity from `CNI_ARGS` (`K8S_POD_NAME=..;K8S_POD_NAMESPACE=..;K8S_POD_UID=..`).
/// Fields are empty when absent; ADD and CHECK require name and namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// The network configuration the runtime passed on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// `name` of the network (the conflist's name).
    pub name: String,
    /// `type` (normally [`PLUGIN_TYPE`]).
    pub plugin_type: String,
    /// `prevResult`: the previous plugin's result, passed through on success.
    pub prev_result: Option<serde_json::Value>,
    /// The pod's addresses, from `prevResult.ips[].address`.
    pub pod_ips: Vec<IpAddr>,
    /// Our own options.
    pub options: PluginOptions,
}

/// `ambit-cni`'s options in its conflist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginOptions {
    /// `agent_socket`: the cni-agent's unix socket (default `protocol::DEFAULT_PLUGIN_SOCKET`).
    pub agent_socket: PathBuf,
    /// `timeout_ms`: the whole budget for talking to the agent (connect, send, reply).
    pub timeout: Duration,
    /// `exclude_namespaces`: pods of these namespaces pass straight through.
    pub exclude_namespaces: Vec<String>,
}

impl PodRequest {
    /// Whether the pod's namespace is excluded, so the agent is never asked.
    pub fn is_excluded(&self) -> bool {
        self.config
            .options
            .exclude_namespaces
            .contains(&self.pod.namespace)
    }

    /// The event forwarded to the agent.
    pub fn to_event(&self) -> PodEvent {
        PodEvent {
            command: self.command,
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            pod_name: self.pod.name.clone(),
            pod_namespace: self.pod.namespace.clone(),
            pod_uid: self.pod.uid.clone(),
            pod_ips: self.config.pod_ips.clone(),
        }
    }

    /// The success result of ADD: `prevResult` unchanged but for `cniVersion`, which must be the
    /// request's. Without a `prevResult` (only possible outside ADD) an empty result.
    pub fn passthrough_result(&self) -> String {
        let mut result = self
            .config
            .prev_result
            .clone()
            .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
        if let Some(obj) = result.as_object_mut() {
            obj.insert(
                "cniVersion".to_owned(),
                serde_json::Value::String(self.config.cni_version.clone()),
            );
        }
        result.to_string()
    }
}

/// Everything that makes the plugin fail, each mapped to a CNI error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniError {
    /// The config's `cniVersion` is not one we speak (code 1).
    #[error("incompatible CNI version {version:?} (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0)")]
    IncompatibleVersion { version: String },
    /// The network config is valid JSON but wrong (code 4).
    #[error("invalid network config: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// Stdin is not JSON (code 6).
    #[error("cannot decode the network config on stdin: {reason}")]
    Decoding { reason: String },
    /// A `CNI_*` environment variable is missing or wrong (code 7).
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    /// The agent could not be asked or did not answer in time (code 11: the runtime retries).
    #[error("cni-agent unavailable: {0}")]
    Agent(#[from] AgentError),
    /// The agent answered that it could not capture the pod (code 11: the runtime retries).
    #[error("cni-agent could not capture pod {pod}: {message}")]
    CaptureFailed { pod: String, message: String },
    /// CHECK: the agent found the pod's capture broken (code 100).
    #[error("capture check failed for pod {pod}: {message}")]
    CheckFailed { pod: String, message: String },
}

impl CniError {
    /// The CNI error code: 1-99 are the spec's, 100+ are ours.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => 1,
            CniError::InvalidConfig { .. } => 4,
            CniError::Decoding { .. } => 6,
            CniError::InvalidEnv { .. } => 7,
            CniError::Agent(_) | CniError::CaptureFailed { .. } => 11,
            CniError::CheckFailed { .. } => 100,
        }
    }

    /// The short `msg` of the error result; the full story goes in `details`.
    pub fn msg(&self) -> &'static str {
        match self {
            CniError::IncompatibleVersion { .. } => "incompatible CNI version",
            CniError::InvalidConfig { .. } => "invalid network config",
            CniError::Decoding { .. } => "failed to decode network config",
            CniError::InvalidEnv { .. } => "invalid environment variables",
            CniError::Agent(_) => "cni-agent unavailable; try again later",
            CniError::CaptureFailed { .. } => "pod capture failed; try again later",
            CniError::CheckFailed { .. } => "pod capture check failed",
        }
    }

    /// The CNI error result printed on stdout.
    pub fn to_result_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.msg(),
            "details": self.to_string(),
        })
        .to_string()
    }
}

/// Parses a CNI invocation: `env` looks up `CNI_*` variables, `stdin` is the network config.
///
/// The only I/O is checking that `CNI_NETNS` exists (ADD and CHECK), so that a pod whose netns
/// is already gone fails here rather than half-way through the agent's work.
pub fn parse_request(
    env: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<CniRequest, CniError> {
    let command = match env("CNI_COMMAND").as_deref() {
        None | Some("") => return Err(missing("CNI_COMMAND")),
        Some("VERSION") => return Ok(CniRequest::Version),
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some(other) => {
            return Err(CniError::InvalidEnv {
                var: "CNI_COMMAND",
                reason: format!("unknown command {other:?} (expected ADD, DEL, CHECK or VERSION)"),
            })
        }
    };
    let config = netconf::parse(stdin, command)?;

    let container_id = required(env, "CNI_CONTAINERID")?;
    let (netns, ifname) = if command == Command::Del {
        // DEL must work for a sandbox whose netns is already gone.
        (
            env("CNI_NETNS").unwrap_or_default(),
            env("CNI_IFNAME").unwrap_or_default(),
        )
    } else {
        let netns = required(env, "CNI_NETNS")?;
        if !std::path::Path::new(&netns).exists() {
            return Err(CniError::InvalidEnv {
                var: "CNI_NETNS",
                reason: format!("network namespace {netns:?} does not exist"),
            });
        }
        (netns, required(env, "CNI_IFNAME")?)
    };

    let pod = args::parse(env("CNI_ARGS").as_deref().unwrap_or(""))?;
    if command != Command::Del {
        // Without the pod's identity the agent cannot decide enrollment; passing the pod through
        // would be a silent bypass, so fail instead. (DEL needs only the container id.)
        if pod.name.is_empty() {
            return Err(CniError::InvalidEnv {
                var: "CNI_ARGS",
                reason: "K8S_POD_NAME missing".to_owned(),
            });
        }
        if pod.namespace.is_empty() {
            return Err(CniError::InvalidEnv {
                var: "CNI_ARGS",
                reason: "K8S_POD_NAMESPACE missing".to_owned(),
            });
        }
    }

    Ok(CniRequest::Pod(Box::new(PodRequest {
        command,
        container_id,
        netns,
        ifname,
        pod,
        config,
    })))
}

/// The `cniVersion` to put in an error result: the request's if it is one we speak, else the
/// latest, so even a request we cannot parse gets a well-formed answer.
pub fn result_version(stdin: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<VersionOnly>(stdin)
        .ok()
        .and_then(|v| v.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned())
}

/// The VERSION result.
pub fn version_result() -> String {
    serde_json::json!({
        "cniVersion": LATEST_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

/// Fuzz entry point: bytes up to the first NUL are `KEY=VALUE` lines of environment, the rest is
/// stdin. Exercises parsing and result rendering; must never panic.
pub fn fuzz_parse(bytes: &[u8]) {
    let (env_part, stdin) = match bytes.iter().position(|&b| b == 0) {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    let env_text = String::from_utf8_lossy(env_part);
    let vars: Vec<(&str, &str)> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let env = |key: &str| {
        vars.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    };
    let version = result_version(stdin);
    match parse_request(&env, stdin) {
        Ok(CniRequest::Version) => {
            let _ = version_result();
        }
        Ok(CniRequest::Pod(req)) => {
            let _ = req.to_event();
            let _ = req.passthrough_result();
            let _ = req.is_excluded();
        }
        Err(e) => {
            let _ = e.to_result_json(&version);
        }
    }
}

fn missing(var: &'static str) -> CniError {
    CniError::InvalidEnv {
        var,
        reason: "not set (or not UTF-8)".to_owned(),
    }
}

fn required(env: &impl Fn(&str) -> Option<String>, var: &'static str) -> Result<String, CniError> {
    match env(var) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(missing(var)),
    }
}
