//! One translation from Kubernetes and Istio objects to ambit's data-plane model.
//!
//! Invariants:
//! - Pure and total: any list of [`Object`]s translates; nothing panics, nothing fails as a
//!   whole. What cannot be used is named in a [`Problem`] and left out (or, for policies, kept
//!   in a fail-safe form — see `translate/authz.rs`); the rest of the config is unaffected.
//! - The output always satisfies [`State::new`]'s rules (unique uids, IPs, VIPs and policy
//!   keys, valid identities), so [`Translation::into_state`] only fails on a bug here.
//! - Deterministic: the same objects in the same order give the same output. When two objects
//!   conflict (same name, same IP, same VIP) the first one wins and the later one is reported.
//! - Semantics are Istio's (istiod's ambient index), with the differences called out where
//!   they are made: see `translate/workloads.rs`, `authz.rs` and `peer.rs`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use mesh::authz::{Authorization, MtlsMode, PeerAuthentication};
use mesh::model::{ModelError, Service, State, Workload};

use crate::objects::{self, Labels, Object, ObjectRef};

mod authz;
mod peer;
mod workloads;

#[cfg(test)]
mod authz_tests;
#[cfg(test)]
mod peer_tests;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;

/// What translation needs to know about the mesh it translates for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateConfig {
    /// Trust domain of every workload identity (Istio's `meshConfig.trustDomain`).
    pub trust_domain: String,
    /// Istio's root namespace: policies here without a selector apply mesh-wide.
    pub root_namespace: String,
    /// Cluster id, the first part of every workload uid.
    pub cluster_id: String,
    /// DNS suffix of service hostnames: `<name>.<namespace>.svc.<domain_suffix>`.
    pub domain_suffix: String,
    /// The mTLS mode ztunnel uses when no PeerAuthentication sets one (ztunnel's
    /// `AMBIT_DEFAULT_MTLS`). Only consulted where a workload-level PeerAuthentication forces
    /// the control plane to compute a namespace's modes itself (see `translate/peer.rs`).
    pub default_mtls: MtlsMode,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        TranslateConfig {
            trust_domain: mesh::model::DEFAULT_TRUST_DOMAIN.to_string(),
            root_namespace: "istio-system".to_string(),
            cluster_id: mesh::model::DEFAULT_CLUSTER_ID.to_string(),
            domain_suffix: "cluster.local".to_string(),
            default_mtls: MtlsMode::Strict,
        }
    }
}

/// The model objects a [`State`] is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateInputs {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Authorization>,
    pub peer_authentications: Vec<PeerAuthentication>,
}

/// The result of [`translate`]: the model plus everything that was skipped or changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    pub state_inputs: StateInputs,
    pub problems: Vec<Problem>,
}

impl Translation {
    /// Builds the data-plane [`State`]. Translation only emits valid model objects, so an
    /// error here is a translation bug, reported rather than panicking.
    pub fn into_state(self) -> Result<State, ModelError> {
        let s = self.state_inputs;
        State::new(s.workloads, s.services, s.policies, s.peer_authentications)
    }
}

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Accepted, but not exactly as written (e.g. HTTP fields that ztunnel cannot check, a
    /// policy left to waypoints, a kind ambit does not read).
    Warning,
    /// Invalid: the object, or the part of it named by `field`, was left out or replaced by
    /// its fail-safe form.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// Something about one object that a user should know: what `ambit` lists, what a Kubernetes
/// source writes to status or events.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    pub severity: Severity,
    pub object: ObjectRef,
    /// Path of the field at fault (`spec.rules[0].to[0].operation.methods`); empty when the
    /// problem is about the object as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.object)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Problem {
    /// A document that did not parse, as a problem (unsupported kinds are warnings).
    pub fn from_object_error(e: &objects::ObjectError, source: &str) -> Problem {
        let (field, message) = match &e.reason {
            objects::ObjectErrorKind::Field { path, message } => (path.clone(), message.clone()),
            other => (String::new(), other.to_string()),
        };
        let at = if source.is_empty() {
            format!("document {} (line {})", e.document, e.line)
        } else {
            format!("{source}, document {} (line {})", e.document, e.line)
        };
        Problem {
            severity: if e.is_unsupported_kind() {
                Severity::Warning
            } else {
                Severity::Error
            },
            object: e.object.clone(),
            field,
            message: format!("{message} [{at}]"),
        }
    }
}

/// Collects problems while translating.
#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn push(
        &mut self,
        severity: Severity,
        object: &ObjectRef,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(Problem {
            severity,
            object: object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }
    pub(crate) fn error(
        &mut self,
        o: &ObjectRef,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.push(Severity::Error, o, field, msg);
    }
    pub(crate) fn warn(&mut self, o: &ObjectRef, field: impl Into<String>, msg: impl Into<String>) {
        self.push(Severity::Warning, o, field, msg);
    }
}

/// A workload together with what policy selection needs and the model has no room for.
pub(crate) struct WorkloadEntry {
    pub(crate) workload: Workload,
    pub(crate) labels: Labels,
}

/// Translates `objects` into the data-plane model; see the module invariants.
pub fn translate(objects: &[Object], cfg: &TranslateConfig) -> Translation {
    let mut problems = Problems::default();
    let objects = dedupe(objects, &mut problems);

    let namespaces: BTreeMap<&str, &Labels> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Namespace(n) => Some((n.metadata.name.as_str(), &n.metadata.labels)),
            _ => None,
        })
        .collect();

    let (services, mut entries) = workloads::translate(&objects, &namespaces, cfg, &mut problems);
    let policies_in = objects.iter().filter_map(|o| match o {
        Object::AuthorizationPolicy(p) => Some(p),
        _ => None,
    });
    let mut policies = authz::translate(policies_in, &mut entries, cfg, &mut problems);
    let peer_in: Vec<_> = objects
        .iter()
        .filter_map(|o| match o {
            Object::PeerAuthentication(p) => Some(p),
            _ => None,
        })
        .collect();
    let taken: HashSet<String> = policies.iter().map(Authorization::key).collect();
    let peer_out = peer::translate(&peer_in, &mut entries, &taken, cfg, &mut problems);
    policies.extend(peer_out.policies);

    let workloads = entries
        .into_iter()
        .map(|mut e| {
            // Istio sends the keys sorted; it also makes the output independent of policy order.
            let keys: BTreeSet<String> = e.workload.authorization_policies.drain(..).collect();
            e.workload.authorization_policies = keys.into_iter().collect();
            e.workload
        })
        .collect();

    Translation {
        state_inputs: StateInputs {
            workloads,
            services,
            policies,
            peer_authentications: peer_out.peer_authentications,
        },
        problems: problems.0,
    }
}

/// Drops objects whose name or namespace Kubernetes would not accept, and later objects with
/// the same kind, namespace and name (a folder may repeat one in two files; Kubernetes never
/// does), reporting each. Valid names are what keep hostnames and identities well-formed.
fn dedupe<'a>(objects: &'a [Object], problems: &mut Problems) -> Vec<&'a Object> {
    let mut seen = HashSet::new();
    objects
        .iter()
        .filter(|o| {
            let r = o.object_ref();
            for (field, value) in [
                ("metadata.name", &r.name),
                ("metadata.namespace", &r.namespace),
            ] {
                if !value.is_empty() && !is_dns_subdomain(value) {
                    problems.error(
                        &r,
                        field,
                        format!(
                            "{value:?} is not a valid Kubernetes name (lower-case letters, \
                             digits, '-' and '.', starting and ending alphanumeric, at most 253 \
                             characters); object ignored"
                        ),
                    );
                    return false;
                }
            }
            let first = seen.insert(r.clone());
            if !first {
                problems.error(
                    &r,
                    "metadata.name",
                    "defined more than once; the first definition is used",
                );
            }
            first
        })
        .collect()
}

/// RFC 1123 subdomain, Kubernetes' rule for most object names (namespaces are stricter
/// labels, which this accepts too; the point is to exclude what would break identities and
/// `namespace/hostname` keys, such as '/', '_' and upper case).
fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.len() <= 253
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

/// Whether `selector` (a `matchLabels`) selects `labels`. Empty selects everything, as in
/// Kubernetes and Istio.
pub(crate) fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
