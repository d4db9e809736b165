//! Shared (in-pod) mode: the node agent hands ztunnel each enrolled pod's network namespace
//! over ZDS, and ztunnel serves the pod from inside it.
//!
//! Invariants:
//! - Every request is acknowledged, with an error text when ztunnel could not serve the pod
//!   (the agent then fails the pod's CNI ADD: a pod never starts uncaptured).
//! - A pod already served when the agent replays it (after a reconnect) keeps its listeners and
//!   connections; pods not replayed before `snapshot_sent` are dropped.
//! - Losing the agent does not stop traffic: served pods keep being served while ztunnel
//!   reconnects.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh::zds::{WorkloadInfo as ZdsWorkloadInfo, ZdsClient, ZdsError, ZdsRequest};
use tracing::{info, warn};

use crate::config::WorkloadInfo;
use crate::netns::{Netns, PodNetns};
use crate::proxy::{LocalWorkload, ProxyInputs, WorkloadProxy};
use crate::readiness::BlockReady;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Serves pods handed over on `uds` until ztunnel drains.
pub async fn run(inputs: Arc<ProxyInputs>, uds: PathBuf, first_snapshot: BlockReady) {
    let mut manager = Manager {
        inputs: inputs.clone(),
        proxies: HashMap::new(),
        first_snapshot: Some(first_snapshot),
    };
    let drain = inputs.shutdown.drain.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let client = ZdsClient::connect(&uds).await?;
            info!(path = %uds.display(), "connected to node agent (ZDS)");
            backoff = Duration::from_millis(100);
            manager.session(client).await
        };
        let result = tokio::select! {
            r = session => r,
            _ = drain.cancelled() => break,
        };
        match result {
            Err(ZdsError::Closed) => warn!("node agent closed the ZDS connection; reconnecting"),
            Err(e) => warn!(error = %e, path = %uds.display(), "ZDS connection failed; retrying"),
            Ok(()) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = drain.cancelled() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    // Draining: stop talking to the agent, but keep the pods' proxies alive until ztunnel
    // exits. Dropping them here would cancel their `removed` tokens and cut every in-flight
    // connection at once, instead of letting them finish within the drain deadline. (Their
    // accept loops already stopped: they follow the drain token.)
    inputs.shutdown.force.cancelled().await;
    drop(manager);
}

struct Manager {
    inputs: Arc<ProxyInputs>,
    proxies: HashMap<String, WorkloadProxy>,
    first_snapshot: Option<BlockReady>,
}

impl Manager {
    async fn session(&mut self, mut client: ZdsClient) -> Result<(), ZdsError> {
        // Pods replayed on this connection; the rest are dropped at snapshot_sent.
        let mut replayed = HashSet::new();
        loop {
            let request = client.recv().await?;
            let outcome = match request {
                ZdsRequest::Add {
                    uid,
                    workload_info,
                    netns,
                } => {
                    replayed.insert(uid.clone());
                    self.add(uid, workload_info, netns)
                }
                ZdsRequest::Keep { uid } => {
                    if self.proxies.contains_key(&uid) {
                        replayed.insert(uid);
                        Ok(())
                    } else {
                        Err(format!("keep for unknown pod {uid}"))
                    }
                }
                ZdsRequest::Del { uid } => {
                    replayed.remove(&uid);
                    self.remove(&uid);
                    Ok(())
                }
                ZdsRequest::SnapshotSent => {
                    let stale: Vec<String> = self
                        .proxies
                        .keys()
                        .filter(|uid| !replayed.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in stale {
                        info!(%uid, "pod not replayed by the node agent; no longer serving it");
                        self.remove(&uid);
                    }
                    // Ready once the first full picture of this node's pods is in place.
                    self.first_snapshot.take();
                    Ok(())
                }
            };
            if let Err(e) = &outcome {
                warn!(error = %e, "ZDS request failed");
            }
            self.inputs
                .metrics
                .set_active_workloads(self.proxies.len() as u64);
            client.ack(outcome.err()).await?;
        }
    }

    fn add(
        &mut self,
        uid: String,
        info: Option<ZdsWorkloadInfo>,
        netns: std::os::fd::OwnedFd,
    ) -> Result<(), String> {
        let info = info.ok_or_else(|| format!("add for pod {uid} without workload info"))?;
        let pod_netns = PodNetns::from_fd(netns).map_err(|e| format!("pod {uid} netns: {e}"))?;
        if let Some(existing) = self.proxies.get(&uid) {
            if existing.workload.netns.inode() == Some(pod_netns.inode()) {
                // A replay after reconnecting: same pod, same namespace; keep serving.
                return Ok(());
            }
            info!(%uid, "pod re-added with a new network namespace; re-binding");
            self.remove(&uid);
        }
        let workload = LocalWorkload::new(
            uid.clone(),
            WorkloadInfo {
                namespace: info.namespace,
                name: info.name,
                service_account: info.service_account,
            },
            &self.inputs.cfg.args.trust_domain,
            Netns::Pod(Arc::new(pod_netns)),
        )?;
        let proxy =
            WorkloadProxy::start(&self.inputs, workload).map_err(|e| format!("pod {uid}: {e}"))?;
        self.proxies.insert(uid, proxy);
        Ok(())
    }

    fn remove(&mut self, uid: &str) {
        let Some(proxy) = self.proxies.remove(uid) else {
            return;
        };
        proxy.stop();
        let identity = proxy.workload.identity.clone();
        info!(%uid, workload = %identity, "stopped serving pod");
        if !self
            .proxies
            .values()
            .any(|p| p.workload.identity == identity)
        {
            self.inputs.tls.forget(&identity);
        }
    }
}
