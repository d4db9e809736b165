//! Authorization policies as YAML (the `policies` of the local config, and ambit's own files),
//! then evaluation against fixed connections.
//!
//! Checks, beyond "no panic":
//! - what deserializes serializes and deserializes back to the same policies, so a policy
//!   written out (e.g. by the config dump) means what was read;
//! - `evaluate` keeps its dry-run contract: the enforced result is exactly the result of the
//!   non-dry-run policies alone, and the dry-run result is that of every policy enforced.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use mesh::authz::{evaluate, Authorization, ConnInfo};
use mesh::identity::Identity;

fuzz_target!(|data: &[u8]| {
    let Ok(policies) = serde_yaml::from_slice::<Vec<Authorization>>(data) else {
        return;
    };

    let yaml = serde_yaml::to_string(&policies).expect("valid policies serialize");
    let again: Vec<Authorization> = serde_yaml::from_str(&yaml)
        .unwrap_or_else(|e| panic!("serialized policies do not parse back: {e}\n{yaml}"));
    assert_eq!(policies, again, "policies changed through YAML:\n{yaml}");

    let enforced: Vec<Authorization> = policies.iter().filter(|p| !p.dry_run).cloned().collect();
    let all_enforced: Vec<Authorization> = policies
        .iter()
        .cloned()
        .map(|mut p| {
            p.dry_run = false;
            p
        })
        .collect();
    for conn in connections() {
        let decision = evaluate(&policies, &conn);
        assert_eq!(decision.result, evaluate(&enforced, &conn).result);
        assert_eq!(
            decision.dry_run_result,
            evaluate(&all_enforced, &conn).result
        );
        let dry_runs = policies.iter().filter(|p| p.dry_run).count();
        assert!(decision.dry_run_matches.len() <= dry_runs);
    }
});

/// An mTLS IPv4 connection and a plaintext one over IPv6 with an IPv4-mapped source, so that
/// identity, CIDR (including the mapped-address rule) and port matching all run.
fn connections() -> [ConnInfo; 2] {
    let ip = |s: &str| s.parse::<IpAddr>().expect("literal IP");
    [
        ConnInfo {
            src_identity: Identity::parse("spiffe://cluster.local/ns/default/sa/client").ok(),
            src_ip: ip("10.0.0.1"),
            dst_ip: ip("10.0.0.2"),
            dst_port: 8080,
        },
        ConnInfo {
            src_identity: None,
            src_ip: ip("::ffff:192.168.1.7"),
            dst_ip: ip("fd00::2"),
            dst_port: 443,
        },
    ]
}
