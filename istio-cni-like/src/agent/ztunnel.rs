//! The agent's side of ZDS: at most one ztunnel connection, shared by everything that needs to
//! tell ztunnel about a pod.
//!
//! Invariants:
//! - One request in flight at a time (the connection sits behind an async mutex), which is what
//!   ZDS requires: acks pair with requests only by order.
//! - A new connection replaces the old one, and before anyone else may use it, every enrolled pod
//!   is replayed on it and `snapshot_sent` is sent, all while holding the lock. A pod being
//!   added concurrently is either in the replay or sent after it, never lost in between.
//! - A connection that failed fatally is dropped at once; ztunnel reconnects and is replayed.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::time::Duration;

use mesh::zds::{WorkloadInfo, ZdsAgentConn, ZdsError};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use tracing::{info, warn};

/// A pod as ztunnel needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZdsPod {
    pub uid: String,
    pub info: WorkloadInfo,
    pub netns: PathBuf,
}

/// Telling ztunnel about a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("ztunnel is not connected to the ZDS socket (waited {0:?})")]
    NotConnected(Duration),
    #[error("ztunnel did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("cannot open pod netns {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Zds(#[from] ZdsError),
}

/// The shared ztunnel connection.
pub struct ZdsHub {
    conn: Mutex<Option<ZdsAgentConn>>,
    connected: watch::Sender<bool>,
}

impl Default for ZdsHub {
    fn default() -> Self {
        ZdsHub {
            conn: Mutex::new(None),
            connected: watch::Sender::new(false),
        }
    }
}

impl ZdsHub {
    /// Whether a ztunnel is connected and replayed.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Sends `add` for `pod`, waiting until `deadline` for a ztunnel to be connected and to ack.
    pub async fn add(&self, pod: &ZdsPod, deadline: Instant) -> Result<(), HubError> {
        let netns = File::open(&pod.netns).map_err(|source| HubError::Netns {
            path: pod.netns.clone(),
            source,
        })?;
        let started = Instant::now();
        let mut rx = self.connected.subscribe();
        loop {
            if tokio::time::timeout_at(deadline, rx.wait_for(|c| *c))
                .await
                .is_err()
            {
                return Err(HubError::NotConnected(started.elapsed()));
            }
            let mut guard = self.conn.lock().await;
            let Some(conn) = guard.as_mut() else {
                continue; // replaced or dropped while we waited for the lock
            };
            let sent = tokio::time::timeout_at(
                deadline,
                conn.send_add(&pod.uid, Some(pod.info.clone()), netns.as_fd()),
            )
            .await;
            return match sent {
                Err(_) => Err(HubError::Timeout(started.elapsed())),
                Ok(Err(e)) => {
                    self.drop_if_fatal(&mut guard, &e);
                    Err(e.into())
                }
                Ok(Ok(())) => Ok(()),
            };
        }
    }

    /// Sends `del` for `uid` if a ztunnel is connected. Without one there is nothing to tell:
    /// the next connection's replay will not include the pod, and `snapshot_sent` drops it.
    pub async fn del(&self, uid: &str, timeout: Duration) -> Result<(), HubError> {
        let mut guard = self.conn.lock().await;
        let Some(conn) = guard.as_mut() else {
            return Ok(());
        };
        match tokio::time::timeout(timeout, conn.send_del(uid)).await {
            Err(_) => Err(HubError::Timeout(timeout)),
            Ok(Err(e)) => {
                self.drop_if_fatal(&mut guard, &e);
                Err(e.into())
            }
            Ok(Ok(())) => Ok(()),
        }
    }

    fn drop_if_fatal(&self, guard: &mut Option<ZdsAgentConn>, e: &ZdsError) {
        if e.is_fatal() {
            warn!(error = %e, "ZDS connection to ztunnel lost; waiting for it to reconnect");
            *guard = None;
            self.connected.send_replace(false);
        }
    }

    /// Installs a freshly accepted connection: replays `pods()` (evaluated under the lock, so it
    /// sees every pod recorded before any other request can go out) and `snapshot_sent`, then
    /// lets others use it. Returns the pods ztunnel rejected (uid, reason), or the error that
    /// made the connection unusable.
    pub async fn replace(
        &self,
        mut conn: ZdsAgentConn,
        pods: impl FnOnce() -> Vec<ZdsPod>,
        timeout: Duration,
    ) -> Result<Vec<(String, String)>, HubError> {
        let mut guard = self.conn.lock().await;
        // The old connection goes first: a ztunnel that reconnected has given up on it anyway.
        if guard.take().is_some() {
            info!("a new ztunnel connection replaces the previous one");
        }
        self.connected.send_replace(false);
        let pods = pods();
        let mut rejected = Vec::new();
        let replay = async {
            for pod in &pods {
                let netns = match File::open(&pod.netns) {
                    Ok(f) => f,
                    Err(e) => {
                        // Not replaying it makes ztunnel drop the pod at snapshot_sent.
                        rejected.push((
                            pod.uid.clone(),
                            format!("cannot open netns {}: {e}", pod.netns.display()),
                        ));
                        continue;
                    }
                };
                match conn
                    .send_add(&pod.uid, Some(pod.info.clone()), netns.as_fd())
                    .await
                {
                    Ok(()) => {}
                    Err(e) if !e.is_fatal() => rejected.push((pod.uid.clone(), e.to_string())),
                    Err(e) => return Err(e),
                }
            }
            conn.send_snapshot_sent().await
        };
        match tokio::time::timeout(timeout, replay).await {
            Err(_) => return Err(HubError::Timeout(timeout)),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(())) => {}
        }
        info!(
            pods = pods.len(),
            rejected = rejected.len(),
            "ztunnel connected; snapshot replayed"
        );
        *guard = Some(conn);
        self.connected.send_replace(true);
        Ok(rejected)
    }
}
