//! Istio `AuthorizationPolicy` → [`mesh::authz::Authorization`] (istiod's
//! `convertAuthorizationPolicy`, ambient/authorization.go), plus the selected workloads'
//! `authorization_policies` keys.
//!
//! - Scope: `Global` in the root namespace without a selector, `Namespace` without one
//!   elsewhere, `WorkloadSelector` with a non-empty `matchLabels` (which, from the root
//!   namespace, selects matching workloads of every namespace, as in Istio).
//! - `targetRef(s)`: the policy is for waypoints; left out with a warning.
//! - Actions `AUDIT` and `CUSTOM` are not enforced at L4: left out with an error, since what
//!   they were meant to restrict is then unrestricted.
//! - Each rule becomes one [`Rule`] whose clauses are, in Istio's order, `to`, `from` and each
//!   `when`. L7 attributes (hosts, methods, paths, requestPrincipals, remoteIpBlocks, `when`
//!   keys other than source.ip/namespace/principal and destination.ip/port) go into
//!   [`Match::l7_fields`] with a warning; the evaluator then never matches such a rule in ALLOW
//!   and drops the L7 parts in DENY — both more restrictive than written, as in Istio.
//!
//! Fail-safe handling of what istiod's webhook would have rejected (a folder has no webhook):
//! - A field ambit does not know is treated like an L7 attribute (never silently dropped: an
//!   ALLOW rule must not widen because a condition was misspelt).
//! - A value that does not parse (an IP block, a port, an empty string) is dropped from its
//!   list. In ALLOW, a `from`/`to` entry whose list held only bad values can match nothing, so
//!   it is removed from its clause, and a rule left with an empty clause is removed (the
//!   policy still counts as an ALLOW policy, so nothing is opened). In DENY the emptied field
//!   simply stops constraining, which denies more.

use std::net::IpAddr;

use ipnet::IpNet;
use mesh::authz::{Action, Authorization, Clause, Match, Rule, Scope, StringMatch};

use super::{Problems, TranslateConfig, WorkloadEntry};
use crate::objects::{self, ObjectRef};

const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

pub(super) fn translate<'a>(
    policies: impl Iterator<Item = &'a objects::AuthorizationPolicy>,
    entries: &mut [WorkloadEntry],
    cfg: &TranslateConfig,
    problems: &mut Problems,
) -> Vec<Authorization> {
    let mut out = Vec::new();
    for p in policies {
        let Some(auth) = policy(p, cfg, problems) else {
            continue;
        };
        if auth.scope == Scope::WorkloadSelector {
            let selector = p
                .spec
                .selector
                .as_ref()
                .map(|s| &s.match_labels)
                .cloned()
                .unwrap_or_default();
            let key = auth.key();
            for e in entries.iter_mut() {
                let in_scope =
                    e.workload.namespace == auth.namespace || auth.namespace == cfg.root_namespace;
                if in_scope && super::selects(&selector, &e.labels) {
                    e.workload.authorization_policies.push(key.clone());
                }
            }
        }
        out.push(auth);
    }
    out
}

fn policy(
    p: &objects::AuthorizationPolicy,
    cfg: &TranslateConfig,
    problems: &mut Problems,
) -> Option<Authorization> {
    let meta = &p.metadata;
    let me = ObjectRef {
        kind: "AuthorizationPolicy".to_string(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };
    let spec = &p.spec;
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        let field = if spec.target_refs.is_empty() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        problems.warn(
            &me,
            field,
            "applies to waypoints (L7); not enforced by ztunnel (L4), left out here",
        );
        return None;
    }
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        other @ ("AUDIT" | "CUSTOM") => {
            problems.error(
                &me,
                "spec.action",
                format!("ztunnel does not support the {other} action; policy not enforced"),
            );
            return None;
        }
        other => {
            problems.error(
                &me,
                "spec.action",
                format!("{other:?} is not an action (ALLOW, DENY, AUDIT, CUSTOM); policy ignored"),
            );
            return None;
        }
    };
    for key in spec.unknown.keys() {
        problems.warn(&me, format!("spec.{key}"), "unknown field ignored");
    }
    let has_selector = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    let scope = if has_selector {
        Scope::WorkloadSelector
    } else if meta.namespace == cfg.root_namespace {
        Scope::Global
    } else {
        Scope::Namespace
    };
    let mut ctx = RuleCtx {
        action,
        namespace: &meta.namespace,
        me: &me,
        problems,
        unknown: Vec::new(),
    };
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| ctx.rule(i, r))
        .collect();
    Some(Authorization {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        scope,
        action,
        rules,
        dry_run: meta.annotations.get(DRY_RUN_ANNOTATION).map(String::as_str) == Some("true"),
    })
}

struct RuleCtx<'a> {
    action: Action,
    /// The policy's namespace: a bare service account in `serviceAccounts` is in it.
    namespace: &'a str,
    me: &'a ObjectRef,
    problems: &'a mut Problems,
    /// Unknown field names met in the current rule: reported as errors on their own, so kept
    /// out of the rule's "HTTP attributes" warning.
    unknown: Vec<String>,
}

/// One translated `from`/`to`/`when` entry: its match, and whether it can never hold (an ALLOW
/// entry whose positive list held only invalid values).
struct Entry {
    m: Match,
    impossible: bool,
}

impl RuleCtx<'_> {
    /// `None`: the rule can never match and is left out (see the module header).
    fn rule(&mut self, i: usize, rule: &objects::Rule) -> Option<Rule> {
        let at = format!("spec.rules[{i}]");
        self.unknown.clear();
        let mut l7 = Vec::new();
        let mut clauses = Vec::new();
        let mut never = false;

        let to: Vec<Entry> = (rule.to.iter().enumerate())
            .map(|(j, t)| self.operation(&format!("{at}.to[{j}].operation"), &t.operation))
            .collect();
        let from: Vec<Entry> = (rule.from.iter().enumerate())
            .map(|(j, f)| self.source(&format!("{at}.from[{j}].source"), &f.source))
            .collect();
        for entries in [to, from] {
            if entries.is_empty() {
                continue;
            }
            l7.extend(entries.iter().flat_map(|e| e.m.l7_fields.iter().cloned()));
            let possible: Vec<Match> = entries
                .into_iter()
                .filter(|e| !e.impossible)
                .map(|e| e.m)
                .collect();
            never |= possible.is_empty();
            clauses.push(Clause(possible));
        }
        for (j, w) in rule.when.iter().enumerate() {
            let e = self.when(&format!("{at}.when[{j}]"), w);
            l7.extend(e.m.l7_fields.iter().cloned());
            never |= e.impossible;
            clauses.push(Clause(vec![e.m]));
        }
        for key in rule.unknown.keys() {
            self.unknown(&format!("{at}.{key}"));
            l7.push(key.clone());
            clauses.push(Clause(vec![Match {
                l7_fields: vec![key.clone()],
                ..Match::default()
            }]));
        }

        l7.sort();
        l7.dedup();
        l7.retain(|f| !self.unknown.contains(f));
        if !l7.is_empty() {
            let consequence = match self.action {
                Action::Allow => {
                    "Within an ALLOW policy, rules matching HTTP attributes never match. \
                     This is more restrictive than requested."
                }
                Action::Deny => {
                    "A DENY policy with HTTP attributes is enforced without them. \
                     This is more restrictive than requested."
                }
            };
            self.problems.warn(
                self.me,
                at.clone(),
                format!(
                    "ztunnel does not support HTTP attributes (found: {}); a waypoint must \
                     enforce them. {consequence}",
                    l7.join(", ")
                ),
            );
        }
        if never {
            self.problems.error(
                self.me,
                at,
                "no valid value is left in a condition, so this ALLOW rule can never match; \
                 rule left out",
            );
            return None;
        }
        Some(Rule(clauses))
    }

    fn source(&mut self, at: &str, s: &objects::Source) -> Entry {
        let mut e = Entry {
            m: Match::default(),
            impossible: false,
        };
        e.m.principals = self.patterns(&mut e, &format!("{at}.principals"), &s.principals, true);
        e.m.not_principals = self.patterns(
            &mut e,
            &format!("{at}.notPrincipals"),
            &s.not_principals,
            false,
        );
        e.m.namespaces = self.patterns(&mut e, &format!("{at}.namespaces"), &s.namespaces, true);
        e.m.not_namespaces = self.patterns(
            &mut e,
            &format!("{at}.notNamespaces"),
            &s.not_namespaces,
            false,
        );
        e.m.service_accounts = self.service_accounts(
            &mut e,
            &format!("{at}.serviceAccounts"),
            &s.service_accounts,
            true,
        );
        e.m.not_service_accounts = self.service_accounts(
            &mut e,
            &format!("{at}.notServiceAccounts"),
            &s.not_service_accounts,
            false,
        );
        e.m.source_ips = self.ips(&mut e, &format!("{at}.ipBlocks"), &s.ip_blocks, true);
        e.m.not_source_ips = self.ips(
            &mut e,
            &format!("{at}.notIpBlocks"),
            &s.not_ip_blocks,
            false,
        );
        for (name, values) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            if !values.is_empty() {
                e.m.l7_fields.push(name.to_string());
            }
        }
        for key in s.unknown.keys() {
            self.unknown(&format!("{at}.{key}"));
            e.m.l7_fields.push(key.clone());
        }
        e
    }

    fn operation(&mut self, at: &str, op: &objects::Operation) -> Entry {
        let mut e = Entry {
            m: Match::default(),
            impossible: false,
        };
        e.m.destination_ports = self.ports(&mut e, &format!("{at}.ports"), &op.ports, true);
        e.m.not_destination_ports =
            self.ports(&mut e, &format!("{at}.notPorts"), &op.not_ports, false);
        for (name, values) in [
            ("hosts", &op.hosts),
            ("notHosts", &op.not_hosts),
            ("methods", &op.methods),
            ("notMethods", &op.not_methods),
            ("paths", &op.paths),
            ("notPaths", &op.not_paths),
        ] {
            if !values.is_empty() {
                e.m.l7_fields.push(name.to_string());
            }
        }
        for key in op.unknown.keys() {
            self.unknown(&format!("{at}.{key}"));
            e.m.l7_fields.push(key.clone());
        }
        e
    }

    fn when(&mut self, at: &str, w: &objects::When) -> Entry {
        let mut e = Entry {
            m: Match::default(),
            impossible: false,
        };
        let (pos, neg) = (format!("{at}.values"), format!("{at}.notValues"));
        match w.key.as_str() {
            "source.ip" => {
                let (p, n) = (
                    self.ips(&mut e, &pos, &w.values, true),
                    self.ips(&mut e, &neg, &w.not_values, false),
                );
                (e.m.source_ips, e.m.not_source_ips) = (p, n);
            }
            "destination.ip" => {
                let (p, n) = (
                    self.ips(&mut e, &pos, &w.values, true),
                    self.ips(&mut e, &neg, &w.not_values, false),
                );
                (e.m.destination_ips, e.m.not_destination_ips) = (p, n);
            }
            "destination.port" => {
                let (p, n) = (
                    self.ports(&mut e, &pos, &w.values, true),
                    self.ports(&mut e, &neg, &w.not_values, false),
                );
                (e.m.destination_ports, e.m.not_destination_ports) = (p, n);
            }
            "source.namespace" => {
                let (p, n) = (
                    self.patterns(&mut e, &pos, &w.values, true),
                    self.patterns(&mut e, &neg, &w.not_values, false),
                );
                (e.m.namespaces, e.m.not_namespaces) = (p, n);
            }
            "source.principal" => {
                let (p, n) = (
                    self.patterns(&mut e, &pos, &w.values, true),
                    self.patterns(&mut e, &neg, &w.not_values, false),
                );
                (e.m.principals, e.m.not_principals) = (p, n);
            }
            other => e.m.l7_fields.push(format!("when:{other}")),
        }
        for key in w.unknown.keys() {
            self.unknown(&format!("{at}.{key}"));
            e.m.l7_fields.push(key.clone());
        }
        e
    }

    fn unknown(&mut self, at: &str) {
        if let Some((_, key)) = at.rsplit_once('.') {
            self.unknown.push(key.to_string());
        }
        self.problems.error(
            self.me,
            at,
            "unknown field; treated like an HTTP attribute ztunnel cannot check (fail-safe)",
        );
    }

    /// Parses each value with `parse`, reporting and dropping the bad ones; marks `e`
    /// impossible when a positive ALLOW list is left empty by them (see the module header).
    fn values<T>(
        &mut self,
        e: &mut Entry,
        at: &str,
        values: &[String],
        positive: bool,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match parse(v) {
                Some(t) => out.push(t),
                None => self.problems.error(
                    self.me,
                    format!("{at}[{i}]"),
                    format!("{v:?} is not {what}; value ignored"),
                ),
            }
        }
        if positive && out.is_empty() && !values.is_empty() && self.action == Action::Allow {
            e.impossible = true;
        }
        out
    }

    fn patterns(&mut self, e: &mut Entry, at: &str, v: &[String], pos: bool) -> Vec<StringMatch> {
        self.values(e, at, v, pos, "a non-empty value", |s| {
            (!s.is_empty()).then(|| StringMatch::from_istio_pattern(s))
        })
    }

    fn service_accounts(
        &mut self,
        e: &mut Entry,
        at: &str,
        v: &[String],
        pos: bool,
    ) -> Vec<StringMatch> {
        let namespace = self.namespace.to_string();
        self.values(
            e,
            at,
            v,
            pos,
            "a service account (`name` or `namespace/name`)",
            |s| {
                // Istio: a bare name is in the policy's namespace; matched exactly.
                let (ns, sa) = s.split_once('/').unwrap_or((&namespace, s));
                (!ns.is_empty() && !sa.is_empty() && !sa.contains('/'))
                    .then(|| StringMatch::Exact(format!("{ns}/{sa}")))
            },
        )
    }

    fn ips(&mut self, e: &mut Entry, at: &str, v: &[String], pos: bool) -> Vec<IpNet> {
        self.values(e, at, v, pos, "an IP address or CIDR block", parse_ip_block)
    }

    fn ports(&mut self, e: &mut Entry, at: &str, v: &[String], pos: bool) -> Vec<u16> {
        self.values(e, at, v, pos, "a port number (1-65535)", |s| {
            s.parse::<u16>().ok().filter(|p| *p != 0)
        })
    }
}

/// `10.0.0.0/8` or a bare address (a single host). Host bits in a block are cleared, as Go's
/// `netip.ParsePrefix(..).Masked()` would.
fn parse_ip_block(s: &str) -> Option<IpNet> {
    if s.contains('/') {
        s.parse::<IpNet>().ok().map(|n| n.trunc())
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    }
}
