//! Authorization ↔ `istio.security.Authorization`, PeerAuthentication ↔
//! `ambit.security.PeerAuthentication`.
//!
//! Istio's wire form cannot carry two things ambit's policies can hold, so
//! [`authorization_to_proto`] lowers them, always towards denying more — a receiver that
//! evaluates the wire form (ambit's ztunnel or Istio's) never allows what the model denies:
//! - [`Match::l7_fields`]: in ALLOW a rule with any never matches, so the rule is left out
//!   (rules are OR'd: an absent rule and a never-matching one are the same). In DENY the
//!   evaluator already ignores them, so they are simply not sent. Evaluation is unchanged;
//!   only the diagnostic names are lost.
//! - service-account matches other than `Exact("<ns>/<sa>")` (only a hand-written local config
//!   can hold them; the control plane's translation never makes them): Istio's
//!   `ServiceAccountMatch` is an exact namespace + account pair. In ALLOW the rule is left out.
//!   In DENY a positive list holding one stops constraining (the match then covers more) and
//!   such a negated entry is dropped (the negation then excludes less).

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::proto::{ambit as pa, google, security as ps};
use super::{at, enum_value, ip_from_bytes, ip_to_bytes, port, XdsError};
use crate::authz::{
    Action, Authorization, Clause, Match, MtlsMode, PeerAuthentication, Rule, Scope, StringMatch,
};

pub fn authorization_to_proto(a: &Authorization) -> ps::Authorization {
    let rules = a
        .rules
        .iter()
        .filter(|rule| a.action == Action::Deny || expressible(rule))
        .map(|rule| ps::Rule {
            clauses: rule
                .0
                .iter()
                .map(|clause| ps::Clause {
                    matches: clause.0.iter().map(match_to_proto).collect(),
                })
                .collect(),
        })
        .collect();
    ps::Authorization {
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        scope: match a.scope {
            Scope::Global => ps::Scope::Global,
            Scope::Namespace => ps::Scope::Namespace,
            Scope::WorkloadSelector => ps::Scope::WorkloadSelector,
        } as i32,
        action: match a.action {
            Action::Allow => ps::Action::Allow,
            Action::Deny => ps::Action::Deny,
        } as i32,
        rules,
        dry_run: a.dry_run,
    }
}

pub fn proto_to_authorization(p: &ps::Authorization) -> Result<Authorization, XdsError> {
    let scope = match enum_value("authorization.scope", p.scope)? {
        ps::Scope::Global => Scope::Global,
        ps::Scope::Namespace => Scope::Namespace,
        ps::Scope::WorkloadSelector => Scope::WorkloadSelector,
    };
    let action = match enum_value("authorization.action", p.action)? {
        ps::Action::Allow => Action::Allow,
        ps::Action::Deny => Action::Deny,
    };
    let rules = p
        .rules
        .iter()
        .enumerate()
        .map(|(r, rule)| {
            let clauses = rule.clauses.iter().enumerate().map(|(c, clause)| {
                let matches = clause.matches.iter().enumerate().map(|(m, x)| {
                    let field = format!("authorization.rules[{r}].clauses[{c}].matches[{m}]");
                    match_from_proto(&field, x)
                });
                matches.collect::<Result<_, _>>().map(Clause)
            });
            clauses.collect::<Result<_, _>>().map(Rule)
        })
        .collect::<Result<_, _>>()?;
    Ok(Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope,
        action,
        rules,
        dry_run: p.dry_run,
    })
}

pub fn peer_authentication_to_proto(p: &PeerAuthentication) -> pa::PeerAuthentication {
    pa::PeerAuthentication {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        mode: p.mode.map_or(pa::MtlsMode::Unset, mode_to_proto) as i32,
        port_level_mtls: p
            .port_level_mtls
            .iter()
            .map(|(&port, &mode)| (port.into(), mode_to_proto(mode) as i32))
            .collect(),
    }
}

pub fn proto_to_peer_authentication(
    p: &pa::PeerAuthentication,
) -> Result<PeerAuthentication, XdsError> {
    let mut port_level_mtls = BTreeMap::new();
    for (&number, &mode) in &p.port_level_mtls {
        let field = || format!("peer_authentication.port_level_mtls[{number}]");
        let port = port(field, number)?;
        // UNSET inherits: the same as no entry.
        if let Some(mode) = mode_from_proto(&field(), mode)? {
            port_level_mtls.insert(port, mode);
        }
    }
    Ok(PeerAuthentication {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        mode: mode_from_proto("peer_authentication.mode", p.mode)?,
        port_level_mtls,
    })
}

fn mode_to_proto(m: MtlsMode) -> pa::MtlsMode {
    match m {
        MtlsMode::Strict => pa::MtlsMode::Strict,
        MtlsMode::Permissive => pa::MtlsMode::Permissive,
        MtlsMode::Disable => pa::MtlsMode::Disable,
    }
}

fn mode_from_proto(field: &str, value: i32) -> Result<Option<MtlsMode>, XdsError> {
    Ok(match enum_value(field, value)? {
        pa::MtlsMode::Unset => None,
        pa::MtlsMode::Strict => Some(MtlsMode::Strict),
        pa::MtlsMode::Permissive => Some(MtlsMode::Permissive),
        pa::MtlsMode::Disable => Some(MtlsMode::Disable),
    })
}

/// Whether the wire form can say everything this rule's matches say.
fn expressible(rule: &Rule) -> bool {
    rule.0.iter().flat_map(|c| c.0.iter()).all(|m| {
        m.l7_fields.is_empty()
            && (m.service_accounts.iter())
                .chain(&m.not_service_accounts)
                .all(|sa| service_account_to_proto(sa).is_some())
    })
}

/// `Exact("<ns>/<sa>")` as Istio's pair; anything else has no wire form.
fn service_account_to_proto(m: &StringMatch) -> Option<ps::ServiceAccountMatch> {
    let StringMatch::Exact(s) = m else {
        return None;
    };
    let (namespace, service_account) = s.split_once('/')?;
    Some(ps::ServiceAccountMatch {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
    })
}

fn match_to_proto(m: &Match) -> ps::Match {
    let strings = |v: &[StringMatch]| v.iter().map(string_match_to_proto).collect();
    let nets = |v: &[IpNet]| v.iter().map(net_to_proto).collect();
    let ports = |v: &[u16]| v.iter().map(|&p| u32::from(p)).collect();
    // Positive: one entry without a wire form voids the whole list (see the module docs).
    let positive: Option<Vec<_>> = m
        .service_accounts
        .iter()
        .map(service_account_to_proto)
        .collect();
    ps::Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        service_accounts: positive.unwrap_or_default(),
        not_service_accounts: m
            .not_service_accounts
            .iter()
            .filter_map(service_account_to_proto)
            .collect(),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: nets(&m.source_ips),
        not_source_ips: nets(&m.not_source_ips),
        destination_ips: nets(&m.destination_ips),
        not_destination_ips: nets(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
    }
}

fn match_from_proto(field: &str, p: &ps::Match) -> Result<Match, XdsError> {
    let strings = |name: &str, v: &[ps::StringMatch]| -> Result<Vec<StringMatch>, XdsError> {
        let list = v.iter().enumerate();
        list.map(|(i, s)| string_match_from_proto(&at(&format!("{field}.{name}"), i), s))
            .collect()
    };
    let accounts = |v: &[ps::ServiceAccountMatch]| {
        v.iter()
            .map(|sa| StringMatch::Exact(format!("{}/{}", sa.namespace, sa.service_account)))
            .collect()
    };
    let nets = |name: &str, v: &[ps::Address]| -> Result<Vec<IpNet>, XdsError> {
        let list = v.iter().enumerate();
        list.map(|(i, a)| net_from_proto(&at(&format!("{field}.{name}"), i), a))
            .collect()
    };
    let ports = |name: &str, v: &[u32]| -> Result<Vec<u16>, XdsError> {
        let list = v.iter().enumerate();
        list.map(|(i, &p)| port(|| at(&format!("{field}.{name}"), i), p))
            .collect()
    };
    Ok(Match {
        namespaces: strings("namespaces", &p.namespaces)?,
        not_namespaces: strings("not_namespaces", &p.not_namespaces)?,
        service_accounts: accounts(&p.service_accounts),
        not_service_accounts: accounts(&p.not_service_accounts),
        principals: strings("principals", &p.principals)?,
        not_principals: strings("not_principals", &p.not_principals)?,
        source_ips: nets("source_ips", &p.source_ips)?,
        not_source_ips: nets("not_source_ips", &p.not_source_ips)?,
        destination_ips: nets("destination_ips", &p.destination_ips)?,
        not_destination_ips: nets("not_destination_ips", &p.not_destination_ips)?,
        destination_ports: ports("destination_ports", &p.destination_ports)?,
        not_destination_ports: ports("not_destination_ports", &p.not_destination_ports)?,
        l7_fields: Vec::new(),
    })
}

fn string_match_to_proto(m: &StringMatch) -> ps::StringMatch {
    use ps::string_match::MatchType;
    ps::StringMatch {
        match_type: Some(match m {
            StringMatch::Exact(s) => MatchType::Exact(s.clone()),
            StringMatch::Prefix(s) => MatchType::Prefix(s.clone()),
            StringMatch::Suffix(s) => MatchType::Suffix(s.clone()),
            StringMatch::Presence => MatchType::Presence(google::Empty {}),
        }),
    }
}

fn string_match_from_proto(field: &str, p: &ps::StringMatch) -> Result<StringMatch, XdsError> {
    use ps::string_match::MatchType;
    match &p.match_type {
        Some(MatchType::Exact(s)) => Ok(StringMatch::Exact(s.clone())),
        Some(MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s.clone())),
        Some(MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s.clone())),
        Some(MatchType::Presence(_)) => Ok(StringMatch::Presence),
        // An empty match would have to be read as "matches nothing" or "matches everything",
        // and which is safe depends on the policy: refuse it instead.
        None => Err(XdsError::Missing {
            field: format!("{field}.match_type"),
        }),
    }
}

fn net_to_proto(n: &IpNet) -> ps::Address {
    ps::Address {
        address: ip_to_bytes(&n.addr()),
        length: n.prefix_len().into(),
    }
}

fn net_from_proto(field: &str, a: &ps::Address) -> Result<IpNet, XdsError> {
    let address = ip_from_bytes(|| format!("{field}.address"), &a.address)?;
    let bad = || XdsError::BadPrefix {
        field: format!("{field}.length"),
        address,
        length: a.length,
    };
    let length = u8::try_from(a.length).map_err(|_| bad())?;
    IpNet::new(address, length).map_err(|_| bad())
}
