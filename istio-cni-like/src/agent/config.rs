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
    /// Folder of Namespace/Pod manifests (YAML/JSON) to take as the cluster's truth, instead of
    /// Kubernetes.
    #[arg(long, env = "AMBIT_CNI_LOCAL_DIR", conflicts_with_all = ["kube", "kube_api"])]
    pub local_dir: Option<PathBuf>,
    /// Watch pods and namespaces on the Kubernetes API (in-cluster service account, else the
    /// kubeconfig). Implied when `KUBERNETES_SERVICE_HOST` is set and no `--local-dir` is given.
    #[arg(long, env = "AMBIT_CNI_KUBE", action = clap::ArgAction::SetTrue)]
    pub kube: bool,
    /// Kubernetes API URL to use instead of the in-cluster/kubeconfig one, without credentials
    /// (e.g. `http://127.0.0.1:8001` of `kubectl proxy`). Implies `--kube`.
    #[arg(long, env = "AMBIT_CNI_KUBE_API")]
    pub kube_api: Option<String>,
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

/// Where the agent learns pods and namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceChoice {
    /// A local folder of manifests.
    Folder(PathBuf),
    /// The Kubernetes API: `api` when given, else in-cluster/kubeconfig; pods of `node` only.
    Kube { api: Option<String>, node: String },
}

/// The flags do not say where pods come from, or not enough of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceConfigError {
    #[error("no pod source: pass --local-dir DIR, or --kube (implied inside a Kubernetes pod)")]
    None,
    #[error("the Kubernetes source needs this node's name (--node-name or NODE_NAME): without it every pod of the cluster would be captured here")]
    NoNodeName,
}

impl AgentConfig {
    /// Picks the pod source: `--local-dir` when given; else Kubernetes when asked for
    /// (`--kube`, `--kube-api`) or when running in a pod (`in_cluster`: the environment has
    /// `KUBERNETES_SERVICE_HOST`).
    pub fn source_choice(&self, in_cluster: bool) -> Result<SourceChoice, SourceConfigError> {
        if let Some(dir) = &self.local_dir {
            return Ok(SourceChoice::Folder(dir.clone()));
        }
        if !(self.kube || self.kube_api.is_some() || in_cluster) {
            return Err(SourceConfigError::None);
        }
        let node = self
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(SourceConfigError::NoNodeName)?;
        Ok(SourceChoice::Kube {
            api: self.kube_api.clone(),
            node,
        })
    }

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

    #[test]
    fn source_choice() {
        let parse = |args: &[&str]| {
            AgentConfig::try_parse_from(std::iter::once("cni-agent").chain(args.iter().copied()))
        };
        let folder = parse(&["--local-dir", "/m"]).unwrap();
        assert_eq!(
            folder.source_choice(true),
            Ok(SourceChoice::Folder("/m".into())),
            "an explicit folder wins even inside a cluster"
        );
        let nothing = parse(&[]).unwrap();
        assert_eq!(nothing.source_choice(false), Err(SourceConfigError::None));
        assert_eq!(
            nothing.source_choice(true),
            Err(SourceConfigError::NoNodeName),
            "in a pod the Kubernetes source is implied, and needs the node name"
        );
        let in_pod = parse(&["--node-name", "n1"]).unwrap();
        assert_eq!(
            in_pod.source_choice(true),
            Ok(SourceChoice::Kube {
                api: None,
                node: "n1".into()
            })
        );
        assert_eq!(in_pod.source_choice(false), Err(SourceConfigError::None));
        let kube = parse(&["--kube", "--node-name", "n1"]).unwrap();
        assert!(matches!(
            kube.source_choice(false),
            Ok(SourceChoice::Kube { api: None, .. })
        ));
        let api = parse(&["--kube-api", "http://127.0.0.1:8001", "--node-name", "n1"]).unwrap();
        assert_eq!(
            api.source_choice(false),
            Ok(SourceChoice::Kube {
                api: Some("http://127.0.0.1:8001".into()),
                node: "n1".into()
            })
        );
        let err = parse(&["--local-dir", "/m", "--kube"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--kube"), "{err}");
    }
}
