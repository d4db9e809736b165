//! The agent's one typed configuration: command-line flags, each also read from the
//! environment variable named beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use mesh::redirect::{Family, RedirectConfig};

use super::iptables::Flavour;

/// cni-agent configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "cni-agent", about = "ambit node agent: pod capture and ZDS")]
pub struct AgentConfig {
    /// Folder of Namespace/Pod manifests (YAML/JSON) to take as the cluster's truth. The
    /// Kubernetes watch source is not implemented yet, so this is required.
    #[arg(long, env = "AMBIT_CNI_LOCAL_DIR")]
    pub local_dir: PathBuf,
    /// How often the manifest folder is re-read.
    #[arg(long, env = "AMBIT_CNI_LOCAL_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub local_poll: Duration,
    /// This node's name: pods with another `spec.nodeName` are ignored.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Unix socket the CNI plugin talks to.
    #[arg(long, env = "AMBIT_CNI_PLUGIN_SOCKET", default_value = crate::protocol::DEFAULT_PLUGIN_SOCKET)]
    pub plugin_socket: PathBuf,
    /// ZDS socket ztunnel connects to (ztunnel's `INPOD_UDS`).
    #[arg(long, env = "AMBIT_CNI_ZDS_SOCKET", default_value = mesh::zds::DEFAULT_SOCKET_PATH)]
    pub zds_socket: PathBuf,
    /// Directory of per-pod state files, kept across agent restarts.
    #[arg(
        long,
        env = "AMBIT_CNI_STATE_DIR",
        default_value = "/var/run/ambit/cni-state"
    )]
    pub state_dir: PathBuf,
    /// How long an ADD may take (metadata to arrive, ztunnel to connect and acknowledge) before
    /// it fails and the runtime retries. Keep it below the plugin's own timeout.
    #[arg(long, env = "AMBIT_CNI_ADD_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub add_timeout: Duration,
    /// Interval of the capture health check.
    #[arg(long, env = "AMBIT_CNI_HEALTH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Prometheus metrics address.
    #[arg(long, env = "AMBIT_CNI_METRICS_ADDR", default_value = "[::]:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness address (`/healthz/ready`).
    #[arg(long, env = "AMBIT_CNI_READINESS_ADDR", default_value = "[::]:15021")]
    pub readiness_addr: SocketAddr,
    /// Admin address (`/pods`); keep it on loopback.
    #[arg(long, env = "AMBIT_CNI_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Install IPv6 rules as well as IPv4 ones.
    #[arg(long, env = "AMBIT_CNI_IPV6", action = clap::ArgAction::Set, default_value_t = true)]
    pub ipv6: bool,
    /// Force the iptables backend (`nft` or `legacy`) instead of detecting it.
    #[arg(long, env = "AMBIT_CNI_IPTABLES")]
    pub iptables: Option<Flavour>,
    /// Redirect pod DNS to ztunnel's DNS proxy (port 15053). Off by default: ambit's ztunnel has
    /// no DNS proxy yet, and capturing DNS without one would break name resolution.
    #[arg(long, env = "AMBIT_CNI_DNS_CAPTURE", action = clap::ArgAction::Set, default_value_t = false)]
    pub dns_capture: bool,
    /// This node's pod CIDRs (repeatable): node-originated TCP to them is SNATed to the probe
    /// address. Empty SNATs every node-originated TCP connection, so set it.
    #[arg(long = "pod-cidr", env = "AMBIT_CNI_POD_CIDRS", value_delimiter = ',')]
    pub pod_cidrs: Vec<IpNet>,
    /// The node's CNI config directory (e.g. `/etc/cni/net.d`). When set, the agent chains
    /// `ambit-cni` into the primary CNI's config list at start and re-checks it every
    /// `--cni-install-interval`, so a primary CNI rewriting its file does not drop capture.
    #[arg(long, env = "AMBIT_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// How often the CNI config is re-checked (see `--cni-conf-dir`).
    #[arg(long, env = "AMBIT_CNI_INSTALL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub cni_install_interval: Duration,
    /// Packet mark ztunnel sets on its own sockets (ztunnel's `PACKET_MARK`).
    #[arg(long, env = "AMBIT_CNI_ZTUNNEL_MARK", default_value_t = 0x539)]
    pub ztunnel_mark: u32,
}

impl AgentConfig {
    /// The redirect config every enrolled pod starts from (annotations add exclusions).
    pub fn base_redirect(&self) -> RedirectConfig {
        RedirectConfig {
            dns_capture: self.dns_capture,
            ztunnel_mark: self.ztunnel_mark,
            probe_snat_pod_cidrs: self.pod_cidrs.clone(),
            ..RedirectConfig::default()
        }
    }

    /// The plugin's entry in the CNI config: it waits a little longer than the agent's own ADD
    /// timeout, so the agent's precise failure message, not a plugin timeout, reaches the runtime.
    pub fn plugin_conf(&self) -> serde_json::Value {
        let timeout = self.add_timeout + Duration::from_secs(5);
        crate::install::plugin_conf(
            &self.plugin_socket.display().to_string(),
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        )
    }

    /// The IP families rules are installed for.
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }
}

/// Parses `250ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: missing unit (ms, s, m, h)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a whole number before the unit"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("\"d\""));
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cfg = AgentConfig::try_parse_from([
            "cni-agent",
            "--local-dir",
            "/tmp/x",
            "--pod-cidr",
            "10.1.0.0/24,fd00:10:1::/64",
            "--iptables",
            "legacy",
        ])
        .unwrap();
        assert_eq!(cfg.pod_cidrs.len(), 2);
        assert_eq!(cfg.iptables, Some(Flavour::Legacy));
        assert_eq!(cfg.health_interval, Duration::from_secs(10));
        assert_eq!(cfg.metrics_addr.port(), 15020);
        assert!(!cfg.base_redirect().dns_capture);
        assert_eq!(cfg.families().len(), 2);
        let err =
            AgentConfig::try_parse_from(["cni-agent", "--local-dir", "x", "--iptables", "ebpf"])
                .unwrap_err()
                .to_string();
        assert!(err.contains("ebpf"), "{err}");
    }
}
