//! Applying `mesh::redirect`'s rendered rules inside the bed's namespaces, as the CNI agent
//! would: read the current ruleset, render the reconciling transaction, restore it in one go.

use std::net::IpAddr;

use ipnet::IpNet;
use mesh::redirect::{self, Family, RedirectConfig};

use crate::{ip, Iptables, Node, Pod};

impl Node {
    /// The node's pod CIDRs (empty for a plain host).
    pub fn pod_cidrs(&self) -> &[IpNet] {
        &self.pod_cidrs
    }

    /// Installs the node-side probe SNAT (TCP from the node's own sockets to its pods leaves
    /// with `cfg.probe_snat_*` as source). When `cfg.probe_snat_pod_cidrs` is empty it is
    /// limited to this node's pod CIDRs, so the node's other connections keep their address.
    /// Re-installing is idempotent.
    pub fn install_probe_snat(&self, cfg: &RedirectConfig) -> anyhow::Result<()> {
        cfg.validate()?;
        let mut cfg = cfg.clone();
        if cfg.probe_snat_pod_cidrs.is_empty() {
            cfg.probe_snat_pod_cidrs = self.pod_cidrs.clone();
        }
        let ipt = Iptables::get()?;
        for family in self.families() {
            let current = ipt.save(&self.netns, family)?;
            let input = redirect::node_probe_snat_reconcile_input(&cfg, family, &current);
            ipt.restore(&self.netns, family, &input)?;
        }
        Ok(())
    }

    /// Removes the probe SNAT chain and its jump.
    pub fn remove_probe_snat(&self) -> anyhow::Result<()> {
        let ipt = Iptables::get()?;
        for family in self.families() {
            let current = ipt.save(&self.netns, family)?;
            ipt.restore(
                &self.netns,
                family,
                &redirect::node_probe_snat_remove_input(&current),
            )?;
        }
        Ok(())
    }

    fn families(&self) -> Vec<Family> {
        families(self.ip6.is_some())
    }
}

impl Pod {
    /// The pod's addresses: IPv4, then IPv6 when the bed has it.
    pub fn ips(&self) -> Vec<IpAddr> {
        std::iter::once(IpAddr::V4(self.ip))
            .chain(self.ip6.map(IpAddr::V6))
            .collect()
    }

    /// Installs the in-pod redirect rules (`iptables-restore`, plus `ip6tables-restore` when the
    /// pod has IPv6) and the policy routing for the return path, inside the pod netns, as the
    /// CNI agent does. Re-installing (also with a changed config) converges without duplicates.
    pub fn install_redirect_rules(&self, cfg: &RedirectConfig) -> anyhow::Result<()> {
        cfg.validate()?;
        let ipt = Iptables::get()?;
        for family in families(self.ip6.is_some()) {
            let current = ipt.save(&self.netns, family)?;
            let input = redirect::iptables_reconcile_input(cfg, family, &current);
            ipt.restore(&self.netns, family, &input)?;
            for argv in redirect::route_commands(cfg, family) {
                let args: Vec<&str> = argv.iter().map(String::as_str).collect();
                match ip(&self.netns, &args) {
                    // `ip rule add` has no replace; present already is what we want.
                    Err(e) if format!("{e:#}").contains("File exists") => {}
                    other => {
                        other?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the in-pod rules and policy routing (whatever config installed them).
    pub fn remove_redirect_rules(&self) -> anyhow::Result<()> {
        let ipt = Iptables::get()?;
        for family in families(self.ip6.is_some()) {
            let current = ipt.save(&self.netns, family)?;
            ipt.restore(
                &self.netns,
                family,
                &redirect::iptables_remove_input(&current),
            )?;
            // The rule's mark is part of its identity and the config that installed it is not
            // known here, so delete every rule pointing at our table.
            let table = redirect::ROUTE_TABLE.to_string();
            let rules = ip(
                &self.netns,
                &[flag(family), "rule", "show", "table", &table],
            )?;
            for _ in rules.lines().filter(|l| !l.trim().is_empty()) {
                ip(&self.netns, &[flag(family), "rule", "del", "table", &table])?;
            }
            let default_route = match family {
                Family::V4 => "0.0.0.0/0",
                Family::V6 => "::/0",
            };
            let del = [
                flag(family),
                "route",
                "del",
                "local",
                default_route,
                "dev",
                "lo",
                "table",
                &table,
            ];
            match ip(&self.netns, &del) {
                // Already gone (never installed, or removed twice).
                Err(e) if is_absent(&e) => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }
}

/// Whether an `ip` failure just says the object does not exist.
fn is_absent(e: &anyhow::Error) -> bool {
    let msg = format!("{e:#}");
    ["No such", "does not exist", "Cannot find"]
        .iter()
        .any(|m| msg.contains(m))
}

fn flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

fn families(ipv6: bool) -> Vec<Family> {
    if ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}
