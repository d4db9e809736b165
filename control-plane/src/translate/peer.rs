//! Istio `PeerAuthentication` → ambit's namespace-wide [`PeerAuthentication`] and, for
//! workload-selector policies, per-workload DENY [`Authorization`]s.
//!
//! Precedence (Istio's): a workload's selector policy (its port-level modes, then its mode) >
//! its namespace's policy (ambit also honours port-level modes there) > the root namespace's
//! (mesh-wide) mode > the default. `UNSET` inherits. Where several policies compete at one
//! level, the oldest (`metadata.creationTimestamp`, then name) wins; the others are reported.
//! Selector policies in the root namespace are ignored, as istiod does for ambient.
//!
//! ambit's model has no selector on [`PeerAuthentication`] (ztunnel evaluates only the
//! namespace's and the root's), so a selector policy is compiled the way istiod compiles all
//! of them for ztunnel: into a DENY policy `notPrincipals: ["*"]` (reject connections without
//! an authenticated peer), restricted to or excepting ports, attached to the workloads it
//! selects. A DENY can only tighten, yet a workload policy may also loosen (PERMISSIVE under a
//! STRICT namespace). So in a namespace where any workload is selected by such a policy, the
//! control plane computes every workload's modes itself: that namespace gets one permissive
//! [`PeerAuthentication`] (overriding the mesh-wide mode for ztunnel) and each of its
//! workloads the DENY policy for its own effective modes. Namespaces without selector
//! policies keep the plain namespace-wide form. Computing the modes needs the default that
//! applies when nothing sets one: [`TranslateConfig::default_mtls`], which must agree with
//! ztunnel's `AMBIT_DEFAULT_MTLS`.
//!
//! Smallest model extension that would make the compilation unnecessary (proposed, not made
//! here: `mesh` is not this crate's to change): `PeerAuthentication.workloads: Vec<String>`
//! (uids; empty = namespace-wide) and `effective_mtls_mode` taking the destination workload's
//! uid, preferring a policy that lists it.

use std::collections::{BTreeMap, HashMap, HashSet};

use mesh::authz::{
    Action, Authorization, Clause, Match, MtlsMode, PeerAuthentication, Rule, Scope, StringMatch,
};

use super::{Problems, TranslateConfig, WorkloadEntry};
use crate::objects::{self, Labels, ObjectRef};

/// Name of the permissive policy a converted namespace gets. `_` is not allowed in Kubernetes
/// names, so no user object can collide with it (or with the names below).
pub(crate) const CONVERTED_NAMESPACE_PA: &str = "ambit_converted_permissive";
/// Prefix of the DENY policy compiled from a selector PeerAuthentication.
pub(crate) const CONVERTED_PREFIX: &str = "ambit_converted_peer_authentication_";
/// The DENY policy of a converted namespace's workloads that no selector policy selects.
pub(crate) const CONVERTED_NAMESPACE_POLICY: &str = "ambit_converted_namespace_mtls";

pub(super) struct PeerOut {
    pub(super) peer_authentications: Vec<PeerAuthentication>,
    pub(super) policies: Vec<Authorization>,
}

/// A validated PeerAuthentication.
struct Parsed<'a> {
    me: ObjectRef,
    created: Option<&'a str>,
    /// Non-empty `matchLabels`, or `None` for a namespace-wide policy.
    selector: Option<&'a Labels>,
    mode: Option<MtlsMode>,
    ports: BTreeMap<u16, MtlsMode>,
}

impl Parsed<'_> {
    /// Oldest first; without a timestamp, last; then by name so the choice never depends on
    /// input order.
    fn age_key(&self) -> (bool, &str, &str) {
        (
            self.created.is_none(),
            self.created.unwrap_or_default(),
            &self.me.name,
        )
    }
}

pub(super) fn translate(
    input: &[&objects::PeerAuthentication],
    entries: &mut [WorkloadEntry],
    taken: &HashSet<String>,
    cfg: &TranslateConfig,
    problems: &mut Problems,
) -> PeerOut {
    let mut parsed: Vec<Parsed> = input
        .iter()
        .filter_map(|p| parse(p, cfg, problems))
        .collect();
    parsed.sort_by(|a, b| a.age_key().cmp(&b.age_key()));

    // The winning namespace-wide policy per namespace (the root's is the mesh-wide one).
    let mut namespace_wide: BTreeMap<&str, &Parsed> = BTreeMap::new();
    for p in parsed.iter().filter(|p| p.selector.is_none()) {
        match namespace_wide.get(p.me.namespace.as_str()) {
            Some(first) => problems.warn(
                &p.me,
                "",
                format!(
                    "{} is older and applies to the namespace instead; ignored",
                    first.me
                ),
            ),
            None => {
                namespace_wide.insert(&p.me.namespace, p);
            }
        }
    }
    let root = namespace_wide.get(cfg.root_namespace.as_str()).copied();

    // The winning selector policy per workload (index into `entries`).
    let mut selected: HashMap<usize, &Parsed> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let w = &e.workload;
        let winner = parsed.iter().find(|p| {
            p.me.namespace == w.namespace
                && p.selector.is_some_and(|s| super::selects(s, &e.labels))
        });
        if let Some(p) = winner {
            selected.insert(i, p);
        }
    }
    let converted: HashSet<&str> = selected
        .keys()
        .map(|&i| entries[i].workload.namespace.as_str())
        .collect();

    let mut out = PeerOut {
        peer_authentications: Vec::new(),
        policies: Vec::new(),
    };
    for (ns, p) in &namespace_wide {
        if converted.contains(ns) {
            continue;
        }
        if *ns == cfg.root_namespace && !p.ports.is_empty() {
            problems.warn(
                &p.me,
                "spec.portLevelMtls",
                "port-level modes of the mesh-wide policy are not applied to other namespaces \
                 (Istio requires a selector for them)",
            );
        }
        out.peer_authentications.push(PeerAuthentication {
            name: p.me.name.clone(),
            namespace: p.me.namespace.clone(),
            mode: p.mode,
            port_level_mtls: p.ports.clone(),
        });
    }

    let root_mode = root.and_then(|r| r.mode);
    let mut converted: Vec<&str> = converted.into_iter().collect();
    converted.sort();
    // Policy key → whether a policy was emitted for it (no strict port: nothing to enforce).
    let mut made: HashMap<String, bool> = HashMap::new();
    let mut attach: Vec<(usize, String)> = Vec::new();
    for ns in converted {
        out.peer_authentications.push(PeerAuthentication {
            name: CONVERTED_NAMESPACE_PA.to_string(),
            namespace: ns.to_string(),
            mode: Some(MtlsMode::Permissive),
            port_level_mtls: BTreeMap::new(),
        });
        let ns_policy = namespace_wide.get(ns).copied();
        for (i, e) in entries.iter().enumerate() {
            if e.workload.namespace != ns {
                continue;
            }
            let own = selected.get(&i).copied();
            let name = match own {
                Some(p) => format!("{CONVERTED_PREFIX}{}", p.me.name),
                None => CONVERTED_NAMESPACE_POLICY.to_string(),
            };
            let key = format!("{ns}/{name}");
            if taken.contains(&key) {
                // Cannot happen with valid Kubernetes names (they have no '_'); never emit a
                // duplicate key, which would make the whole state invalid.
                continue;
            }
            let exists = *made.entry(key.clone()).or_insert_with(|| {
                let modes = effective(own, ns_policy, root_mode, cfg.default_mtls);
                strict_deny(&name, ns, &modes)
                    .map(|policy| out.policies.push(policy))
                    .is_some()
            });
            if exists {
                attach.push((i, key));
            }
        }
    }
    for (i, key) in attach {
        entries[i].workload.authorization_policies.push(key);
    }
    out
}

fn parse<'a>(
    p: &'a objects::PeerAuthentication,
    cfg: &TranslateConfig,
    problems: &mut Problems,
) -> Option<Parsed<'a>> {
    let meta = &p.metadata;
    let me = ObjectRef {
        kind: "PeerAuthentication".to_string(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };
    for key in p.spec.unknown.keys() {
        problems.warn(&me, format!("spec.{key}"), "unknown field ignored");
    }
    let mode = match parse_mode(p.spec.mtls.as_ref()) {
        Ok(m) => m,
        Err(bad) => {
            problems.error(
                &me,
                "spec.mtls.mode",
                format!(
                    "{bad:?} is not a mode (STRICT, PERMISSIVE, DISABLE, UNSET); policy ignored"
                ),
            );
            return None;
        }
    };
    let mut ports = BTreeMap::new();
    for (port, mtls) in &p.spec.port_level_mtls {
        let at = format!("spec.portLevelMtls.{port}");
        let Some(number) = port.parse::<u16>().ok().filter(|n| *n != 0) else {
            problems.error(
                &me,
                at,
                format!("{port:?} is not a port number (1-65535); policy ignored"),
            );
            return None;
        };
        match parse_mode(Some(mtls)) {
            Ok(Some(m)) => {
                ports.insert(number, m);
            }
            Ok(None) => {} // UNSET: inherits.
            Err(bad) => {
                problems.error(
                    &me,
                    format!("{at}.mode"),
                    format!("{bad:?} is not a mode (STRICT, PERMISSIVE, DISABLE, UNSET); policy ignored"),
                );
                return None;
            }
        }
    }
    let selector = p
        .spec
        .selector
        .as_ref()
        .map(|s| &s.match_labels)
        .filter(|l| !l.is_empty());
    if selector.is_some() && meta.namespace == cfg.root_namespace {
        problems.warn(
            &me,
            "spec.selector",
            "a workload selector in the root namespace has no effect in ambient mode (as in \
             Istio); policy ignored",
        );
        return None;
    }
    if selector.is_none() && !ports.is_empty() && meta.namespace != cfg.root_namespace {
        problems.warn(
            &me,
            "spec.portLevelMtls",
            "Istio requires a selector for port-level modes; ambit applies them to the whole \
             namespace",
        );
    }
    Some(Parsed {
        me,
        created: meta.creation_timestamp.as_deref(),
        selector,
        mode,
        ports,
    })
}

/// `Ok(None)` for UNSET or absent; `Err(text)` for anything that is not a mode.
fn parse_mode(mtls: Option<&objects::MutualTls>) -> Result<Option<MtlsMode>, String> {
    match mtls.and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") => Ok(None),
        Some("STRICT") => Ok(Some(MtlsMode::Strict)),
        Some("PERMISSIVE") => Ok(Some(MtlsMode::Permissive)),
        Some("DISABLE") => Ok(Some(MtlsMode::Disable)),
        Some(other) => Err(other.to_string()),
    }
}

/// A workload's effective modes: the mode of every port not listed, and the listed ports.
#[derive(Debug, PartialEq, Eq)]
struct Modes {
    default: MtlsMode,
    ports: BTreeMap<u16, MtlsMode>,
}

fn effective(
    own: Option<&Parsed>,
    namespace: Option<&Parsed>,
    root_mode: Option<MtlsMode>,
    default: MtlsMode,
) -> Modes {
    let own_mode = own.and_then(|p| p.mode);
    let ns_mode = namespace.and_then(|p| p.mode);
    let inherited = ns_mode.or(root_mode).unwrap_or(default);
    let mut ports = BTreeMap::new();
    // The namespace's port-level modes matter only while the workload's own mode is unset.
    if own_mode.is_none() {
        if let Some(ns) = namespace {
            ports.extend(ns.ports.iter().map(|(k, v)| (*k, *v)));
        }
    }
    if let Some(own) = own {
        ports.extend(own.ports.iter().map(|(k, v)| (*k, *v)));
    }
    Modes {
        default: own_mode.unwrap_or(inherited),
        ports,
    }
}

/// The DENY policy enforcing `modes`: reject connections without a peer identity on the
/// strict ports. `None` when no port is strict.
fn strict_deny(name: &str, namespace: &str, modes: &Modes) -> Option<Authorization> {
    let strict = |m: &MtlsMode| *m == MtlsMode::Strict;
    let unauthenticated = Match {
        not_principals: vec![StringMatch::Presence],
        ..Match::default()
    };
    let m = if strict(&modes.default) {
        Match {
            not_destination_ports: (modes.ports.iter())
                .filter(|(_, m)| !strict(m))
                .map(|(p, _)| *p)
                .collect(),
            ..unauthenticated
        }
    } else {
        let strict_ports: Vec<u16> = (modes.ports.iter())
            .filter(|(_, m)| strict(m))
            .map(|(p, _)| *p)
            .collect();
        if strict_ports.is_empty() {
            return None;
        }
        Match {
            destination_ports: strict_ports,
            ..unauthenticated
        }
    };
    Some(Authorization {
        name: name.to_string(),
        namespace: namespace.to_string(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        rules: vec![Rule(vec![Clause(vec![m])])],
        dry_run: false,
    })
}
