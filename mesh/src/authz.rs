//! L4 authorization at the destination's ztunnel: Istio-compatible `Authorization` policies and
//! ambit's `PeerAuthentication` (mTLS mode) extension, evaluated purely (no I/O, no logging).
//!
//! The policy types deserialize from the same YAML that Istio's ztunnel accepts in its local
//! config `policies:` list (ztunnel `src/rbac.rs`): `rules` is Istio's `Vec<Vec<Vec<RbacMatch>>>`,
//! named here as [`Rule`] (OR'd) → [`Clause`] (AND'd: from/to/when) → [`Match`] (OR'd).
//!
//! Invariants of the evaluator, each chosen to err on the safe side:
//! - A DENY that matches always wins; dry-run policies never change the result.
//! - A policy with no rules never matches (Istio's "allow nothing" ALLOW policy).
//!   A rule with no clauses, or a clause with no matches, holds (Istio's "allow all" `rules: [{}]`).
//! - A [`Match`] with no L4 constraint can check nothing: in ALLOW it never matches (as in Istio's
//!   ztunnel, which skips empty matches; istiod emits them when it drops unparsable values, and a
//!   typo must not become allow-all), in DENY it matches everything (a DENY must not be dodged
//!   because part of it was unenforceable here).
//! - L7 fields ([`Match::l7_fields`]): in ALLOW the whole rule never matches; in DENY the L7 parts
//!   are dropped and the L4 rest is enforced.
//! - Without a source identity, positive identity conditions (principals, namespaces,
//!   serviceAccounts) fail. Negated ones (`not_*`) hold in DENY (Istio; this is how
//!   `DENY notPrincipals: [*]` rejects plaintext) but fail in ALLOW, where Istio would let an
//!   unauthenticated peer through `ALLOW notNamespaces: [x]`: ambit does not.
//! - Matching is literal (exact, prefix, suffix, presence); there is no regex anywhere.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;

mod peer;
mod wire;

pub use peer::{check_mtls, effective_mtls_mode, MtlsMode, PeerAuthentication};

#[cfg(test)]
mod config_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// What a policy does when it matches. Serde names are Istio ztunnel's (`Allow`, `Deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

/// Which workloads a policy applies to. The caller selects policies by scope; the evaluator only
/// carries it. Serde names are Istio ztunnel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Mesh-wide: the policy lives in the root namespace.
    Global,
    /// Every workload of the policy's namespace.
    Namespace,
    /// Workloads whose labels match the policy's selector.
    WorkloadSelector,
}

/// A literal string match. Never a regex.
///
/// Serde form is Istio ztunnel's externally tagged enum: `{Exact: foo}`, `{Prefix: foo}`,
/// `{Suffix: foo}`, `{Presence: []}` (YAML tags such as `!Exact foo` work too; a bare `Presence`
/// is also accepted). See `wire.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl StringMatch {
    /// Matches `value` literally.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }

    /// Translates an Istio AuthorizationPolicy value (`*`, `*suffix`, `prefix*`, `exact`) the way
    /// istiod does for ztunnel. A `*` anywhere else is a literal character.
    pub fn from_istio_pattern(pattern: &str) -> Self {
        if pattern == "*" {
            StringMatch::Presence
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_string())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_string())
        } else {
            StringMatch::Exact(pattern.to_string())
        }
    }
}

/// One authorization policy, as in Istio ztunnel's local config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// OR'd. Empty: the policy never matches.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Evaluated and reported in [`Decision::dry_run_matches`], never enforced.
    #[serde(default)]
    pub dry_run: bool,
}

/// One rule: every clause must hold (Istio's `from`, `to` and each `when` become clauses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rule(pub Vec<Clause>);

/// One clause: any of its matches must hold. Empty: holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Clause(pub Vec<Match>);

/// Conditions on one connection: every non-empty field must hold; within a field, any positive
/// value must match and no negated value may match.
///
/// Unknown keys are rejected (Istio ignores them): a misspelt or L7 key silently ignored in an
/// ALLOW policy would widen access.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    /// Against the source identity's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    /// Against `"<namespace>/<service-account>"` of the source identity. Istio's
    /// `{namespace: ns, serviceAccount: sa}` entries deserialize to `Exact("ns/sa")`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "wire::service_accounts"
    )]
    pub service_accounts: Vec<StringMatch>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "wire::service_accounts"
    )]
    pub not_service_accounts: Vec<StringMatch>,
    /// Against the source identity without its `spiffe://` scheme, as Istio does
    /// (`cluster.local/ns/a/sa/b`). An `Exact` or `Prefix` value written with the scheme
    /// (`spiffe://cluster.local/ns/a/sa/b`) is compared against the full SPIFFE string instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
    /// L7-only fields this match carried (e.g. `methods`, `paths`, `hosts`, `requestPrincipals`,
    /// `when:request.headers[x]`). ambit extension, empty for Istio-translated policies.
    /// ALLOW: a rule whose match has any → never matches.
    /// DENY: L7 parts dropped, the rest enforced (if nothing L4 remains, the match matches
    /// everything it can't check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l7_fields: Vec<String>,
}

/// What the destination ztunnel knows about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The authenticated peer identity (from the mTLS certificate); `None` for plaintext.
    pub src_identity: Option<Identity>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

/// A connection is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// Key ("namespace/name") of the ALLOW policy that matched; `None` when no ALLOW policy
    /// applies (so everything not denied is allowed).
    pub policy: Option<String>,
}

/// Why a connection is denied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("denied by DENY policy {policy}")]
    DenyPolicy { policy: String },
    #[error("no ALLOW policy matched")]
    NoAllowMatch,
    #[error("mTLS is required (STRICT) but the connection has no authenticated peer identity")]
    MtlsRequired,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The enforced result: dry-run policies play no part in it.
    pub result: Result<Permit, Denied>,
    /// Keys of the dry-run policies (ALLOW or DENY) that matched the connection, in input order,
    /// for the caller to log.
    pub dry_run_matches: Vec<String>,
    /// The result had the dry-run policies been enforced along with the others (what turning
    /// dry-run off would do), for the caller to log next to [`Decision::result`].
    pub dry_run_result: Result<Permit, Denied>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.result.is_ok()
    }
}

impl Authorization {
    /// The policy's key, `"namespace/name"`, as Istio's ztunnel reports it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this policy matches `conn` (ignoring dry-run: the caller decides what that means).
    pub fn matches(&self, conn: &ConnInfo) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.matches(self.action, conn))
    }
}

impl Rule {
    fn matches(&self, action: Action, conn: &ConnInfo) -> bool {
        // istiod drops a whole ALLOW rule that uses anything L7: ztunnel cannot check it, and
        // allowing on the L4 part alone would grant more than was written.
        if action == Action::Allow && self.has_l7() {
            return false;
        }
        self.0.iter().all(|clause| clause.matches(action, conn))
    }

    fn has_l7(&self) -> bool {
        self.0
            .iter()
            .flat_map(|c| c.0.iter())
            .any(|m| !m.l7_fields.is_empty())
    }
}

impl Clause {
    fn matches(&self, action: Action, conn: &ConnInfo) -> bool {
        self.0.is_empty() || self.0.iter().any(|m| m.matches(action, conn))
    }
}

impl Match {
    /// Whether this match constrains anything ztunnel can check (L7 fields do not count).
    pub fn has_l4(&self) -> bool {
        !(self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty())
    }

    fn matches(&self, action: Action, conn: &ConnInfo) -> bool {
        if !self.has_l4() {
            // Nothing checkable: see the module invariants.
            return action == Action::Deny;
        }
        let id = conn.src_identity.as_ref();
        let sa = id.map(|id| format!("{}/{}", id.namespace(), id.service_account()));
        let id_field =
            |pos: &[StringMatch], neg: &[StringMatch], f: &dyn Fn(&StringMatch) -> bool| {
                identity_field(action, id.is_some(), pos, neg, f)
            };
        id_field(&self.principals, &self.not_principals, &|p| {
            id.is_some_and(|id| principal_matches(p, id))
        }) && id_field(&self.namespaces, &self.not_namespaces, &|p| {
            id.is_some_and(|id| p.matches(id.namespace()))
        }) && id_field(&self.service_accounts, &self.not_service_accounts, &|p| {
            sa.as_deref().is_some_and(|sa| p.matches(sa))
        }) && field(&self.source_ips, &self.not_source_ips, |n| {
            ip_in(n, conn.src_ip)
        }) && field(&self.destination_ips, &self.not_destination_ips, |n| {
            ip_in(n, conn.dst_ip)
        }) && field(&self.destination_ports, &self.not_destination_ports, |p| {
            *p == conn.dst_port
        })
    }
}

/// A field holds when some positive value matches (or there are none) and no negated value does.
fn field<T>(pos: &[T], neg: &[T], f: impl Fn(&T) -> bool) -> bool {
    (pos.is_empty() || pos.iter().any(&f)) && !neg.iter().any(&f)
}

/// [`field`] for values about the source identity, which may be unknown (plaintext).
fn identity_field(
    action: Action,
    has_identity: bool,
    pos: &[StringMatch],
    neg: &[StringMatch],
    f: &dyn Fn(&StringMatch) -> bool,
) -> bool {
    if !has_identity && !neg.is_empty() && action == Action::Allow {
        // "not X" says nothing about a peer we cannot name: do not let it in on that basis.
        return false;
    }
    // `f` is false without an identity, so positives fail and (in DENY) negatives hold.
    field(pos, neg, f)
}

const SPIFFE_SCHEME: &str = "spiffe://";

fn principal_matches(pattern: &StringMatch, id: &Identity) -> bool {
    let full = id.to_string();
    let short = full.strip_prefix(SPIFFE_SCHEME).unwrap_or(&full);
    // Istio principals omit the scheme; accept values that carry it by dropping it from the
    // pattern rather than adding it to the identity, so a short prefix such as "s" can never
    // start matching every "spiffe://..." identity.
    let unschemed = |s: &String| s.strip_prefix(SPIFFE_SCHEME).unwrap_or(s).to_string();
    match pattern {
        StringMatch::Exact(s) => short == unschemed(s),
        StringMatch::Prefix(s) => short.starts_with(&unschemed(s)),
        other => other.matches(short),
    }
}

/// An IPv4 address and its IPv4-mapped IPv6 form are the same peer: match either, so a DENY on
/// `10.0.0.0/8` cannot be dodged by a dual-stack socket reporting `::ffff:10.0.0.1`.
fn ip_in(net: &IpNet, ip: IpAddr) -> bool {
    let alt = match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
    };
    net.contains(&ip) || net.contains(&alt)
}

/// Evaluates the policies that apply to the destination (the caller selects them by scope).
///
/// Order: any matching DENY → [`Denied::DenyPolicy`] (the first in input order); no ALLOW policy →
/// allow; a matching ALLOW → allow with its key (the first in input order); else
/// [`Denied::NoAllowMatch`]. Dry-run policies never affect [`Decision::result`]; they are
/// reported in [`Decision::dry_run_matches`] and [`Decision::dry_run_result`].
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    conn: &ConnInfo,
) -> Decision {
    let mut enforced = Tally::default();
    let mut shadow = Tally::default();
    let mut dry_run_matches = Vec::new();
    for policy in policies {
        let matched = policy.matches(conn);
        if policy.dry_run {
            if matched {
                dry_run_matches.push(policy.key());
            }
        } else {
            enforced.add(policy, matched);
        }
        shadow.add(policy, matched);
    }
    Decision {
        result: enforced.result(),
        dry_run_matches,
        dry_run_result: shadow.result(),
    }
}

/// Running state of one evaluation pass.
#[derive(Default)]
struct Tally {
    deny: Option<String>,
    allow: Option<String>,
    any_allow: bool,
}

impl Tally {
    fn add(&mut self, policy: &Authorization, matched: bool) {
        match policy.action {
            Action::Deny => {
                if matched && self.deny.is_none() {
                    self.deny = Some(policy.key());
                }
            }
            Action::Allow => {
                self.any_allow = true;
                if matched && self.allow.is_none() {
                    self.allow = Some(policy.key());
                }
            }
        }
    }

    fn result(self) -> Result<Permit, Denied> {
        if let Some(policy) = self.deny {
            Err(Denied::DenyPolicy { policy })
        } else if !self.any_allow {
            Ok(Permit { policy: None })
        } else if let Some(policy) = self.allow {
            Ok(Permit {
                policy: Some(policy),
            })
        } else {
            Err(Denied::NoAllowMatch)
        }
    }
}
