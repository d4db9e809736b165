//! The data path of one served workload: three listeners inside its network namespace.
//!
//! - 15001 outbound: connections the workload makes, REDIRECTed here; sent over HBONE to the
//!   destination (or passed through in plain TCP when the destination is not in the mesh).
//! - 15006 inbound plaintext: connections to the workload from outside the mesh; allowed only
//!   when the effective mTLS mode is not STRICT.
//! - 15008 inbound HBONE: mTLS + HTTP/2 CONNECT from other ztunnels.
//!
//! Every listener is bound before any accept loop runs, so a bind failure fails the whole
//! workload (and ZDS reports it) instead of leaving it half served. Each accepted connection is
//! one task, tracked for drain and for forced shutdown.

mod authorize;
mod inbound;
mod inbound_plain;
mod outbound;
mod relay;
mod telemetry;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mesh::hbone::pool::Pool;
use mesh::identity::Identity;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

pub use authorize::ConnTracker;

use crate::config::{Config, WorkloadInfo};
use crate::metrics::Metrics;
use crate::netns::Netns;
use crate::socket::{self, SocketOptions};
use crate::state::StateHandle;
use crate::tlscache::TlsCache;

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = 15008;

/// Ports that are ztunnel's own: never a valid tunnel target.
pub fn is_proxy_port(port: u16) -> bool {
    matches!(port, OUTBOUND_PORT | INBOUND_PLAINTEXT_PORT | HBONE_PORT)
}

/// Signals shared by every connection for graceful and forced shutdown.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop accepting; HBONE connections send GOAWAY. In-flight streams carry on.
    pub drain: CancellationToken,
    /// Close everything now (drain deadline passed).
    pub force: CancellationToken,
    /// Every connection task, so drain can wait for them.
    pub tasks: TaskTracker,
}

/// Everything a connection handler needs, shared by all workloads.
pub struct ProxyInputs {
    pub cfg: Arc<Config>,
    pub state: StateHandle,
    pub tls: Arc<TlsCache>,
    pub pool: Pool,
    pub metrics: Metrics,
    pub socket_opts: SocketOptions,
    pub conns: ConnTracker,
    pub shutdown: Shutdown,
    /// Workloads being served now, by uid (for the config dump).
    served: Mutex<BTreeMap<String, Arc<LocalWorkload>>>,
    round_robin: Mutex<HashMap<(String, u16), Arc<AtomicUsize>>>,
}

impl ProxyInputs {
    pub fn new(
        cfg: Arc<Config>,
        state: StateHandle,
        tls: Arc<TlsCache>,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        let socket_opts = SocketOptions {
            mark: cfg.args.packet_mark,
            transparent: cfg.args.enable_orig_src,
        };
        Arc::new(ProxyInputs {
            cfg,
            state,
            tls,
            pool: Pool::new(Default::default()),
            metrics,
            socket_opts,
            conns: ConnTracker::default(),
            shutdown,
            served: Mutex::new(BTreeMap::new()),
            round_robin: Mutex::new(HashMap::new()),
        })
    }

    /// The workloads served now, for the config dump.
    pub fn served_dump(&self) -> serde_json::Value {
        let served = self.served.lock().expect("served lock");
        serde_json::Value::Array(
            served
                .values()
                .map(|w| {
                    serde_json::json!({
                        "uid": w.uid,
                        "namespace": w.info.namespace,
                        "name": w.info.name,
                        "identity": w.identity.to_string(),
                        "netnsInode": w.netns.inode(),
                    })
                })
                .collect(),
        )
    }

    /// Next index for round-robin over `len` endpoints of a service port.
    fn next_endpoint(&self, service: &str, port: u16, len: usize) -> usize {
        let counter = self
            .round_robin
            .lock()
            .expect("round robin lock")
            .entry((service.to_string(), port))
            .or_default()
            .clone();
        counter.fetch_add(1, Ordering::Relaxed) % len.max(1)
    }
}

/// A workload this ztunnel serves: a pod handed over by ZDS, or itself in dedicated mode.
#[derive(Debug)]
pub struct LocalWorkload {
    pub uid: String,
    pub info: WorkloadInfo,
    pub identity: Identity,
    pub netns: Netns,
}

impl LocalWorkload {
    pub fn new(
        uid: String,
        info: WorkloadInfo,
        trust_domain: &str,
        netns: Netns,
    ) -> Result<Self, String> {
        let identity = Identity::new(trust_domain, &info.namespace, &info.service_account)
            .map_err(|e| format!("workload {}/{}: {e}", info.namespace, info.name))?;
        Ok(LocalWorkload {
            uid,
            info,
            identity,
            netns,
        })
    }
}

/// A served workload's listeners; dropping or stopping it closes them and its connections.
pub struct WorkloadProxy {
    pub workload: Arc<LocalWorkload>,
    inputs: Arc<ProxyInputs>,
    /// Cancelled by ztunnel's drain too: stops the accept loops only.
    accepting: CancellationToken,
    /// Cancelled only when the workload itself goes away: closes its connections.
    removed: CancellationToken,
}

impl WorkloadProxy {
    /// Binds the workload's listeners (all of them, or none) and starts serving.
    pub fn start(
        inputs: &Arc<ProxyInputs>,
        workload: LocalWorkload,
    ) -> std::io::Result<WorkloadProxy> {
        let workload = Arc::new(workload);
        let mut families = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
        if inputs.cfg.args.ipv6_enabled {
            families.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        }
        let mut bound = Vec::new();
        for ip in families {
            for (port, kind) in [
                (OUTBOUND_PORT, Kind::Outbound),
                (INBOUND_PLAINTEXT_PORT, Kind::InboundPlaintext),
                (HBONE_PORT, Kind::Hbone),
            ] {
                let addr = SocketAddr::new(ip, port);
                let listener = socket::bind_listener(&workload.netns, addr, inputs.socket_opts)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
                bound.push((kind, listener));
            }
        }
        let accepting = inputs.shutdown.drain.child_token();
        let removed = CancellationToken::new();
        for (kind, listener) in bound {
            let span = tracing::info_span!("listener", workload = %format!("{}/{}", workload.info.namespace, workload.info.name), kind = kind.name());
            tokio::spawn(
                accept_loop(
                    inputs.clone(),
                    workload.clone(),
                    kind,
                    listener,
                    accepting.clone(),
                    removed.clone(),
                )
                .instrument(span),
            );
        }
        info!(workload = %workload.identity, uid = %workload.uid, "serving workload");
        inputs
            .served
            .lock()
            .expect("served lock")
            .insert(workload.uid.clone(), workload.clone());
        Ok(WorkloadProxy {
            workload,
            inputs: inputs.clone(),
            accepting,
            removed,
        })
    }

    /// Stops accepting and closes this workload's connections (the pod is gone).
    pub fn stop(&self) {
        self.accepting.cancel();
        self.removed.cancel();
    }
}

impl Drop for WorkloadProxy {
    fn drop(&mut self) {
        self.stop();
        let mut served = self.inputs.served.lock().expect("served lock");
        // A replacement for the same uid may already be registered: remove only our own.
        if served
            .get(&self.workload.uid)
            .is_some_and(|w| Arc::ptr_eq(w, &self.workload))
        {
            served.remove(&self.workload.uid);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Outbound,
    InboundPlaintext,
    Hbone,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Outbound => "outbound",
            Kind::InboundPlaintext => "inbound_plaintext",
            Kind::Hbone => "inbound_hbone",
        }
    }
}

async fn accept_loop(
    inputs: Arc<ProxyInputs>,
    workload: Arc<LocalWorkload>,
    kind: Kind,
    listener: TcpListener,
    accepting: CancellationToken,
    removed: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = accepting.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of fds or memory: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let peer = socket::canonical(peer);
        let inputs2 = inputs.clone();
        let workload2 = workload.clone();
        // A pod going away closes its connections; so does the drain deadline.
        let removed = removed.clone();
        let force = inputs.shutdown.force.clone();
        let span = tracing::debug_span!("conn", %peer);
        inputs.shutdown.tasks.spawn(
            async move {
                let work = async {
                    match kind {
                        Kind::Outbound => outbound::handle(inputs2, workload2, stream, peer).await,
                        Kind::InboundPlaintext => {
                            inbound_plain::handle(inputs2, workload2, stream, peer).await
                        }
                        Kind::Hbone => inbound::handle(inputs2, workload2, stream, peer).await,
                    }
                };
                tokio::select! {
                    _ = work => {}
                    _ = force.cancelled() => {}
                    _ = removed.cancelled() => {}
                }
            }
            .instrument(span),
        );
    }
}
