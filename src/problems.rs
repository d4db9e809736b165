//! `ambit config problems` (a running control plane's invalid config objects, from its admin
//! endpoint) and `ambit config check <dir>` (the same listing for a folder, offline). Both print
//! with the control plane's own [`format_table`] and exit non-zero when any problem is an
//! error, so CI can gate on either.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use anyhow::{bail, Context};
use control_plane::admin::PROBLEMS_PATH;
use control_plane::problems::{format_table, Report};
use control_plane::TranslateConfig;

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns: severity, object, field, message.
    Table,
    /// The admin endpoint's JSON (`errors`, `warnings`, `problems`).
    Json,
}

/// Returned when the listing holds errors: printed by `main`, exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0} invalid config object(s) or part(s) skipped")]
pub struct ErrorsFound(pub usize);

/// Fetches and prints the problems of the control plane at `url`.
pub fn list(url: &str, output: Output) -> anyhow::Result<()> {
    let addr = admin_addr(url)?;
    let body = crate::http_get(addr, PROBLEMS_PATH)
        .with_context(|| format!("asking the control plane at {url}"))?;
    let report: Report = serde_json::from_str(&body)
        .with_context(|| format!("{url}{PROBLEMS_PATH} did not answer a problem report"))?;
    print(&report, output)
}

/// Translates the folder `dir` as the control plane would and prints its problems.
pub fn check_folder(dir: &Path, output: Output, trust_domain: &str) -> anyhow::Result<()> {
    let cfg = TranslateConfig {
        trust_domain: trust_domain.to_string(),
        ..TranslateConfig::default()
    };
    let translation = control_plane::folder::translate_folder(dir, &cfg)?;
    let report = Report::new(&translation.problems);
    if output == Output::Table {
        let s = &translation.state_inputs;
        println!(
            "{}: {} workloads, {} services, {} policies",
            dir.display(),
            s.workloads.len(),
            s.services.len(),
            s.policies.len()
        );
    }
    print(&report, output)
}

fn print(report: &Report, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", format_table(report)),
        Output::Json => println!("{}", serde_json::to_string_pretty(report)?),
    }
    if report.errors > 0 {
        return Err(ErrorsFound(report.errors).into());
    }
    Ok(())
}

/// `http://host:port` (or bare `host:port`) of the admin endpoint; plain HTTP only, as the
/// endpoint is served on loopback (reach a pod's with `kubectl port-forward`).
fn admin_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            bail!("--control-plane {url:?}: only http:// is served, not {scheme}://")
        }
        None => url,
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') {
        bail!("--control-plane {url:?}: give the address only (http://host:port), not a path");
    }
    hostport
        .to_socket_addrs()
        .with_context(|| format!("--control-plane {url:?}: expected http://host:port"))?
        .next()
        .with_context(|| format!("--control-plane {url:?}: no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls() {
        assert_eq!(
            admin_addr("http://127.0.0.1:15014/").unwrap(),
            "127.0.0.1:15014".parse().unwrap()
        );
        assert_eq!(
            admin_addr("127.0.0.1:15014").unwrap(),
            "127.0.0.1:15014".parse().unwrap()
        );
        let e = admin_addr("https://127.0.0.1:15014")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only http://"), "{e}");
        assert!(admin_addr("http://127.0.0.1:15014/debug").is_err());
        assert!(admin_addr("http://127.0.0.1").is_err());
    }
}
