//! The network configuration on stdin: the conflist's `cniVersion` and `name`, our entry's
//! `type` and options, and (chained) the previous plugin's result.
//!
//! Errors are ordered as a runtime would want to read them: not JSON at all (6), then a version
//! we do not speak (1), then anything else wrong with the config (4).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{
    CniError, Command, NetConf, PluginOptions, DEFAULT_EXCLUDE_NAMESPACES, DEFAULT_TIMEOUT_MS,
    MAX_TIMEOUT_MS, SUPPORTED_VERSIONS,
};
use crate::protocol::DEFAULT_PLUGIN_SOCKET;

/// The fields we read; everything else (`runtimeConfig`, `capabilities`, `args`, `dns`, ...) is
/// accepted and ignored, as the spec asks of plugins.
#[derive(Deserialize)]
struct RawNetConf {
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    agent_socket: Option<String>,
    timeout_ms: Option<u64>,
    exclude_namespaces: Option<Vec<String>>,
}

pub(super) fn parse(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::Decoding {
            reason: "stdin is empty".to_owned(),
        });
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|e| CniError::Decoding {
        reason: e.to_string(),
    })?;
    let Some(obj) = value.as_object() else {
        return Err(invalid("(top level)", "not a JSON object".to_owned()));
    };
    let cni_version = match obj.get("cniVersion") {
        None => return Err(invalid("cniVersion", "missing".to_owned())),
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => v.clone(),
        Some(Value::String(v)) => return Err(CniError::IncompatibleVersion { version: v.clone() }),
        Some(other) => return Err(invalid("cniVersion", format!("not a string: {other}"))),
    };
    if command == Command::Check && cni_version.starts_with("0.3.") {
        // CHECK arrived with 0.4.0; a 0.3.x runtime asking for it is confused.
        return Err(CniError::IncompatibleVersion {
            version: cni_version,
        });
    }

    let raw: RawNetConf =
        serde_json::from_value(value).map_err(|e| invalid("(fields)", e.to_string()))?;
    let name = raw
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("name", "missing".to_owned()))?;
    let plugin_type = raw
        .plugin_type
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("type", "missing".to_owned()))?;

    let prev_result = raw.prev_result.filter(|v| !v.is_null());
    if command == Command::Add && prev_result.is_none() {
        return Err(invalid(
            "prevResult",
            "missing: ambit-cni is a chained plugin and must follow the primary CNI in a \
             conflist"
                .to_owned(),
        ));
    }
    let pod_ips = match &prev_result {
        Some(prev) => result_ips(prev)?,
        None => Vec::new(),
    };

    let agent_socket = match raw.agent_socket {
        None => PathBuf::from(DEFAULT_PLUGIN_SOCKET),
        Some(s) if s.is_empty() => return Err(invalid("agent_socket", "empty".to_owned())),
        Some(s) => PathBuf::from(s),
    };
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(invalid(
            "timeout_ms",
            format!("{timeout_ms} is outside 1..={MAX_TIMEOUT_MS}"),
        ));
    }
    let exclude_namespaces = raw.exclude_namespaces.unwrap_or_else(|| {
        DEFAULT_EXCLUDE_NAMESPACES
            .iter()
            .map(|ns| (*ns).to_owned())
            .collect()
    });

    Ok(NetConf {
        cni_version,
        name,
        plugin_type,
        prev_result,
        pod_ips,
        options: PluginOptions {
            agent_socket,
            timeout: Duration::from_millis(timeout_ms),
            exclude_namespaces,
        },
    })
}

/// The addresses in a CNI result's `ips[].address` (`"10.1.0.130/25"`), in order, without
/// duplicates. A result without `ips` (e.g. after a plugin that only set up interfaces) is empty.
fn result_ips(prev: &Value) -> Result<Vec<IpAddr>, CniError> {
    let Some(obj) = prev.as_object() else {
        return Err(invalid("prevResult", "not a JSON object".to_owned()));
    };
    let ips = match obj.get("ips") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(ips)) => ips,
        Some(_) => return Err(invalid("prevResult.ips", "not an array".to_owned())),
    };
    let mut out = Vec::with_capacity(ips.len());
    for (i, entry) in ips.iter().enumerate() {
        let Some(address) = entry.get("address").and_then(Value::as_str) else {
            return Err(invalid(
                "prevResult.ips[].address",
                format!("entry {i} has no address string"),
            ));
        };
        let ip = parse_cidr_address(address).ok_or_else(|| {
            invalid(
                "prevResult.ips[].address",
                format!("entry {i}: {address:?} is not ADDRESS/PREFIX"),
            )
        })?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// `"10.1.0.130/25"` → `10.1.0.130`, checking the prefix length fits the family.
fn parse_cidr_address(s: &str) -> Option<IpAddr> {
    let (addr, prefix) = s.split_once('/')?;
    let ip: IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(ip)
}

fn invalid(field: &'static str, reason: String) -> CniError {
    CniError::InvalidConfig { field, reason }
}
