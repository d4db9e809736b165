//! The installer subcommands of the `ambit-cni` binary. Parsed by hand: the binary is exec'd for
//! every pod, and two subcommands with three flags do not justify linking clap into it.

use std::path::PathBuf;

use super::InstallError;
use crate::cni::DEFAULT_TIMEOUT_MS;
use crate::protocol::DEFAULT_PLUGIN_SOCKET;

pub(super) const USAGE: &str = "\
ambit-cni install --cni-conf-dir DIR [--agent-socket PATH] [--timeout-ms MS]
ambit-cni uninstall --cni-conf-dir DIR
(run with CNI_COMMAND set, ambit-cni is the CNI plugin itself)";

/// A parsed installer command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliCommand {
    /// Chain the plugin into the primary config of `conf_dir`.
    Install {
        conf_dir: PathBuf,
        agent_socket: String,
        timeout_ms: u64,
    },
    /// Remove the plugin from every config of `conf_dir`.
    Uninstall { conf_dir: PathBuf },
    /// `--help` / `help`.
    Help,
}

/// Parses the arguments after the program name. Flags take `--flag VALUE` or `--flag=VALUE`.
pub fn parse_cli(args: &[String]) -> Result<CliCommand, InstallError> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(usage("no subcommand"));
    };
    let install = match sub.as_str() {
        "install" => true,
        "uninstall" => false,
        "help" | "--help" | "-h" => return Ok(CliCommand::Help),
        other => return Err(usage(&format!("unknown subcommand {other:?}"))),
    };
    let mut conf_dir = None;
    let mut agent_socket = None;
    let mut timeout_ms = None;
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let slot = match (flag, install) {
            ("--cni-conf-dir", _) => &mut conf_dir,
            ("--agent-socket", true) => &mut agent_socket,
            ("--timeout-ms", true) => &mut timeout_ms,
            _ => return Err(usage(&format!("unexpected argument {arg:?}"))),
        };
        let value = match inline {
            Some(v) => v,
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| usage(&format!("{flag} needs a value")))?,
        };
        if value.is_empty() {
            return Err(usage(&format!("{flag} needs a non-empty value")));
        }
        if slot.replace(value).is_some() {
            return Err(usage(&format!("{flag} given twice")));
        }
    }
    let conf_dir = PathBuf::from(conf_dir.ok_or_else(|| usage("--cni-conf-dir is required"))?);
    if !install {
        return Ok(CliCommand::Uninstall { conf_dir });
    }
    let timeout_ms = match timeout_ms {
        None => DEFAULT_TIMEOUT_MS,
        Some(t) => t
            .parse()
            .ok()
            .filter(|t| (1..=crate::cni::MAX_TIMEOUT_MS).contains(t))
            .ok_or_else(|| {
                usage(&format!(
                    "--timeout-ms {t:?} is not a number of ms in 1..=600000"
                ))
            })?,
    };
    Ok(CliCommand::Install {
        conf_dir,
        agent_socket: agent_socket.unwrap_or_else(|| DEFAULT_PLUGIN_SOCKET.to_owned()),
        timeout_ms,
    })
}

/// The usage text, for `help`.
pub fn usage_text() -> &'static str {
    USAGE
}

fn usage(reason: &str) -> InstallError {
    InstallError::Usage {
        reason: reason.to_owned(),
    }
}
