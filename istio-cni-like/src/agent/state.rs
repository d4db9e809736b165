//! Pod state the agent persists so a restart can reconcile: one JSON file per pod in a state
//! directory, written atomically (temp file + rename), so a crash mid-write leaves either the
//! old or the new record, never a torn one.
//!
//! Files are tiny and written only on pod events, so plain blocking `std::fs` calls are used
//! even from async code.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the agent remembers of a pod it was told about by the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod's network namespace path (`CNI_NETNS`).
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
    pub container_id: String,
    pub service_account: String,
    /// Whether the pod was captured when last written (re-decided on start anyway).
    pub enrolled: bool,
}

/// A state file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state dir {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {file}: not a pod record: {source}")]
    Decode {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// File name for a pod uid: uids are DNS-label-ish, but the agent's fallback key is
/// `namespace/name`, so anything outside `[A-Za-z0-9._-]` is replaced.
pub fn file_name(uid: &str) -> String {
    let safe: String = uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.json")
}

impl StateStore {
    /// Opens (creating it if needed) the state directory.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(StateStore {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, uid: &str) -> PathBuf {
        self.dir.join(file_name(uid))
    }

    /// Writes `state` atomically.
    pub fn save(&self, state: &PodState) -> Result<(), StateError> {
        let file = self.path(&state.uid);
        let tmp = file.with_extension("json.tmp");
        let io_err = |source| StateError::Io {
            file: file.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| StateError::Decode {
            file: file.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(io_err)?;
        std::fs::rename(&tmp, &file).map_err(io_err)
    }

    /// Forgets a pod; forgetting an unknown pod is fine.
    pub fn remove(&self, uid: &str) -> Result<(), StateError> {
        match std::fs::remove_file(self.path(uid)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError::Io {
                file: self.path(uid),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Every readable record, plus the problems with the others (which are left in place for
    /// an operator to look at).
    pub fn load_all(&self) -> (Vec<PodState>, Vec<StateError>) {
        let mut states = Vec::new();
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(source) => {
                errors.push(StateError::Dir {
                    dir: self.dir.clone(),
                    source,
                });
                return (states, errors);
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for file in paths {
            match std::fs::read(&file) {
                Err(source) => errors.push(StateError::Io { file, source }),
                Ok(bytes) => match serde_json::from_slice::<PodState>(&bytes) {
                    Ok(s) => states.push(s),
                    Err(source) => errors.push(StateError::Decode { file, source }),
                },
            }
        }
        (states, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(uid: &str) -> PodState {
        PodState {
            uid: uid.to_owned(),
            namespace: "shop".into(),
            name: "web".into(),
            netns: "/run/netns/x".into(),
            ips: vec!["10.1.0.2".parse().unwrap()],
            container_id: "c1".into(),
            service_account: "default".into(),
            enrolled: true,
        }
    }

    #[test]
    fn round_trip_remove_and_corrupt_files() {
        let dir = std::env::temp_dir().join(format!("ambit-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = StateStore::open(&dir).unwrap();
        store.save(&state("u1")).unwrap();
        store.save(&state("shop/web")).unwrap();
        std::fs::write(dir.join("bad.json"), "{not json").unwrap();
        let (states, errors) = store.load_all();
        assert_eq!(states.len(), 2);
        assert!(states.contains(&state("u1")) && states.contains(&state("shop/web")));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("bad.json"), "{}", errors[0]);
        store.remove("u1").unwrap();
        store.remove("u1").unwrap();
        assert_eq!(store.load_all().0, vec![state("shop/web")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_name("shop/web"), "shop_web.json");
        assert_eq!(file_name("../x"), ".._x.json");
        assert_eq!(file_name("a1-b2"), "a1-b2.json");
    }
}
