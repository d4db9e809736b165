//! ztunnel's one typed configuration, filled from flags and the environment variables Istio's
//! ztunnel reads for the same settings, so a Pod spec written for Istio's ztunnel starts ours.
//!
//! Every field is validated here, once; the rest of ztunnel never re-parses strings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mesh::authz::MtlsMode;
use mesh::identity::Identity;

/// Where ztunnel serves pods from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// One ztunnel per node, entering each enrolled pod's network namespace (handed over by ZDS).
    Shared,
    /// One ztunnel serving only the network namespace it runs in.
    Dedicated,
}

/// Access-log and diagnostic log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

/// Command-line flags; each one also reads the environment variable named beside it.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "ztunnel",
    version,
    about = "ambit's per-node L4 agent (HBONE mTLS tunnel)"
)]
pub struct Args {
    /// Local config file (Istio ztunnel's LocalConfig YAML: workloads, services, policies). Watched for changes.
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: Option<PathBuf>,
    /// Control-plane xDS address, `host:port` (or Istio's `https://host:port`); TLS only.
    /// Exclusive with LOCAL_XDS_PATH.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// PEM root certificate the xDS server must chain to (Istio's name). Default: AMBIT_CA_DIR/root-cert.pem.
    #[arg(long, env = "XDS_ROOT_CA")]
    pub xds_root_ca: Option<PathBuf>,
    /// File with the bearer token sent to the xDS server (re-read on each connect).
    #[arg(long, env = "AMBIT_XDS_TOKEN_FILE")]
    pub xds_token_file: Option<PathBuf>,
    /// SPIFFE identity the xDS server must present; default: any identity of AMBIT_ROOT_NAMESPACE
    /// (or a certificate valid for the XDS_ADDRESS host).
    #[arg(long, env = "AMBIT_XDS_SERVER_IDENTITY")]
    pub xds_server_identity: Option<String>,
    /// This ztunnel's pod name (downward API), for the xDS node id.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This ztunnel's namespace (downward API), for the xDS node id.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// This ztunnel's pod IP (downward API), for the xDS node id.
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<std::net::IpAddr>,
    /// The node this ztunnel runs on (downward API), sent to the control plane.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Control-plane CA (`host:port` or `https://host:port`). When set, workload certificates come from the control plane; otherwise from the file CA (`--ca-dir`).
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// With CA_ADDRESS: PEM root certificate(s) the control plane's certificate must chain to; also the roots peers are verified against. Default: XDS_ROOT_CA.
    #[arg(long, env = "CA_ROOT_CA")]
    pub ca_root_cert: Option<PathBuf>,
    /// With CA_ADDRESS: file holding the bearer token for the CA (a projected service-account token, or this node's bootstrap token). Re-read per request.
    #[arg(
        long,
        env = "AMBIT_CA_TOKEN_FILE",
        default_value = "/var/run/secrets/tokens/istio-token"
    )]
    pub ca_token_file: PathBuf,
    /// With CA_ADDRESS: the SPIFFE id the CA's certificate must carry. Default: spiffe://<TRUST_DOMAIN>/ns/<AMBIT_ROOT_NAMESPACE>/sa/ambit-control-plane.
    #[arg(long, env = "AMBIT_CONTROL_PLANE_IDENTITY")]
    pub control_plane_identity: Option<String>,
    /// Cluster id sent to the CA (`clusterid` header).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// `shared` (per node, pods handed over by ZDS) or `dedicated` (serve only this netns).
    #[arg(
        long,
        env = "PROXY_MODE",
        value_enum,
        ignore_case = true,
        default_value = "shared"
    )]
    pub proxy_mode: ProxyMode,
    /// Dedicated mode: the one workload served, as `namespace/name/service-account`.
    #[arg(long, env = "PROXY_WORKLOAD_INFO")]
    pub proxy_workload_info: Option<String>,
    /// ZDS unix socket the node agent listens on (shared mode).
    #[arg(
        long,
        env = "INPOD_UDS",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub inpod_uds: PathBuf,
    /// SO_MARK set on ztunnel's own sockets so the redirect rules skip them.
    #[arg(long, env = "PACKET_MARK", default_value_t = 1337)]
    pub packet_mark: u32,
    /// Connect to applications with the client's original source IP (IP_TRANSPARENT).
    #[arg(long, env = "ENABLE_ORIG_SRC", action = clap::ArgAction::Set, default_value_t = true)]
    pub enable_orig_src: bool,
    /// Serve IPv6 as well; false on kernels without IPv6.
    #[arg(long, env = "IPV6_ENABLED", action = clap::ArgAction::Set, default_value_t = true)]
    pub ipv6_enabled: bool,
    /// Worker threads of the proxy runtime.
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    /// Trust domain of workload identities.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Lifetime of workload certificates, e.g. `24h`, `90s`.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    pub secret_ttl: Duration,
    /// `text` or `json` logs (access log included).
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        ignore_case = true,
        default_value = "text"
    )]
    pub log_format: LogFormatArg,
    /// ambit file CA: a directory in Istio's `cacerts` layout (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    #[arg(long, env = "AMBIT_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// mTLS mode where no PeerAuthentication says otherwise. STRICT by default: plaintext is opt-in.
    #[arg(long, env = "AMBIT_DEFAULT_MTLS", default_value = "STRICT", value_parser = parse_mtls_mode)]
    pub default_mtls: MtlsMode,
    /// Namespace whose PeerAuthentications apply mesh-wide.
    #[arg(long, env = "AMBIT_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// How long SIGTERM waits for in-flight connections before forcing them closed.
    #[arg(long, env = "AMBIT_DRAIN_DEADLINE", default_value = "30s", value_parser = parse_duration)]
    pub drain_deadline: Duration,
    /// Admin endpoint (config dump, log level). Must be a loopback address.
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus metrics endpoint.
    #[arg(long, env = "AMBIT_STATS_ADDR", default_value = "[::]:15020")]
    pub stats_addr: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, env = "AMBIT_READINESS_ADDR", default_value = "[::]:15021")]
    pub readiness_addr: SocketAddr,
    /// How often the local config file is checked for changes.
    #[arg(long, env = "AMBIT_CONFIG_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub config_poll: Duration,
}

/// The workload a dedicated-mode ztunnel serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// Service account of the control plane (in the root namespace): its default CA identity.
pub const DEFAULT_CONTROL_PLANE_SA: &str = "ambit-control-plane";

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub args: Args,
    /// Set in dedicated mode only.
    pub dedicated_workload: Option<WorkloadInfo>,
    /// The identity the control-plane CA must prove: AMBIT_CONTROL_PLANE_IDENTITY, or the
    /// default (see the flag).
    pub control_plane_identity: Identity,
    /// Set when config comes from xDS (`XDS_ADDRESS`).
    pub xds_node: Option<crate::xds::NodeInfo>,
}

/// A setting that cannot be used, naming it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

impl Config {
    /// Validates parsed flags into a usable configuration.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let xds_node = match (&args.local_xds_path, &args.xds_address) {
            (Some(_), Some(_)) => {
                // One source of truth: merging a file with a live control plane would make
                // "which policy is in force" depend on timing.
                return Err(bad(
                    "LOCAL_XDS_PATH",
                    "set together with XDS_ADDRESS; choose one config source",
                ));
            }
            (None, None) => {
                return Err(bad(
                    "LOCAL_XDS_PATH",
                    "required (path to the local config file), unless XDS_ADDRESS is set",
                ))
            }
            (Some(_), None) => None,
            (None, Some(addr)) => Some(xds_settings(&args, addr)?),
        };
        match (&args.ca_dir, &args.ca_address) {
            // Two certificate sources would mean two answers to "which root do peers trust".
            (Some(_), Some(_)) => {
                return Err(bad(
                    "CA_ADDRESS",
                    "set either CA_ADDRESS (control-plane CA) or AMBIT_CA_DIR (file CA), not both",
                ))
            }
            (None, None) => {
                return Err(bad(
                    "AMBIT_CA_DIR",
                    "required unless CA_ADDRESS is set (directory with ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)",
                ))
            }
            (None, Some(_)) if args.ca_root_cert.is_none() && args.xds_root_ca.is_none() => {
                return Err(bad(
                    "CA_ROOT_CA",
                    "required with CA_ADDRESS unless XDS_ROOT_CA is set (PEM root certificate of the mesh)",
                ))
            }
            _ => {}
        }
        if args.worker_threads == 0 {
            return Err(bad("ZTUNNEL_WORKER_THREADS", "must be at least 1"));
        }
        if args.secret_ttl < Duration::from_secs(2) {
            return Err(bad("SECRET_TTL", "must be at least 2s"));
        }
        if args.packet_mark == 0 {
            return Err(bad(
                "PACKET_MARK",
                "must be non-zero, or the redirect rules capture ztunnel itself",
            ));
        }
        if !args.admin_addr.ip().is_loopback() {
            return Err(bad(
                "AMBIT_ADMIN_ADDR",
                format!("{} is not a loopback address", args.admin_addr),
            ));
        }
        // Validates the trust domain with the same parser identities use.
        Identity::new(&args.trust_domain, "ns", "sa")
            .map_err(|e| bad("TRUST_DOMAIN", e.to_string()))?;
        let control_plane_identity = match &args.control_plane_identity {
            Some(s) => Identity::parse(s)
                .map_err(|e| bad("AMBIT_CONTROL_PLANE_IDENTITY", e.to_string()))?,
            None => Identity::new(
                &args.trust_domain,
                &args.root_namespace,
                DEFAULT_CONTROL_PLANE_SA,
            )
            .map_err(|e| bad("AMBIT_ROOT_NAMESPACE", e.to_string()))?,
        };
        let dedicated_workload = match args.proxy_mode {
            ProxyMode::Shared => None,
            ProxyMode::Dedicated => {
                let info = args.proxy_workload_info.as_deref().ok_or_else(|| {
                    bad(
                        "PROXY_WORKLOAD_INFO",
                        "required in dedicated mode (namespace/name/service-account)",
                    )
                })?;
                Some(parse_workload_info(info)?)
            }
        };
        Ok(Config {
            args,
            dedicated_workload,
            control_plane_identity,
            xds_node,
        })
    }
}

/// Validates the settings the xDS client needs; the node identity comes from the downward
/// API, as Istio's DaemonSet sets it.
fn xds_settings(args: &Args, addr: &str) -> Result<crate::xds::NodeInfo, ConfigError> {
    crate::xds::parse_xds_address(addr).map_err(|e| bad("XDS_ADDRESS", e))?;
    if args.xds_root_ca.is_none() && args.ca_dir.is_none() {
        return Err(bad(
            "XDS_ROOT_CA",
            "required with XDS_ADDRESS (PEM root the control plane chains to), unless AMBIT_CA_DIR is set",
        ));
    }
    if let Some(id) = &args.xds_server_identity {
        Identity::parse(id).map_err(|e| bad("AMBIT_XDS_SERVER_IDENTITY", e.to_string()))?;
    }
    fn required(v: &Option<String>, field: &'static str) -> Result<String, ConfigError> {
        match v.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(bad(
                field,
                "required with XDS_ADDRESS (set from the downward API)",
            )),
        }
    }
    Ok(crate::xds::NodeInfo {
        pod_name: required(&args.pod_name, "POD_NAME")?,
        pod_namespace: required(&args.pod_namespace, "POD_NAMESPACE")?,
        instance_ip: args.instance_ip.ok_or_else(|| {
            bad(
                "INSTANCE_IP",
                "required with XDS_ADDRESS (set from the downward API)",
            )
        })?,
        node_name: required(&args.node_name, "NODE_NAME")?,
    })
}

fn parse_workload_info(s: &str) -> Result<WorkloadInfo, ConfigError> {
    let parts: Vec<&str> = s.split('/').collect();
    let [namespace, name, service_account] = parts.as_slice() else {
        return Err(bad(
            "PROXY_WORKLOAD_INFO",
            format!("{s:?} is not namespace/name/service-account"),
        ));
    };
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad(
            "PROXY_WORKLOAD_INFO",
            format!("{s:?} has an empty part"),
        ));
    }
    Ok(WorkloadInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        service_account: service_account.to_string(),
    })
}

/// Parses Go-style durations as Istio's settings use them: `500ms`, `30s`, `5m`, `24h`, or a
/// combination such as `1h30m`. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{s:?}: number without unit"))?;
        if digits == 0 {
            return Err(format!("{s:?}: expected a number"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            other => return Err(format!("{s:?}: unknown unit {other:?}")),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn parse_mtls_mode(s: &str) -> Result<MtlsMode, String> {
    match s.to_ascii_uppercase().as_str() {
        "STRICT" => Ok(MtlsMode::Strict),
        "PERMISSIVE" => Ok(MtlsMode::Permissive),
        "DISABLE" => Ok(MtlsMode::Disable),
        _ => Err(format!("{s:?} is not STRICT, PERMISSIVE or DISABLE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "ztunnel",
            "--local-xds-path",
            "/tmp/c.yaml",
            "--ca-dir",
            "/tmp/ca",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "h", "5x", "5", "5s3"] {
            if bad == "5" {
                continue;
            }
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dedicated_mode_needs_workload_info() {
        let err = Config::from_args(args(&["--proxy-mode", "dedicated"])).unwrap_err();
        assert_eq!(err.field, "PROXY_WORKLOAD_INFO");
        let cfg = Config::from_args(args(&[
            "--proxy-mode",
            "dedicated",
            "--proxy-workload-info",
            "default/web/web-sa",
        ]))
        .unwrap();
        assert_eq!(
            cfg.dedicated_workload.unwrap(),
            WorkloadInfo {
                namespace: "default".into(),
                name: "web".into(),
                service_account: "web-sa".into()
            }
        );
        let err = Config::from_args(args(&[
            "--proxy-mode",
            "dedicated",
            "--proxy-workload-info",
            "default//sa",
        ]))
        .unwrap_err();
        assert_eq!(err.field, "PROXY_WORKLOAD_INFO");
    }

    #[test]
    fn refuses_unsafe_or_missing_settings() {
        let err = Config::from_args(args(&["--admin-addr", "0.0.0.0:15000"])).unwrap_err();
        assert_eq!(err.field, "AMBIT_ADMIN_ADDR");
        let err = Config::from_args(args(&["--packet-mark", "0"])).unwrap_err();
        assert_eq!(err.field, "PACKET_MARK");
        let err = Config::from_args(args(&["--trust-domain", "bad/td"])).unwrap_err();
        assert_eq!(err.field, "TRUST_DOMAIN");
        let no_file = Args::try_parse_from(["ztunnel", "--ca-dir", "/x"]).unwrap();
        assert_eq!(
            Config::from_args(no_file).unwrap_err().field,
            "LOCAL_XDS_PATH"
        );
    }

    /// An xDS-mode command line; `set` replaces or adds flags (clap refuses a repeated flag).
    fn xds_args(set: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut flags = vec![
            ("--xds-address", "https://ambit-cp.istio-system.svc:15012"),
            ("--ca-dir", "/tmp/ca"),
            ("--pod-name", "ztunnel-1"),
            ("--pod-namespace", "istio-system"),
            ("--instance-ip", "10.0.0.5"),
            ("--node-name", "node-a"),
        ];
        for (k, v) in set {
            flags.retain(|(f, _)| f != k);
            flags.push((k, v));
        }
        let mut argv = vec!["ztunnel"];
        for (k, v) in flags {
            argv.extend([k, v]);
        }
        Config::from_args(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn xds_mode_settings() {
        let cfg = xds_args(&[]).unwrap();
        let node = cfg.xds_node.unwrap();
        assert_eq!(node.node_name, "node-a");
        assert_eq!(
            node.node_id(),
            "ztunnel~10.0.0.5~ztunnel-1.istio-system~istio-system.svc.cluster.local"
        );
        // One source of truth.
        let err = xds_args(&[("--local-xds-path", "/tmp/c.yaml")]).unwrap_err();
        assert_eq!(err.field, "LOCAL_XDS_PATH");
        let err = xds_args(&[("--xds-address", "http://cp:15012")]).unwrap_err();
        assert_eq!(err.field, "XDS_ADDRESS");
        let err = xds_args(&[("--node-name", " ")]).unwrap_err();
        assert_eq!(err.field, "NODE_NAME");
        let err = xds_args(&[("--xds-server-identity", "istiod")]).unwrap_err();
        assert_eq!(err.field, "AMBIT_XDS_SERVER_IDENTITY");
        let no_node = Args::try_parse_from([
            "ztunnel",
            "--xds-address",
            "cp:15012",
            "--ca-dir",
            "/tmp/ca",
        ])
        .unwrap();
        assert_eq!(Config::from_args(no_node).unwrap_err().field, "POD_NAME");
        let no_root = Args::try_parse_from(["ztunnel", "--xds-address", "cp:15012"]).unwrap();
        assert_eq!(Config::from_args(no_root).unwrap_err().field, "XDS_ROOT_CA");
        // The file source needs none of the node settings.
        assert!(Config::from_args(args(&[])).unwrap().xds_node.is_none());
    }

    #[test]
    fn certificate_source_is_one_of_file_ca_or_control_plane() {
        let cp = |extra: &[&str]| {
            let mut argv = vec!["ztunnel", "--local-xds-path", "/tmp/c.yaml"];
            argv.extend_from_slice(extra);
            Config::from_args(Args::try_parse_from(argv).unwrap())
        };
        let both = cp(&["--ca-dir", "/x", "--ca-address", "cp:15012"]).unwrap_err();
        assert_eq!(both.field, "CA_ADDRESS");
        let neither = cp(&[]).unwrap_err();
        assert_eq!(neither.field, "AMBIT_CA_DIR");
        let no_root = cp(&["--ca-address", "cp:15012"]).unwrap_err();
        assert_eq!(no_root.field, "CA_ROOT_CA");
        // The xDS root is the mesh root too.
        cp(&["--ca-address", "cp:15012", "--xds-root-ca", "/r.pem"]).unwrap();
        let cfg = cp(&["--ca-address", "cp:15012", "--ca-root-cert", "/r.pem"]).unwrap();
        assert_eq!(
            cfg.control_plane_identity.to_string(),
            "spiffe://cluster.local/ns/istio-system/sa/ambit-control-plane"
        );
        let cfg = cp(&[
            "--ca-address",
            "cp:15012",
            "--ca-root-cert",
            "/r.pem",
            "--control-plane-identity",
            "spiffe://example.org/ns/mesh/sa/cp",
        ])
        .unwrap();
        assert_eq!(
            cfg.control_plane_identity.to_string(),
            "spiffe://example.org/ns/mesh/sa/cp"
        );
        let bad_id = cp(&[
            "--ca-address",
            "cp:15012",
            "--ca-root-cert",
            "/r.pem",
            "--control-plane-identity",
            "cp",
        ])
        .unwrap_err();
        assert_eq!(bad_id.field, "AMBIT_CONTROL_PLANE_IDENTITY");
    }

    #[test]
    fn defaults_are_secure() {
        let cfg = Config::from_args(args(&[])).unwrap();
        assert_eq!(cfg.args.default_mtls, MtlsMode::Strict);
        assert!(cfg.args.admin_addr.ip().is_loopback());
        assert_eq!(cfg.args.packet_mark, 0x539);
    }
}
