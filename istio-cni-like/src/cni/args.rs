//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, as kubelet's runtimes set them
//! (`IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`).
//!
//! Following the CNI conventions, a key we do not know is an error unless `IgnoreUnknown` is
//! true. A pair without `=`, a repeated key or a value with control characters is garbage and
//! always an error: the pod's identity decides whether it is captured, so it is never guessed.

use super::{CniError, PodArgs};

/// Longest value accepted: Kubernetes names are at most 253 bytes, UIDs 36.
const MAX_VALUE_LEN: usize = 253;

pub(super) fn parse(raw: &str) -> Result<PodArgs, CniError> {
    let mut pod = PodArgs::default();
    let mut seen: Vec<&str> = Vec::new();
    let mut unknown: Vec<&str> = Vec::new();
    let mut ignore_unknown = false;
    // Empty segments (a trailing `;`, `;;`) are tolerated: some runtimes emit them.
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(garbage(format!("{pair:?} is not KEY=VALUE")));
        };
        if key.is_empty() {
            return Err(garbage(format!("{pair:?} has an empty key")));
        }
        if seen.contains(&key) {
            return Err(garbage(format!("{key} given twice")));
        }
        seen.push(key);
        if value.len() > MAX_VALUE_LEN {
            return Err(garbage(format!(
                "{key} is {} bytes long (at most {MAX_VALUE_LEN})",
                value.len()
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(garbage(format!("{key} contains control characters")));
        }
        match key {
            "K8S_POD_NAME" => pod.name = value.to_owned(),
            "K8S_POD_NAMESPACE" => pod.namespace = value.to_owned(),
            "K8S_POD_UID" => pod.uid = value.to_owned(),
            // Known and set by containerd and CRI-O; we have no use for it.
            "K8S_POD_INFRA_CONTAINER_ID" => {}
            "IgnoreUnknown" => {
                ignore_unknown = match value.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(garbage(format!(
                            "IgnoreUnknown={value:?} (expected 1, true, 0 or false)"
                        )))
                    }
                }
            }
            other => unknown.push(other),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(garbage(format!(
            "unknown keys {} (and no IgnoreUnknown=1)",
            unknown.join(", ")
        )));
    }
    Ok(pod)
}

fn garbage(reason: String) -> CniError {
    CniError::InvalidEnv {
        var: "CNI_ARGS",
        reason,
    }
}
