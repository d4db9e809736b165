//! Property tests: `evaluate` against a deliberately simple reference model of the documented
//! semantics, plus serde round trips and no-panic checks on arbitrary input.
//!
//! Generators draw from small pools of namespaces, identities, CIDRs and ports so that matches
//! and near-misses (prefix vs. exact, IPv4 vs. IPv4-mapped, scheme vs. no scheme) are common.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

// ---- reference model -------------------------------------------------------------------------
//
// Written from the module documentation, independently of the implementation's helpers: string
// values are compared on strings rebuilt from the identity's parts, and every "unknown" case is
// spelled out as its own branch.

fn ref_string(m: &StringMatch, v: &str) -> bool {
    match m {
        StringMatch::Exact(s) => v == s,
        StringMatch::Prefix(s) => v.starts_with(s.as_str()),
        StringMatch::Suffix(s) => v.ends_with(s.as_str()),
        StringMatch::Presence => !v.is_empty(),
    }
}

fn ref_principal(m: &StringMatch, id: &Identity) -> bool {
    let short = format!(
        "{}/ns/{}/sa/{}",
        id.trust_domain(),
        id.namespace(),
        id.service_account()
    );
    let full = format!("spiffe://{short}");
    match m {
        // Values written with the scheme are compared against the full string.
        StringMatch::Exact(s) if s.starts_with("spiffe://") => *s == full,
        StringMatch::Prefix(s) if s.starts_with("spiffe://") => full.starts_with(s.as_str()),
        other => ref_string(other, &short),
    }
}

fn ref_ip(net: &IpNet, ip: IpAddr) -> bool {
    let v4 = match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    net.contains(&ip)
        || v4.is_some_and(|a| {
            net.contains(&IpAddr::V4(a)) || net.contains(&IpAddr::V6(a.to_ipv6_mapped()))
        })
}

/// One identity-dependent field. `value` is `None` without an identity.
fn ref_id_field(
    action: Action,
    pos: &[StringMatch],
    neg: &[StringMatch],
    id: Option<&Identity>,
    test: impl Fn(&StringMatch, &Identity) -> bool,
) -> bool {
    let Some(id) = id else {
        // Unknown peer: positives fail; negatives hold only in DENY.
        if !pos.is_empty() {
            return false;
        }
        return neg.is_empty() || action == Action::Deny;
    };
    if !pos.is_empty() && !pos.iter().any(|p| test(p, id)) {
        return false;
    }
    !neg.iter().any(|p| test(p, id))
}

fn ref_plain_field<T>(pos: &[T], neg: &[T], test: impl Fn(&T) -> bool) -> bool {
    if !pos.is_empty() && !pos.iter().any(&test) {
        return false;
    }
    !neg.iter().any(test)
}

fn ref_match(action: Action, m: &Match, c: &ConnInfo) -> bool {
    let nothing_l4 = m.namespaces.is_empty()
        && m.not_namespaces.is_empty()
        && m.service_accounts.is_empty()
        && m.not_service_accounts.is_empty()
        && m.principals.is_empty()
        && m.not_principals.is_empty()
        && m.source_ips.is_empty()
        && m.not_source_ips.is_empty()
        && m.destination_ips.is_empty()
        && m.not_destination_ips.is_empty()
        && m.destination_ports.is_empty()
        && m.not_destination_ports.is_empty();
    if nothing_l4 {
        return action == Action::Deny;
    }
    let id = c.src_identity.as_ref();
    ref_id_field(action, &m.principals, &m.not_principals, id, ref_principal)
        && ref_id_field(action, &m.namespaces, &m.not_namespaces, id, |p, id| {
            ref_string(p, id.namespace())
        })
        && ref_id_field(
            action,
            &m.service_accounts,
            &m.not_service_accounts,
            id,
            |p, id| ref_string(p, &format!("{}/{}", id.namespace(), id.service_account())),
        )
        && ref_plain_field(&m.source_ips, &m.not_source_ips, |n| ref_ip(n, c.src_ip))
        && ref_plain_field(&m.destination_ips, &m.not_destination_ips, |n| {
            ref_ip(n, c.dst_ip)
        })
        && ref_plain_field(&m.destination_ports, &m.not_destination_ports, |p| {
            *p == c.dst_port
        })
}

fn ref_policy(p: &Authorization, c: &ConnInfo) -> bool {
    for rule in &p.rules {
        let has_l7 = rule
            .0
            .iter()
            .any(|cl| cl.0.iter().any(|m| !m.l7_fields.is_empty()));
        if p.action == Action::Allow && has_l7 {
            continue;
        }
        let mut all = true;
        for clause in &rule.0 {
            if !clause.0.is_empty() && !clause.0.iter().any(|m| ref_match(p.action, m, c)) {
                all = false;
            }
        }
        if all {
            return true;
        }
    }
    false
}

fn ref_result(ps: &[&Authorization], c: &ConnInfo) -> Result<Permit, Denied> {
    if let Some(d) = ps
        .iter()
        .find(|p| p.action == Action::Deny && ref_policy(p, c))
    {
        return Err(Denied::DenyPolicy { policy: d.key() });
    }
    let allows: Vec<_> = ps.iter().filter(|p| p.action == Action::Allow).collect();
    if allows.is_empty() {
        return Ok(Permit { policy: None });
    }
    match allows.into_iter().find(|p| ref_policy(p, c)) {
        Some(a) => Ok(Permit {
            policy: Some(a.key()),
        }),
        None => Err(Denied::NoAllowMatch),
    }
}

fn ref_evaluate(ps: &[Authorization], c: &ConnInfo) -> Decision {
    let enforced: Vec<_> = ps.iter().filter(|p| !p.dry_run).collect();
    let all: Vec<_> = ps.iter().collect();
    Decision {
        result: ref_result(&enforced, c),
        dry_run_matches: ps
            .iter()
            .filter(|p| p.dry_run && ref_policy(p, c))
            .map(Authorization::key)
            .collect(),
        dry_run_result: ref_result(&all, c),
    }
}

// ---- generators --------------------------------------------------------------------------------

const STRINGS: &[&str] = &[
    "",
    "foo",
    "fo",
    "bar",
    "oo",
    "foo/a",
    "bar/",
    "/a",
    "a",
    "cluster.local/",
    "cluster.local/ns/foo/sa/a",
    "spiffe://cluster.local/ns/foo/sa/a",
    "spiffe://cluster.local/",
    "spiffe://",
    "spi",
    "/sa/b",
];

fn string_match() -> impl Strategy<Value = StringMatch> {
    let s = || proptest::sample::select(STRINGS).prop_map(str::to_string);
    prop_oneof![
        s().prop_map(StringMatch::Exact),
        s().prop_map(StringMatch::Prefix),
        s().prop_map(StringMatch::Suffix),
        Just(StringMatch::Presence),
    ]
}

const NETS: &[&str] = &[
    "10.0.0.0/8",
    "10.0.0.1/32",
    "192.168.0.0/16",
    "::ffff:10.0.0.0/104",
    "fd00::/8",
    "0.0.0.0/0",
];

fn ip_net() -> impl Strategy<Value = IpNet> {
    proptest::sample::select(NETS).prop_map(|s| s.parse().unwrap())
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        Just(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        Just(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        Just(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1))),
        Just(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped())),
        Just(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    proptest::sample::select(&[80u16, 443, 8080][..])
}

/// Mostly empty lists, so that matches carry one or two constraints.
fn few<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(s, 1..3)]
}

fn a_match() -> impl Strategy<Value = Match> {
    (
        (
            few(string_match()),
            few(string_match()),
            few(string_match()),
        ),
        (
            few(string_match()),
            few(string_match()),
            few(string_match()),
        ),
        (few(ip_net()), few(ip_net()), few(ip_net()), few(ip_net())),
        (few(port()), few(port())),
        prop_oneof![4 => Just(Vec::new()), 1 => Just(vec!["methods".to_string()])],
    )
        .prop_map(
            |((ns, nns, sa), (nsa, pr, npr), (si, nsi, di, ndi), (dp, ndp), l7)| Match {
                namespaces: ns,
                not_namespaces: nns,
                service_accounts: sa,
                not_service_accounts: nsa,
                principals: pr,
                not_principals: npr,
                source_ips: si,
                not_source_ips: nsi,
                destination_ips: di,
                not_destination_ips: ndi,
                destination_ports: dp,
                not_destination_ports: ndp,
                l7_fields: l7,
            },
        )
}

fn rule() -> impl Strategy<Value = Rule> {
    proptest::collection::vec(
        proptest::collection::vec(a_match(), 0..3).prop_map(Clause),
        0..3,
    )
    .prop_map(Rule)
}

fn policies() -> impl Strategy<Value = Vec<Authorization>> {
    proptest::collection::vec(
        (
            any::<bool>(),
            prop::bool::weighted(0.2),
            proptest::collection::vec(rule(), 0..3),
        ),
        0..5,
    )
    .prop_map(|ps| {
        ps.into_iter()
            .enumerate()
            .map(|(i, (allow, dry_run, rules))| Authorization {
                name: format!("p{i}"),
                namespace: "ns".into(),
                scope: Scope::Namespace,
                action: if allow { Action::Allow } else { Action::Deny },
                rules,
                dry_run,
            })
            .collect()
    })
}

fn identity() -> impl Strategy<Value = Option<Identity>> {
    let part = |v: &'static [&'static str]| proptest::sample::select(v);
    prop_oneof![
        1 => Just(None),
        3 => (part(&["cluster.local", "other"]), part(&["foo", "bar"]), part(&["a", "b"]))
            .prop_map(|(td, ns, sa)| Some(Identity::new(td, ns, sa).unwrap())),
    ]
}

fn conn_info() -> impl Strategy<Value = ConnInfo> {
    (identity(), ip(), ip(), port()).prop_map(|(src_identity, src_ip, dst_ip, dst_port)| ConnInfo {
        src_identity,
        src_ip,
        dst_ip,
        dst_port,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn evaluate_agrees_with_the_reference_model(ps in policies(), c in conn_info()) {
        prop_assert_eq!(evaluate(&ps, &c), ref_evaluate(&ps, &c));
    }

    #[test]
    fn dry_run_policies_never_change_the_result(ps in policies(), c in conn_info()) {
        let enforced: Vec<_> = ps.iter().filter(|p| !p.dry_run).collect();
        prop_assert_eq!(evaluate(&ps, &c).result, evaluate(enforced, &c).result);
    }

    #[test]
    fn a_matching_deny_always_denies(ps in policies(), c in conn_info()) {
        let deny_all = Authorization {
            name: "zz-deny".into(),
            namespace: "ns".into(),
            scope: Scope::Global,
            action: Action::Deny,
            rules: vec![Rule(vec![])],
            dry_run: false,
        };
        let mut with = ps.clone();
        with.push(deny_all);
        prop_assert!(!evaluate(&with, &c).is_allowed());
    }

    #[test]
    fn policies_round_trip_through_yaml_and_json(ps in policies()) {
        let yaml = serde_yaml::to_string(&ps).unwrap();
        prop_assert_eq!(&serde_yaml::from_str::<Vec<Authorization>>(&yaml).unwrap(), &ps);
        let json = serde_json::to_string(&ps).unwrap();
        prop_assert_eq!(&serde_json::from_str::<Vec<Authorization>>(&json).unwrap(), &ps);
    }

    #[test]
    fn arbitrary_yaml_never_panics(s in "[-\\[\\]{}:!, a-zA-Z0-9/.*\n]{0,120}") {
        let _ = serde_yaml::from_str::<Vec<Authorization>>(&s);
        let _ = serde_yaml::from_str::<Match>(&s);
        let _ = serde_yaml::from_str::<StringMatch>(&s);
        let _ = serde_yaml::from_str::<Vec<PeerAuthentication>>(&s);
    }
}
