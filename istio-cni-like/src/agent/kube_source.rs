//! The Kubernetes source: kube-runtime watchers on the pods of this node
//! (`fieldSelector=spec.nodeName=<node>`) and on all namespaces, mirrored into the same
//! [`ClusterView`] snapshots the folder source publishes.
//!
//! Invariants:
//! - Nothing is published until both watchers finished their first full list: before that the
//!   agent has no basis to decide, and pods wait (fail closed) rather than start uncaptured.
//! - A relist (after `410 Gone`, or on any restart of a watcher) is buffered and replaces the
//!   mirrored set only when complete, so the relisted state wins and nothing flickers out of the
//!   view half-way through a relist (which would release pods from ztunnel).
//! - Errors never end the source: every error is logged and the watcher is retried with
//!   exponential back-off. The last good view stays published meanwhile.
//! - kube-runtime relists on a `410` watch *event* (what API servers send) but, when the watch
//!   request itself is answered HTTP 410, retries the same stale resourceVersion forever; this
//!   module restarts the watcher (so it lists again) in that case.
//!
//! The pure part — [`Mirror`], [`SourceState`] and the object conversions — has no I/O and is
//! unit-tested; the tasks around it only move events.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1 as api;
use kube::runtime::watcher;
use kube::Api;
use mesh_kube::{watch_resource, WatchSettings};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::enrollment::{Namespace, Object, Pod};
use super::source::{ClusterView, PodSource};

#[cfg(test)]
mod tests;

/// Why the Kubernetes client could not be set up.
pub use mesh_kube::ClientError as KubeSourceError;

/// Tuning of [`KubeSource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// This node's name: only pods with this `spec.nodeName` are watched.
    pub node: String,
    /// First retry delay after an error; it doubles on each further error up to `backoff_max`
    /// and resets once the watch delivers events again.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// `timeoutSeconds` of each watch request: the server ends the watch after it and the
    /// watcher re-issues it from the last resourceVersion.
    pub watch_timeout_secs: u32,
}

impl KubeSettings {
    /// client-go's reflector defaults: back-off 800ms doubling to 30s, watches of 290s.
    pub fn new(node: impl Into<String>) -> KubeSettings {
        KubeSettings {
            node: node.into(),
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            watch_timeout_secs: 290,
        }
    }

    fn watch(&self) -> WatchSettings {
        WatchSettings {
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            watch_timeout_secs: self.watch_timeout_secs,
        }
    }
}

/// A Kubernetes client: against `api_url` when given (plain `http://` with no credentials,
/// e.g. `kubectl proxy`, or `https://` verified against the system roots), otherwise from
/// the in-cluster service account or the kubeconfig.
pub async fn client(api_url: Option<&str>) -> Result<kube::Client, KubeSourceError> {
    mesh_kube::client(api_url).await
}

/// Namespaces and this node's pods, watched on the Kubernetes API.
pub struct KubeSource {
    rx: watch::Receiver<Option<Arc<ClusterView>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodSource for KubeSource {
    fn subscribe(&self) -> watch::Receiver<Option<Arc<ClusterView>>> {
        self.rx.clone()
    }
}

/// One watched object's change, keyed and converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<K, V> {
    /// A (re)list starts.
    Init,
    /// An object of the (re)list.
    InitApply(K, V),
    /// The (re)list is complete: its objects replace the mirrored ones.
    InitDone,
    /// Added or modified.
    Apply(K, V),
    Delete(K),
}

/// A mirrored set of objects.
#[derive(Debug, Clone)]
pub struct Mirror<K, V> {
    live: BTreeMap<K, V>,
    /// The objects of a relist in progress.
    relist: Option<BTreeMap<K, V>>,
    synced: bool,
}

impl<K, V> Default for Mirror<K, V> {
    fn default() -> Self {
        Mirror {
            live: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<K: Ord, V: PartialEq> Mirror<K, V> {
    /// Applies one step; returns whether the mirrored set (or its synced flag) changed.
    pub fn apply(&mut self, step: Step<K, V>) -> bool {
        match step {
            Step::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Step::InitApply(k, v) => {
                self.relist.get_or_insert_with(BTreeMap::new).insert(k, v);
                false
            }
            Step::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let changed = !self.synced || fresh != self.live;
                self.live = fresh;
                self.synced = true;
                changed
            }
            Step::Apply(k, v) => {
                if self.live.get(&k) == Some(&v) {
                    false
                } else {
                    self.live.insert(k, v);
                    true
                }
            }
            Step::Delete(k) => self.live.remove(&k).is_some(),
        }
    }

    /// Whether a first full list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn objects(&self) -> impl Iterator<Item = &V> {
        self.live.values()
    }
}

/// Everything the source mirrors.
#[derive(Debug, Clone)]
pub struct SourceState {
    node: String,
    pub pods: Mirror<(String, String), Pod>,
    pub namespaces: Mirror<String, Namespace>,
}

/// A step of either watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Pod(Step<(String, String), Pod>),
    Namespace(Step<String, Namespace>),
}

impl SourceState {
    pub fn new(node: impl Into<String>) -> SourceState {
        SourceState {
            node: node.into(),
            pods: Mirror::default(),
            namespaces: Mirror::default(),
        }
    }

    /// Returns whether the view may have changed.
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Pod(s) => self.pods.apply(s),
            Update::Namespace(s) => self.namespaces.apply(s),
        }
    }

    /// The current view, once both watchers have listed.
    pub fn view(&self) -> Option<ClusterView> {
        if !(self.pods.synced() && self.namespaces.synced()) {
            return None;
        }
        let mut view = ClusterView::default();
        let objects = self
            .namespaces
            .objects()
            .cloned()
            .map(Object::Namespace)
            .chain(self.pods.objects().cloned().map(Object::Pod));
        // The field selector already restricts pods to this node; filtering again keeps a
        // server that ignores it from making this agent capture other nodes' pods.
        view.extend(objects, Some(&self.node));
        Some(view)
    }
}

/// A pod's enrollment-relevant fields, plus a note for every pod IP that does not parse (it
/// is left out rather than the pod: dropping the pod would release it from capture).
pub fn pod_from_api(p: &api::Pod) -> Option<(Pod, Vec<String>)> {
    let meta = &p.metadata;
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let mut notes = Vec::new();
    let mut pod_ips = Vec::new();
    let listed: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|i| i.ip.as_str()).collect())
        .unwrap_or_default();
    let single: Vec<&str> = status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
        .into_iter()
        .collect();
    for ip in if listed.is_empty() { single } else { listed } {
        match ip.trim().parse::<IpAddr>() {
            Ok(a) => pod_ips.push(a),
            Err(_) => notes.push(format!(
                "pod {namespace}/{name}: status.podIPs has {ip:?}, not an IP address; ignoring it"
            )),
        }
    }
    let pod = Pod {
        uid: meta.uid.clone().filter(|u| !u.is_empty()),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        node_name: spec.and_then(|s| s.node_name.clone()),
        service_account: spec
            .and_then(|s| {
                s.service_account_name
                    .clone()
                    .or_else(|| s.service_account.clone())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        pod_ips,
        name,
        namespace,
    };
    Some((pod, notes))
}

/// A namespace's name and labels.
pub fn namespace_from_api(ns: &api::Namespace) -> Option<Namespace> {
    Some(Namespace {
        name: ns.metadata.name.clone().filter(|n| !n.is_empty())?,
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    })
}

fn pod_key(p: &api::Pod) -> Option<(String, String)> {
    let name = p.metadata.name.clone()?;
    let ns = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    Some((ns, name))
}

/// Converts a pod watcher event; `None` for an object with no name (logged).
pub fn pod_step(ev: watcher::Event<api::Pod>) -> Option<Step<(String, String), Pod>> {
    let convert = |p: &api::Pod| {
        let Some((pod, notes)) = pod_from_api(p) else {
            warn!("the API server sent a pod with no metadata.name; ignoring it");
            return None;
        };
        for n in notes {
            warn!("{n}");
        }
        Some(((pod.namespace.clone(), pod.name.clone()), pod))
    };
    Some(match ev {
        watcher::Event::Init => Step::Init,
        watcher::Event::InitDone => Step::InitDone,
        watcher::Event::InitApply(p) => {
            let (k, v) = convert(&p)?;
            Step::InitApply(k, v)
        }
        watcher::Event::Apply(p) => {
            let (k, v) = convert(&p)?;
            Step::Apply(k, v)
        }
        watcher::Event::Delete(p) => Step::Delete(pod_key(&p)?),
    })
}

/// Converts a namespace watcher event; `None` for an object with no name.
pub fn namespace_step(ev: watcher::Event<api::Namespace>) -> Option<Step<String, Namespace>> {
    Some(match ev {
        watcher::Event::Init => Step::Init,
        watcher::Event::InitDone => Step::InitDone,
        watcher::Event::InitApply(ns) => {
            let ns = namespace_from_api(&ns)?;
            Step::InitApply(ns.name.clone(), ns)
        }
        watcher::Event::Apply(ns) => {
            let ns = namespace_from_api(&ns)?;
            Step::Apply(ns.name.clone(), ns)
        }
        watcher::Event::Delete(ns) => Step::Delete(ns.metadata.name.clone()?),
    })
}

impl KubeSource {
    /// Starts watching on the current tokio runtime.
    pub fn start(client: kube::Client, settings: KubeSettings) -> KubeSource {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(run(client, settings, tx));
        KubeSource {
            rx,
            task: task.abort_handle(),
        }
    }
}

async fn run(
    client: kube::Client,
    settings: KubeSettings,
    tx: watch::Sender<Option<Arc<ClusterView>>>,
) {
    let base = watcher::Config::default();
    let pod_config = base
        .clone()
        .fields(&format!("spec.nodeName={}", settings.node));
    let (pods_tx, mut pods_rx) = mpsc::channel(256);
    let (ns_tx, mut ns_rx) = mpsc::channel(256);
    // Dropped (and so aborted) with this task when the source is dropped.
    let mut watchers = tokio::task::JoinSet::new();
    watchers.spawn(watch_resource(
        Api::<api::Pod>::all(client.clone()),
        pod_config,
        settings.watch(),
        "pods",
        pods_tx,
        Some,
    ));
    watchers.spawn(watch_resource(
        Api::<api::Namespace>::all(client),
        base,
        settings.watch(),
        "namespaces",
        ns_tx,
        Some,
    ));
    let mut state = SourceState::new(settings.node.clone());
    let mut announced = false;
    loop {
        let update = tokio::select! {
            Some(ev) = pods_rx.recv() => pod_step(ev).map(Update::Pod),
            Some(ev) = ns_rx.recv() => namespace_step(ev).map(Update::Namespace),
            else => return,
        };
        let mut changed = update.is_some_and(|u| state.apply(u));
        // Fold in whatever else is queued, so a relist publishes one view, not one per object.
        while let Ok(ev) = pods_rx.try_recv() {
            changed |= pod_step(ev).is_some_and(|s| state.apply(Update::Pod(s)));
        }
        while let Ok(ev) = ns_rx.try_recv() {
            changed |= namespace_step(ev).is_some_and(|s| state.apply(Update::Namespace(s)));
        }
        if !changed {
            continue;
        }
        let Some(view) = state.view() else { continue };
        if !announced {
            info!(
                node = %settings.node,
                pods = view.pods.len(),
                namespaces = view.namespaces.len(),
                "Kubernetes pods and namespaces listed"
            );
            announced = true;
        }
        tx.send_if_modified(|cur| {
            if cur.as_deref() == Some(&view) {
                false
            } else {
                *cur = Some(Arc::new(view));
                true
            }
        });
    }
}
