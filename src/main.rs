//! `ambit`: the command-line tool.
//!
//! - `ambit ca init`      — create a root CA in Istio's `cacerts` layout (for the file CA).
//! - `ambit config check` — validate a ztunnel local config file, naming any bad field, or
//!   list the problems of a folder of Kubernetes/Istio YAML (offline).
//! - `ambit config problems` — list a running control plane's invalid config objects.
//! - `ambit config-dump`  — fetch a running ztunnel's config dump from its admin endpoint.
//! - `ambit demo`         — run two ztunnels on a local network-namespace example.
//! - `ambit manifest generate` — print the Kubernetes install (see `manifest`).

mod demo;
mod manifest;
mod problems;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ambit",
    version,
    about = "ambit: an ambient-style service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificate authority tools.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// ztunnel local config tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a running ztunnel's config dump (workloads, services, policies, certificates).
    ConfigDump {
        /// ztunnel's admin address.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// Run ztunnel on a small local example: two nodes and two pods in network namespaces,
    /// traffic flowing over HBONE, then print the access log and metrics. Needs root.
    Demo {
        /// Path of the ztunnel binary (default: next to this executable).
        #[arg(long)]
        ztunnel: Option<PathBuf>,
    },
    /// Kubernetes install manifests.
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Print the install (CRDs, control plane, ztunnel, cni-agent, RBAC) as YAML on stdout.
    Generate {
        /// Image repository prefix: images are HUB/control-plane, HUB/ztunnel, HUB/cni-agent.
        #[arg(long, default_value = manifest::DEFAULT_HUB)]
        hub: String,
        /// Image tag of every component (default: this ambit's version).
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
        /// Namespace to install into.
        #[arg(long, default_value = manifest::DEFAULT_NAMESPACE)]
        namespace: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Generate a self-signed root and write ca-cert.pem, ca-key.pem (0600), root-cert.pem,
    /// cert-chain.pem into DIR.
    Init {
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a local config file (Istio ztunnel LocalConfig YAML), or list the problems of
    /// a folder of Kubernetes/Istio YAML as the control plane would (exit 1 on errors).
    Check {
        /// A ztunnel local config file, or a control-plane config folder.
        file: PathBuf,
        /// Folder listing format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: problems::Output,
        /// Trust domain a folder is translated for.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// List the invalid config objects of a running control plane (its admin endpoint,
    /// `--admin-addr`); exit 1 when any is an error.
    Problems {
        #[arg(long, default_value = "http://127.0.0.1:15014")]
        control_plane: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: problems::Output,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca {
            command: CaCommand::Init { dir, trust_domain },
        } => {
            if dir.join("ca-key.pem").exists() {
                bail!(
                    "{} already holds a CA key; refusing to overwrite it",
                    dir.display()
                );
            }
            let ca = mesh::ca::CertificateAuthority::generate(&trust_domain)?;
            ca.write_cacerts_dir(&dir)?;
            println!(
                "wrote a new root CA for {trust_domain} to {}",
                dir.display()
            );
            Ok(())
        }
        Command::Config {
            command:
                ConfigCommand::Check {
                    file,
                    output,
                    trust_domain,
                },
        } if file.is_dir() => problems::check_folder(&file, output, &trust_domain),
        Command::Config {
            command:
                ConfigCommand::Problems {
                    control_plane,
                    output,
                },
        } => problems::list(&control_plane, output),
        Command::Config {
            command: ConfigCommand::Check { file, .. },
        } => {
            let text =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let config = mesh::model::local_config::parse_bytes(&text)
                .with_context(|| format!("{} is invalid", file.display()))?;
            let state = config
                .into_state()
                .with_context(|| format!("{} is invalid", file.display()))?;
            for w in state.warnings() {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} workloads, {} services, {} policies)",
                file.display(),
                state.workloads().count(),
                state.services().count(),
                state.policies().count()
            );
            Ok(())
        }
        Command::ConfigDump { admin } => {
            let body = http_get(admin, "/config_dump")?;
            let json: serde_json::Value =
                serde_json::from_str(&body).context("config dump is not JSON")?;
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(())
        }
        Command::Demo { ztunnel } => demo::run(ztunnel),
        Command::Manifest {
            command:
                ManifestCommand::Generate {
                    hub,
                    tag,
                    namespace,
                },
        } => {
            let yaml = manifest::generate(&manifest::Options {
                hub,
                tag,
                namespace,
            })?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the manifest to stdout")?;
            Ok(())
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}
