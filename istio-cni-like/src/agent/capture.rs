//! The agent's core: per-pod capture state and the operations on it (plugin ADD/DEL/CHECK,
//! reactions to metadata changes, start-up reconciliation, ZDS replay). The health check is in
//! the `health` submodule.
//!
//! Invariants:
//! - Pod operations are serialised by one async lock (`ops`), so two operations never race on
//!   a pod's rules or its ZDS state. The pod table itself sits behind a plain mutex that is never
//!   held across an `.await`, so the ZDS replay and the admin dump can read it at any time.
//! - ADD answers `Captured` only after the rules are installed *and* ztunnel acknowledged the
//!   pod; any failure rolls back what was done, so a pod is never left half-installed and the
//!   runtime's retry starts clean. A pod is recorded (as `Pending`) before its ZDS add is sent,
//!   so a ztunnel reconnecting meanwhile gets it in its replay.
//! - A pod that is already running is never silently released: only an explicit unenrollment
//!   (labels) or DEL removes its rules; missing metadata leaves it as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::redirect::{Family, RedirectConfig};
use mesh::zds::WorkloadInfo;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::enrollment::{decide_with, Enrollment, Pod};
use super::iptables::Iptables;
use super::metrics::Metrics;
use super::rules;
use super::source::ClusterView;
use super::state::{PodState, StateStore};
use super::ztunnel::{ZdsHub, ZdsPod};
use crate::protocol::{Command, PodEvent, Reply};

mod health;

/// How long a DEL or unenrollment waits for ztunnel's ack (it never blocks on a missing one).
const DEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a pod stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Known (the plugin saw it) but not enrolled: no rules, not in ztunnel.
    NotEnrolled,
    /// Enrolled; rules installed, ztunnel not yet confirmed (being added, or waiting for replay).
    Pending,
    /// Rules verified and ztunnel serving it.
    Captured,
    /// The health check found a problem and is repairing it.
    Repairing,
    /// Enrolled but capture could not be confirmed; see the record's problem.
    Failed,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::NotEnrolled => "not_enrolled",
            Health::Pending => "pending",
            Health::Captured => "captured",
            Health::Repairing => "repairing",
            Health::Failed => "failed",
        }
    }

    fn enrolled(self) -> bool {
        self != Health::NotEnrolled
    }
}

struct PodRecord {
    state: PodState,
    health: Health,
    /// The rules installed; `None` when enrolled but the pod's metadata is not known (rules
    /// are then left as they were found until it is).
    config: Option<RedirectConfig>,
    /// Last problem, for the admin dump and CHECK.
    problem: Option<String>,
}

/// Static settings of the core.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub base: RedirectConfig,
    pub families: Vec<Family>,
    pub add_timeout: Duration,
}

/// The agent's state and operations.
pub struct Agent {
    settings: CaptureSettings,
    ipt: Iptables,
    hub: ZdsHub,
    pods: Mutex<BTreeMap<String, PodRecord>>,
    ops: tokio::sync::Mutex<()>,
    view: watch::Receiver<Option<Arc<ClusterView>>>,
    store: StateStore,
    metrics: Arc<Metrics>,
}

fn workload_info(state: &PodState) -> WorkloadInfo {
    WorkloadInfo {
        name: state.name.clone(),
        namespace: state.namespace.clone(),
        service_account: state.service_account.clone(),
    }
}

fn zds_pod(state: &PodState) -> ZdsPod {
    ZdsPod {
        uid: state.uid.clone(),
        info: workload_info(state),
        netns: state.netns.clone(),
    }
}

impl Agent {
    pub fn new(
        settings: CaptureSettings,
        ipt: Iptables,
        view: watch::Receiver<Option<Arc<ClusterView>>>,
        store: StateStore,
        metrics: Arc<Metrics>,
    ) -> Agent {
        Agent {
            settings,
            ipt,
            hub: ZdsHub::default(),
            pods: Mutex::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
            view,
            store,
            metrics,
        }
    }

    pub fn hub(&self) -> &ZdsHub {
        &self.hub
    }

    fn table<R>(&self, f: impl FnOnce(&mut BTreeMap<String, PodRecord>) -> R) -> R {
        // A poisoned lock means a panic elsewhere mid-update; the map is still consistent
        // (every update is a single insert/remove/field write), so keep going.
        let mut guard = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let result = f(&mut guard);
        let mut counts = [0i64; 4];
        for r in guard.values() {
            match r.health {
                Health::Captured => counts[0] += 1,
                Health::Repairing => counts[1] += 1,
                Health::Failed => counts[2] += 1,
                Health::Pending => counts[3] += 1,
                Health::NotEnrolled => {}
            }
        }
        self.metrics.set_pods(counts);
        result
    }

    fn set_health(&self, uid: &str, health: Health, problem: Option<String>) {
        self.table(|t| {
            if let Some(r) = t.get_mut(uid) {
                r.health = health;
                r.problem = problem;
            }
        });
    }

    fn current_view(&self) -> Option<Arc<ClusterView>> {
        self.view.borrow().clone()
    }

    fn decide(
        &self,
        view: Option<&ClusterView>,
        namespace: &str,
        name: &str,
    ) -> (Enrollment, Option<Pod>) {
        let Some(view) = view else {
            return (
                Enrollment::Unknown("the pod source has not synced yet".into()),
                None,
            );
        };
        let Some(pod) = view.pod(namespace, name) else {
            return (
                Enrollment::Unknown(format!(
                    "pod {namespace}/{name} is not known to the pod source yet"
                )),
                None,
            );
        };
        (
            decide_with(&self.settings.base, view.namespace(namespace), pod),
            Some(pod.clone()),
        )
    }

    /// Decides, waiting until `deadline` for the source to know enough when it does not yet.
    async fn decide_waiting(
        &self,
        namespace: &str,
        name: &str,
        deadline: Instant,
    ) -> (Enrollment, Option<Pod>) {
        let mut rx = self.view.clone();
        loop {
            let view = rx.borrow_and_update().clone();
            let decision = self.decide(view.as_deref(), namespace, name);
            if !matches!(decision.0, Enrollment::Unknown(_)) {
                return decision;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return decision,
            }
        }
    }

    /// Answers one plugin request.
    pub async fn handle(&self, event: PodEvent) -> Reply {
        let (command, reply) = match event.command {
            Command::Add => ("ADD", self.add(&event).await),
            Command::Del => ("DEL", self.del(&event).await),
            Command::Check => ("CHECK", self.check(&event).await),
        };
        let outcome = match &reply {
            Reply::Captured => "captured",
            Reply::NotEnrolled => "not_enrolled",
            Reply::Released => "released",
            Reply::Failed { message } => {
                warn!(pod = %format!("{}/{}", event.pod_namespace, event.pod_name), command, %message, "plugin request failed");
                "failed"
            }
        };
        self.metrics.event(command, outcome);
        reply
    }

    async fn add(&self, ev: &PodEvent) -> Reply {
        let failed = |message: String| Reply::Failed { message };
        if ev.pod_name.is_empty() || ev.pod_namespace.is_empty() {
            return failed(
                "ADD without K8S_POD_NAME/K8S_POD_NAMESPACE: cannot decide enrollment".into(),
            );
        }
        if ev.netns.is_empty() {
            return failed("ADD without a network namespace (CNI_NETNS)".into());
        }
        let netns = PathBuf::from(&ev.netns);
        if !netns.exists() {
            return failed(format!(
                "network namespace {} does not exist",
                netns.display()
            ));
        }
        let deadline = Instant::now() + self.settings.add_timeout;
        let (decision, pod) = self
            .decide_waiting(&ev.pod_namespace, &ev.pod_name, deadline)
            .await;
        let _ops = self.ops.lock().await;
        let uid = [
            Some(ev.pod_uid.clone()),
            pod.as_ref().and_then(|p| p.uid.clone()),
        ]
        .into_iter()
        .flatten()
        .find(|u| !u.is_empty())
        .unwrap_or_else(|| format!("{}/{}", ev.pod_namespace, ev.pod_name));
        let state = PodState {
            uid: uid.clone(),
            namespace: ev.pod_namespace.clone(),
            name: ev.pod_name.clone(),
            netns,
            ips: ev.pod_ips.clone(),
            container_id: ev.container_id.clone(),
            service_account: pod
                .as_ref()
                .map(|p| p.service_account.clone())
                .unwrap_or_else(|| "default".into()),
            enrolled: false,
        };
        match decision {
            Enrollment::Invalid(e) => failed(e.to_string()),
            Enrollment::Unknown(why) => failed(format!(
                "{why} (waited {:?}); refusing to start the pod uncaptured",
                self.settings.add_timeout
            )),
            Enrollment::NotEnrolled(reason) => {
                // A previous, captured incarnation of this uid must not stay half-alive.
                self.release(&uid).await;
                // Remembered so a later label change can capture the running pod.
                if let Err(e) = self.store.save(&state) {
                    warn!(error = %e, "cannot persist a not-enrolled pod; it will not be enrollable after an agent restart");
                }
                info!(pod = %format!("{}/{}", state.namespace, state.name), %reason, "pod not enrolled");
                self.table(|t| {
                    t.insert(
                        uid,
                        PodRecord {
                            state,
                            health: Health::NotEnrolled,
                            config: None,
                            problem: None,
                        },
                    )
                });
                Reply::NotEnrolled
            }
            Enrollment::Enrolled(cfg) => match self.capture_new(state, cfg, deadline).await {
                Ok(()) => Reply::Captured,
                Err(message) => failed(message),
            },
        }
    }

    /// ADD of an enrolled pod: all or nothing.
    async fn capture_new(
        &self,
        mut state: PodState,
        cfg: RedirectConfig,
        deadline: Instant,
    ) -> Result<(), String> {
        let uid = state.uid.clone();
        let pod_name = format!("{}/{}", state.namespace, state.name);
        // A different netns under the same uid is a new sandbox; the old one is gone or going.
        let old_netns = self.table(|t| t.get(&uid).map(|r| r.state.netns.clone()));
        if old_netns.is_some_and(|n| n != state.netns) {
            self.release(&uid).await;
        }
        state.enrolled = true;
        self.table(|t| {
            t.insert(
                uid.clone(),
                PodRecord {
                    state: state.clone(),
                    health: Health::Pending,
                    config: Some(cfg.clone()),
                    problem: None,
                },
            )
        });
        let result: Result<(), String> = async {
            rules::apply(&self.ipt, &state.netns, &cfg, &self.settings.families)
                .await
                .map_err(|e| format!("installing redirect rules: {e}"))?;
            self.hub
                .add(&zds_pod(&state), deadline)
                .await
                .map_err(|e| format!("handing the pod to ztunnel: {e}"))?;
            self.store
                .save(&state)
                .map_err(|e| format!("persisting pod state: {e}"))
        }
        .await;
        match result {
            Ok(()) => {
                self.set_health(&uid, Health::Captured, None);
                info!(pod = %pod_name, %uid, "pod captured: rules installed, ztunnel acknowledged");
                Ok(())
            }
            Err(message) => {
                // Roll back everything: the runtime will retry ADD from a clean slate.
                if let Err(e) = self.hub.del(&uid, DEL_TIMEOUT).await {
                    warn!(%uid, error = %e, "rollback: ZDS del failed");
                }
                if let Err(e) =
                    rules::remove(&self.ipt, &state.netns, &cfg, &self.settings.families).await
                {
                    error!(%uid, error = %e, "rollback: removing redirect rules failed");
                }
                let _ = self.store.remove(&uid);
                self.table(|t| t.remove(&uid));
                Err(message)
            }
        }
    }

    /// Takes a pod out of ztunnel and removes its rules and record (DEL, or a replaced sandbox).
    async fn release(&self, uid: &str) -> bool {
        let Some((state, health, config)) =
            self.table(|t| t.remove(uid).map(|r| (r.state, r.health, r.config)))
        else {
            return false;
        };
        if health.enrolled() {
            if let Err(e) = self.hub.del(uid, DEL_TIMEOUT).await {
                warn!(%uid, error = %e, "ZDS del failed; ztunnel drops the pod at its next snapshot");
            }
            if state.netns.exists() {
                let cfg = config.unwrap_or_else(|| self.settings.base.clone());
                if let Err(e) =
                    rules::remove(&self.ipt, &state.netns, &cfg, &self.settings.families).await
                {
                    warn!(%uid, error = %e, "removing redirect rules failed");
                }
            }
        }
        if let Err(e) = self.store.remove(uid) {
            warn!(%uid, error = %e, "cannot remove pod state file");
        }
        true
    }

    /// The uid the agent filed the event's pod under.
    fn find(&self, ev: &PodEvent) -> Option<String> {
        self.table(|t| {
            if !ev.pod_uid.is_empty() && t.contains_key(&ev.pod_uid) {
                return Some(ev.pod_uid.clone());
            }
            t.iter()
                .find(|(_, r)| {
                    (!ev.container_id.is_empty() && r.state.container_id == ev.container_id)
                        || (r.state.namespace == ev.pod_namespace && r.state.name == ev.pod_name)
                })
                .map(|(uid, _)| uid.clone())
        })
    }

    async fn del(&self, ev: &PodEvent) -> Reply {
        let _ops = self.ops.lock().await;
        if let Some(uid) = self.find(ev) {
            self.release(&uid).await;
            info!(pod = %format!("{}/{}", ev.pod_namespace, ev.pod_name), %uid, "pod released");
        }
        Reply::Released
    }

    async fn check(&self, ev: &PodEvent) -> Reply {
        let _ops = self.ops.lock().await;
        let Some(uid) = self.find(ev) else {
            let view = self.current_view();
            return match self
                .decide(view.as_deref(), &ev.pod_namespace, &ev.pod_name)
                .0
            {
                Enrollment::NotEnrolled(_) => Reply::NotEnrolled,
                _ => Reply::Failed {
                    message: format!(
                        "pod {}/{} is not captured: the agent has no record of it",
                        ev.pod_namespace, ev.pod_name
                    ),
                },
            };
        };
        let Some((state, health, config)) = self.table(|t| {
            t.get(&uid)
                .map(|r| (r.state.clone(), r.health, r.config.clone()))
        }) else {
            return Reply::Failed {
                message: format!("pod {uid} vanished"),
            };
        };
        if !health.enrolled() {
            return Reply::NotEnrolled;
        }
        match self.problems(&state.netns, config.as_ref()).await {
            Ok(p) if p.is_empty() => Reply::Captured,
            Ok(p) => Reply::Failed {
                message: format!(
                    "pod {}/{} is not fully captured: {}",
                    state.namespace,
                    state.name,
                    p.join("; ")
                ),
            },
            Err(e) => Reply::Failed { message: e },
        }
    }

    /// Everything wrong with a pod's capture: rule drift (when the config is known) and missing
    /// ztunnel listeners.
    async fn problems(
        &self,
        netns: &Path,
        config: Option<&RedirectConfig>,
    ) -> Result<Vec<String>, String> {
        if !netns.exists() {
            return Err(format!(
                "network namespace {} no longer exists",
                netns.display()
            ));
        }
        let mut problems = Vec::new();
        if let Some(cfg) = config {
            problems = rules::check(&self.ipt, netns, cfg, &self.settings.families)
                .await
                .map_err(|e| format!("reading rules: {e}"))?;
        }
        let missing = super::listeners::missing(netns, &self.listener_ports())
            .await
            .map_err(|e| format!("reading listeners: {e}"))?;
        if !missing.is_empty() {
            problems.push(format!("ztunnel listeners missing on ports {missing:?}"));
        }
        Ok(problems)
    }

    fn listener_ports(&self) -> [u16; 3] {
        let b = &self.settings.base;
        [b.outbound_port, b.inbound_plain_port, b.hbone_port]
    }

    /// Re-decides every known pod against the current view: newly enrolled pods are captured,
    /// unenrolled ones released from ztunnel and their rules removed, changed exclusions
    /// re-applied. Pods whose metadata is missing are left as they are.
    pub async fn reconcile(&self) {
        let _ops = self.ops.lock().await;
        let Some(view) = self.current_view() else {
            return;
        };
        let pods: Vec<(String, PodState, Health, Option<RedirectConfig>)> = self.table(|t| {
            t.iter()
                .map(|(u, r)| (u.clone(), r.state.clone(), r.health, r.config.clone()))
                .collect()
        });
        for (uid, state, health, config) in pods {
            let (decision, _) = self.decide(Some(&view), &state.namespace, &state.name);
            let name = format!("{}/{}", state.namespace, state.name);
            match decision {
                Enrollment::Enrolled(cfg)
                    if !health.enrolled() || config.as_ref() != Some(&cfg) =>
                {
                    info!(pod = %name, %uid, "pod enrolled (or its exclusions changed); capturing");
                    self.capture_live(&uid, state, cfg).await;
                }
                Enrollment::NotEnrolled(reason) if health.enrolled() => {
                    info!(pod = %name, %uid, %reason, "pod unenrolled; releasing it");
                    if let Err(e) = self.hub.del(&uid, DEL_TIMEOUT).await {
                        warn!(%uid, error = %e, "ZDS del failed; ztunnel drops the pod at its next snapshot");
                    }
                    let cfg = config.unwrap_or_else(|| self.settings.base.clone());
                    if state.netns.exists() {
                        if let Err(e) =
                            rules::remove(&self.ipt, &state.netns, &cfg, &self.settings.families)
                                .await
                        {
                            error!(pod = %name, error = %e, "removing redirect rules of an unenrolled pod failed");
                        }
                    }
                    let state = PodState {
                        enrolled: false,
                        ..state
                    };
                    if let Err(e) = self.store.save(&state) {
                        warn!(%uid, error = %e, "cannot persist pod state");
                    }
                    self.table(|t| {
                        if let Some(r) = t.get_mut(&uid) {
                            r.state = state;
                            r.health = Health::NotEnrolled;
                            r.config = None;
                            r.problem = None;
                        }
                    });
                }
                Enrollment::Invalid(e) if health.enrolled() => {
                    error!(pod = %name, error = %e, "pod annotations invalid; keeping its current rules");
                }
                _ => {}
            }
        }
    }

    /// Captures an already running pod (enrollment by label, config change, agent start-up).
    /// Unlike ADD nothing is rolled back on failure: the pod is running, and keeping it captured
    /// (fail closed) is safer than letting it bypass the mesh; the health check retries.
    async fn capture_live(&self, uid: &str, state: PodState, cfg: RedirectConfig) {
        let state = PodState {
            enrolled: true,
            ..state
        };
        if let Err(e) = self.store.save(&state) {
            warn!(%uid, error = %e, "cannot persist pod state");
        }
        self.table(|t| {
            if let Some(r) = t.get_mut(uid) {
                r.state = state.clone();
                r.config = Some(cfg.clone());
                if r.health == Health::NotEnrolled {
                    r.health = Health::Pending;
                }
            }
        });
        if let Err(e) = rules::apply(&self.ipt, &state.netns, &cfg, &self.settings.families).await {
            error!(%uid, error = %e, "installing redirect rules failed");
            self.set_health(
                uid,
                Health::Failed,
                Some(format!("installing redirect rules: {e}")),
            );
            return;
        }
        if !self.hub.is_connected() {
            // The next ztunnel connection replays it.
            self.set_health(
                uid,
                Health::Pending,
                Some("waiting for ztunnel to connect".into()),
            );
            return;
        }
        let deadline = Instant::now() + self.settings.add_timeout;
        match self.hub.add(&zds_pod(&state), deadline).await {
            Ok(()) => self.set_health(uid, Health::Captured, None),
            Err(e) => {
                error!(%uid, error = %e, "ztunnel did not take the pod");
                self.set_health(
                    uid,
                    Health::Failed,
                    Some(format!("handing the pod to ztunnel: {e}")),
                );
            }
        }
    }

    /// Start-up: loads the persisted pods, forgets those whose netns is gone, and reconciles the
    /// rest against the (already synced) source. Enrolled pods get their rules re-applied and
    /// are replayed to ztunnel when it connects.
    pub async fn restore(&self) {
        let (states, errors) = self.store.load_all();
        for e in errors {
            warn!(error = %e, "ignoring unreadable pod state");
        }
        let mut kept = 0;
        for state in states {
            if !state.netns.exists() {
                info!(uid = %state.uid, netns = %state.netns.display(), "forgetting pod whose netns is gone");
                let _ = self.store.remove(&state.uid);
                continue;
            }
            kept += 1;
            let health = if state.enrolled {
                Health::Pending
            } else {
                Health::NotEnrolled
            };
            self.table(|t| {
                t.insert(
                    state.uid.clone(),
                    PodRecord {
                        state,
                        health,
                        config: None,
                        problem: None,
                    },
                )
            });
        }
        info!(pods = kept, "restored pod state");
        self.reconcile().await;
    }

    /// What a (re)connecting ztunnel must be told: every enrolled pod.
    pub fn replay_list(&self) -> Vec<ZdsPod> {
        self.table(|t| {
            t.values()
                .filter(|r| r.health.enrolled())
                .map(|r| zds_pod(&r.state))
                .collect()
        })
    }

    /// After a replay: pods ztunnel took are no longer waiting for it; rejected ones failed.
    pub fn replayed(&self, rejected: &[(String, String)]) {
        self.table(|t| {
            for r in t.values_mut() {
                if let Some((_, why)) = rejected.iter().find(|(u, _)| *u == r.state.uid) {
                    error!(uid = %r.state.uid, error = %why, "ztunnel rejected a replayed pod");
                    r.health = Health::Failed;
                    r.problem = Some(format!("ztunnel rejected the pod: {why}"));
                } else if r.health == Health::Pending {
                    r.health = Health::Captured;
                    r.problem = None;
                }
            }
        });
    }

    /// The admin `/pods` dump.
    pub fn dump(&self) -> serde_json::Value {
        self.table(|t| {
            serde_json::Value::Array(
                t.values()
                    .map(|r| {
                        json!({
                            "uid": r.state.uid,
                            "namespace": r.state.namespace,
                            "name": r.state.name,
                            "netns": r.state.netns,
                            "ips": r.state.ips,
                            "containerId": r.state.container_id,
                            "state": r.health.as_str(),
                            "problem": r.problem,
                            "excludeOutboundPorts": r.config.as_ref().map(|c| c.exclude_outbound_ports.clone()),
                            "excludeInboundPorts": r.config.as_ref().map(|c| c.exclude_inbound_ports.clone()),
                            "excludeOutboundCidrs": r.config.as_ref().map(|c| c.exclude_outbound_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>()),
                        })
                    })
                    .collect(),
            )
        })
    }
}
