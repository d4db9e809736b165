//! Table tests for matching, evaluation order and the L7 fail-safe. Helpers are shared with
//! `config_tests.rs` and `proptests.rs`.

use super::*;

pub(super) fn ident(td: &str, ns: &str, sa: &str) -> Identity {
    Identity::new(td, ns, sa).unwrap()
}

pub(super) fn conn(id: Option<Identity>, src: &str, dst: &str, port: u16) -> ConnInfo {
    ConnInfo {
        src_identity: id,
        src_ip: src.parse().unwrap(),
        dst_ip: dst.parse().unwrap(),
        dst_port: port,
    }
}

/// Plaintext from 10.0.0.1 to 10.0.1.1:8080.
pub(super) fn plain() -> ConnInfo {
    conn(None, "10.0.0.1", "10.0.1.1", 8080)
}

/// spiffe://cluster.local/ns/foo/sa/bar from 10.0.0.1 to 10.0.1.1:8080.
pub(super) fn tls_a() -> ConnInfo {
    conn(
        Some(ident("cluster.local", "foo", "bar")),
        "10.0.0.1",
        "10.0.1.1",
        8080,
    )
}

/// spiffe://other.td/ns/baz/sa/qux from 192.168.0.5 to 10.0.2.2:9090.
pub(super) fn tls_b() -> ConnInfo {
    conn(
        Some(ident("other.td", "baz", "qux")),
        "192.168.0.5",
        "10.0.2.2",
        9090,
    )
}

pub(super) fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.to_string(),
        namespace: "ns".to_string(),
        scope: Scope::Namespace,
        action,
        rules,
        dry_run: false,
    }
}

/// One rule, one clause, one match.
pub(super) fn single(name: &str, action: Action, m: Match) -> Authorization {
    policy(name, action, vec![Rule(vec![Clause(vec![m])])])
}

pub(super) fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.to_string())
}

pub(super) fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Checks `m` against plain, tls_a and tls_b, in an ALLOW and a DENY policy.
#[track_caller]
fn check(m: Match, allow: [bool; 3], deny: [bool; 3]) {
    let conns = [plain(), tls_a(), tls_b()];
    for (action, expected) in [(Action::Allow, allow), (Action::Deny, deny)] {
        let p = single("t", action, m.clone());
        let got = conns.clone().map(|c| p.matches(&c));
        assert_eq!(got, expected, "{action:?} {m:?}");
    }
}

/// The same expectation for ALLOW and DENY.
#[track_caller]
fn check_both(m: Match, expected: [bool; 3]) {
    check(m, expected, expected);
}

#[test]
fn principals() {
    let full = "cluster.local/ns/foo/sa/bar";
    let m = |v: Vec<StringMatch>| Match {
        principals: v,
        ..Match::default()
    };
    check_both(m(vec![exact(full)]), [false, true, false]);
    // The full SPIFFE form is accepted too.
    check_both(
        m(vec![exact(&format!("spiffe://{full}"))]),
        [false, true, false],
    );
    check_both(m(vec![exact("bar")]), [false, false, false]);
    check_both(
        m(vec![StringMatch::Prefix("cluster.local/".into())]),
        [false, true, false],
    );
    check_both(
        m(vec![StringMatch::Prefix("spiffe://other.td/".into())]),
        [false, false, true],
    );
    // A prefix without the scheme never matches the scheme itself.
    check_both(
        m(vec![StringMatch::Prefix("spiffe".into())]),
        [false, false, false],
    );
    check_both(
        m(vec![StringMatch::Suffix("/sa/qux".into())]),
        [false, false, true],
    );
    check_both(m(vec![StringMatch::Presence]), [false, true, true]);
    // Values are OR'd.
    check_both(
        m(vec![exact(full), exact("other.td/ns/baz/sa/qux")]),
        [false, true, true],
    );
}

#[test]
fn not_principals() {
    let m = |v: Vec<StringMatch>| Match {
        not_principals: v,
        ..Match::default()
    };
    // Plaintext: DENY holds (Istio), ALLOW fails (ambit's safe side).
    check(
        m(vec![exact("cluster.local/ns/foo/sa/bar")]),
        [false, false, true],
        [true, false, true],
    );
    // DENY notPrincipals [*] is "deny plaintext".
    check(
        m(vec![StringMatch::Presence]),
        [false, false, false],
        [true, false, false],
    );
}

#[test]
fn namespaces() {
    let m = |v: Vec<StringMatch>| Match {
        namespaces: v,
        ..Match::default()
    };
    check_both(m(vec![exact("foo")]), [false, true, false]);
    check_both(
        m(vec![StringMatch::Prefix("ba".into())]),
        [false, false, true],
    );
    check_both(
        m(vec![StringMatch::Suffix("oo".into())]),
        [false, true, false],
    );
    check_both(m(vec![StringMatch::Presence]), [false, true, true]);
    // Literal: no regex, no glob.
    check_both(m(vec![exact("f.*")]), [false, false, false]);
    // An empty exact value must not match a missing identity.
    check_both(m(vec![exact("")]), [false, false, false]);
}

#[test]
fn not_namespaces() {
    let m = Match {
        not_namespaces: vec![exact("foo")],
        ..Match::default()
    };
    check(m, [false, false, true], [true, false, true]);
}

#[test]
fn service_accounts() {
    let m = |v: Vec<StringMatch>| Match {
        service_accounts: v,
        ..Match::default()
    };
    check_both(m(vec![exact("foo/bar")]), [false, true, false]);
    // Istio service accounts are namespaced: a bare name never matches.
    check_both(m(vec![exact("bar")]), [false, false, false]);
    check_both(
        m(vec![StringMatch::Prefix("baz/".into())]),
        [false, false, true],
    );
    check_both(m(vec![StringMatch::Presence]), [false, true, true]);
}

#[test]
fn not_service_accounts() {
    let m = Match {
        not_service_accounts: vec![exact("foo/bar")],
        ..Match::default()
    };
    check(m, [false, false, true], [true, false, true]);
}

#[test]
fn source_ips() {
    let m = |v: &[&str]| Match {
        source_ips: v.iter().map(|s| net(s)).collect(),
        ..Match::default()
    };
    check_both(m(&["10.0.0.0/24"]), [true, true, false]);
    check_both(m(&["10.0.0.1/32"]), [true, true, false]);
    check_both(m(&["192.168.0.0/16"]), [false, false, true]);
    check_both(m(&["10.0.0.2/32", "192.168.0.5/32"]), [false, false, true]);
    check_both(m(&["fd00::/8"]), [false, false, false]);
}

#[test]
fn not_source_ips() {
    let m = Match {
        not_source_ips: vec![net("10.0.0.0/24")],
        ..Match::default()
    };
    check_both(m, [false, false, true]);
}

#[test]
fn ipv4_mapped_addresses_are_the_same_peer() {
    let mapped = conn(None, "::ffff:10.0.0.1", "::ffff:10.0.1.1", 80);
    let v4_rule = Match {
        source_ips: vec![net("10.0.0.0/8")],
        ..Match::default()
    };
    assert!(single("t", Action::Deny, v4_rule).matches(&mapped));
    let not_v4 = Match {
        not_destination_ips: vec![net("10.0.1.1/32")],
        ..Match::default()
    };
    assert!(!single("t", Action::Allow, not_v4).matches(&mapped));
    let v6_rule = Match {
        source_ips: vec![net("::ffff:10.0.0.0/104")],
        ..Match::default()
    };
    assert!(single("t", Action::Allow, v6_rule).matches(&plain()));
}

#[test]
fn destination_ips() {
    let m = |v: &str| Match {
        destination_ips: vec![net(v)],
        ..Match::default()
    };
    check_both(m("10.0.1.1/32"), [true, true, false]);
    check_both(m("10.0.0.0/16"), [true, true, true]);
    check_both(m("10.0.2.0/24"), [false, false, true]);
}

#[test]
fn not_destination_ips() {
    let m = Match {
        not_destination_ips: vec![net("10.0.1.1/32")],
        ..Match::default()
    };
    check_both(m, [false, false, true]);
}

#[test]
fn destination_ports() {
    let m = |v: Vec<u16>| Match {
        destination_ports: v,
        ..Match::default()
    };
    check_both(m(vec![8080]), [true, true, false]);
    check_both(m(vec![80, 9090]), [false, false, true]);
}

#[test]
fn not_destination_ports() {
    let m = Match {
        not_destination_ports: vec![8080],
        ..Match::default()
    };
    check_both(m, [false, false, true]);
}

#[test]
fn fields_of_one_match_are_anded() {
    let m = Match {
        namespaces: vec![exact("foo")],
        destination_ports: vec![9090],
        ..Match::default()
    };
    check_both(m.clone(), [false, false, false]);
    let m = Match {
        destination_ports: vec![8080],
        ..m
    };
    check_both(m, [false, true, false]);
}

#[test]
fn clauses_are_anded_and_matches_ored() {
    let ns = |n: &str| Match {
        namespaces: vec![exact(n)],
        ..Match::default()
    };
    let port = |p: u16| Match {
        destination_ports: vec![p],
        ..Match::default()
    };
    let p = policy(
        "t",
        Action::Allow,
        vec![Rule(vec![
            Clause(vec![ns("foo"), ns("baz")]),
            Clause(vec![port(8080)]),
        ])],
    );
    assert!(p.matches(&tls_a()));
    assert!(!p.matches(&tls_b()), "baz matches the first clause only");
    assert!(!p.matches(&plain()));
}

#[test]
fn empty_structures_follow_istio() {
    // No rules: never matches (ALLOW with no rules = allow nothing).
    for action in [Action::Allow, Action::Deny] {
        assert!(!policy("t", action, vec![]).matches(&tls_a()));
        // A rule without clauses, or a clause without matches, holds.
        assert!(policy("t", action, vec![Rule(vec![])]).matches(&plain()));
        assert!(policy("t", action, vec![Rule(vec![Clause(vec![])])]).matches(&plain()));
    }
    // A match with nothing to check: ALLOW never, DENY always.
    check(Match::default(), [false; 3], [true; 3]);
}

#[test]
fn rules_are_ored() {
    let p = policy(
        "t",
        Action::Allow,
        vec![
            Rule(vec![Clause(vec![Match {
                destination_ports: vec![1],
                ..Match::default()
            }])]),
            Rule(vec![Clause(vec![Match {
                namespaces: vec![exact("baz")],
                ..Match::default()
            }])]),
        ],
    );
    assert!(p.matches(&tls_b()));
    assert!(!p.matches(&tls_a()));
}

pub(super) fn ports(p: &[u16]) -> Match {
    Match {
        destination_ports: p.to_vec(),
        ..Match::default()
    }
}

#[test]
fn no_policies_or_no_allow_policy_means_allow() {
    let d = evaluate([], &plain());
    assert_eq!(d.result, Ok(Permit { policy: None }));
    assert!(d.dry_run_matches.is_empty());
    let deny = single("d", Action::Deny, ports(&[1]));
    let d = evaluate([&deny], &plain());
    assert_eq!(d.result, Ok(Permit { policy: None }));
}

#[test]
fn allow_policy_must_match() {
    let allow = single("a", Action::Allow, ports(&[8080]));
    assert_eq!(
        evaluate([&allow], &tls_a()).result,
        Ok(Permit {
            policy: Some("ns/a".into())
        })
    );
    assert_eq!(
        evaluate([&allow], &tls_b()).result,
        Err(Denied::NoAllowMatch)
    );
}

#[test]
fn deny_before_allow() {
    let allow = single("a", Action::Allow, ports(&[8080]));
    let deny = single("d", Action::Deny, ports(&[8080]));
    let deny2 = single("d2", Action::Deny, ports(&[8080]));
    for order in [
        vec![&allow, &deny, &deny2],
        vec![&deny, &allow, &deny2],
        vec![&deny, &deny2, &allow],
    ] {
        assert_eq!(
            evaluate(order, &tls_a()).result,
            Err(Denied::DenyPolicy {
                policy: "ns/d".into()
            })
        );
    }
    // The first matching DENY in input order is reported.
    assert_eq!(
        evaluate([&deny2, &deny], &tls_a()).result,
        Err(Denied::DenyPolicy {
            policy: "ns/d2".into()
        })
    );
    // A DENY that does not match leaves the ALLOW in charge.
    assert!(evaluate([&deny, &allow], &tls_b()).result.is_err());
    let allow_all = policy("all", Action::Allow, vec![Rule(vec![])]);
    assert!(evaluate([&deny, &allow_all], &tls_b()).is_allowed());
}

#[test]
fn dry_run_never_affects_the_result() {
    let mut deny = single("d", Action::Deny, ports(&[8080]));
    deny.dry_run = true;
    let d = evaluate([&deny], &tls_a());
    assert_eq!(d.result, Ok(Permit { policy: None }));
    assert_eq!(d.dry_run_matches, vec!["ns/d".to_string()]);
    assert_eq!(
        d.dry_run_result,
        Err(Denied::DenyPolicy {
            policy: "ns/d".into()
        })
    );

    // A dry-run ALLOW does not make the destination "ALLOW-protected".
    let mut allow = single("a", Action::Allow, ports(&[1]));
    allow.dry_run = true;
    let d = evaluate([&allow], &tls_a());
    assert_eq!(d.result, Ok(Permit { policy: None }));
    assert!(d.dry_run_matches.is_empty());
    assert_eq!(d.dry_run_result, Err(Denied::NoAllowMatch));

    // Nor can a dry-run ALLOW rescue a connection that is not allowed.
    let enforced = single("e", Action::Allow, ports(&[1]));
    let mut dry_all = policy("dry", Action::Allow, vec![Rule(vec![])]);
    dry_all.dry_run = true;
    let d = evaluate([&enforced, &dry_all], &tls_a());
    assert_eq!(d.result, Err(Denied::NoAllowMatch));
    assert_eq!(d.dry_run_matches, vec!["ns/dry".to_string()]);
    assert_eq!(
        d.dry_run_result,
        Ok(Permit {
            policy: Some("ns/dry".into())
        })
    );
}

pub(super) fn with_l7(m: Match, fields: &[&str]) -> Match {
    Match {
        l7_fields: fields.iter().map(|s| s.to_string()).collect(),
        ..m
    }
}

#[test]
fn l7_in_allow_kills_the_rule() {
    let l7 = with_l7(ports(&[8080]), &["methods"]);
    let p = single("a", Action::Allow, l7.clone());
    assert_eq!(evaluate([&p], &tls_a()).result, Err(Denied::NoAllowMatch));

    // Even when the L7 match is only one alternative of a clause.
    let p = policy(
        "a",
        Action::Allow,
        vec![Rule(vec![Clause(vec![ports(&[8080]), l7.clone()])])],
    );
    assert!(!p.matches(&tls_a()));

    // Other rules of the same policy still work.
    let p = policy(
        "a",
        Action::Allow,
        vec![
            Rule(vec![Clause(vec![l7])]),
            Rule(vec![Clause(vec![ports(&[9090])])]),
        ],
    );
    assert!(!p.matches(&tls_a()));
    assert!(p.matches(&tls_b()));
    // An L7-only ALLOW rule allows nothing.
    let p = single("a", Action::Allow, with_l7(Match::default(), &["paths"]));
    assert!(!p.matches(&tls_a()));
}

#[test]
fn l7_in_deny_enforces_the_l4_rest() {
    let p = single("d", Action::Deny, with_l7(ports(&[8080]), &["methods"]));
    assert!(!evaluate([&p], &tls_a()).is_allowed());
    assert!(evaluate([&p], &tls_b()).is_allowed());
    // Nothing L4 left: the DENY applies to everything.
    let p = single(
        "d",
        Action::Deny,
        with_l7(Match::default(), &["when:request.headers[x]"]),
    );
    for c in [plain(), tls_a(), tls_b()] {
        assert!(!evaluate([&p], &c).is_allowed());
    }
}

#[test]
fn denied_messages_name_the_reason() {
    assert_eq!(
        Denied::DenyPolicy {
            policy: "ns/x".into()
        }
        .to_string(),
        "denied by DENY policy ns/x"
    );
    assert_eq!(Denied::NoAllowMatch.to_string(), "no ALLOW policy matched");
    assert!(Denied::MtlsRequired.to_string().contains("mTLS"));
}

#[test]
fn key_and_istio_patterns() {
    assert_eq!(single("n", Action::Allow, ports(&[1])).key(), "ns/n");
    assert_eq!(StringMatch::from_istio_pattern("*"), StringMatch::Presence);
    assert_eq!(
        StringMatch::from_istio_pattern("*.local"),
        StringMatch::Suffix(".local".into())
    );
    assert_eq!(
        StringMatch::from_istio_pattern("ns-*"),
        StringMatch::Prefix("ns-".into())
    );
    assert_eq!(StringMatch::from_istio_pattern("a*b"), exact("a*b"));
    assert!(!StringMatch::Presence.matches(""));
    assert!(StringMatch::Prefix(String::new()).matches(""));
}
