//! Installing, removing and verifying the in-pod redirect rules (rendered by
//! `mesh::redirect`) and the node's probe SNAT.
//!
//! Invariants:
//! - Each family's iptables rules change in one `iptables-restore --noflush` transaction,
//!   computed against the namespace's current `iptables-save`: re-applying converges to exactly
//!   one copy of our chains and jumps, and other software's rules are never touched.
//! - Verification compares what the kernel reports with what the config renders, line for line
//!   (rendering uses iptables-save's canonical form), so a deleted, added or reordered rule in
//!   our chains is reported by name.
//! - The pure part ([`drift`], [`route_drift`]) is separate from the tool runs.

use std::path::Path;

use mesh::redirect::{self, Family, RedirectConfig, CHAIN_OUTPUT, CHAIN_PREROUTING};

use super::exec::{self, ExecError};
use super::iptables::Iptables;

#[cfg(test)]
mod tests;

/// Installing or checking rules failed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("redirect config is invalid: {0}")]
    Config(#[from] redirect::RedirectConfigError),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// The `-A` lines per table of an `iptables-save` dump (or rendered input) that concern our
/// pod chains: their rules, and builtin jumps to them.
fn owned_lines(text: &str) -> Vec<(String, String)> {
    let ours = |chain: &str| chain == CHAIN_PREROUTING || chain == CHAIN_OUTPUT;
    let mut table = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim_end) {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let mut words = rest.split_whitespace();
            let chain = words.next().unwrap_or_default();
            let is_jump = matches!(
                rest.split_whitespace().collect::<Vec<_>>()[..],
                [_, "-j", target] if ours(target)
            );
            if ours(chain) || is_jump {
                out.push((table.clone(), line.to_owned()));
            }
        }
    }
    out
}

/// What differs between the rules `cfg` wants for `family` and `current_save`: one line per
/// missing, unexpected or misplaced rule. Empty when the pod is captured as configured.
pub fn drift(cfg: &RedirectConfig, family: Family, current_save: &str) -> Vec<String> {
    let want = owned_lines(&redirect::iptables_restore_input(cfg, family));
    let have = owned_lines(current_save);
    let fam = match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    let mut problems = Vec::new();
    for w in &want {
        if !have.contains(w) {
            problems.push(format!("{fam} {} table: missing `{}`", w.0, w.1));
        }
    }
    let mut seen: Vec<&(String, String)> = Vec::new();
    for h in &have {
        if !want.contains(h) {
            problems.push(format!("{fam} {} table: unexpected `{}`", h.0, h.1));
        } else if seen.contains(&h) {
            problems.push(format!("{fam} {} table: duplicate `{}`", h.0, h.1));
        }
        seen.push(h);
    }
    if problems.is_empty() {
        // Same lines, so only the order within a chain can differ (rules are evaluated in order;
        // the order of chains in the dump is the tool's business).
        let per_chain = |lines: &[(String, String)]| {
            let mut v: Vec<(String, String, String)> = lines
                .iter()
                .map(|(t, l)| {
                    let chain = l.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    (t.clone(), chain, l.clone())
                })
                .collect();
            // Stable: keeps each chain's rule order.
            v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            v
        };
        if per_chain(&want) != per_chain(&have) {
            problems.push(format!("{fam}: rules of our chains are out of order"));
        }
    }
    problems
}

/// `ip` flag for a family.
fn flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// What is missing from the return-path routing, given `ip rule show` and
/// `ip route show table 100` output.
pub fn route_drift(cfg: &RedirectConfig, family: Family, rules: &str, table: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mark = format!(
        "fwmark {:#x}/{:#x} lookup {}",
        cfg.connmark,
        cfg.mark_mask,
        redirect::ROUTE_TABLE
    );
    if !rules.lines().any(|l| l.contains(&mark)) {
        problems.push(format!("{} policy rule `{mark}` missing", flag(family)));
    }
    if !table.lines().any(|l| l.starts_with("local default dev lo")) {
        problems.push(format!(
            "{} route `local default dev lo table {}` missing",
            flag(family),
            redirect::ROUTE_TABLE
        ));
    }
    problems
}

async fn ip(netns: &Path, argv: &[String]) -> Result<String, ExecError> {
    let mut full = vec!["ip"];
    full.extend(argv.iter().map(String::as_str));
    exec::run(Some(netns), &full, None).await
}

/// Installs (or converges) the in-pod rules and return-path routing in `netns`.
pub async fn apply(
    ipt: &Iptables,
    netns: &Path,
    cfg: &RedirectConfig,
    families: &[Family],
) -> Result<(), RulesError> {
    cfg.validate()?;
    for &family in families {
        let current = ipt.save(Some(netns), family).await?;
        let input = redirect::iptables_reconcile_input(cfg, family, &current);
        ipt.restore(Some(netns), family, &input).await?;
        for argv in redirect::route_commands(cfg, family) {
            match ip(netns, &argv).await {
                // `ip rule add` has no replace: present already is the goal.
                Err(e) if e.stderr().contains("File exists") => {}
                other => {
                    other?;
                }
            }
        }
    }
    Ok(())
}

/// Removes the in-pod rules and routing `cfg` installed. Absent pieces are fine.
pub async fn remove(
    ipt: &Iptables,
    netns: &Path,
    cfg: &RedirectConfig,
    families: &[Family],
) -> Result<(), RulesError> {
    for &family in families {
        let current = ipt.save(Some(netns), family).await?;
        ipt.restore(
            Some(netns),
            family,
            &redirect::iptables_remove_input(&current),
        )
        .await?;
        for argv in redirect::route_remove_commands(cfg, family) {
            match ip(netns, &argv).await {
                Err(e)
                    if ["No such", "does not exist", "Cannot find"]
                        .iter()
                        .any(|m| e.stderr().contains(m)) => {}
                other => {
                    other?;
                }
            }
        }
    }
    Ok(())
}

/// Everything about `netns`'s rules and routing that differs from what `cfg` wants.
pub async fn check(
    ipt: &Iptables,
    netns: &Path,
    cfg: &RedirectConfig,
    families: &[Family],
) -> Result<Vec<String>, RulesError> {
    let mut problems = Vec::new();
    for &family in families {
        let current = ipt.save(Some(netns), family).await?;
        problems.extend(drift(cfg, family, &current));
        let f = flag(family).to_owned();
        let rules = ip(netns, &[f.clone(), "rule".into(), "show".into()]).await?;
        let table = ip(
            netns,
            &[
                f,
                "route".into(),
                "show".into(),
                "table".into(),
                redirect::ROUTE_TABLE.to_string(),
            ],
        )
        .await?;
        problems.extend(route_drift(cfg, family, &rules, &table));
    }
    Ok(problems)
}

/// Installs (or converges) the node-side probe SNAT in the agent's own netns.
pub async fn install_probe_snat(
    ipt: &Iptables,
    cfg: &RedirectConfig,
    families: &[Family],
) -> Result<(), RulesError> {
    cfg.validate()?;
    for &family in families {
        let current = ipt.save(None, family).await?;
        let input = redirect::node_probe_snat_reconcile_input(cfg, family, &current);
        ipt.restore(None, family, &input).await?;
    }
    Ok(())
}
