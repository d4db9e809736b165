//! Workload and Service ↔ `istio.workload.Address`.
//!
//! Differences the wire forces, and what is done about them:
//! - `workload_type` is a string in the model (Istio ztunnel's lowercase names) and an enum on
//!   the wire: `deployment`, `cronjob`, `pod` and `job` round-trip; anything else (including
//!   empty) is sent as the enum's default, DEPLOYMENT, which is what Istio's ztunnel shows for
//!   an unset type.
//! - The model keeps one network per service; a Service whose addresses span networks is
//!   rejected rather than half-understood (the same rule as the local config file).

use std::collections::BTreeMap;

use super::proto::workload as pw;
use super::{at, enum_value, ip_from_bytes, ip_to_bytes, port, XdsError};
use crate::model::{HealthStatus, Protocol, Service, Workload};

/// A decoded `istio.workload.Address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressResource {
    Workload(Workload),
    Service(Service),
}

/// `Address{workload}` for `w`; its xDS resource name is `w.uid`.
pub fn workload_address(w: &Workload) -> pw::Address {
    pw::Address {
        r#type: Some(pw::address::Type::Workload(workload_to_proto(w))),
    }
}

/// `Address{service}` for `s`; its xDS resource name is [`Service::key`].
pub fn service_address(s: &Service) -> pw::Address {
    pw::Address {
        r#type: Some(pw::address::Type::Service(service_to_proto(s))),
    }
}

/// The workload or service inside an `Address`.
pub fn proto_to_address(a: &pw::Address) -> Result<AddressResource, XdsError> {
    match &a.r#type {
        Some(pw::address::Type::Workload(w)) => proto_to_workload(w).map(AddressResource::Workload),
        Some(pw::address::Type::Service(s)) => proto_to_service(s).map(AddressResource::Service),
        None => Err(XdsError::Missing {
            field: "address.type".to_string(),
        }),
    }
}

pub fn workload_to_proto(w: &Workload) -> pw::Workload {
    pw::Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w.workload_ips.iter().map(ip_to_bytes).collect(),
        network: w.network.clone(),
        tunnel_protocol: match w.protocol {
            Protocol::Hbone => pw::TunnelProtocol::Hbone,
            Protocol::Tcp => pw::TunnelProtocol::None,
        } as i32,
        trust_domain: w.trust_domain.clone(),
        service_account: w.service_account.clone(),
        node: w.node.clone(),
        canonical_name: w.canonical_name.clone(),
        canonical_revision: w.canonical_revision.clone(),
        workload_type: workload_type_to_proto(&w.workload_type) as i32,
        workload_name: w.workload_name.clone(),
        services: w
            .services
            .iter()
            .map(|(key, ports)| (key.clone(), port_list(ports)))
            .collect(),
        authorization_policies: w.authorization_policies.clone(),
        status: match w.status {
            HealthStatus::Healthy => pw::WorkloadStatus::Healthy,
            HealthStatus::Unhealthy => pw::WorkloadStatus::Unhealthy,
        } as i32,
        cluster_id: w.cluster_id.clone(),
    }
}

pub fn proto_to_workload(p: &pw::Workload) -> Result<Workload, XdsError> {
    let workload_ips = p
        .addresses
        .iter()
        .enumerate()
        .map(|(i, b)| ip_from_bytes(|| at("workload.addresses", i), b))
        .collect::<Result<_, _>>()?;
    let protocol = match enum_value("workload.tunnel_protocol", p.tunnel_protocol)? {
        pw::TunnelProtocol::Hbone => Protocol::Hbone,
        pw::TunnelProtocol::None => Protocol::Tcp,
    };
    let status = match enum_value("workload.status", p.status)? {
        pw::WorkloadStatus::Healthy => HealthStatus::Healthy,
        pw::WorkloadStatus::Unhealthy => HealthStatus::Unhealthy,
    };
    let workload_type: pw::WorkloadType = enum_value("workload.workload_type", p.workload_type)?;
    let services = p
        .services
        .iter()
        .map(|(key, list)| {
            let field = format!("workload.services[{key:?}]");
            Ok((key.clone(), port_map(&field, &list.ports)?))
        })
        .collect::<Result<_, XdsError>>()?;
    Ok(Workload {
        uid: p.uid.clone(),
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        service_account: p.service_account.clone(),
        trust_domain: p.trust_domain.clone(),
        node: p.node.clone(),
        network: p.network.clone(),
        cluster_id: p.cluster_id.clone(),
        canonical_name: p.canonical_name.clone(),
        canonical_revision: p.canonical_revision.clone(),
        // Istio ztunnel's spelling: the enum name in lowercase.
        workload_type: workload_type.as_str_name().to_ascii_lowercase(),
        workload_name: p.workload_name.clone(),
        workload_ips,
        protocol,
        status,
        authorization_policies: p.authorization_policies.clone(),
        services,
    })
}

pub fn service_to_proto(s: &Service) -> pw::Service {
    pw::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses: s
            .vips
            .iter()
            .map(|ip| pw::NetworkAddress {
                network: s.network.clone(),
                address: ip_to_bytes(ip),
            })
            .collect(),
        ports: port_list(&s.ports).ports,
        subject_alt_names: s.subject_alt_names.clone(),
    }
}

pub fn proto_to_service(p: &pw::Service) -> Result<Service, XdsError> {
    let network = p
        .addresses
        .first()
        .map(|a| a.network.clone())
        .unwrap_or_default();
    let vips = p
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let address = ip_from_bytes(|| at("service.addresses", i) + ".address", &a.address)?;
            if a.network != network {
                return Err(XdsError::MixedNetworks {
                    field: at("service.addresses", i),
                    address,
                    network: a.network.clone(),
                    first: network.clone(),
                });
            }
            Ok(address)
        })
        .collect::<Result<_, _>>()?;
    Ok(Service {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        hostname: p.hostname.clone(),
        vips,
        ports: port_map("service.ports", &p.ports)?,
        subject_alt_names: p.subject_alt_names.clone(),
        network,
    })
}

fn workload_type_to_proto(t: &str) -> pw::WorkloadType {
    match t {
        "cronjob" => pw::WorkloadType::Cronjob,
        "pod" => pw::WorkloadType::Pod,
        "job" => pw::WorkloadType::Job,
        _ => pw::WorkloadType::Deployment,
    }
}

fn port_list(ports: &BTreeMap<u16, u16>) -> pw::PortList {
    pw::PortList {
        ports: ports
            .iter()
            .map(|(&service_port, &target_port)| pw::Port {
                service_port: service_port.into(),
                target_port: target_port.into(),
            })
            .collect(),
    }
}

/// Service port → target port. A service port listed twice is an error: which target was
/// meant is unknowable, and guessing would send traffic to the wrong port.
fn port_map(field: &str, ports: &[pw::Port]) -> Result<BTreeMap<u16, u16>, XdsError> {
    let mut map = BTreeMap::new();
    for (i, p) in ports.iter().enumerate() {
        let service_port = port(|| at(field, i) + ".service_port", p.service_port)?;
        let target_port = port(|| at(field, i) + ".target_port", p.target_port)?;
        if map.insert(service_port, target_port).is_some() {
            return Err(XdsError::DuplicatePort {
                field: at(field, i),
                port: service_port,
            });
        }
    }
    Ok(map)
}
