//! Which iptables flavour the test bed drives, chosen once per process.
//!
//! Rules written with `iptables-legacy` are invisible to `iptables-nft` and vice versa, so every
//! save/restore in every netns must go through the same flavour. We follow what the host's plain
//! `iptables` is (as Istio's CNI agent does), unless `AMBIT_TESTBED_IPTABLES=nft|legacy` says
//! otherwise, and then call the flavour-specific binaries when they exist.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, bail};

use crate::netns::{run_command, Netns};
use mesh::redirect::Family;

/// Environment variable forcing the flavour: `nft` or `legacy`.
pub const FLAVOUR_ENV: &str = "AMBIT_TESTBED_IPTABLES";

/// The iptables backend in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Nft,
    Legacy,
}

/// The binaries of one flavour.
#[derive(Debug, Clone)]
pub struct Iptables {
    pub flavour: Flavour,
    save: [String; 2],
    restore: [String; 2],
}

impl Iptables {
    /// The flavour for this process, detected on first use.
    pub fn get() -> anyhow::Result<&'static Iptables> {
        static DETECTED: OnceLock<Result<Iptables, String>> = OnceLock::new();
        DETECTED
            .get_or_init(|| detect().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("detecting the iptables flavour: {e}"))
    }

    fn index(family: Family) -> usize {
        match family {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// `iptables-save` (or `ip6tables-save`) of this flavour.
    pub fn save_program(&self, family: Family) -> &str {
        &self.save[Self::index(family)]
    }

    /// `iptables-restore` (or `ip6tables-restore`) of this flavour.
    pub fn restore_program(&self, family: Family) -> &str {
        &self.restore[Self::index(family)]
    }

    /// The current ruleset of `netns`.
    pub fn save(&self, netns: &Netns, family: Family) -> anyhow::Result<String> {
        netns.exec(&[self.save_program(family)])
    }

    /// Applies `input` to `netns` in one `--noflush` transaction.
    pub fn restore(&self, netns: &Netns, family: Family, input: &str) -> anyhow::Result<()> {
        let mut argv = vec![self.restore_program(family), "--noflush"];
        if self.flavour == Flavour::Legacy {
            // Legacy serialises writers with a host-wide lock file shared by all netns.
            argv.push("--wait");
        }
        netns.exec_with_stdin(&argv, Some(input))?;
        Ok(())
    }
}

fn detect() -> anyhow::Result<Iptables> {
    let flavour = match std::env::var(FLAVOUR_ENV).ok().as_deref() {
        Some("nft") => Flavour::Nft,
        Some("legacy") => Flavour::Legacy,
        Some(other) => bail!("{FLAVOUR_ENV}={other:?}: expected \"nft\" or \"legacy\""),
        None => {
            let mut cmd = Command::new("iptables");
            cmd.arg("-V");
            let version = run_command(cmd, None)?;
            if version.contains("nf_tables") {
                Flavour::Nft
            } else if version.contains("legacy") {
                Flavour::Legacy
            } else {
                bail!("unrecognised `iptables -V` output {version:?}")
            }
        }
    };
    let suffix = match flavour {
        Flavour::Nft => "nft",
        Flavour::Legacy => "legacy",
    };
    // Prefer e.g. `iptables-nft-save`; plain `iptables-save` is only right when the host
    // `iptables` is that flavour, which holds whenever the specific binary is missing and we
    // auto-detected (an explicit override without the binary fails on first use, loudly).
    let pick = |base: &str, tool: &str| {
        let specific = format!("{base}-{suffix}-{tool}");
        if in_path(&specific) {
            specific
        } else {
            format!("{base}-{tool}")
        }
    };
    Ok(Iptables {
        flavour,
        save: [pick("iptables", "save"), pick("ip6tables", "save")],
        restore: [pick("iptables", "restore"), pick("ip6tables", "restore")],
    })
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).is_file())
        })
        .unwrap_or(false)
}
