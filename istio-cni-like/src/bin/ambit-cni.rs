//! `ambit-cni`: the CNI plugin when run with `CNI_COMMAND` set (see `istio_cni_like::cni`),
//! otherwise the installer (`install` / `uninstall` a conflist entry).
//!
//! ARCHITECTURE: one thread, no async runtime, no start-up work. The plugin reads stdin, maybe
//! talks to the cni-agent over its unix socket (one extra thread only to bound the connect), prints
//! one result and exits; the runtime execs it once per pod event.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use istio_cni_like::cni::{self, CniError, Outcome};
use istio_cni_like::install::{self, CliCommand};

/// Largest network config read from stdin; real ones are a few KiB.
const MAX_STDIN: u64 = 1 << 20;

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        let outcome = plugin();
        // If stdout is gone the runtime is gone too; nobody is left to tell.
        let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
        let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
        return exit_code(outcome.exit_code);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match installer(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-cni: {e}");
            ExitCode::from(2)
        }
    }
}

fn plugin() -> Outcome {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin);
    let problem = match read {
        Err(e) => Some(format!("reading stdin: {e}")),
        Ok(_) if stdin.len() as u64 > MAX_STDIN => {
            Some(format!("stdin is larger than {MAX_STDIN} bytes"))
        }
        Ok(_) => None,
    };
    if let Some(reason) = problem {
        return Outcome::error(&CniError::Decoding { reason }, cni::LATEST_VERSION);
    }
    cni::run(&|key| std::env::var(key).ok(), &stdin)
}

fn installer(args: &[String]) -> Result<(), install::InstallError> {
    match install::parse_cli(args)? {
        CliCommand::Help => println!("{}", install::usage_text()),
        CliCommand::Install {
            conf_dir,
            agent_socket,
            timeout_ms,
        } => {
            let conf = install::plugin_conf(&agent_socket, timeout_ms);
            let path = install::install(&conf_dir, &conf)?;
            println!("ambit-cni chained into {}", path.display());
        }
        CliCommand::Uninstall { conf_dir } => {
            let changed = install::uninstall(&conf_dir)?;
            if changed.is_empty() {
                println!("ambit-cni was not installed in {}", conf_dir.display());
            }
            for path in changed {
                println!("restored {}", path.display());
            }
        }
    }
    Ok(())
}

fn exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}
