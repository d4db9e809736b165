//! Where the agent learns namespaces and pods: the [`PodSource`] trait and its local-folder
//! implementation (Kubernetes YAML/JSON manifests in a directory, polled).
//!
//! Invariants:
//! - A source publishes whole [`ClusterView`]s, never deltas: consumers re-decide every known pod
//!   against the latest view, so a missed intermediate state cannot leave a pod wrong.
//! - `None` on the channel means "not synced yet"; the first `Some` is the first full listing.
//! - A file that stops parsing keeps contributing its last good objects (and the problem is
//!   logged once per change, naming file and document): a half-saved edit must not unenroll pods.
//!
//! The Kubernetes watch source ([`super::kube_source::KubeSource`]) implements [`PodSource`] the same
//! way, publishing the pods of this node and all namespaces.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::enrollment::{Namespace, Object, ObjectError, Pod};

#[cfg(test)]
mod tests;

/// Everything a source knows, at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub namespaces: BTreeMap<String, Namespace>,
    /// Keyed by (namespace, name).
    pub pods: BTreeMap<(String, String), Pod>,
}

impl ClusterView {
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Adds objects; a later object with the same key replaces an earlier one. Pods scheduled on
    /// another node are left out when `node` is given.
    pub fn extend(&mut self, objects: impl IntoIterator<Item = Object>, node: Option<&str>) {
        for obj in objects {
            match obj {
                Object::Namespace(ns) => {
                    self.namespaces.insert(ns.name.clone(), ns);
                }
                Object::Pod(pod) => {
                    let elsewhere = matches!((node, &pod.node_name), (Some(n), Some(p)) if n != p);
                    if !elsewhere {
                        self.pods
                            .insert((pod.namespace.clone(), pod.name.clone()), pod);
                    }
                }
            }
        }
    }
}

/// A provider of cluster views.
pub trait PodSource: Send + Sync {
    /// Latest view (`None` until the first full sync), updated whenever it changes.
    fn subscribe(&self) -> watch::Receiver<Option<Arc<ClusterView>>>;
}

/// A document of a file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{file}: document {index}: not valid YAML/JSON: {message}")]
    Syntax {
        file: String,
        index: usize,
        message: String,
    },
    #[error("{file}: document {index}: {source}")]
    Object {
        file: String,
        index: usize,
        #[source]
        source: ObjectError,
    },
}

/// Parses one manifest file: multiple `---` separated documents, each a Namespace, a Pod, a
/// `List` of them (`kubectl get -o yaml`), or another kind (skipped). JSON is YAML, so `.json`
/// files go through the same parser. Document indexes in errors count from 0.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Object>, FileError> {
    use serde::Deserialize as _;
    let mut objects = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| FileError::Syntax {
            file: file.to_owned(),
            index,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        let object_error = |source| FileError::Object {
            file: file.to_owned(),
            index,
            source,
        };
        let is_list = value.get("kind").and_then(|k| k.as_str()) == Some("List");
        if is_list {
            let items = match value.get("items") {
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                None | Some(serde_yaml::Value::Null) => Vec::new(),
                Some(_) => {
                    return Err(object_error(ObjectError::Shape(
                        "List.items is not a sequence".to_owned(),
                    )))
                }
            };
            for item in items {
                objects.extend(Object::from_yaml(item).map_err(object_error)?);
            }
        } else {
            objects.extend(Object::from_yaml(value).map_err(object_error)?);
        }
    }
    Ok(objects)
}

/// Whether a directory entry is a manifest the folder source reads.
pub fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    ) && !path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// One manifest file as read: its path and its text, or why it could not be read.
pub type FileContent = (PathBuf, Result<String, String>);

/// Per-file memory of the folder source: last text seen and last objects that parsed.
#[derive(Default)]
struct FileState {
    text: String,
    good: Vec<Object>,
}

/// The folder's state across polls; pure apart from the `read` it is handed.
#[derive(Default)]
pub struct FolderScanner {
    files: HashMap<PathBuf, FileState>,
}

impl FolderScanner {
    /// Folds the current folder content (`(path, text or read error)` per manifest) into a
    /// view. Returns the view and the errors found in files that changed since the last scan.
    pub fn scan(
        &mut self,
        contents: Vec<FileContent>,
        node: Option<&str>,
    ) -> (ClusterView, Vec<FileError>) {
        let mut errors = Vec::new();
        let mut present = Vec::new();
        for (path, text) in contents {
            let file = path.display().to_string();
            present.push(path.clone());
            let state = self.files.entry(path).or_default();
            match text {
                Err(message) => errors.push(FileError::Read { file, message }),
                Ok(text) if text == state.text => {}
                Ok(text) => {
                    match parse_file(&file, &text) {
                        Ok(objects) => state.good = objects,
                        Err(e) => errors.push(e),
                    }
                    state.text = text;
                }
            }
        }
        // A deleted file takes its objects with it.
        self.files.retain(|p, _| present.contains(p));
        let mut paths: Vec<&PathBuf> = self.files.keys().collect();
        paths.sort();
        let mut view = ClusterView::default();
        for p in paths {
            view.extend(self.files[p].good.iter().cloned(), node);
        }
        (view, errors)
    }
}

/// Reads every manifest of `dir` (sorted by name, so later files win on duplicate keys).
fn read_folder(dir: &Path) -> Result<Vec<FileContent>, std::io::Error> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_manifest(p) && p.is_file())
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| e.to_string());
            (p, text)
        })
        .collect())
}

/// Namespaces and pods from a local folder of manifests, re-read every `poll` interval.
pub struct FolderSource {
    rx: watch::Receiver<Option<Arc<ClusterView>>>,
}

impl FolderSource {
    /// Starts polling `dir` on the current tokio runtime. Pods whose `spec.nodeName` names
    /// another node than `node` (when given) are ignored.
    pub fn start(dir: PathBuf, poll: Duration, node: Option<String>) -> FolderSource {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let mut scanner = FolderScanner::default();
            let mut folder_error: Option<String> = None;
            let mut ticker = tokio::time::interval(poll);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let read_dir = dir.clone();
                let contents = tokio::task::spawn_blocking(move || read_folder(&read_dir)).await;
                let contents = match contents {
                    Ok(Ok(c)) => {
                        if folder_error.take().is_some() {
                            info!(dir = %dir.display(), "manifest folder readable again");
                        }
                        c
                    }
                    Ok(Err(e)) => {
                        let msg = e.to_string();
                        if folder_error.as_deref() != Some(msg.as_str()) {
                            warn!(dir = %dir.display(), error = %msg, "cannot list manifest folder; keeping the last view");
                            folder_error = Some(msg);
                        }
                        // Still count as synced (with nothing known) so the agent can start;
                        // pods of unknown namespaces then fail closed.
                        if tx.borrow().is_none() {
                            tx.send_replace(Some(Arc::new(ClusterView::default())));
                        }
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "manifest folder reader failed");
                        continue;
                    }
                };
                let (view, errors) = scanner.scan(contents, node.as_deref());
                for e in errors {
                    warn!(error = %e, "manifest not applied; keeping that file's last good objects");
                }
                let changed = tx.borrow().as_deref() != Some(&view);
                if changed {
                    tx.send_replace(Some(Arc::new(view)));
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        FolderSource { rx }
    }
}

impl PodSource for FolderSource {
    fn subscribe(&self) -> watch::Receiver<Option<Arc<ClusterView>>> {
        self.rx.clone()
    }
}
