use super::*;

/// What `iptables-save` prints after applying `cfg` to an empty netns (the canonical form the
/// rendering uses), with the builtin chain declarations the kernel adds.
fn applied(cfg: &RedirectConfig, family: Family) -> String {
    redirect::iptables_restore_input(cfg, family)
        .lines()
        .filter(|l| !l.starts_with("-F ") && !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn applied_rules_have_no_drift() {
    let cfg = RedirectConfig {
        exclude_inbound_ports: vec![8081],
        ..RedirectConfig::default()
    };
    for family in [Family::V4, Family::V6] {
        assert_eq!(
            drift(&cfg, family, &applied(&cfg, family)),
            Vec::<String>::new()
        );
    }
}

#[test]
fn flushed_nat_table_is_reported_rule_by_rule() {
    let cfg = RedirectConfig::default();
    let save = applied(&cfg, Family::V4);
    // `iptables -t nat -F`: every nat rule (jumps and our chains' rules) is gone.
    let mut flushed = String::new();
    let mut table = "";
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = if t == "nat" { "nat" } else { "" };
        }
        if !(table == "nat" && line.starts_with("-A ")) {
            flushed.push_str(line);
            flushed.push('\n');
        }
    }
    let problems = drift(&cfg, Family::V4, &flushed);
    assert!(
        problems
            .iter()
            .any(|p| p == "ipv4 nat table: missing `-A OUTPUT -j ISTIO_OUTPUT`"),
        "{problems:#?}"
    );
    assert!(problems
        .iter()
        .all(|p| p.starts_with("ipv4 nat table: missing")));
    assert!(problems.iter().any(|p| p.contains("--to-ports 15001")));
}

#[test]
fn foreign_and_duplicate_lines_are_reported() {
    let cfg = RedirectConfig::default();
    let mut save = applied(&cfg, Family::V4);
    save = save.replacen(
        "-A OUTPUT -j ISTIO_OUTPUT\n",
        "-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\n",
        1,
    );
    let problems = drift(&cfg, Family::V4, &save);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("duplicate `-A OUTPUT -j ISTIO_OUTPUT`")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unexpected `-A ISTIO_OUTPUT -j RETURN`")),
        "{problems:#?}"
    );
    // Rules of other software are not our business.
    let other = format!(
        "{}*filter\n-A INPUT -j DROP\nCOMMIT\n",
        applied(&cfg, Family::V4)
    );
    assert!(drift(&cfg, Family::V4, &other).is_empty());
}

#[test]
fn reordered_rules_are_drift() {
    let cfg = RedirectConfig::default();
    let save = applied(&cfg, Family::V4);
    let lines: Vec<&str> = save.lines().collect();
    let idx: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("-A ISTIO_OUTPUT") && l.contains("REDIRECT"))
        .map(|(i, _)| i)
        .collect();
    let mut swapped: Vec<&str> = lines.clone();
    let first_nat = lines
        .iter()
        .position(|l| l.starts_with("-A ISTIO_OUTPUT -d"))
        .unwrap();
    swapped.swap(first_nat, *idx.last().unwrap());
    let problems = drift(&cfg, Family::V4, &swapped.join("\n"));
    assert_eq!(problems, vec!["ipv4: rules of our chains are out of order"]);
}

#[test]
fn exclusion_change_is_drift() {
    let old = RedirectConfig::default();
    let new = RedirectConfig {
        exclude_outbound_ports: vec![9000],
        ..RedirectConfig::default()
    };
    let problems = drift(&new, Family::V4, &applied(&old, Family::V4));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("--dport 9000 -j ACCEPT"));
}

#[test]
fn route_checks() {
    let cfg = RedirectConfig::default();
    let rules = "0:\tfrom all lookup local\n32764:\tfrom all fwmark 0x111/0xfff lookup 100\n32766:\tfrom all lookup main\n";
    let table = "local default dev lo scope host\n";
    assert!(route_drift(&cfg, Family::V4, rules, table).is_empty());
    let problems = route_drift(&cfg, Family::V6, "0:\tfrom all lookup local\n", "");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("-6 policy rule"));
}

#[test]
fn chain_order_in_the_dump_does_not_matter() {
    // iptables-save lists builtin chains' rules and ours grouped per chain, in its own chain
    // order; only the order within a chain is meaningful.
    let cfg = RedirectConfig::default();
    let mut out = String::new();
    for block in applied(&cfg, Family::V4).split_inclusive("COMMIT\n") {
        let lines: Vec<&str> = block.lines().collect();
        let (ours, other): (Vec<&str>, Vec<&str>) =
            lines.iter().partition(|l| l.starts_with("-A ISTIO_"));
        for l in other.iter().filter(|l| **l != "COMMIT") {
            out.push_str(l);
            out.push('\n');
        }
        for l in ours.iter().rev().collect::<Vec<_>>().into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
        if block.contains("COMMIT") {
            out.push_str("COMMIT\n");
        }
    }
    // Jumps now come after the chains' rules in each table.
    let reordered = out
        .replace("-A OUTPUT -j ISTIO_OUTPUT\n", "")
        .replace("COMMIT\n", "-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n");
    assert!(
        drift(&cfg, Family::V4, &reordered).is_empty(),
        "{reordered}"
    );
}
