//! Which iptables backend the agent writes with, chosen once at start.
//!
//! Rules written with `iptables-legacy` are invisible to `iptables-nft` and the reverse, and both
//! sets would be evaluated by the kernel: writing with the wrong one adds a second, conflicting
//! rule set. So, as istio-cni does, the agent follows the backend that already holds the node's
//! rules (kube-proxy's, the primary CNI's), and only when neither has any, what the node's plain
//! `iptables -V` reports. Every later save/restore, on the node and in every pod, uses that
//! backend's binaries.

use std::path::Path;

use mesh::redirect::Family;

use super::exec::{self, ExecError};

/// An iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    Nft,
    Legacy,
}

impl std::str::FromStr for Flavour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nft" => Ok(Flavour::Nft),
            "legacy" => Ok(Flavour::Legacy),
            other => Err(format!(
                "{other:?} is not an iptables backend (nft, legacy)"
            )),
        }
    }
}

/// Backend detection failed.
#[derive(Debug, thiserror::Error)]
pub enum FlavourError {
    #[error(
        "no iptables backend has rules and `iptables -V` says {0:?}: cannot tell nft from legacy"
    )]
    Unrecognised(String),
    #[error("detecting the iptables backend: {0}")]
    Exec(#[from] ExecError),
}

/// Number of rules (`-A` lines) in an `iptables-save` dump.
pub fn rule_count(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Picks the backend from the rule counts each one reports (`None` when that backend's tools
/// are missing or fail) and `iptables -V` output.
pub fn choose(
    legacy_rules: Option<usize>,
    nft_rules: Option<usize>,
    version: &str,
) -> Result<Flavour, FlavourError> {
    match (legacy_rules.unwrap_or(0), nft_rules.unwrap_or(0)) {
        (l, n) if l > n => Ok(Flavour::Legacy),
        (l, n) if n > l => Ok(Flavour::Nft),
        _ if version.contains("nf_tables") => Ok(Flavour::Nft),
        _ if version.contains("legacy") => Ok(Flavour::Legacy),
        _ => Err(FlavourError::Unrecognised(version.trim().to_owned())),
    }
}

/// The binaries of the chosen backend.
#[derive(Debug, Clone)]
pub struct Iptables {
    pub flavour: Flavour,
    save: [String; 2],
    restore: [String; 2],
}

impl Iptables {
    /// Detects the backend from the agent's own (node) network namespace, unless `forced`.
    pub async fn detect(forced: Option<Flavour>) -> Result<Iptables, FlavourError> {
        let flavour = match forced {
            Some(f) => f,
            None => {
                let mut counts = [None, None];
                for (i, tool) in ["iptables-legacy-save", "iptables-nft-save"]
                    .iter()
                    .enumerate()
                {
                    if in_path(tool) {
                        counts[i] = exec::run(None, &[tool], None)
                            .await
                            .ok()
                            .map(|s| rule_count(&s));
                    }
                }
                let version = exec::run(None, &["iptables", "-V"], None).await?;
                choose(counts[0], counts[1], &version)?
            }
        };
        Ok(Iptables::for_flavour(flavour))
    }

    /// The binaries of `flavour`: the flavour-specific ones (`iptables-nft-save`) when installed,
    /// else the plain names (right when the host's `iptables` is that flavour).
    pub fn for_flavour(flavour: Flavour) -> Iptables {
        let suffix = match flavour {
            Flavour::Nft => "nft",
            Flavour::Legacy => "legacy",
        };
        let pick = |base: &str, tool: &str| {
            let specific = format!("{base}-{suffix}-{tool}");
            if in_path(&specific) {
                specific
            } else {
                format!("{base}-{tool}")
            }
        };
        Iptables {
            flavour,
            save: [pick("iptables", "save"), pick("ip6tables", "save")],
            restore: [pick("iptables", "restore"), pick("ip6tables", "restore")],
        }
    }

    fn index(family: Family) -> usize {
        match family {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// `iptables-save` of `family` in `netns` (the agent's own when `None`).
    pub async fn save(&self, netns: Option<&Path>, family: Family) -> Result<String, ExecError> {
        exec::run(netns, &[&self.save[Self::index(family)]], None).await
    }

    /// Applies `input` as one `--noflush` transaction: all of it or nothing.
    pub async fn restore(
        &self,
        netns: Option<&Path>,
        family: Family,
        input: &str,
    ) -> Result<(), ExecError> {
        let mut argv = vec![self.restore[Self::index(family)].as_str(), "--noflush"];
        if self.flavour == Flavour::Legacy {
            // Legacy serialises writers with a host-wide lock file; wait instead of failing.
            argv.push("--wait");
        }
        exec::run(netns, &argv, Some(input)).await.map(drop)
    }
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).is_file())
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_with_rules_wins_over_version() {
        let v = "iptables v1.8.9 (nf_tables)";
        assert_eq!(choose(Some(12), Some(0), v).unwrap(), Flavour::Legacy);
        assert_eq!(
            choose(None, Some(3), "iptables v1.8.9 (legacy)").unwrap(),
            Flavour::Nft
        );
        assert_eq!(choose(Some(2), Some(7), v).unwrap(), Flavour::Nft);
    }

    #[test]
    fn without_rules_the_version_decides() {
        assert_eq!(
            choose(Some(0), Some(0), "iptables v1.8.9 (nf_tables)").unwrap(),
            Flavour::Nft
        );
        assert_eq!(
            choose(None, None, "iptables v1.8.7 (legacy)").unwrap(),
            Flavour::Legacy
        );
        assert!(matches!(
            choose(None, None, "iptables v1.4"),
            Err(FlavourError::Unrecognised(v)) if v == "iptables v1.4"
        ));
    }

    #[test]
    fn counts_only_rules() {
        let save = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j X\n-A X -j ACCEPT\nCOMMIT\n";
        assert_eq!(rule_count(save), 2);
    }
}
