//! L4 authorization at the destination, and re-checking open connections on policy change.
//!
//! Evaluation itself is the pure `mesh::authz` evaluator; this module only gathers the
//! inputs (the destination workload's policies and effective mTLS mode) and remembers the
//! open inbound connections so a policy change can close the ones it now denies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use mesh::authz::{check_mtls, effective_mtls_mode, evaluate, ConnInfo, Denied, Permit};
use mesh::model::{State, Workload};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;

/// Decides whether `conn` to `dst` is allowed under `state`.
pub fn authorize(
    cfg: &Config,
    state: &State,
    dst: &Workload,
    conn: &ConnInfo,
) -> Result<Permit, Denied> {
    let mode = effective_mtls_mode(
        cfg.args.default_mtls,
        &cfg.args.root_namespace,
        state.peer_authentications(),
        &dst.namespace,
        conn.dst_port,
    );
    check_mtls(mode, conn)?;
    let decision = evaluate(state.policies_for(dst), conn);
    for policy in &decision.dry_run_matches {
        info!(%policy, src = ?conn.src_identity, dst = %format!("{}:{}", conn.dst_ip, conn.dst_port), "dry-run policy matched");
    }
    decision.result
}

/// A bounded label value for the denial metric.
pub fn denial_reason(denied: &Denied) -> &'static str {
    match denied {
        Denied::DenyPolicy { .. } => "deny_policy",
        Denied::NoAllowMatch => "no_allow_match",
        Denied::MtlsRequired => "mtls_required",
    }
}

struct Tracked {
    dst_namespace: String,
    dst_name: String,
    conn: ConnInfo,
    close: CancellationToken,
}

/// The open inbound connections, by destination, for re-authorization.
#[derive(Default)]
pub struct ConnTracker {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Tracked>>,
}

/// Keeps a connection registered while alive; `closed()` resolves when a policy change denies it.
pub struct TrackGuard<'a> {
    tracker: &'a ConnTracker,
    id: u64,
    close: CancellationToken,
}

impl TrackGuard<'_> {
    pub async fn closed(&self) {
        self.close.cancelled().await
    }
}

impl Drop for TrackGuard<'_> {
    fn drop(&mut self) {
        self.tracker
            .open
            .lock()
            .expect("conn tracker lock")
            .remove(&self.id);
    }
}

impl ConnTracker {
    pub fn track(&self, dst: &Workload, conn: ConnInfo) -> TrackGuard<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        self.open.lock().expect("conn tracker lock").insert(
            id,
            Tracked {
                dst_namespace: dst.namespace.clone(),
                dst_name: dst.name.clone(),
                conn,
                close: close.clone(),
            },
        );
        TrackGuard {
            tracker: self,
            id,
            close,
        }
    }

    /// Re-evaluates every open connection under `state`; closes and counts those now denied
    /// (including those whose destination workload is gone from the config).
    pub fn recheck(&self, cfg: &Config, state: &State) -> usize {
        let open = self.open.lock().expect("conn tracker lock");
        let mut closed = 0;
        for t in open.values() {
            let verdict = match state.workload_by_name(&t.dst_namespace, &t.dst_name) {
                Some(dst) => authorize(cfg, state, dst, &t.conn).map(|_| ()),
                None => Err(Denied::NoAllowMatch),
            };
            if let Err(reason) = verdict {
                warn!(src = ?t.conn.src_identity, dst = %format!("{}/{}", t.dst_namespace, t.dst_name), %reason, "closing connection denied by new policy");
                t.close.cancel();
                closed += 1;
            }
        }
        closed
    }

    pub fn len(&self) -> usize {
        self.open.lock().expect("conn tracker lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
