//! The Kubernetes config source (`--kube`): kube-runtime watchers on Namespaces, Pods,
//! Services, EndpointSlices and Istio's AuthorizationPolicies and PeerAuthentications, mirrored
//! into one store per kind and translated into the same `State` channel the folder source feeds.
//!
//! Every kind is watched as a [`DynamicObject`] and converted by serialising it back to JSON and
//! feeding it to the folder source's parser ([`parse_documents`]): one conversion path for both
//! sources, so a field means the same in a file and in the cluster, and the policy kinds keep
//! the unknown fields translation needs to fail safe (a typed client would drop them).
//!
//! Invariants:
//! - Nothing is published until every kind's first list completed: a partial mesh (pods without
//!   their policies, say) would open connections a complete one denies.
//! - A relist (after `410 Gone`, or any watcher restart) is buffered and replaces a kind's store
//!   only when complete, so objects do not flicker out of the mesh half-way through it.
//! - Changes are debounced (default 100 ms): a relist or a rollout publishes one state, not one
//!   per object.
//! - Errors never end the source: each is logged and the watcher retried with back-off; the last
//!   published state stays in force meanwhile.
//! - kube-runtime relists on a `410` watch *event* but, when the watch request itself is
//!   answered HTTP 410, retries the same expired resourceVersion forever; the watcher is
//!   restarted (so it lists again) in that case.
//!
//! The store ([`Stores`]) and the conversion ([`convert`]) are pure and unit-tested; the tasks
//! around them only move events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::Api;
use mesh::model::State;
use mesh_kube::{watch_resource, WatchSettings};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::objects::{parse_documents, Object, ObjectError, ObjectRef};
use crate::problems::ProblemSet;
use crate::translate::{translate, Problem, Severity, StateInputs, TranslateConfig, Translation};

#[cfg(test)]
mod tests;

/// Why the Kubernetes client could not be set up.
pub use mesh_kube::ClientError as KubeSourceError;

/// A client for `api_url` when given (plain `http://` without credentials, as `kubectl proxy`
/// or a test's fake API server serve), else from the in-cluster service account or kubeconfig.
pub async fn client(api_url: Option<&str>) -> Result<kube::Client, KubeSourceError> {
    mesh_kube::client(api_url).await
}

/// One watched API resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchedKind {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl WatchedKind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub(crate) fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_owned(),
            version: self.version.to_owned(),
            api_version: self.api_version(),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }
}

/// What the source watches, in the order objects are handed to translation.
pub const WATCHED_KINDS: [WatchedKind; 6] = [
    WatchedKind {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
    },
    WatchedKind {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
    },
    WatchedKind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
    },
    WatchedKind {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
    },
    WatchedKind {
        group: "security.istio.io",
        version: "v1",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
    },
    WatchedKind {
        group: "security.istio.io",
        version: "v1",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
    },
];

/// Tuning of [`KubeSource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// How long after a change the source waits for more before translating.
    pub debounce: Duration,
    /// First retry delay after an error; doubles per further error up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// `timeoutSeconds` of each watch request.
    pub watch_timeout_secs: u32,
}

impl Default for KubeSettings {
    /// client-go's reflector defaults (back-off 800 ms to 30 s, watches of 290 s) and Istio's
    /// 100 ms debounce.
    fn default() -> Self {
        KubeSettings {
            debounce: Duration::from_millis(100),
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            watch_timeout_secs: 290,
        }
    }
}

/// An object's store key: namespace (`""` for cluster-scoped kinds) and name.
pub type Key = (String, String);
/// A converted object, or the problem that kept it out of the mesh (logged with the rest).
pub type Entry = Result<Object, Problem>;

/// One watched object's change, keyed and converted.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A (re)list starts.
    Init,
    /// An object of the (re)list.
    InitApply(Key, Entry),
    /// The (re)list is complete: its objects replace the stored ones.
    InitDone,
    /// Added or modified.
    Apply(Key, Entry),
    Delete(Key),
}

#[derive(Debug, Clone, Default)]
struct KindStore {
    live: BTreeMap<Key, Entry>,
    /// The objects of a relist in progress.
    relist: Option<BTreeMap<Key, Entry>>,
    synced: bool,
}

impl KindStore {
    fn apply(&mut self, step: Step) -> bool {
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
            // Status-only updates (a new resourceVersion, a container restart) convert to an
            // equal entry and change nothing.
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
}

/// One store per watched kind.
#[derive(Debug, Clone)]
pub struct Stores {
    kinds: Vec<KindStore>,
}

impl Stores {
    /// Stores for `kinds` watched kinds (indexes `0..kinds`).
    pub fn new(kinds: usize) -> Stores {
        Stores {
            kinds: vec![KindStore::default(); kinds],
        }
    }

    /// Applies one step to kind `kind`; returns whether the stored objects (or the kind's
    /// synced flag) changed. An out-of-range kind changes nothing.
    pub fn apply(&mut self, kind: usize, step: Step) -> bool {
        self.kinds.get_mut(kind).is_some_and(|k| k.apply(step))
    }

    /// Whether every kind has completed a first full list.
    pub fn synced(&self) -> bool {
        self.kinds.iter().all(|k| k.synced)
    }

    /// Every stored object (kinds in order, then namespace and name) and every conversion
    /// problem.
    pub fn snapshot(&self) -> (Vec<Object>, Vec<Problem>) {
        let mut objects = Vec::new();
        let mut problems = Vec::new();
        for entry in self.kinds.iter().flat_map(|k| k.live.values()) {
            match entry {
                Ok(o) => objects.push(o.clone()),
                Err(p) => problems.push(p.clone()),
            }
        }
        (objects, problems)
    }
}

/// Translates a snapshot: conversion problems first, then translation's own.
pub fn translate_snapshot(
    objects: &[Object],
    mut problems: Vec<Problem>,
    cfg: &TranslateConfig,
) -> Translation {
    let mut translation = translate(objects, cfg);
    problems.append(&mut translation.problems);
    translation.problems = problems;
    translation
}

/// Converts a watched object; `None` when it has no name (the API server never sends one, and
/// nothing could key or delete it).
pub fn convert(kind: &WatchedKind, obj: &DynamicObject) -> Option<(Key, Entry)> {
    let name = obj.metadata.name.clone().filter(|n| !n.is_empty())?;
    let key = (obj.metadata.namespace.clone().unwrap_or_default(), name);
    let fallback = ObjectRef {
        kind: kind.kind.to_owned(),
        namespace: key.0.clone(),
        name: key.1.clone(),
    };
    Some((key, parse_object(kind, obj, fallback)))
}

// An `Entry` is stored, not propagated with `?`, and its object side is as large as the problem.
#[allow(clippy::result_large_err)]
fn parse_object(kind: &WatchedKind, obj: &DynamicObject, object: ObjectRef) -> Entry {
    let problem = |message: String| Problem {
        severity: Severity::Error,
        object: object.clone(),
        field: String::new(),
        message,
    };
    let mut value = serde_json::to_value(obj)
        .map_err(|e| problem(format!("cannot re-serialise the API object: {e}")))?;
    if let Some(map) = value.as_object_mut() {
        // List items come without apiVersion/kind; the parser needs them to pick the type.
        map.insert("apiVersion".into(), kind.api_version().into());
        map.insert("kind".into(), kind.kind.into());
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            // Often the bulk of an object, and never read.
            meta.remove("managedFields");
        }
    }
    // JSON is YAML: the folder source's parser reads it unchanged, on one line (so no `---`
    // line can split it).
    match parse_documents(&value.to_string()).into_iter().next() {
        Some(Ok(o)) => Ok(o),
        Some(Err(e)) => Err(problem_of(&e)),
        None => Err(problem("empty object".into())),
    }
}

/// A parse error as a problem, without the document/line position (meaningless here).
fn problem_of(e: &ObjectError) -> Problem {
    let (field, message) = match &e.reason {
        crate::objects::ObjectErrorKind::Field { path, message } => (path.clone(), message.clone()),
        other => (String::new(), other.to_string()),
    };
    Problem {
        severity: if e.is_unsupported_kind() {
            Severity::Warning
        } else {
            Severity::Error
        },
        object: e.object.clone(),
        field,
        message,
    }
}

/// Converts a watcher event of kind `kind`; `None` for an object with no name (logged).
pub fn step(kind: &WatchedKind, ev: watcher::Event<DynamicObject>) -> Option<Step> {
    let converted = |o: &DynamicObject| {
        let c = convert(kind, o);
        if c.is_none() {
            warn!(
                kind = kind.kind,
                "the API server sent an object with no metadata.name; ignoring it"
            );
        }
        c
    };
    Some(match ev {
        watcher::Event::Init => Step::Init,
        watcher::Event::InitDone => Step::InitDone,
        watcher::Event::InitApply(o) => {
            let (k, v) = converted(&o)?;
            Step::InitApply(k, v)
        }
        watcher::Event::Apply(o) => {
            let (k, v) = converted(&o)?;
            Step::Apply(k, v)
        }
        watcher::Event::Delete(o) => {
            let (k, _) = converted(&o)?;
            Step::Delete(k)
        }
    })
}

/// Runs the watcher of `WATCHED_KINDS[index]` until `out` closes.
async fn watch_kind(
    client: kube::Client,
    index: usize,
    settings: KubeSettings,
    out: mpsc::Sender<(usize, Step)>,
) {
    let Some(kind) = WATCHED_KINDS.get(index) else {
        return;
    };
    let api = Api::<DynamicObject>::all_with(client, &kind.api_resource());
    let watch = WatchSettings {
        backoff_min: settings.backoff_min,
        backoff_max: settings.backoff_max,
        watch_timeout_secs: settings.watch_timeout_secs,
    };
    let convert = |ev| step(kind, ev).map(|s| (index, s));
    watch_resource(
        api,
        watcher::Config::default(),
        watch,
        kind.plural,
        out,
        convert,
    )
    .await;
}

/// A running Kubernetes source; dropping it stops every watch (the last state stays on the
/// channel).
pub struct KubeSource {
    task: tokio::task::AbortHandle,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeSource {
    /// Starts watching on the current tokio runtime. The channel starts with an empty state
    /// *marked seen*: its first change is the first complete translation, so a caller waits
    /// for it with `changed()` before serving.
    pub fn start(
        client: kube::Client,
        cfg: TranslateConfig,
        settings: KubeSettings,
    ) -> (KubeSource, watch::Receiver<Arc<State>>) {
        Self::start_reporting(client, cfg, settings, ProblemSet::default())
    }

    /// [`start`](Self::start), keeping `problems` current with every translation.
    pub fn start_reporting(
        client: kube::Client,
        cfg: TranslateConfig,
        settings: KubeSettings,
        problems: ProblemSet,
    ) -> (KubeSource, watch::Receiver<Arc<State>>) {
        let (tx, rx) = watch::channel(Arc::new(State::default()));
        let task = tokio::spawn(run(client, cfg, settings, tx, problems));
        (
            KubeSource {
                task: task.abort_handle(),
            },
            rx,
        )
    }
}

async fn run(
    client: kube::Client,
    cfg: TranslateConfig,
    settings: KubeSettings,
    tx: watch::Sender<Arc<State>>,
    problems: ProblemSet,
) {
    let (events_tx, mut events) = mpsc::channel(512);
    // Dropped (and so aborted) with this task when the source is dropped.
    let mut watchers = tokio::task::JoinSet::new();
    for index in 0..WATCHED_KINDS.len() {
        watchers.spawn(watch_kind(
            client.clone(),
            index,
            settings.clone(),
            events_tx.clone(),
        ));
    }
    drop(events_tx);
    let mut stores = Stores::new(WATCHED_KINDS.len());
    let mut due: Option<Instant> = None;
    let mut published: Option<StateInputs> = None;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some((kind, s)) = ev else { return };
                if stores.apply(kind, s) && stores.synced() && due.is_none() {
                    due = Some(Instant::now() + settings.debounce);
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                due = None;
                if !publish(&stores, &cfg, &tx, &mut published, &problems).await {
                    return;
                }
            }
        }
    }
}

/// Translates the stores and publishes the state if it differs from the last one; `false`
/// when nobody listens any more.
async fn publish(
    stores: &Stores,
    cfg: &TranslateConfig,
    tx: &watch::Sender<Arc<State>>,
    published: &mut Option<StateInputs>,
    problems_out: &ProblemSet,
) -> bool {
    let (objects, problems) = stores.snapshot();
    let c = cfg.clone();
    // Translating a large cluster is CPU work; keep it off the server's threads.
    let translation =
        match tokio::task::spawn_blocking(move || translate_snapshot(&objects, problems, &c)).await
        {
            Ok(t) => t,
            Err(e) => {
                error!(error = %e, "config translation task failed; keeping the previous config");
                return true;
            }
        };
    // Logged once while it persists: unlike a folder, a cluster changes every few seconds, and
    // re-logging every broken object on each pod update would bury new problems.
    problems_out.update("kubernetes", translation.problems.iter().cloned());
    if published.as_ref() == Some(&translation.state_inputs) {
        return true;
    }
    let inputs = translation.state_inputs.clone();
    let (workloads, policies) = (inputs.workloads.len(), inputs.policies.len());
    match translation.into_state() {
        Ok(state) => {
            info!(
                source = "kubernetes",
                workloads, policies, "config translated"
            );
            *published = Some(inputs);
            tx.send(Arc::new(state)).is_ok()
        }
        Err(e) => {
            error!(source = "kubernetes", error = %e,
                "translated config is inconsistent; keeping the previous config");
            true
        }
    }
}
