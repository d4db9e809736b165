//! The node agent (`cni-agent`): decides which pods are captured, installs their redirect rules,
//! hands their network namespaces to ztunnel over ZDS and keeps checking that capture holds.
//!
//! # Architecture
//! - One tokio runtime (two workers). Tasks: the pod source (folder poller, or Kubernetes
//!   watchers of this node's pods and all namespaces), the ZDS accept loop, the plugin socket
//!   accept loop (one task per request), the reconcile loop (re-decides pods on every source
//!   change), the health loop, and three HTTP servers.
//! - Every pod operation (plugin request, reconcile pass, health pass) runs under one async lock
//!   in [`capture::Agent`], so they never interleave on a pod.
//! - Ports: metrics (default `[::]:15020`), readiness (`[::]:15021`, `/healthz/ready`), admin
//!   (`127.0.0.1:15000`, `/pods`). They collide with ztunnel's defaults on purpose (the agent
//!   replaces nothing of ztunnel's on a real node, where each has its own pod netns); tests,
//!   which run both in one node netns, pass other ports.
//! - Files: the plugin socket, the ZDS socket (ztunnel's `INPOD_UDS`), a state dir with one
//!   JSON file per known pod.
//!
//! Start-up order: bind every listener (a conflict stops start-up), detect the iptables backend,
//! install the node's probe SNAT, wait for the first full source sync, restore and reconcile the
//! persisted pods, and only then accept ztunnel (which is replayed every enrolled pod) and the
//! plugin's requests (queued in the socket backlog meanwhile); then report ready.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ::http::StatusCode;
use mesh::ops_http as http;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

pub mod capture;
pub mod config;
pub mod enrollment;
pub mod exec;
pub mod iptables;
pub mod kube_source;
pub mod listeners;
pub mod metrics;
pub mod plugin;
pub mod rules;
pub mod source;
pub mod state;
pub mod ztunnel;

pub use capture::{Agent, CaptureSettings, Health};
pub use config::AgentConfig;
pub use source::{ClusterView, FolderSource, PodSource};

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid redirect configuration: {0}")]
    Redirect(#[from] mesh::redirect::RedirectConfigError),
    #[error(transparent)]
    Iptables(#[from] iptables::FlavourError),
    #[error("installing the node's probe SNAT: {0}")]
    ProbeSnat(#[source] rules::RulesError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("binding the ZDS socket {path}: {source}")]
    Zds {
        path: String,
        #[source]
        source: mesh::zds::ZdsError,
    },
    #[error("the pod source stopped before its first sync")]
    SourceGone,
    #[error(transparent)]
    SourceConfig(#[from] config::SourceConfigError),
    #[error(transparent)]
    Kube(#[from] kube_source::KubeSourceError),
}

/// Whether this process runs in a Kubernetes pod (the kubelet sets this for every container).
fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty())
}

async fn bind_tcp(
    what: &'static str,
    addr: std::net::SocketAddr,
) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

/// Runs the agent until `shutdown` resolves. Pods stay captured when it stops: the rules stay
/// in their netns and ztunnel keeps serving them until the next agent replays its snapshot.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let base = cfg.base_redirect();
    base.validate()?;
    let families = cfg.families();
    // Decided before anything is bound or installed: a node without a pod source must not
    // half-start.
    enum Prepared {
        Folder(std::path::PathBuf),
        Kube(kube::Client, String, Option<String>),
    }
    let source_choice = match cfg.source_choice(in_cluster())? {
        config::SourceChoice::Folder(dir) => Prepared::Folder(dir),
        config::SourceChoice::Kube { api, node } => {
            Prepared::Kube(kube_source::client(api.as_deref()).await?, node, api)
        }
    };

    let metrics_listener = bind_tcp("metrics address", cfg.metrics_addr).await?;
    let readiness_listener = bind_tcp("readiness address", cfg.readiness_addr).await?;
    let admin_listener = bind_tcp("admin address", cfg.admin_addr).await?;
    if let Some(dir) = cfg.zds_socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| AgentError::Bind {
            what: "ZDS socket directory",
            addr: dir.display().to_string(),
            source,
        })?;
    }
    let zds = mesh::zds::ZdsServer::bind(&cfg.zds_socket).map_err(|source| AgentError::Zds {
        path: cfg.zds_socket.display().to_string(),
        source,
    })?;
    let plugin_listener = plugin::bind(&cfg.plugin_socket).map_err(|source| AgentError::Bind {
        what: "plugin socket",
        addr: cfg.plugin_socket.display().to_string(),
        source,
    })?;
    let store = state::StateStore::open(&cfg.state_dir)?;

    let ipt = iptables::Iptables::detect(cfg.iptables).await?;
    info!(backend = ?ipt.flavour, "iptables backend");
    if cfg.pod_cidrs.is_empty() {
        warn!("no --pod-cidr given: every TCP connection the node opens will be SNATed to the probe address");
    }
    rules::install_probe_snat(&ipt, &base, &families)
        .await
        .map_err(AgentError::ProbeSnat)?;

    let source: Box<dyn PodSource> = match source_choice {
        Prepared::Folder(dir) => {
            info!(dir = %dir.display(), "pod source: manifest folder");
            Box::new(FolderSource::start(
                dir,
                cfg.local_poll,
                cfg.node_name.clone(),
            ))
        }
        Prepared::Kube(client, node, api) => {
            info!(%node, api = api.as_deref().unwrap_or("in-cluster/kubeconfig"), "pod source: Kubernetes");
            Box::new(kube_source::KubeSource::start(
                client,
                kube_source::KubeSettings::new(node),
            ))
        }
    };
    let mut view = source.subscribe();
    let metrics = Arc::new(metrics::Metrics::default());
    let agent = Arc::new(Agent::new(
        CaptureSettings {
            base,
            families,
            add_timeout: cfg.add_timeout,
        },
        ipt,
        view.clone(),
        store,
        metrics.clone(),
    ));

    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    {
        let m = metrics.clone();
        tasks.spawn(http::serve(
            metrics_listener,
            Arc::new(move |path| match path {
                "/metrics" | "/stats/prometheus" => http::respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    m.encode(),
                ),
                _ => http::text(StatusCode::NOT_FOUND, "not found\n"),
            }),
        ));
        let r = ready.clone();
        tasks.spawn(http::serve(
            readiness_listener,
            Arc::new(move |path| match path {
                "/healthz/ready" if r.load(Ordering::SeqCst) => {
                    http::text(StatusCode::OK, "ready\n")
                }
                "/healthz/ready" => http::text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                _ => http::text(StatusCode::NOT_FOUND, "not found\n"),
            }),
        ));
        let a = agent.clone();
        tasks.spawn(http::serve(
            admin_listener,
            Arc::new(move |path| match path {
                "/pods" => http::respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string_pretty(&a.dump()).unwrap_or_default(),
                ),
                _ => http::text(StatusCode::NOT_FOUND, "endpoints: /pods\n"),
            }),
        ));
    }

    let startup = async {
        view.wait_for(|v| v.is_some())
            .await
            .map_err(|_| AgentError::SourceGone)?;
        info!("pod source synced");
        agent.restore().await;
        Ok::<_, AgentError>(())
    };
    tokio::pin!(shutdown);
    tokio::select! {
        r = startup => r?,
        _ = &mut shutdown => return Ok(()),
    }

    {
        let a = agent.clone();
        let m = metrics.clone();
        let replay_timeout = cfg.add_timeout;
        tasks.spawn(async move {
            loop {
                match zds.accept().await {
                    Ok(conn) => {
                        let list = || a.replay_list();
                        match a.hub().replace(conn, list, replay_timeout).await {
                            Ok(rejected) => a.replayed(&rejected),
                            Err(e) => error!(error = %e, "replaying pods to ztunnel failed; waiting for it to reconnect"),
                        }
                    }
                    Err(e) => warn!(error = %e, "a ZDS connection failed before its hello"),
                }
                m.set_ztunnel_connected(a.hub().is_connected());
            }
        });
        let a = agent.clone();
        tasks.spawn(async move {
            // Source changes: re-decide every known pod. `changed` coalesces bursts.
            while view.changed().await.is_ok() {
                a.reconcile().await;
            }
        });
        let a = agent.clone();
        let m = metrics.clone();
        let interval = cfg.health_interval;
        tasks.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate; start-up just applied everything
            loop {
                ticker.tick().await;
                a.health_check().await;
                m.set_ztunnel_connected(a.hub().is_connected());
            }
        });
        tasks.spawn(plugin::serve(plugin_listener, agent.clone()));
    }
    if let Some(dir) = cfg.cni_conf_dir.clone() {
        tasks.spawn(keep_plugin_installed(
            dir,
            cfg.plugin_conf(),
            cfg.cni_install_interval,
        ));
    }
    ready.store(true, Ordering::SeqCst);
    info!("cni-agent ready");
    shutdown.await;
    info!("cni-agent stopping; pods stay captured");
    tasks.abort_all();
    // Keep the source alive until here: dropping it early would close the view channel.
    drop(source);
    Ok(())
}

/// Chains the plugin into the node's CNI config now and after every `interval`: a primary CNI
/// that rewrites its config list would otherwise silently drop `ambit-cni`, and new pods would
/// start uncaptured. Re-installing an up-to-date config writes nothing.
async fn keep_plugin_installed(
    dir: std::path::PathBuf,
    conf: serde_json::Value,
    interval: std::time::Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Result<std::path::PathBuf, String>> = None;
    loop {
        ticker.tick().await;
        let (d, c) = (dir.clone(), conf.clone());
        let result =
            match tokio::task::spawn_blocking(move || crate::install::install(&d, &c)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("installer task failed: {e}")),
            };
        // Log changes of outcome only, not every tick.
        if last.as_ref() != Some(&result) {
            match &result {
                Ok(path) => {
                    info!(config = %path.display(), "ambit-cni is chained in the node's CNI config")
                }
                Err(e) => {
                    error!(dir = %dir.display(), error = %e, "cannot chain ambit-cni into the node's CNI config; new pods may start uncaptured")
                }
            }
        }
        last = Some(result);
    }
}
