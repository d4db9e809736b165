//! Start-up readiness: ztunnel reports ready only once every registered start-up task is done.
//!
//! Each task (first xDS sync, first certificate, listeners bound, ...) registers a
//! [`BlockReady`] guard; readiness holds while any guard is alive. Guards release on drop as
//! well as on [`BlockReady::ready`], so a task that fails or is cancelled never leaves the
//! component stuck "not ready" for a reason nobody can see — its failure shows up elsewhere.
//!
//! Invariant: readiness is monotonic per guard; once a guard is released it cannot block again.
//! Pure state, no I/O: `httpserver::serve_readiness` exposes it over HTTP.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

#[cfg(test)]
mod tests;

#[derive(Debug)]
struct State {
    next_id: u64,
    /// Pending tasks by registration id; ids let two tasks share a name.
    pending: BTreeMap<u64, String>,
}

/// Shared readiness state. Cheap to clone: clones see the same tasks.
#[derive(Clone, Debug)]
pub struct Readiness {
    state: Arc<Mutex<State>>,
    started: Instant,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Readiness {
            state: Arc::new(Mutex::new(State {
                next_id: 0,
                pending: BTreeMap::new(),
            })),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding this lock leaves the map consistent (every mutation
        // is a single insert/remove), so recovering from poison is safe and keeps the probe up.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a start-up task named `name`; not ready until the returned guard is released.
    pub fn register(&self, name: &str) -> BlockReady {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.pending.insert(id, name.to_string());
        BlockReady {
            readiness: self.clone(),
            id,
        }
    }

    /// True when no registered task is pending.
    pub fn is_ready(&self) -> bool {
        self.lock().pending.is_empty()
    }

    /// Names of the pending tasks, sorted (duplicates kept, one per guard).
    pub fn pending(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().pending.values().cloned().collect();
        names.sort();
        names
    }

    fn release(&self, id: u64) {
        let (name, left) = {
            let mut s = self.lock();
            let name = s.pending.remove(&id);
            (name, s.pending.len())
        };
        let Some(name) = name else { return };
        let elapsed = self.started.elapsed();
        if left == 0 {
            tracing::info!(task = %name, ?elapsed, "start-up task complete; component is ready");
        } else {
            tracing::info!(task = %name, ?elapsed, pending = left, "start-up task complete");
        }
    }
}

/// Blocks readiness while alive. Release with [`BlockReady::ready`] or by dropping it.
#[derive(Debug)]
#[must_use = "readiness is unblocked as soon as the guard is dropped"]
pub struct BlockReady {
    readiness: Readiness,
    id: u64,
}

impl BlockReady {
    /// Marks this task done (same as dropping the guard, but says so at the call site).
    pub fn ready(self) {}
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        self.readiness.release(self.id);
    }
}
