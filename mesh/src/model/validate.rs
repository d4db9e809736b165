//! The checks behind [`State::new`](super::State::new): each object on its own, then the
//! uniqueness rules across objects. The first error wins; warnings are collected.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{ModelError, ModelErrorKind, ModelWarning, NetworkAddress, Service, Workload};
use crate::authz::{Authorization, PeerAuthentication};
use crate::identity::{Identity, IdentityError};

/// Checks `workloads` (already defaulted), `services`, `policies` and `peer_auths` against the
/// invariants listed in the [`model`](super) module header.
pub(super) fn validate(
    workloads: &[Workload],
    services: &[Service],
    policies: &[Authorization],
    peer_auths: &[PeerAuthentication],
) -> Result<Vec<ModelWarning>, ModelError> {
    let mut warnings = Vec::new();

    let mut policy_keys: HashMap<String, String> = HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        let path = format!("policies[{i}]");
        non_empty(&path, "name", &p.name)?;
        non_empty(&path, "namespace", &p.namespace)?;
        unique_key(&mut policy_keys, p.key(), path)?;
    }

    let mut peer_auth_keys: HashMap<String, String> = HashMap::new();
    for (i, pa) in peer_auths.iter().enumerate() {
        let path = format!("peerAuthentications[{i}]");
        non_empty(&path, "name", &pa.name)?;
        non_empty(&path, "namespace", &pa.namespace)?;
        if pa.port_level_mtls.contains_key(&0) {
            return Err(ModelError::new(
                format!("{path}.portLevelMtls.0"),
                ModelErrorKind::PortZero,
            ));
        }
        unique_key(
            &mut peer_auth_keys,
            format!("{}/{}", pa.namespace, pa.name),
            path,
        )?;
    }

    let mut service_keys: HashMap<String, String> = HashMap::new();
    let mut vips: HashMap<NetworkAddress, String> = HashMap::new();
    for (i, svc) in services.iter().enumerate() {
        let path = format!("services[{i}]");
        validate_service(&path, svc)?;
        if let Some(first) = service_keys.get(&svc.key()) {
            return Err(ModelError::new(
                path,
                ModelErrorKind::DuplicateService {
                    key: svc.key(),
                    first: first.clone(),
                },
            ));
        }
        service_keys.insert(svc.key(), path.clone());
        for (j, vip) in svc.vip_addresses().enumerate() {
            if let Some(first) = vips.get(&vip) {
                return Err(ModelError::new(
                    format!("{path}.vips[{j}]"),
                    ModelErrorKind::DuplicateVip {
                        vip,
                        first: first.clone(),
                    },
                ));
            }
            vips.insert(vip, format!("{path} ({})", svc.key()));
        }
    }

    let mut uids: HashMap<&str, String> = HashMap::new();
    let mut ips: HashMap<(&str, IpAddr), String> = HashMap::new();
    for (i, w) in workloads.iter().enumerate() {
        let path = format!("workloads[{i}]");
        validate_workload(&path, w)?;
        if let Some(first) = uids.get(w.uid.as_str()) {
            return Err(ModelError::new(
                format!("{path}.uid"),
                ModelErrorKind::DuplicateUid {
                    uid: w.uid.clone(),
                    first: first.clone(),
                },
            ));
        }
        uids.insert(&w.uid, path.clone());
        for (j, ip) in w.workload_ips.iter().enumerate() {
            let key = (w.network.as_str(), *ip);
            if let Some(first) = ips.get(&key) {
                return Err(ModelError::new(
                    format!("{path}.workloadIps[{j}]"),
                    ModelErrorKind::DuplicateIp {
                        ip: *ip,
                        network: w.network.clone(),
                        first: first.clone(),
                    },
                ));
            }
            ips.insert(key, format!("{path} ({})", w.uid));
        }
        for (j, policy) in w.authorization_policies.iter().enumerate() {
            if !policy_keys.contains_key(policy) {
                warnings.push(ModelWarning::MissingPolicy {
                    path: format!("{path}.authorizationPolicies[{j}]"),
                    policy: policy.clone(),
                });
            }
        }
        for key in w.services.keys() {
            if !service_keys.contains_key(key) {
                warnings.push(ModelWarning::MissingService {
                    path: format!("{path}.services.{key:?}"),
                    service: key.clone(),
                });
            }
        }
    }
    Ok(warnings)
}

fn validate_workload(path: &str, w: &Workload) -> Result<(), ModelError> {
    non_empty(path, "name", &w.name)?;
    non_empty(path, "namespace", &w.namespace)?;
    non_empty(path, "uid", &w.uid)?;
    // Check each identity part on its own, with known-good neighbours, so the error names the
    // field that is wrong (and only its value) rather than the identity as a whole.
    let parts = [
        (
            "trustDomain",
            &w.trust_domain,
            Identity::new(&w.trust_domain, "ns", "sa"),
        ),
        (
            "namespace",
            &w.namespace,
            Identity::new("td", &w.namespace, "sa"),
        ),
        (
            "serviceAccount",
            &w.service_account,
            Identity::new("td", "ns", &w.service_account),
        ),
    ];
    for (field, value, result) in parts {
        if let Err(e) = result {
            return Err(ModelError::new(
                format!("{path}.{field}"),
                ModelErrorKind::InvalidIdentityPart {
                    value: value.clone(),
                    reason: identity_part_reason(&e),
                },
            ));
        }
    }
    for (key, ports) in &w.services {
        let key_path = format!("{path}.services.{key:?}");
        if !is_service_key(key) {
            return Err(ModelError::new(
                key_path,
                ModelErrorKind::BadServiceKey { key: key.clone() },
            ));
        }
        for (svc_port, target_port) in ports {
            if *svc_port == 0 || *target_port == 0 {
                return Err(ModelError::new(
                    format!("{key_path}.{svc_port}"),
                    ModelErrorKind::PortZero,
                ));
            }
        }
    }
    Ok(())
}

fn validate_service(path: &str, svc: &Service) -> Result<(), ModelError> {
    non_empty(path, "name", &svc.name)?;
    non_empty(path, "namespace", &svc.namespace)?;
    non_empty(path, "hostname", &svc.hostname)?;
    if svc.hostname.contains('/') {
        // The hostname is half of the `namespace/hostname` key workloads use.
        return Err(ModelError::new(
            format!("{path}.hostname"),
            ModelErrorKind::BadServiceKey { key: svc.key() },
        ));
    }
    if svc.ports.contains_key(&0) {
        return Err(ModelError::new(
            format!("{path}.ports.0"),
            ModelErrorKind::PortZero,
        ));
    }
    for (j, san) in svc.subject_alt_names.iter().enumerate() {
        if let Err(e) = Identity::parse(san) {
            return Err(ModelError::new(
                format!("{path}.subjectAltNames[{j}]"),
                ModelErrorKind::InvalidSan(e),
            ));
        }
    }
    Ok(())
}

/// Why one part failed, given that the other two parts were known to be good.
fn identity_part_reason(e: &IdentityError) -> &'static str {
    match e {
        IdentityError::EmptyPart(..) => "is empty",
        IdentityError::BadCharacter(..) => "has a character outside [A-Za-z0-9._-]",
        // With good neighbours the only way to change the shape is a '/' in this part.
        IdentityError::BadShape(..) => "contains '/'",
        IdentityError::NotUtf8 | IdentityError::MissingScheme(..) => "is not valid",
    }
}

fn non_empty(path: &str, field: &str, value: &str) -> Result<(), ModelError> {
    if value.is_empty() {
        return Err(ModelError::new(
            format!("{path}.{field}"),
            ModelErrorKind::Empty,
        ));
    }
    Ok(())
}

fn unique_key(
    seen: &mut HashMap<String, String>,
    key: String,
    path: String,
) -> Result<(), ModelError> {
    if let Some(first) = seen.get(&key) {
        return Err(ModelError::new(
            path,
            ModelErrorKind::DuplicateKey {
                key,
                first: first.clone(),
            },
        ));
    }
    seen.insert(key, path);
    Ok(())
}

/// `namespace/hostname`, both non-empty; the hostname may not contain another '/'.
fn is_service_key(key: &str) -> bool {
    matches!(key.split_once('/'), Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/'))
}
