//! Enrollment: which pods ambit captures, decided from Kubernetes metadata alone.
//!
//! Pure: objects in, decision out. No I/O, no clock, so every rule below is unit-tested.
//!
//! Rules (Istio ambient's, so existing labels and annotations keep their meaning):
//! - `hostNetwork` pods are never captured (their netns is the node's).
//! - A pod labelled `istio.io/dataplane-mode=none` opts out, whatever its namespace says.
//! - A pod is enrolled when its namespace, or the pod itself, is labelled
//!   `istio.io/dataplane-mode=ambient`.
//! - When the namespace is not known (yet), the answer is [`Enrollment::Unknown`]: the caller must
//!   not treat that as "not enrolled", or a pod could start uncaptured because metadata lagged.
//! - Exclusion annotations that do not parse make the decision [`Enrollment::Invalid`], naming
//!   the annotation: a typo must not silently capture (or bypass) more than the user asked for.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use mesh::redirect::RedirectConfig;
use serde::Deserialize;

#[cfg(test)]
mod tests;

/// Label selecting the data plane of a namespace or pod.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// [`DATAPLANE_MODE_LABEL`] value enrolling in ambient capture.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// [`DATAPLANE_MODE_LABEL`] value opting a pod out.
pub const DATAPLANE_MODE_NONE: &str = "none";
/// Comma list of outbound TCP ports not redirected to ztunnel.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// Comma list of inbound TCP ports not redirected to ztunnel.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Comma list of outbound destination CIDRs (or plain addresses) not redirected to ztunnel.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";

/// The parts of a Kubernetes Namespace enrollment depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The parts of a Kubernetes Pod enrollment and ztunnel depend on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// `metadata.uid`, when the manifest has one.
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.serviceAccountName` (Kubernetes' default is `default`).
    pub service_account: String,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `status.podIPs[].ip`, or `status.podIP` when only that is set.
    pub pod_ips: Vec<IpAddr>,
}

/// One object this agent cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
}

/// Why an object could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("object has no `kind`")]
    MissingKind,
    #[error("{kind} has no metadata.name")]
    MissingName { kind: &'static str },
    #[error("{kind} {name}: {field} is not an IP address: {value:?}")]
    BadIp {
        kind: &'static str,
        name: String,
        field: &'static str,
        value: String,
    },
    #[error("does not have the shape of a Kubernetes object: {0}")]
    Shape(String),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    kind: Option<String>,
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: RawPodSpec,
    #[serde(default)]
    status: RawPodStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    // Kubernetes allows `labels: null`; treat it as empty.
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

// Namespace specs (`finalizers`) share the field name `spec`; every field is optional and
// unknown fields are ignored, so they deserialize into this harmlessly.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodSpec {
    node_name: Option<String>,
    host_network: Option<bool>,
    service_account_name: Option<String>,
    service_account: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodStatus {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<RawPodIp>>,
}

#[derive(Deserialize)]
struct RawPodIp {
    ip: String,
}

impl Object {
    /// Reads a Namespace or Pod from a deserializable value (a YAML or JSON document).
    /// `Ok(None)` for any other kind, which callers skip.
    pub fn from_yaml(value: serde_yaml::Value) -> Result<Option<Object>, ObjectError> {
        let raw: RawObject =
            serde_yaml::from_value(value).map_err(|e| ObjectError::Shape(e.to_string()))?;
        Object::from_raw(raw)
    }

    fn from_raw(raw: RawObject) -> Result<Option<Object>, ObjectError> {
        let kind = raw.kind.ok_or(ObjectError::MissingKind)?;
        match kind.as_str() {
            "Namespace" => {
                let name = raw
                    .metadata
                    .name
                    .ok_or(ObjectError::MissingName { kind: "Namespace" })?;
                Ok(Some(Object::Namespace(Namespace {
                    name,
                    labels: raw.metadata.labels.unwrap_or_default(),
                })))
            }
            "Pod" => {
                let name = raw
                    .metadata
                    .name
                    .ok_or(ObjectError::MissingName { kind: "Pod" })?;
                let parse_ip = |field: &'static str, value: &str| {
                    value
                        .trim()
                        .parse::<IpAddr>()
                        .map_err(|_| ObjectError::BadIp {
                            kind: "Pod",
                            name: name.clone(),
                            field,
                            value: value.to_owned(),
                        })
                };
                let mut pod_ips = Vec::new();
                match (&raw.status.pod_ips, &raw.status.pod_ip) {
                    (Some(ips), _) if !ips.is_empty() => {
                        for ip in ips {
                            pod_ips.push(parse_ip("status.podIPs[].ip", &ip.ip)?);
                        }
                    }
                    (_, Some(ip)) if !ip.is_empty() => pod_ips.push(parse_ip("status.podIP", ip)?),
                    _ => {}
                }
                Ok(Some(Object::Pod(Pod {
                    namespace: raw
                        .metadata
                        .namespace
                        .unwrap_or_else(|| "default".to_owned()),
                    uid: raw.metadata.uid.filter(|u| !u.is_empty()),
                    labels: raw.metadata.labels.unwrap_or_default(),
                    annotations: raw.metadata.annotations.unwrap_or_default(),
                    node_name: raw.spec.node_name,
                    service_account: raw
                        .spec
                        .service_account_name
                        .or(raw.spec.service_account)
                        .unwrap_or_else(|| "default".to_owned()),
                    host_network: raw.spec.host_network.unwrap_or(false),
                    pod_ips,
                    name,
                })))
            }
            _ => Ok(None),
        }
    }
}

/// Why a pod is deliberately not captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotEnrolledReason {
    /// `spec.hostNetwork: true`.
    HostNetwork,
    /// Pod label `istio.io/dataplane-mode=none`.
    PodOptedOut,
    /// Neither the namespace nor the pod is labelled `istio.io/dataplane-mode=ambient`.
    NotAmbient,
}

impl fmt::Display for NotEnrolledReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotEnrolledReason::HostNetwork => "pod uses the host network",
            NotEnrolledReason::PodOptedOut => "pod is labelled istio.io/dataplane-mode=none",
            NotEnrolledReason::NotAmbient => {
                "neither namespace nor pod is labelled istio.io/dataplane-mode=ambient"
            }
        })
    }
}

/// An exclusion annotation that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {problem} in {value:?}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
    pub problem: String,
}

/// The enrollment decision for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// Capture the pod with these rules.
    Enrolled(RedirectConfig),
    /// Leave the pod alone.
    NotEnrolled(NotEnrolledReason),
    /// Not enough metadata to decide (namespace not known yet): fail closed.
    Unknown(String),
    /// The pod asks for something that cannot be honoured: fail, naming what.
    Invalid(AnnotationError),
}

/// [`decide_with`] on top of the default redirect configuration.
pub fn decide(ns: Option<&Namespace>, pod: &Pod) -> Enrollment {
    decide_with(&RedirectConfig::default(), ns, pod)
}

/// Decides whether `pod` (in namespace `ns`, `None` when that namespace is not known) is
/// captured; if so, `base` plus the pod's exclusion annotations is its redirect config.
pub fn decide_with(base: &RedirectConfig, ns: Option<&Namespace>, pod: &Pod) -> Enrollment {
    if pod.host_network {
        return Enrollment::NotEnrolled(NotEnrolledReason::HostNetwork);
    }
    let pod_mode = pod.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str);
    if pod_mode == Some(DATAPLANE_MODE_NONE) {
        return Enrollment::NotEnrolled(NotEnrolledReason::PodOptedOut);
    }
    if pod_mode != Some(DATAPLANE_MODE_AMBIENT) {
        let Some(ns) = ns else {
            return Enrollment::Unknown(format!(
                "namespace {:?} of pod {}/{} is not known yet",
                pod.namespace, pod.namespace, pod.name
            ));
        };
        if ns.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) != Some(DATAPLANE_MODE_AMBIENT) {
            return Enrollment::NotEnrolled(NotEnrolledReason::NotAmbient);
        }
    }
    match redirect_config(base, pod) {
        Ok(cfg) => Enrollment::Enrolled(cfg),
        Err(e) => Enrollment::Invalid(e),
    }
}

/// `base` with the pod's exclusion annotations added.
pub fn redirect_config(
    base: &RedirectConfig,
    pod: &Pod,
) -> Result<RedirectConfig, AnnotationError> {
    let mut cfg = base.clone();
    let get = |name| pod.annotations.get(name).map(String::as_str);
    if let Some(v) = get(EXCLUDE_OUTBOUND_PORTS) {
        cfg.exclude_outbound_ports
            .extend(parse_ports(EXCLUDE_OUTBOUND_PORTS, v)?);
    }
    if let Some(v) = get(EXCLUDE_INBOUND_PORTS) {
        cfg.exclude_inbound_ports
            .extend(parse_ports(EXCLUDE_INBOUND_PORTS, v)?);
    }
    if let Some(v) = get(EXCLUDE_OUTBOUND_IP_RANGES) {
        cfg.exclude_outbound_cidrs
            .extend(parse_cidrs(EXCLUDE_OUTBOUND_IP_RANGES, v)?);
    }
    // Stable, duplicate-free lists: the rules are compared with what the kernel reports, and
    // iptables-save prints networks truncated to their prefix (10.1.2.3/8 as 10.0.0.0/8).
    for list in [
        &mut cfg.exclude_outbound_ports,
        &mut cfg.exclude_inbound_ports,
    ] {
        dedup_keep_order(list);
    }
    for net in &mut cfg.exclude_outbound_cidrs {
        *net = net.trunc();
    }
    dedup_keep_order(&mut cfg.exclude_outbound_cidrs);
    Ok(cfg)
}

fn dedup_keep_order<T: PartialEq + Clone>(list: &mut Vec<T>) {
    let mut seen: Vec<T> = Vec::with_capacity(list.len());
    list.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(x.clone());
            true
        }
    });
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Parses a comma list of TCP ports (1-65535). Blank items are ignored, as Istio does.
pub fn parse_ports(annotation: &'static str, value: &str) -> Result<Vec<u16>, AnnotationError> {
    items(value)
        .map(|item| match item.parse::<u16>() {
            Ok(0) | Err(_) => Err(AnnotationError {
                annotation,
                value: value.to_owned(),
                problem: format!("{item:?} is not a port number (1-65535)"),
            }),
            Ok(p) => Ok(p),
        })
        .collect()
}

/// Parses a comma list of CIDRs; a plain address means just that host.
pub fn parse_cidrs(annotation: &'static str, value: &str) -> Result<Vec<IpNet>, AnnotationError> {
    items(value)
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| AnnotationError {
                    annotation,
                    value: value.to_owned(),
                    problem: format!("{item:?} is not a CIDR or IP address"),
                })
        })
        .collect()
}
