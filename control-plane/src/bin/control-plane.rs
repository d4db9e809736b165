//! `control-plane`: serves delta xDS and the mesh CA to ztunnels on one mTLS port.
//!
//! See docs/control-plane.md for flags, the config folder and operations.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use control_plane::run::{self, ConfigSource, Options, Readiness};
use mesh::identity::Identity;

#[derive(Debug, Parser)]
#[command(
    name = "control-plane",
    about = "ambit control plane: delta xDS + CA on one port"
)]
struct Args {
    /// Folder of Kubernetes/Istio YAML (Namespaces, Pods, Services, AuthorizationPolicies, …),
    /// watched for changes.
    #[arg(long, env = "AMBIT_LOCAL_DIR", conflicts_with = "kube")]
    local_dir: Option<PathBuf>,
    /// Watch the Kubernetes API instead of a folder; callers may then authenticate with
    /// Kubernetes service-account tokens (TokenReview) as well as bootstrap tokens.
    #[arg(long, env = "AMBIT_KUBE")]
    kube: bool,
    /// With --kube: the API server URL (e.g. `http://127.0.0.1:8001` of `kubectl proxy`),
    /// instead of the in-cluster service account or kubeconfig.
    #[arg(long, env = "AMBIT_KUBE_API")]
    kube_api: Option<String>,
    /// Plug-in CA directory (Istio `cacerts` layout: ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem).
    #[arg(long, env = "AMBIT_CACERTS")]
    cacerts: Option<PathBuf>,
    /// Directory where a generated root is persisted (key mode 0600) and found again on restart.
    #[arg(long, env = "AMBIT_CA_STORE")]
    ca_store: Option<PathBuf>,
    /// With --kube: Secret (in --namespace) where a generated root is persisted, create-only,
    /// so replicas share one root (e.g. `ambit-ca-root`). A plug-in CA in --cacerts still wins.
    #[arg(
        long,
        env = "AMBIT_CA_ROOT_SECRET",
        requires = "kube",
        conflicts_with = "ca_store"
    )]
    ca_root_secret: Option<String>,
    /// With --kube: the control plane's namespace, holding its CA root Secret and the
    /// published root-certificate ConfigMap. Default: the pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// File of `<node-name> <token>` lines: each token lets one node's ztunnel in.
    #[arg(long, env = "AMBIT_BOOTSTRAP_TOKENS")]
    bootstrap_tokens: Option<PathBuf>,
    /// xDS + CA port (mTLS).
    #[arg(long, env = "AMBIT_LISTEN", default_value = "[::]:15012")]
    listen: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, env = "AMBIT_READINESS_ADDR", default_value = "[::]:15021")]
    readiness_addr: SocketAddr,
    /// Admin/debug endpoint (`GET /debug/problems`: invalid config objects as JSON). Keep it
    /// on loopback: its output names every object in the mesh.
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = control_plane::admin::DEFAULT_ADMIN_ADDR)]
    admin_addr: SocketAddr,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// SPIFFE id of the control plane's serving certificate (what ztunnels expect).
    /// Default: spiffe://<trust-domain>/ns/istio-system/sa/ambit-control-plane.
    #[arg(long, env = "AMBIT_IDENTITY")]
    identity: Option<String>,
    /// How often the folder is checked for changes, in milliseconds.
    #[arg(long, env = "AMBIT_POLL_MS", default_value_t = 200)]
    poll_ms: u64,
    /// xDS debounce window, in milliseconds.
    #[arg(long, env = "AMBIT_DEBOUNCE_MS", default_value_t = 100)]
    debounce_ms: u64,
}

/// A flag combination that cannot work, named by flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
struct FlagError {
    flag: &'static str,
    reason: String,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        reason: reason.into(),
    }
}

fn options(args: Args) -> Result<Options, FlagError> {
    // clap's `requires = "kube"` does not see a bool flag's absence; say it here.
    if args.kube_api.is_some() && !args.kube {
        return Err(bad(
            "--kube-api",
            "needs --kube (it names the API server the Kubernetes source watches)",
        ));
    }
    let source = if args.kube {
        ConfigSource::Kube {
            api_url: args.kube_api,
        }
    } else {
        ConfigSource::LocalDir(args.local_dir.ok_or_else(|| {
            bad(
                "--local-dir",
                "required without --kube (the folder of YAML to serve)",
            )
        })?)
    };
    if args.cacerts.is_none() && args.ca_store.is_none() && args.ca_root_secret.is_none() {
        return Err(bad(
            "--ca-store",
            "set --cacerts (plug-in CA) and/or --ca-store or --ca-root-secret (where a \
             generated root is kept)",
        ));
    }
    match args.ca_root_secret.as_deref() {
        Some("") => return Err(bad("--ca-root-secret", "must not be empty")),
        // clap's `requires` does not see a bool flag's absence; say it here.
        Some(_) if !args.kube => {
            return Err(bad(
                "--ca-root-secret",
                "needs --kube (the Secret is read and created through the Kubernetes API)",
            ))
        }
        _ => {}
    }
    let namespace = args.namespace.filter(|ns| !ns.is_empty());
    if !args.kube && args.bootstrap_tokens.is_none() {
        return Err(bad(
            "--bootstrap-tokens",
            "required without --kube: no ztunnel could authenticate otherwise",
        ));
    }
    let identity = match &args.identity {
        Some(s) => Identity::parse(s).map_err(|e| bad("--identity", e.to_string()))?,
        None => Identity::new(&args.trust_domain, "istio-system", "ambit-control-plane")
            .map_err(|e| bad("--trust-domain", e.to_string()))?,
    };
    if args.poll_ms == 0 {
        return Err(bad("--poll-ms", "must be at least 1"));
    }
    Ok(Options {
        source,
        cacerts: args.cacerts,
        ca_store: args.ca_store,
        ca_root_secret: args.ca_root_secret,
        namespace,
        bootstrap_tokens: args.bootstrap_tokens,
        listen: args.listen,
        readiness: args.readiness_addr,
        admin: args.admin_addr,
        trust_domain: args.trust_domain,
        identity,
        poll: Duration::from_millis(args.poll_ms),
        debounce: Duration::from_millis(args.debounce_ms),
        serving_cert_lifetime: Duration::from_secs(24 * 3600),
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = match options(Args::parse()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("control-plane: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("control-plane: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => return Err(format!("installing the SIGTERM handler: {e}")),
            };
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: stopping"),
            }
        };
        run::run(opts, Readiness::default(), shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}
