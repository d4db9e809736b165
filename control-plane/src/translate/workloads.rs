//! Pods, Services and EndpointSlices → workloads and services.
//!
//! Istio's rules (istiod `ambient/workloads.go`, `services.go`), and where ambit differs:
//! - A pod becomes a workload when it is not finished (phase neither `Succeeded` nor `Failed`),
//!   not on the host network, and has an IP. Its uid is `<cluster>//Pod/<ns>/<name>`.
//! - Protocol HBONE when the pod is enrolled in ambient: labelled
//!   `istio.io/dataplane-mode=ambient`, or in a namespace so labelled and not itself labelled
//!   `none`; pods with an Istio sidecar never are. The CNI's
//!   `ambient.istio.io/redirection: enabled` annotation also counts. (istiod looks only at that
//!   annotation; ambit decides from the labels so a local folder needs no CNI to say so.)
//! - Healthy iff the pod's `Ready` condition is `True`.
//! - A Service backs pods of its namespace whose labels its (non-empty) selector matches; a
//!   named `targetPort` is resolved per pod from its container ports, and a pod without that
//!   port name does not serve that service port. A Service without a selector takes its
//!   endpoints from EndpointSlices labelled `kubernetes.io/service-name`; an address that is
//!   no pod's becomes a plain-TCP workload of its own, uid
//!   `<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>`.
//! - Only TCP service ports are kept (ztunnel proxies TCP); ExternalName services are not
//!   part of the L4 model and are left out.
//! - Conflicts (two pods with one IP, two services with one VIP) keep the first and report the
//!   later one, so the output always builds a [`mesh::model::State`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use mesh::identity::Identity;
use mesh::model::{HealthStatus, Protocol, Service, Workload};

use super::{Problems, TranslateConfig, WorkloadEntry};
use crate::objects::{self, IntOrString, Labels, Object, ObjectRef};

const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A service port's target as the Service wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Number(u16),
    Name(String),
}

/// What pods and slices need to know about a translated Service.
struct ServiceInfo<'a> {
    object: &'a objects::Service,
    /// `namespace/hostname`.
    key: String,
    /// Service port → (port name, target), in port order.
    ports: BTreeMap<u16, (String, Target)>,
}

/// Translates every Service, Pod and EndpointSlice of `objects`.
pub(super) fn translate(
    objects: &[&Object],
    namespaces: &BTreeMap<&str, &Labels>,
    cfg: &TranslateConfig,
    problems: &mut Problems,
) -> (Vec<Service>, Vec<WorkloadEntry>) {
    let mut services = Vec::new();
    let mut infos = Vec::new();
    let mut vips: HashMap<IpAddr, String> = HashMap::new();
    for o in objects {
        if let Object::Service(s) = o {
            if let Some((svc, info)) = service(s, cfg, &mut vips, problems) {
                services.push(svc);
                infos.push(info);
            }
        }
    }

    let mut entries: Vec<WorkloadEntry> = Vec::new();
    let mut ip_owner: HashMap<IpAddr, usize> = HashMap::new();
    for o in objects {
        if let Object::Pod(p) = o {
            let ns_labels = namespaces.get(p.metadata.namespace.as_str()).copied();
            if let Some(entry) = pod(p, ns_labels, &infos, cfg, &ip_owner, problems) {
                for ip in &entry.workload.workload_ips {
                    ip_owner.insert(*ip, entries.len());
                }
                entries.push(entry);
            }
        }
    }
    for o in objects {
        if let Object::EndpointSlice(s) = o {
            slice(s, &infos, cfg, &mut entries, &mut ip_owner, problems);
        }
    }
    (services, entries)
}

fn service<'a>(
    s: &'a objects::Service,
    cfg: &TranslateConfig,
    vips: &mut HashMap<IpAddr, String>,
    problems: &mut Problems,
) -> Option<(Service, ServiceInfo<'a>)> {
    if s.spec.type_ == "ExternalName" {
        return None;
    }
    let me = ObjectRef {
        kind: "Service".to_string(),
        namespace: s.metadata.namespace.clone(),
        name: s.metadata.name.clone(),
    };
    let hostname = format!(
        "{}.{}.svc.{}",
        s.metadata.name, s.metadata.namespace, cfg.domain_suffix
    );
    let key = format!("{}/{}", s.metadata.namespace, hostname);

    // `clusterIPs` supersedes `clusterIP` (whose value it repeats first) when present.
    let (field, raw): (&str, Vec<&String>) = if s.spec.cluster_ips.is_empty() {
        ("spec.clusterIP", vec![&s.spec.cluster_ip])
    } else {
        ("spec.clusterIPs", s.spec.cluster_ips.iter().collect())
    };
    let mut service_vips = Vec::new();
    for (i, text) in raw.into_iter().enumerate() {
        // Headless ("None") and not-yet-allocated ("") services have no VIP.
        if text.is_empty() || text == "None" {
            continue;
        }
        let at = if field == "spec.clusterIPs" {
            format!("{field}[{i}]")
        } else {
            field.to_string()
        };
        let Ok(ip) = text.parse::<IpAddr>() else {
            problems.error(
                &me,
                at,
                format!("{text:?} is not an IP address; VIP ignored"),
            );
            continue;
        };
        if let Some(first) = vips.get(&ip) {
            problems.error(
                &me,
                at,
                format!("VIP {ip} is already used by {first}; VIP ignored"),
            );
            continue;
        }
        vips.insert(ip, me.to_string());
        service_vips.push(ip);
    }

    let mut ports = BTreeMap::new();
    for (i, p) in s.spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        if p.port == 0 {
            problems.error(
                &me,
                format!("{at}.port"),
                "port 0 is not valid; port ignored",
            );
            continue;
        }
        let target = match &p.target_port {
            None => Target::Number(p.port),
            Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                Ok(n) if n != 0 => Target::Number(n),
                _ => {
                    problems.error(
                        &me,
                        format!("{at}.targetPort"),
                        format!("{n} is not a port number; port ignored"),
                    );
                    continue;
                }
            },
            Some(IntOrString::String(name)) => match name.parse::<u16>() {
                Ok(n) if n != 0 => Target::Number(n),
                _ if name.is_empty() => Target::Number(p.port),
                _ => Target::Name(name.clone()),
            },
        };
        ports.entry(p.port).or_insert((p.name.clone(), target));
    }

    let model = Service {
        name: s.metadata.name.clone(),
        namespace: s.metadata.namespace.clone(),
        hostname,
        vips: service_vips,
        ports: ports
            .iter()
            .map(|(port, (_, t))| {
                let target = match t {
                    Target::Number(n) => *n,
                    // 0: "the endpoint says", resolved per workload.
                    Target::Name(_) => 0,
                };
                (*port, target)
            })
            .collect(),
        subject_alt_names: Vec::new(),
        network: String::new(),
    };
    Some((
        model,
        ServiceInfo {
            object: s,
            key,
            ports,
        },
    ))
}

fn pod(
    p: &objects::Pod,
    ns_labels: Option<&Labels>,
    services: &[ServiceInfo],
    cfg: &TranslateConfig,
    ip_owner: &HashMap<IpAddr, usize>,
    problems: &mut Problems,
) -> Option<WorkloadEntry> {
    let meta = &p.metadata;
    if matches!(p.status.phase.as_str(), "Succeeded" | "Failed") || p.spec.host_network {
        return None;
    }
    let me = ObjectRef {
        kind: "Pod".to_string(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };

    let mut ips = Vec::new();
    let listed = p
        .status
        .pod_ips
        .iter()
        .enumerate()
        .map(|(i, x)| (format!("status.podIPs[{i}].ip"), &x.ip));
    let single =
        (!p.status.pod_ip.is_empty()).then(|| ("status.podIP".to_string(), &p.status.pod_ip));
    for (at, text) in single.into_iter().chain(listed) {
        match text.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => problems.error(&me, at, format!("{text:?} is not an IP address; ignored")),
        }
    }
    if ips.is_empty() {
        // Not scheduled or not started yet: nothing can reach it.
        return None;
    }
    if let Some(ip) = ips.iter().find(|ip| ip_owner.contains_key(ip)) {
        problems.error(
            &me,
            "status.podIP",
            format!("IP {ip} is already used by another workload; pod ignored"),
        );
        return None;
    }

    let service_account = [&p.spec.service_account_name, &p.spec.service_account]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| mesh::model::DEFAULT_SERVICE_ACCOUNT.to_string());
    if let Err(e) = Identity::new(&cfg.trust_domain, &meta.namespace, &service_account) {
        problems.error(
            &me,
            "spec.serviceAccountName",
            format!("no valid SPIFFE identity can be made for this pod ({e}); pod ignored"),
        );
        return None;
    }

    let ready = p
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let (workload_name, workload_type) = workload_name_and_type(p);
    let canonical_name = first_label(
        &meta.labels,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or(&workload_name)
    .to_string();
    let canonical_revision = first_label(
        &meta.labels,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or("latest")
    .to_string();

    let services = services
        .iter()
        .filter(|s| {
            s.object.metadata.namespace == meta.namespace
                && !s.object.spec.selector.is_empty()
                && super::selects(&s.object.spec.selector, &meta.labels)
        })
        .map(|s| (s.key.clone(), pod_ports(p, s)))
        .collect();

    Some(WorkloadEntry {
        workload: Workload {
            uid: format!("{}//Pod/{}/{}", cfg.cluster_id, meta.namespace, meta.name),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            service_account,
            trust_domain: cfg.trust_domain.clone(),
            node: p.spec.node_name.clone(),
            network: String::new(),
            cluster_id: cfg.cluster_id.clone(),
            canonical_name,
            canonical_revision,
            workload_type,
            workload_name,
            workload_ips: ips,
            protocol: if enrolled(p, ns_labels) {
                Protocol::Hbone
            } else {
                Protocol::Tcp
            },
            status: if ready {
                HealthStatus::Healthy
            } else {
                HealthStatus::Unhealthy
            },
            authorization_policies: Vec::new(),
            services,
        },
        labels: meta.labels.clone(),
    })
}

/// Whether the pod's traffic is captured by ztunnel (see the module header).
fn enrolled(p: &objects::Pod, ns_labels: Option<&Labels>) -> bool {
    let meta = &p.metadata;
    if meta.annotations.contains_key(SIDECAR_STATUS_ANNOTATION) {
        return false;
    }
    match meta.labels.get(DATAPLANE_MODE).map(String::as_str) {
        Some("none") => false,
        Some("ambient") => true,
        _ => {
            meta.annotations
                .get(REDIRECTION_ANNOTATION)
                .map(String::as_str)
                == Some("enabled")
                || ns_labels
                    .and_then(|l| l.get(DATAPLANE_MODE))
                    .map(String::as_str)
                    == Some("ambient")
        }
    }
}

/// Service port → target port on this pod; named targets come from its container ports.
fn pod_ports(p: &objects::Pod, s: &ServiceInfo) -> BTreeMap<u16, u16> {
    s.ports
        .iter()
        .filter_map(|(port, (_, target))| {
            let target = match target {
                Target::Number(n) => *n,
                Target::Name(name) => {
                    p.spec
                        .containers
                        .iter()
                        .flat_map(|c| &c.ports)
                        .find(|cp| &cp.name == name && cp.container_port != 0)?
                        .container_port
                }
            };
            Some((*port, target))
        })
        .collect()
}

/// The owning Deployment or Job when the pod says so, else the pod itself (Istio's
/// `workloadNameAndType`).
fn workload_name_and_type(p: &objects::Pod) -> (String, String) {
    let meta = &p.metadata;
    let owner = meta
        .owner_references
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| meta.owner_references.first());
    if let Some(o) = owner {
        match o.kind.as_str() {
            "ReplicaSet" => {
                // A Deployment's ReplicaSet is `<deployment>-<pod-template-hash>`.
                if let Some(hash) = meta.labels.get("pod-template-hash") {
                    if let Some(d) = o.name.strip_suffix(&format!("-{hash}")) {
                        return (d.to_string(), "deployment".to_string());
                    }
                }
            }
            "Job" => return (o.name.clone(), "job".to_string()),
            _ => {}
        }
    }
    (meta.name.clone(), "pod".to_string())
}

fn first_label<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .map(String::as_str)
}

/// Adds one EndpointSlice's addresses as backends of its selector-less Service.
fn slice(
    s: &objects::EndpointSlice,
    services: &[ServiceInfo],
    cfg: &TranslateConfig,
    entries: &mut Vec<WorkloadEntry>,
    ip_owner: &mut HashMap<IpAddr, usize>,
    problems: &mut Problems,
) {
    let meta = &s.metadata;
    let Some(svc_name) = meta.labels.get(SERVICE_NAME_LABEL) else {
        return;
    };
    // Pods are the source of truth for services with a selector; their slices repeat them.
    let Some(svc) = services.iter().find(|x| {
        x.object.metadata.namespace == meta.namespace
            && &x.object.metadata.name == svc_name
            && x.object.spec.selector.is_empty()
    }) else {
        return;
    };
    if s.address_type == "FQDN" {
        return;
    }
    let me = ObjectRef {
        kind: "EndpointSlice".to_string(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };
    // Service port → the slice's port of the same name.
    let ports: BTreeMap<u16, u16> = svc
        .ports
        .iter()
        .filter_map(|(port, (name, _))| {
            let p = s.ports.iter().find(|sp| &sp.name == name)?;
            Some((*port, p.port.filter(|n| *n != 0)?))
        })
        .collect();
    for (i, ep) in s.endpoints.iter().enumerate() {
        let ready = ep.conditions.ready.unwrap_or(true);
        for (j, text) in ep.addresses.iter().enumerate() {
            let Ok(ip) = text.parse::<IpAddr>() else {
                problems.error(
                    &me,
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{text:?} is not an IP address; ignored"),
                );
                continue;
            };
            let index = *ip_owner.entry(ip).or_insert_with(|| {
                entries.push(slice_workload(s, ip, ready, cfg));
                entries.len() - 1
            });
            entries[index]
                .workload
                .services
                .ports_mut(&svc.key)
                .extend(ports.iter().map(|(k, v)| (*k, *v)));
        }
    }
}

fn slice_workload(
    s: &objects::EndpointSlice,
    ip: IpAddr,
    ready: bool,
    cfg: &TranslateConfig,
) -> WorkloadEntry {
    let meta = &s.metadata;
    WorkloadEntry {
        workload: Workload {
            uid: format!(
                "{}/discovery.k8s.io/EndpointSlice/{}/{}/{}",
                cfg.cluster_id, meta.namespace, meta.name, ip
            ),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            service_account: mesh::model::DEFAULT_SERVICE_ACCOUNT.to_string(),
            trust_domain: cfg.trust_domain.clone(),
            cluster_id: cfg.cluster_id.clone(),
            workload_name: meta.name.clone(),
            workload_type: "pod".to_string(),
            canonical_name: meta.name.clone(),
            canonical_revision: "latest".to_string(),
            workload_ips: vec![ip],
            protocol: Protocol::Tcp,
            status: if ready {
                HealthStatus::Healthy
            } else {
                HealthStatus::Unhealthy
            },
            ..Workload::default()
        },
        // An address is not a pod: no labels, so no selector-scoped policy selects it.
        labels: Labels::new(),
    }
}
