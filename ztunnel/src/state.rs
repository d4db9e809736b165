//! The current configuration snapshot, the local config file watcher, and the publishing side
//! other config sources (the xDS client) use.
//!
//! Invariant: subscribers only ever see a fully validated [`State`]. A file or xDS update that
//! fails to parse or validate is reported (log line naming the field, failure metric,
//! `lastError` in the config dump) and the last good snapshot stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::model::State;
use tokio::sync::watch;
use tracing::{error, info};

/// What the admin config dump shows about config loading.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadStatus {
    /// Incremented each time a new valid config is applied.
    pub version: u64,
    /// The error of the most recent load attempt, if it failed.
    pub last_error: Option<String>,
}

/// Shared handle on the current configuration.
#[derive(Clone)]
pub struct StateHandle {
    rx: watch::Receiver<Arc<State>>,
    status: Arc<Mutex<LoadStatus>>,
}

impl StateHandle {
    /// The snapshot in force now.
    pub fn current(&self) -> Arc<State> {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes on every applied change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.rx.clone()
    }

    pub fn status(&self) -> LoadStatus {
        self.status.lock().expect("status lock").clone()
    }
}

/// The writing side of a [`StateHandle`], for config sources other than the local file (the
/// xDS client). Only ever given validated [`State`]s, so the module invariant holds.
pub struct StatePublisher {
    tx: watch::Sender<Arc<State>>,
    status: Arc<Mutex<LoadStatus>>,
}

impl StatePublisher {
    /// A publisher and its handle, starting from `initial` at version 0 (nothing applied yet:
    /// the xDS client starts empty and readiness waits for its first complete push).
    pub fn new(initial: State) -> (StatePublisher, StateHandle) {
        let (tx, rx) = watch::channel(Arc::new(initial));
        let status = Arc::new(Mutex::new(LoadStatus::default()));
        let handle = StateHandle {
            rx,
            status: status.clone(),
        };
        (StatePublisher { tx, status }, handle)
    }

    /// Makes `state` the snapshot in force, waking every subscriber.
    pub fn publish(&self, state: State) {
        let mut st = self.status.lock().expect("status lock");
        st.version += 1;
        st.last_error = None;
        self.tx.send_replace(Arc::new(state));
    }

    /// Records a rejected update; the snapshot in force does not change.
    pub fn reject(&self, error: String) {
        self.status.lock().expect("status lock").last_error = Some(error);
    }

    /// The snapshot in force now.
    pub fn current(&self) -> Arc<State> {
        self.tx.borrow().clone()
    }
}

/// Loads the file once (start-up fails if it is invalid), then returns the handle and a
/// watcher future that applies later valid changes.
pub fn watch_local_file(
    path: PathBuf,
    poll: Duration,
    on_result: impl Fn(bool) + Send + 'static,
) -> Result<(StateHandle, impl std::future::Future<Output = ()>), String> {
    let contents = read(&path)?;
    let state = mesh::model::local_config::parse(&contents)
        .and_then(|c| c.into_state())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // Only a fingerprint is kept to spot unchanged files: the text itself is about 500 bytes
    // per workload, held for nothing between polls.
    let fingerprint = Fingerprint::of(&contents);
    drop(contents);
    crate::alloc::release_freed_memory();
    let (tx, rx) = watch::channel(Arc::new(state));
    let status = Arc::new(Mutex::new(LoadStatus {
        version: 1,
        last_error: None,
    }));
    let handle = StateHandle {
        rx,
        status: status.clone(),
    };
    let watcher = async move {
        let mut last = fingerprint;
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Ok(now) = read(&path) else {
                // A file being replaced (rename over) can be briefly missing: try next tick.
                continue;
            };
            let fingerprint = Fingerprint::of(&now);
            if fingerprint == last {
                continue;
            }
            let result = mesh::model::local_config::parse(&now).and_then(|c| c.into_state());
            drop(now);
            last = fingerprint;
            let mut st = status.lock().expect("status lock");
            match result {
                Ok(state) => {
                    st.version += 1;
                    st.last_error = None;
                    info!(path = %path.display(), version = st.version, "applied new local config");
                    tx.send_replace(Arc::new(state));
                    on_result(true);
                }
                Err(e) => {
                    let msg = format!("{}: {e}", path.display());
                    error!(error = %msg, "rejected local config; keeping the last good one");
                    st.last_error = Some(msg);
                    on_result(false);
                }
            }
            drop(st);
            // The parse garbage, the text and (unless a reader still holds it) the replaced
            // state are free now; hand their pages back instead of waiting for jemalloc's decay.
            crate::alloc::release_freed_memory();
        }
    };
    Ok((handle, watcher))
}

/// What the watcher remembers of the file it applied last: its length and a SipHash of the
/// text. A change that keeps both is a 2^-64 event, and missing it only delays the reload to
/// the next real change; keeping the text would cost as much memory as the file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fingerprint {
    len: usize,
    hash: u64,
}

impl Fingerprint {
    fn of(text: &str) -> Fingerprint {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        Fingerprint {
            len: text.len(),
            hash: h.finish(),
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}
