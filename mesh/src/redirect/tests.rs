//! Tests for the rendered redirect rules. The golden texts were checked against the kernel: fed to
//! `iptables-restore --noflush` in a scratch netns, every `-A` line comes back verbatim from
//! `iptables-save` (the testbed crate's end-to-end tests repeat that check).

use super::*;
use proptest::prelude::*;

const DEFAULT_V4: &str = "\
# ambit in-pod redirect rules
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-F ISTIO_PRERT
-F ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-F ISTIO_PRERT
-F ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
*raw
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-F ISTIO_PRERT
-F ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1
-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1
COMMIT
";

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// The `-A <chain> ...` lines of one table section.
fn table_rules<'a>(text: &'a str, table: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut out = Vec::new();
    for l in text.lines() {
        if let Some(t) = l.strip_prefix('*') {
            inside = t == table;
        } else if l == "COMMIT" {
            inside = false;
        } else if inside && l.starts_with("-A ") {
            out.push(l);
        }
    }
    out
}

#[test]
fn default_v4_golden() {
    assert_eq!(
        iptables_restore_input(&RedirectConfig::default(), Family::V4),
        DEFAULT_V4
    );
}

#[test]
fn every_protocols_md_rule_is_present_in_order() {
    let text = iptables_restore_input(&RedirectConfig::default(), Family::V4);
    let mangle = table_rules(&text, "mangle");
    assert!(mangle.contains(
        &"-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff"
    ));
    assert!(mangle.iter().any(|r| r
        .starts_with("-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark")));

    let nat = table_rules(&text, "nat");
    let pos = |needle: &str| {
        nat.iter()
            .position(|r| r.contains(needle))
            .unwrap_or_else(|| panic!("no nat rule containing {needle:?} in {nat:#?}"))
    };
    // PREROUTING: probe accept before the inbound capture.
    assert!(pos("-s 169.254.7.127/32") < pos("--to-ports 15006"));
    assert!(nat[pos("--to-ports 15006")].contains("! --dport 15008"));
    // OUTPUT: probe replies, DNS, connmark accept, lo accept, then the outbound capture.
    let order = [
        "-d 169.254.7.127/32",
        "-p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053",
        "-p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053",
        "-m mark --mark 0x111/0xfff -j ACCEPT",
        "-o lo -j ACCEPT",
        "--to-ports 15001",
    ];
    let positions: Vec<usize> = order.iter().map(|n| pos(n)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // Jumps from every builtin into our chains.
    for (table, hook, chain) in POD_CHAINS {
        assert!(
            table_rules(&text, table).contains(&format!("-A {hook} -j {chain}").as_str()),
            "{table} {hook} -> {chain}"
        );
    }
}

#[test]
fn ipv6_variant_uses_ipv6_addresses_only() {
    let text = iptables_restore_input(&RedirectConfig::default(), Family::V6);
    assert!(text.contains(
        "-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -m tcp -j ACCEPT"
    ));
    assert!(text.contains(
        "-A ISTIO_OUTPUT -d fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -m tcp -j ACCEPT"
    ));
    assert!(text.contains("-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"));
    assert!(!text.contains("127.0.0.1"));
    assert!(!text.contains("169.254"));
    // Same rule structure as IPv4, line for line.
    assert_eq!(
        lines(&text).len(),
        lines(&iptables_restore_input(
            &RedirectConfig::default(),
            Family::V4
        ))
        .len()
    );
}

#[test]
fn dns_capture_off_drops_dns_rules_and_raw_table() {
    let cfg = RedirectConfig {
        dns_capture: false,
        ..RedirectConfig::default()
    };
    let text = iptables_restore_input(&cfg, Family::V4);
    assert!(!text.contains("15053"));
    assert!(!text.contains("*raw"));
    assert!(!text.contains("--dport 53"));
    assert!(text.contains("--to-ports 15001"));
}

#[test]
fn exclusions_appear_before_the_captures_and_per_family() {
    let cfg = RedirectConfig {
        exclude_outbound_ports: vec![9000, 9001],
        exclude_inbound_ports: vec![8081],
        exclude_outbound_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:96::/64".parse().unwrap(),
        ],
        ..RedirectConfig::default()
    };
    let v4 = iptables_restore_input(&cfg, Family::V4);
    let nat = table_rules(&v4, "nat");
    let pos = |needle: &str| nat.iter().position(|r| r.contains(needle)).unwrap();
    for rule in [
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 9000 -j ACCEPT",
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 9001 -j ACCEPT",
        "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ACCEPT",
    ] {
        assert!(nat.contains(&rule), "missing {rule}");
        assert!(pos(rule) < pos("--to-ports 15001"));
    }
    assert!(nat.contains(&"-A ISTIO_PRERT -p tcp -m tcp --dport 8081 -j ACCEPT"));
    assert!(pos("--dport 8081 -j ACCEPT") < pos("--to-ports 15006"));
    assert!(!v4.contains("fd00:96::"));

    let v6 = iptables_restore_input(&cfg, Family::V6);
    assert!(v6.contains("-A ISTIO_OUTPUT -d fd00:96::/64 -j ACCEPT"));
    assert!(v6.contains("--dport 9000 -j ACCEPT"));
    assert!(!v6.contains("10.96.0.0"));
}

#[test]
fn custom_marks_and_ports_are_used_everywhere() {
    let cfg = RedirectConfig {
        ztunnel_mark: 0x2,
        mark_mask: 0xf,
        connmark: 0x4,
        outbound_port: 25001,
        inbound_plain_port: 25006,
        hbone_port: 25008,
        dns_port: 25053,
        ..RedirectConfig::default()
    };
    let text = iptables_restore_input(&cfg, Family::V4);
    for needle in [
        "0x2/0xf",
        "0x4/0xf",
        "--to-ports 25001",
        "--to-ports 25006",
        "! --dport 25008",
        "--to-ports 25053",
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
    for stale in ["0x539", "0x111", "1500"] {
        assert!(!text.contains(stale), "default {stale} leaked");
    }
}

const SAVE_WITH_ONE_JUMP_EACH: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -s 10.0.0.0/8 -j ACCEPT
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A OUTPUT -j ISTIO_OUTPUT
-A OUTPUT -j ISTIO_OUTPUT
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
COMMIT
";

#[test]
fn reconcile_keeps_single_jumps_and_removes_duplicates() {
    let text = iptables_reconcile_input(
        &RedirectConfig::default(),
        Family::V4,
        SAVE_WITH_ONE_JUMP_EACH,
    );
    let mangle = table_rules(&text, "mangle");
    assert!(!mangle
        .iter()
        .any(|r| r.starts_with("-A PREROUTING") || r.starts_with("-A OUTPUT")));
    // Three OUTPUT jumps in nat: two deleted, none added.
    assert_eq!(text.matches("-D OUTPUT -j ISTIO_OUTPUT").count(), 2);
    assert!(!table_rules(&text, "nat")
        .iter()
        .any(|r| r.starts_with("-A OUTPUT")));
    // Someone else's PREROUTING rule is never mentioned.
    assert!(!text.contains("10.0.0.0/8"));
    // Chain contents are still re-rendered in full.
    assert!(text.contains("--to-ports 15001"));
}

#[test]
fn reconcile_removes_chains_the_config_no_longer_wants() {
    let cfg = RedirectConfig {
        dns_capture: false,
        ..RedirectConfig::default()
    };
    let text = iptables_reconcile_input(&cfg, Family::V4, SAVE_WITH_ONE_JUMP_EACH);
    let raw: Vec<&str> = text
        .split("*raw\n")
        .nth(1)
        .expect("raw table section present to remove stale chains")
        .lines()
        .take_while(|l| *l != "COMMIT")
        .collect();
    assert_eq!(
        raw,
        [
            "-D PREROUTING -j ISTIO_PRERT",
            "-F ISTIO_PRERT",
            "-X ISTIO_PRERT",
            "-D OUTPUT -j ISTIO_OUTPUT",
            "-F ISTIO_OUTPUT",
            "-X ISTIO_OUTPUT",
        ]
    );
}

#[test]
fn remove_input_deletes_every_jump_then_chain() {
    let text = iptables_remove_input(SAVE_WITH_ONE_JUMP_EACH);
    assert_eq!(text.matches("-D OUTPUT -j ISTIO_OUTPUT").count(), 3 + 1 + 1);
    assert_eq!(text.matches("-X ").count(), 6);
    assert!(!text.contains("-A "));
    // A clean netns needs no tables at all (iptables-restore accepts the lone comment).
    assert_eq!(
        iptables_remove_input(""),
        "# ambit in-pod redirect rules: removal\n"
    );
}

#[test]
fn route_commands_match_istio() {
    let cfg = RedirectConfig::default();
    let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        route_commands(&cfg, Family::V4),
        vec![
            argv(&[
                "-4",
                "rule",
                "add",
                "fwmark",
                "0x111/0xfff",
                "pref",
                "32764",
                "lookup",
                "100"
            ]),
            argv(&[
                "-4",
                "route",
                "replace",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                "100"
            ]),
        ]
    );
    assert_eq!(
        route_commands(&cfg, Family::V6)[1],
        argv(&["-6", "route", "replace", "local", "::/0", "dev", "lo", "table", "100"])
    );
    assert_eq!(route_remove_commands(&cfg, Family::V6)[0][2], "del");
    assert_eq!(route_remove_commands(&cfg, Family::V4)[1][2], "del");
}

#[test]
fn node_probe_snat_all_destinations_by_default() {
    let text = node_probe_snat_input(&RedirectConfig::default(), Family::V4);
    assert_eq!(
        table_rules(&text, "nat"),
        [
            "-A POSTROUTING -j ISTIO_POSTRT",
            "-A ISTIO_POSTRT -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127",
        ]
    );
    let v6 = node_probe_snat_input(&RedirectConfig::default(), Family::V6);
    assert!(v6.contains("--to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff"));
}

#[test]
fn node_probe_snat_limited_to_pod_cidrs_of_the_family() {
    let cfg = RedirectConfig {
        probe_snat_pod_cidrs: vec![
            "10.1.0.7/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ],
        ..RedirectConfig::default()
    };
    let v4 = node_probe_snat_input(&cfg, Family::V4);
    assert_eq!(
        table_rules(&v4, "nat")[1..],
        ["-A ISTIO_POSTRT -d 10.1.0.0/24 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127"]
    );
    let v6 = node_probe_snat_input(&cfg, Family::V6);
    assert!(v6.contains("-A ISTIO_POSTRT -d fd00:1::/64 -p tcp"));
    assert!(!v6.contains("10.1.0.0"));

    let save = "*nat\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\nCOMMIT\n";
    assert!(!node_probe_snat_reconcile_input(&cfg, Family::V4, save).contains("-A POSTROUTING"));
    assert_eq!(
        table_rules(&node_probe_snat_remove_input(save), "nat"),
        Vec::<&str>::new()
    );
    assert!(node_probe_snat_remove_input(save)
        .contains("-D POSTROUTING -j ISTIO_POSTRT\n-F ISTIO_POSTRT\n-X ISTIO_POSTRT\n"));
}

#[test]
fn validate_accepts_default_and_names_bad_fields() {
    assert_eq!(RedirectConfig::default().validate(), Ok(()));
    let bad = |f: fn(&mut RedirectConfig)| {
        let mut cfg = RedirectConfig::default();
        f(&mut cfg);
        cfg.validate().unwrap_err()
    };
    assert_eq!(bad(|c| c.mark_mask = 0), RedirectConfigError::ZeroMask);
    assert_eq!(
        bad(|c| c.ztunnel_mark = 0x1539),
        RedirectConfigError::MarkOutsideMask {
            field: "ztunnel_mark",
            value: 0x1539,
            mask: 0xfff
        }
    );
    assert_eq!(
        bad(|c| c.connmark = 0),
        RedirectConfigError::ZeroMark { field: "connmark" }
    );
    assert!(matches!(
        bad(|c| c.connmark = 0x539),
        RedirectConfigError::MarksCollide { .. }
    ));
    assert_eq!(
        bad(|c| c.dns_port = 0),
        RedirectConfigError::ZeroPort { field: "dns_port" }
    );
    assert_eq!(
        bad(|c| c.hbone_port = 15001),
        RedirectConfigError::PortsCollide {
            a: "outbound_port",
            b: "hbone_port",
            port: 15001
        }
    );
    assert_eq!(
        bad(|c| c.exclude_inbound_ports = vec![0]),
        RedirectConfigError::ZeroPort {
            field: "exclude_inbound_ports"
        }
    );
    // Errors name the field in their message too.
    assert!(bad(|c| c.dns_port = 0).to_string().contains("dns_port"));
}

/// Executes restore input against a model of the owned chains and jumps the way
/// `iptables-restore --noflush` would, failing where the real one would abort the transaction.
fn simulate(state: &mut SavedState, input: &str) -> Result<(), String> {
    let mut table = String::new();
    for l in input.lines() {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words[..] {
            [] => {}
            [first, ..] if first.starts_with('#') || first == "COMMIT" => {}
            [t] if t.starts_with('*') => table = t[1..].to_owned(),
            [decl, "-", "[0:0]"] if decl.starts_with(':') => {
                state
                    .chains
                    .insert((table.clone(), decl[1..].to_owned()), ());
            }
            ["-F", c] | ["-X", c] if !state.has_chain(&table, c) => {
                return Err(format!("{l}: no chain"))
            }
            ["-F", _] => {}
            ["-X", c] => {
                if state
                    .jumps
                    .iter()
                    .any(|((t, _, to), n)| *t == table && to == c && *n > 0)
                {
                    return Err(format!("{l}: chain still referenced"));
                }
                state.chains.remove(&(table.clone(), c.to_owned()));
            }
            ["-A", hook, "-j", to] | ["-D", hook, "-j", to]
                if hook.chars().all(|c| c.is_ascii_uppercase()) && !hook.starts_with("ISTIO") =>
            {
                if !state.has_chain(&table, to) {
                    return Err(format!("{l}: jump to missing chain"));
                }
                let n = state
                    .jumps
                    .entry((table.clone(), hook.to_owned(), to.to_owned()))
                    .or_default();
                if words[0] == "-A" {
                    *n += 1;
                } else if *n == 0 {
                    return Err(format!("{l}: nothing to delete"));
                } else {
                    *n -= 1;
                }
            }
            ["-A", c, ..] if state.has_chain(&table, c) => {}
            _ => return Err(format!("unexpected line {l}")),
        }
    }
    Ok(())
}

fn arb_config() -> impl Strategy<Value = RedirectConfig> {
    (any::<bool>(), proptest::collection::vec(1u16.., 0..3)).prop_map(|(dns_capture, ports)| {
        RedirectConfig {
            dns_capture,
            exclude_outbound_ports: ports,
            ..RedirectConfig::default()
        }
    })
}

proptest! {
    /// Whatever jumps a netns starts with (none, duplicates, leftovers of another config),
    /// one reconcile leaves exactly one jump per wanted chain and nothing else of ours,
    /// and a second reconcile against that result changes no jump at all.
    #[test]
    fn reconcile_converges_from_any_jump_counts(
        counts in proptest::collection::vec(0usize..4, POD_CHAINS.len()),
        with_chains in any::<bool>(),
        cfg in arb_config(),
    ) {
        let mut state = SavedState::default();
        for ((table, hook, chain), n) in POD_CHAINS.iter().zip(&counts) {
            if *n > 0 || with_chains {
                state.chains.insert((table.to_string(), chain.to_string()), ());
            }
            if *n > 0 {
                state.jumps.insert((table.to_string(), hook.to_string(), chain.to_string()), *n);
            }
        }
        let saved = render_state(&state);
        prop_assert_eq!(SavedState::parse(&saved).jumps, state.jumps.clone());

        let input = iptables_reconcile_input(&cfg, Family::V4, &saved);
        simulate(&mut state, &input).map_err(TestCaseError::fail)?;
        for (table, hook, chain) in POD_CHAINS {
            let wanted = cfg.dns_capture || table != "raw";
            prop_assert_eq!(state.jumps(table, hook, chain), usize::from(wanted), "{} {}", table, hook);
            prop_assert_eq!(state.has_chain(table, chain), wanted);
        }

        let again = iptables_reconcile_input(&cfg, Family::V4, &render_state(&state));
        prop_assert!(!again.lines().any(|l| l.starts_with("-D ") || l.starts_with("-X ")));
        prop_assert!(!again.lines().any(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT")));

        let removal = iptables_remove_input(&render_state(&state));
        simulate(&mut state, &removal).map_err(TestCaseError::fail)?;
        prop_assert!(state.chains.is_empty());
        prop_assert!(state.jumps.values().all(|n| *n == 0));
    }

    /// Any text is accepted as `iptables-save` output without panicking.
    #[test]
    fn arbitrary_save_text_never_panics(save in ".{0,400}") {
        let _ = iptables_reconcile_input(&RedirectConfig::default(), Family::V6, &save);
        let _ = iptables_remove_input(&save);
        let _ = node_probe_snat_reconcile_input(&RedirectConfig::default(), Family::V4, &save);
    }
}

/// Prints a model state the way `iptables-save` would (only the parts the parser reads).
fn render_state(state: &SavedState) -> String {
    let mut out = String::new();
    for table in TABLES {
        out.push_str(&format!(
            "*{table}\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ));
        for (t, c) in state.chains.keys() {
            if t == table {
                out.push_str(&format!(":{c} - [0:0]\n"));
            }
        }
        for ((t, hook, to), n) in &state.jumps {
            if t == table {
                for _ in 0..*n {
                    out.push_str(&format!("-A {hook} -j {to}\n"));
                }
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}
