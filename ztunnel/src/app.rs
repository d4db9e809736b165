//! Start-up, wiring and shutdown of a ztunnel process.
//!
//! Order matters: config and the certificate source (the file CA, or the control-plane CA
//! client when CA_ADDRESS is set, which connects lazily) load first (a bad file stops start-up
//! with a message), then every listener is bound (a busy port stops start-up), and only then does anything serve.
//! SIGTERM drains: stop accepting, GOAWAY on HBONE connections, wait for in-flight
//! connections up to the drain deadline, then close what is left and exit 0.

use std::sync::Arc;

use anyhow::Context;
use mesh::ca::CertificateAuthority;
use mesh::caclient::{CaClient, CaClientConfig, TokenSource};
use mesh::cert::parse_pem_certs;
use mesh::certmanager::{CertSource, FileCa, SecretManager};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::certsource::CountingSource;
use crate::config::{Config, ProxyMode};
use crate::logging::LogHandle;
use crate::metrics::Metrics;
use crate::netns::Netns;
use crate::proxy::{LocalWorkload, ProxyInputs, Shutdown, WorkloadProxy};
use crate::readiness::Readiness;
use crate::tlscache::TlsCache;
use crate::{httpserver, inpod, state, xds};

/// Runs ztunnel until SIGTERM/SIGINT and its drain complete.
pub async fn run(cfg: Config, log: Option<LogHandle>) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let args = &cfg.args;
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    let config_loaded = readiness.register("config");

    let reload_metrics = metrics.clone();
    let on_reload = move |ok| reload_metrics.record_config_reload(ok);
    let state = if args.xds_address.is_some() {
        // Readiness waits for the first complete push; until then the state is empty.
        let (state, client) = xds::from_config(&cfg, config_loaded, on_reload)
            .context("setting up the xDS client")?;
        tokio::spawn(client.run());
        state
    } else {
        let path = args.local_xds_path.clone().context("LOCAL_XDS_PATH")?;
        let (state, watcher) = state::watch_local_file(path, args.config_poll, on_reload)
            .map_err(anyhow::Error::msg)?;
        tokio::spawn(watcher);
        drop(config_loaded);
        state
    };

    let secrets = SecretManager::new(cert_source(&cfg, &metrics)?);
    let tls = Arc::new(TlsCache::new(secrets.clone()));

    // Bind the operational endpoints before serving anything.
    admin::check_admin_addr(args.admin_addr).map_err(anyhow::Error::msg)?;
    let admin_listener = bind(args.admin_addr, "admin").await?;
    let stats_listener = bind(args.stats_addr, "metrics").await?;
    let ready_listener = bind(args.readiness_addr, "readiness").await?;

    let shutdown = Shutdown::default();
    let inputs = ProxyInputs::new(
        cfg.clone(),
        state.clone(),
        tls,
        metrics.clone(),
        shutdown.clone(),
    );

    let dump_inputs = inputs.clone();
    let admin_state = AdminState {
        config_dump: Arc::new(move || {
            let st = dump_inputs.state.current();
            let mut dump = st.to_dump();
            if let Some(obj) = dump.as_object_mut() {
                obj.insert(
                    "certificates".into(),
                    serde_json::to_value(secrets.dump()).unwrap_or_default(),
                );
                obj.insert("servedWorkloads".into(), dump_inputs.served_dump());
                obj.insert(
                    "configStatus".into(),
                    serde_json::to_value(dump_inputs.state.status()).unwrap_or_default(),
                );
            }
            dump
        }),
        log,
    };
    // The operational endpoints outlive the drain: readiness must be able to say "not ready"
    // and metrics must be scrapeable while connections finish.
    let until_exit = shutdown.force.clone();
    let admin_shutdown = until_exit.clone().cancelled_owned();
    tokio::spawn(async move {
        if let Err(e) = admin::serve_admin(admin_listener, admin_state, admin_shutdown).await {
            warn!(error = %e, "admin endpoint stopped");
        }
    });
    tokio::spawn(httpserver::serve_metrics(
        stats_listener,
        metrics.clone(),
        until_exit.clone().cancelled_owned(),
    ));
    tokio::spawn(httpserver::serve_readiness(
        ready_listener,
        readiness.clone(),
        until_exit.clone().cancelled_owned(),
    ));

    // Re-check open connections whenever the config changes.
    let recheck_inputs = inputs.clone();
    tokio::spawn(async move {
        let mut rx = recheck_inputs.state.subscribe();
        while rx.changed().await.is_ok() {
            let st = rx.borrow_and_update().clone();
            let closed = recheck_inputs.conns.recheck(&recheck_inputs.cfg, &st);
            if closed > 0 {
                info!(closed, "policy change closed open connections");
            }
        }
    });

    // Serve workloads.
    let _dedicated = match args.proxy_mode {
        ProxyMode::Dedicated => {
            let info = cfg
                .dedicated_workload
                .clone()
                .context("PROXY_WORKLOAD_INFO")?;
            let listeners = readiness.register("listeners");
            let workload =
                LocalWorkload::new("dedicated".into(), info, &args.trust_domain, Netns::Current)
                    .map_err(anyhow::Error::msg)?;
            let proxy =
                WorkloadProxy::start(&inputs, workload).context("binding workload listeners")?;
            drop(listeners);
            Some(proxy)
        }
        ProxyMode::Shared => {
            let first_snapshot = readiness.register("first ZDS snapshot from the node agent");
            tokio::spawn(inpod::run(
                inputs.clone(),
                args.inpod_uds.clone(),
                first_snapshot,
            ));
            None
        }
    };
    info!(mode = ?args.proxy_mode, "ztunnel started");

    wait_for_signal().await?;
    drain(&shutdown, args.drain_deadline, &readiness).await;
    Ok(())
}

/// Where workload certificates come from: the control plane's CA when CA_ADDRESS is set, else
/// the local file CA. Either way wrapped for the rotation metric.
fn cert_source(cfg: &Config, metrics: &Metrics) -> anyhow::Result<Arc<dyn CertSource>> {
    let args = &cfg.args;
    if let Some(address) = &args.ca_address {
        let root_path = args
            .ca_root_cert
            .clone()
            .or_else(|| args.xds_root_ca.clone())
            .context("CA_ROOT_CA")?;
        let roots_pem = std::fs::read_to_string(&root_path)
            .with_context(|| format!("reading CA_ROOT_CA {}", root_path.display()))?;
        let roots = parse_pem_certs(&roots_pem, "CA_ROOT_CA")
            .with_context(|| format!("parsing CA_ROOT_CA {}", root_path.display()))?;
        let client = CaClient::new(CaClientConfig {
            address: address.clone(),
            roots,
            server_identity: cfg.control_plane_identity.clone(),
            token: TokenSource::File(args.ca_token_file.clone()),
            lifetime: args.secret_ttl,
            cluster_id: Some(args.cluster_id.clone()),
        })
        .context("CA_ADDRESS")?;
        info!(%address, control_plane = %cfg.control_plane_identity, "certificates from the control-plane CA");
        return Ok(Arc::new(CountingSource::new(client, metrics.clone())));
    }
    let ca_dir = args.ca_dir.clone().context("AMBIT_CA_DIR")?;
    let ca = CertificateAuthority::from_cacerts_dir(&ca_dir)
        .with_context(|| format!("loading the file CA from {}", ca_dir.display()))?;
    let file_ca = FileCa {
        ca: Arc::new(ca),
        lifetime: args.secret_ttl,
    };
    Ok(Arc::new(CountingSource::new(file_ca, metrics.clone())))
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} endpoint on {addr}"))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
    }
    Ok(())
}

/// Graceful drain, bounded by `deadline`.
async fn drain(shutdown: &Shutdown, deadline: std::time::Duration, readiness: &Readiness) {
    // Not ready any more: load balancers and kubelet stop sending new work.
    let _draining = readiness.register("draining");
    shutdown.drain.cancel();
    shutdown.tasks.close();
    let open = shutdown.tasks.len();
    info!(open, deadline = ?deadline, "waiting for in-flight connections");
    if tokio::time::timeout(deadline, shutdown.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left = shutdown.tasks.len(),
            "drain deadline passed; closing remaining connections"
        );
        shutdown.force.cancel();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), shutdown.tasks.wait()).await;
    }
    shutdown.force.cancel();
    info!("drained");
}
