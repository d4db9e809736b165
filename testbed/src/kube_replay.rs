//! A scripted fake Kubernetes API server for tests: plain HTTP/1.1 on `127.0.0.1`, answering
//! list, get and watch requests with the real API shapes, so real clients (kube-rs, client-go)
//! can be pointed at it (`kube::Config::new(replay.url().parse()?)`).
//!
//! What it models, because watch clients depend on it:
//! - One cluster-wide `resourceVersion` counter, bumped by every write (as etcd's revision is),
//!   stamped into `metadata.resourceVersion` of the object written and returned as the list's
//!   `metadata.resourceVersion`.
//! - A change history: a watch from resourceVersion N first receives every change after N that
//!   its path and selectors match, then live changes. A client that reconnects after a dropped
//!   connection therefore misses nothing, as with a real API server's watch cache.
//! - Compaction: after [`KubeReplay::expire`], a watch from an older resourceVersion is answered
//!   `410 Gone` — as an `ERROR` watch event (what the API server does) or as an HTTP status —
//!   which forces the client to list again.
//! - Selectors: equality field selectors on any dotted path (`spec.nodeName=n1`), equality and
//!   existence label selectors; an object leaving a watch's selector is sent as `DELETED`.
//! - Paging: `limit` and `continue` over a snapshot of the list taken on the first page.
//!
//! Scripting: [`apply`](KubeReplay::apply)/[`delete`](KubeReplay::delete) write and notify;
//! [`apply_unseen`](KubeReplay::apply_unseen)/[`delete_unseen`](KubeReplay::delete_unseen)
//! write without telling any watch (a change the watch cache lost: only a relist sees it);
//! [`bookmark`](KubeReplay::bookmark), [`expire`](KubeReplay::expire),
//! [`drop_watches`](KubeReplay::drop_watches) (connection cut mid-stream, no final chunk),
//! [`end_watches`](KubeReplay::end_watches) (clean end, as on `timeoutSeconds`) and
//! [`fail_next`](KubeReplay::fail_next) (error statuses). Every request is recorded for
//! assertions, and [`wait_until`](KubeReplay::wait_until) lets a test wait for client activity
//! without sleeping.
//!
//! Client writes (see `writes.rs`): create (`201`, or `409 AlreadyExists`), replace (`409
//! Conflict` from a stale resourceVersion), JSON merge patch, simplified server-side apply and
//! delete, each reaching watches like a scripted write; `POST tokenreviews` answers from tokens
//! scripted with [`review_token`](KubeReplay::review_token).
//!
//! Not modelled: streaming lists (`sendInitialEvents`, answered 400), set-based label
//! selectors, subresources (`/status`), field ownership in server-side apply, authentication
//! of the client itself, TLS.

mod objects;
pub mod query;
mod server;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;
mod writes;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

pub use objects::*;
use query::Selector;

/// A scripting call that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("object has no apiVersion/kind the replay server serves: {0}")]
    UnknownKind(String),
    #[error("object has no metadata.name")]
    MissingName,
    #[error("{kind} {namespace}/{name} does not exist")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
}

/// How a watch from a compacted resourceVersion is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// HTTP 200 and one `ERROR` event carrying a `Status` with code 410, then the stream ends:
    /// what the API server does.
    ErrorEvent,
    /// HTTP 410 with a `Status` body.
    HttpStatus,
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    /// The resource plural the path names, when it names one.
    pub plural: Option<String>,
    pub watch: bool,
    /// HTTP status of the answer (a watch refused with an `ERROR` event is still 200).
    pub status: u16,
    /// The JSON body of a write, as the client sent it.
    pub body: Option<Value>,
}

impl RecordedRequest {
    /// A list (not watch) of `resource`.
    pub fn is_list(&self, resource: &Resource) -> bool {
        !self.watch && self.method == "GET" && self.plural.as_deref() == Some(resource.plural)
    }

    /// A watch of `resource`.
    pub fn is_watch(&self, resource: &Resource) -> bool {
        self.watch && self.method == "GET" && self.plural.as_deref() == Some(resource.plural)
    }

    /// The `resourceVersion` parameter, `""` when absent.
    pub fn resource_version(&self) -> &str {
        self.query.get("resourceVersion").map_or("", String::as_str)
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// What a test can wait on.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    pub requests: Vec<RecordedRequest>,
    /// Open watch connections per resource plural.
    pub open_watches: BTreeMap<String, usize>,
}

impl Activity {
    pub fn watches(&self, resource: &Resource) -> usize {
        self.open_watches.get(resource.plural).copied().unwrap_or(0)
    }
}

/// Stored objects are keyed by (resource index, namespace or `""`, name).
type Key = (usize, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches see it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: usize,
    kind: ChangeKind,
    /// The object before the change (for selector transitions).
    old: Option<Value>,
    /// The object after the change; for a delete, the last state with the deletion's RV.
    new: Value,
}

enum WatchMsg {
    Line(Bytes),
    /// End the stream cleanly.
    End,
    /// Abort the connection mid-stream.
    Cut,
}

struct WatchReg {
    resource: usize,
    namespace: Option<String>,
    fields: Selector,
    labels: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

struct FailRule {
    plural: String,
    remaining: usize,
    code: u16,
}

struct State {
    rv: u64,
    /// Watches from a resourceVersion below this are too old (compacted).
    floor: u64,
    gone: Gone,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    watches: Vec<WatchReg>,
    requests: Vec<RecordedRequest>,
    /// Remaining items of paged lists, by continue token.
    pages: HashMap<String, (u64, Vec<Value>)>,
    next_page: u64,
    failures: Vec<FailRule>,
    /// What a TokenReview of each bearer token answers.
    tokens: HashMap<String, TokenIdentity>,
}

struct Shared {
    resources: Vec<Resource>,
    state: Mutex<State>,
    /// Bumped on every request and watch registration, to wake [`KubeReplay::wait_until`].
    activity: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a test assertion in a callback) must not wedge the
        // server for the rest of the test's output.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poke(&self) {
        self.activity.send_modify(|n| *n += 1);
    }

    fn resource_of(&self, obj: &Value) -> Result<usize, ReplayError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        self.resources
            .iter()
            .position(|r| r.kind == kind && r.api_version() == api_version)
            .ok_or_else(|| ReplayError::UnknownKind(format!("{api_version} {kind}")))
    }

    fn resource_by_kind(&self, kind: &str) -> Result<usize, ReplayError> {
        self.resources
            .iter()
            .position(|r| r.kind == kind)
            .ok_or_else(|| ReplayError::UnknownKind(kind.to_owned()))
    }
}

/// The fake API server. Dropping it stops serving and cuts every connection.
pub struct KubeReplay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for KubeReplay {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl KubeReplay {
    /// Serves [`DEFAULT_RESOURCES`] on an ephemeral port of 127.0.0.1.
    pub async fn start() -> std::io::Result<KubeReplay> {
        KubeReplay::start_with(DEFAULT_RESOURCES.to_vec()).await
    }

    /// Serves `resources` on an ephemeral port of 127.0.0.1.
    pub async fn start_with(resources: Vec<Resource>) -> std::io::Result<KubeReplay> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        KubeReplay::serve(listener, resources)
    }

    /// Serves `resources` on a listener bound elsewhere — e.g. inside a test-bed node's netns
    /// (`node.netns.run(|| std::net::TcpListener::bind("127.0.0.1:0"))`), where a process of
    /// that node can reach it. Needs a tokio runtime.
    pub fn start_on(
        listener: std::net::TcpListener,
        resources: Vec<Resource>,
    ) -> std::io::Result<KubeReplay> {
        listener.set_nonblocking(true)?;
        KubeReplay::serve(tokio::net::TcpListener::from_std(listener)?, resources)
    }

    fn serve(
        listener: tokio::net::TcpListener,
        resources: Vec<Resource>,
    ) -> std::io::Result<KubeReplay> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            resources,
            state: Mutex::new(State {
                rv: 1,
                floor: 0,
                gone: Gone::ErrorEvent,
                objects: BTreeMap::new(),
                history: Vec::new(),
                watches: Vec::new(),
                requests: Vec::new(),
                pages: HashMap::new(),
                next_page: 0,
                failures: Vec::new(),
                tokens: HashMap::new(),
            }),
            activity: watch::Sender::new(0),
        });
        let server = tokio::spawn(server::serve(listener, shared.clone()));
        Ok(KubeReplay {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current cluster resourceVersion (that of the latest write).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Creates or replaces an object (`apiVersion`, `kind`, `metadata.name` required;
    /// `metadata.namespace` defaults to `default` for namespaced kinds) and sends `ADDED` or
    /// `MODIFIED` to the watches that select it. Returns the object as stored.
    pub fn apply(&self, obj: Value) -> Result<Value, ReplayError> {
        self.write(obj, true)
    }

    /// Like [`apply`](Self::apply), but no watch is told, now or on a later re-watch: only a
    /// list shows the change. Follow it with [`expire`](Self::expire) to make clients relist.
    pub fn apply_unseen(&self, obj: Value) -> Result<Value, ReplayError> {
        self.write(obj, false)
    }

    /// Deletes an object (namespace `""` for cluster-scoped kinds) and sends `DELETED` with its
    /// last state. Returns that state.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ReplayError> {
        self.remove(kind, namespace, name, true)
    }

    /// Deletes without telling any watch (see [`apply_unseen`](Self::apply_unseen)).
    pub fn delete_unseen(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ReplayError> {
        self.remove(kind, namespace, name, false)
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = self.shared.resource_by_kind(kind).ok()?;
        let st = self.shared.lock();
        st.objects
            .get(&(res, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The stored object of `resource`, if any (for kinds served under two groups, such as
    /// `Event`, where [`get`](Self::get) would pick the first).
    pub fn get_in(&self, resource: &Resource, namespace: &str, name: &str) -> Option<Value> {
        let res = self.shared.resources.iter().position(|r| r == resource)?;
        let st = self.shared.lock();
        st.objects
            .get(&(res, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of `resource`, in (namespace, name) order.
    pub fn objects(&self, resource: &Resource) -> Vec<Value> {
        let Some(res) = self.shared.resources.iter().position(|r| r == resource) else {
            return Vec::new();
        };
        let st = self.shared.lock();
        st.objects
            .iter()
            .filter(|((r, _, _), _)| *r == res)
            .map(|(_, obj)| obj.clone())
            .collect()
    }

    /// Makes TokenReviews of `token` answer `identity` (see [`service_account_token`]); any
    /// other token is reviewed as invalid.
    pub fn review_token(&self, token: &str, identity: TokenIdentity) {
        self.shared.lock().tokens.insert(token.to_owned(), identity);
    }

    /// Sends a `BOOKMARK` with the current resourceVersion to every open watch that allowed
    /// bookmarks.
    pub fn bookmark(&self) {
        let mut st = self.shared.lock();
        let rv = st.rv;
        let resources = &self.shared.resources;
        st.watches.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let line = line(&watch_event(
                "BOOKMARK",
                &bookmark(&resources[w.resource], rv),
            ));
            w.tx.send(WatchMsg::Line(line)).is_ok()
        });
    }

    /// Compacts history: every resourceVersion handed out so far becomes too old to watch from.
    /// Open watches are refused the way `how` says (an `ERROR` 410 event, or — for
    /// [`Gone::HttpStatus`] — a clean end followed by HTTP 410 on the re-watch), and so is every
    /// later watch from an old version, until clients list again.
    pub fn expire(&self, how: Gone) {
        let mut st = self.shared.lock();
        // A write elsewhere in the cluster: the new floor is above anything a client has seen.
        st.rv += 1;
        st.floor = st.rv;
        st.gone = how;
        st.history.clear();
        let floor = st.floor;
        for w in st.watches.drain(..) {
            if how == Gone::ErrorEvent {
                let _ = w.tx.send(WatchMsg::Line(line(&too_old_event(floor))));
            }
            let _ = w.tx.send(WatchMsg::End);
        }
    }

    /// Cuts every open watch connection mid-stream (no terminating chunk), as a network failure
    /// or an API server crash would.
    pub fn drop_watches(&self) {
        for w in self.shared.lock().watches.drain(..) {
            let _ = w.tx.send(WatchMsg::Cut);
        }
    }

    /// Ends every open watch cleanly, as the API server does when `timeoutSeconds` runs out.
    pub fn end_watches(&self) {
        for w in self.shared.lock().watches.drain(..) {
            let _ = w.tx.send(WatchMsg::End);
        }
    }

    /// Answers the next `count` requests for `resource` with HTTP `code` and a `Status` body.
    pub fn fail_next(&self, resource: &Resource, count: usize, code: u16) {
        self.shared.lock().failures.push(FailRule {
            plural: resource.plural.to_owned(),
            remaining: count,
            code,
        });
    }

    /// Lifts every failure scripted with [`fail_next`](Self::fail_next).
    pub fn clear_failures(&self) {
        self.shared.lock().failures.clear();
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// What clients have done so far.
    pub fn activity(&self) -> Activity {
        let mut st = self.shared.lock();
        st.watches.retain(|w| !w.tx.is_closed());
        let mut open_watches = BTreeMap::new();
        for w in &st.watches {
            *open_watches
                .entry(self.shared.resources[w.resource].plural.to_owned())
                .or_insert(0) += 1;
        }
        Activity {
            requests: st.requests.clone(),
            open_watches,
        }
    }

    /// Waits until `check` holds for the server's [`Activity`], re-checking after every request
    /// and watch registration; fails after `timeout`, naming `what`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Activity) -> bool,
    ) -> Result<(), ReplayError> {
        let mut rx = self.shared.activity.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if check(&self.activity()) {
                return Ok(());
            }
            // A watch that closes bumps nothing; re-check at least every 50ms so a condition on
            // *fewer* open watches is still noticed.
            let wake = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
            let _ = tokio::time::timeout_at(wake, rx.changed()).await;
            if tokio::time::Instant::now() >= deadline && !check(&self.activity()) {
                return Err(ReplayError::Timeout {
                    what: what.to_owned(),
                    timeout,
                });
            }
        }
    }

    /// Waits until at least `count` watches of `resource` are open.
    pub async fn wait_for_watches(
        &self,
        resource: &Resource,
        count: usize,
        timeout: Duration,
    ) -> Result<(), ReplayError> {
        let what = format!("{count} open watch(es) of {}", resource.plural);
        self.wait_until(&what, timeout, |a| a.watches(resource) >= count)
            .await
    }

    fn write(&self, obj: Value, seen: bool) -> Result<Value, ReplayError> {
        let res = self.shared.resource_of(&obj)?;
        let mut st = self.shared.lock();
        store(&mut st, &self.shared.resources, res, obj, seen)
    }

    fn remove(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        seen: bool,
    ) -> Result<Value, ReplayError> {
        let res = self.shared.resource_by_kind(kind)?;
        let mut st = self.shared.lock();
        unstore(&mut st, res, namespace, name, seen).ok_or_else(|| ReplayError::NotFound {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Removes an object, stamping its last state with the deletion's resourceVersion, and when
/// `seen` sends `DELETED`. `None` if there was no such object.
fn unstore(st: &mut State, res: usize, namespace: &str, name: &str, seen: bool) -> Option<Value> {
    let key = (res, namespace.to_owned(), name.to_owned());
    let mut obj = st.objects.remove(&key)?;
    st.rv += 1;
    let rv = st.rv;
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    if seen {
        publish(
            st,
            Change {
                rv,
                resource: res,
                kind: ChangeKind::Deleted,
                old: None,
                new: obj.clone(),
            },
        );
    }
    Some(obj)
}

/// Stores `obj` as an object of `resources[res]` (server-set metadata filled in: namespace
/// default, uid, creationTimestamp, a new resourceVersion) and, when `seen`, tells the watches.
/// Shared by scripted writes and by clients' POST/PUT/PATCH.
fn store(
    st: &mut State,
    resources: &[Resource],
    res: usize,
    mut obj: Value,
    seen: bool,
) -> Result<Value, ReplayError> {
    let namespaced = resources[res].namespaced;
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or(ReplayError::MissingName)?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or(ReplayError::MissingName)?
        .to_owned();
    let namespace = if namespaced {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        meta.insert("namespace".into(), Value::String(ns.clone()));
        ns
    } else {
        meta.remove("namespace");
        String::new()
    };
    let key = (res, namespace, name);
    st.rv += 1;
    let rv = st.rv;
    let old = st.objects.get(&key).cloned();
    let stored_meta = |field: &str| {
        old.as_ref()
            .and_then(|o| o.pointer(&format!("/metadata/{field}")))
            .cloned()
    };
    let uid = stored_meta("uid")
        .or_else(|| meta.get("uid").cloned())
        .unwrap_or_else(|| Value::String(format!("00000000-0000-4000-8000-{rv:012}")));
    let created = stored_meta("creationTimestamp")
        .unwrap_or_else(|| Value::String(CREATION_TIMESTAMP.to_owned()));
    meta.insert("uid".into(), uid);
    meta.insert("creationTimestamp".into(), created);
    meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    st.objects.insert(key, obj.clone());
    if seen {
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        publish(
            st,
            Change {
                rv,
                resource: res,
                kind,
                old,
                new: obj.clone(),
            },
        );
    }
    Ok(obj)
}

/// Records a change and sends it to every open watch it concerns.
fn publish(st: &mut State, change: Change) {
    st.watches.retain(|w| match event_for(w, &change) {
        Some(ev) => w.tx.send(WatchMsg::Line(line(&ev))).is_ok(),
        None => !w.tx.is_closed(),
    });
    st.history.push(change);
}

/// The event `w` receives for `change`, if any: selector transitions become `ADDED`/`DELETED`.
fn event_for(w: &WatchReg, change: &Change) -> Option<Value> {
    if w.resource != change.resource {
        return None;
    }
    let selects = |obj: &Value| {
        let in_ns = w.namespace.as_deref().is_none_or(|ns| {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
        });
        in_ns && w.fields.matches(obj) && w.labels.matches(obj)
    };
    let now = selects(&change.new);
    let before = change.old.as_ref().is_some_and(selects);
    let kind = match (change.kind, before, now) {
        (ChangeKind::Deleted, _, true) => "DELETED",
        (ChangeKind::Added, _, true) => "ADDED",
        (ChangeKind::Modified, true, true) => "MODIFIED",
        (ChangeKind::Modified, false, true) => "ADDED",
        (ChangeKind::Modified, true, false) => "DELETED",
        _ => return None,
    };
    Some(watch_event(kind, &change.new))
}

/// The `ERROR` event of a watch from a compacted resourceVersion.
fn too_old_event(floor: u64) -> Value {
    watch_event(
        "ERROR",
        &status_failure(
            410,
            "Expired",
            &format!("too old resource version: (compacted at {floor})"),
        ),
    )
}

/// One newline-terminated JSON line of a watch stream.
fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}
