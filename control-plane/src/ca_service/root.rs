//! Choosing the CA's root of trust at start-up (see docs/ca.md).
//!
//! Order: a plug-in CA (Istio's `cacerts` layout, typically an intermediate issued by the
//! organisation's PKI) when its files are present; else the root this control plane generated
//! on an earlier start, from its [`RootStore`]; else a new self-signed root, written to the
//! store before it signs anything, so every later start finds the same one.
//!
//! Stores: a local directory ([`LocalDirStore`]) or, on Kubernetes, a Secret
//! ([`KubeSecretStore`]). Stores are create-only where several replicas share one: when two
//! start together and both generate, exactly one create wins and the other adopts the winner's
//! root.
//!
//! Invariants:
//! - a configured plug-in directory that holds a key but does not load stops start-up: falling
//!   back to another root would silently split the mesh into two trust domains;
//! - a store holding part of a CA (some files missing) is an error, never overwritten: that is
//!   someone's root key, or the remains of one;
//! - the key is only ever written with mode 0600 (by [`CertificateAuthority::write_cacerts_dir`]),
//!   in a directory created with mode 0700, and never leaves through any other path.

mod kube_store;
mod publish;

use std::fs;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use mesh::ca::{CaError, CertificateAuthority};

pub use kube_store::{KubeSecretStore, DEFAULT_SECRET};
pub use publish::{publish_root_cert, Published, ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY};

/// The files of the `cacerts` layout, key first.
const CACERTS_FILES: [&str; 4] = [
    "ca-key.pem",
    "ca-cert.pem",
    "root-cert.pem",
    "cert-chain.pem",
];
/// Files that must all be present for a CA to load (`cert-chain.pem` is optional for a root).
const REQUIRED_FILES: [&str; 3] = ["ca-key.pem", "ca-cert.pem", "root-cert.pem"];

/// Why no root of trust could be set up.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("plug-in CA in {dir}: {source}")]
    PlugIn { dir: PathBuf, source: CaError },
    #[error("{store}: has {present:?} but not {missing:?}; refusing to overwrite part of a CA")]
    Partial {
        store: String,
        present: Vec<&'static str>,
        missing: Vec<&'static str>,
    },
    #[error("{store}: {source}")]
    Store { store: String, source: CaError },
    #[error("generating a root for trust domain {trust_domain}: {source}")]
    Generate {
        trust_domain: String,
        source: CaError,
    },
    #[error("{store}: {reason}")]
    Api { store: String, reason: String },
    #[error("{store}: another replica stored a root first, but it cannot be read back")]
    Vanished { store: String },
}

/// What [`RootStore::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The given CA is now the stored one.
    Stored,
    /// Something was stored first (another replica won the race): nothing was written, and
    /// the caller must discard its CA and load the stored one.
    AlreadyExists,
}

/// Where a generated root is kept between restarts. Async because the Kubernetes store is an
/// API call; boxed futures keep it usable as `&dyn RootStore`.
pub trait RootStore: Send + Sync {
    /// For logs and errors.
    fn describe(&self) -> String;
    /// The stored CA, `None` if nothing is stored, or an error if what is stored is unusable.
    fn load(&self) -> BoxFuture<'_, Result<Option<CertificateAuthority>, RootError>>;
    /// Persists a newly generated CA, unless a CA is stored already (create-only where the
    /// store is shared, so that concurrent starts cannot persist two different roots).
    fn create<'a>(
        &'a self,
        ca: &'a CertificateAuthority,
    ) -> BoxFuture<'a, Result<Created, RootError>>;
}

/// A directory in the `cacerts` layout on local disk, for one control plane (a directory is
/// not shared between replicas, so create does not need to be atomic against a peer).
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    pub dir: PathBuf,
}

impl LocalDirStore {
    fn load_now(&self) -> Result<Option<CertificateAuthority>, RootError> {
        match presence(&self.dir) {
            Presence::None => Ok(None),
            Presence::Partial { present, missing } => Err(RootError::Partial {
                store: self.describe(),
                present,
                missing,
            }),
            Presence::Complete => CertificateAuthority::from_cacerts_dir(&self.dir)
                .map(Some)
                .map_err(|source| RootError::Store {
                    store: self.describe(),
                    source,
                }),
        }
    }

    fn create_now(&self, ca: &CertificateAuthority) -> Result<Created, RootError> {
        if !matches!(presence(&self.dir), Presence::None) {
            return Ok(Created::AlreadyExists);
        }
        let err = |source| RootError::Store {
            store: self.describe(),
            source,
        };
        create_private_dir(&self.dir).map_err(err)?;
        ca.write_cacerts_dir(&self.dir).map_err(err)?;
        Ok(Created::Stored)
    }
}

impl RootStore for LocalDirStore {
    fn describe(&self) -> String {
        format!("CA root store {}", self.dir.display())
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<CertificateAuthority>, RootError>> {
        Box::pin(std::future::ready(self.load_now()))
    }

    fn create<'a>(
        &'a self,
        ca: &'a CertificateAuthority,
    ) -> BoxFuture<'a, Result<Created, RootError>> {
        Box::pin(std::future::ready(self.create_now(ca)))
    }
}

/// Where the CA in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootOrigin {
    PlugIn(PathBuf),
    Stored(String),
    /// Generated here, but another replica stored its root first: that one is in use.
    StoredByPeer(String),
    Generated(String),
}

/// Sets up the CA (see the module header for the order).
pub async fn load_or_create(
    plug_in: Option<&Path>,
    store: &dyn RootStore,
    trust_domain: &str,
) -> Result<(CertificateAuthority, RootOrigin), RootError> {
    if let Some(dir) = plug_in {
        match presence(dir) {
            Presence::Complete => {
                let ca = CertificateAuthority::from_cacerts_dir(dir).map_err(|source| {
                    RootError::PlugIn {
                        dir: dir.to_path_buf(),
                        source,
                    }
                })?;
                return Ok((ca, RootOrigin::PlugIn(dir.to_path_buf())));
            }
            Presence::Partial { present, missing } => {
                return Err(RootError::Partial {
                    store: format!("plug-in CA {}", dir.display()),
                    present,
                    missing,
                })
            }
            // Istio mounts `cacerts` as an optional volume: absent means "no plug-in CA".
            Presence::None => tracing::info!(
                dir = %dir.display(),
                "no plug-in CA files; using the stored or a generated root"
            ),
        }
    }
    if let Some(ca) = store.load().await? {
        return Ok((ca, RootOrigin::Stored(store.describe())));
    }
    let ca =
        CertificateAuthority::generate(trust_domain).map_err(|source| RootError::Generate {
            trust_domain: trust_domain.to_string(),
            source,
        })?;
    match store.create(&ca).await? {
        Created::Stored => {
            tracing::warn!(store = %store.describe(), "generated a new self-signed mesh root");
            Ok((ca, RootOrigin::Generated(store.describe())))
        }
        Created::AlreadyExists => {
            // Another replica generated at the same time and its create won. Ours never
            // signed anything: drop it and use the one every replica will load.
            drop(ca);
            let stored = store.load().await?.ok_or_else(|| RootError::Vanished {
                store: store.describe(),
            })?;
            tracing::info!(store = %store.describe(),
                "another replica stored a root first; using it instead of the one generated here");
            Ok((stored, RootOrigin::StoredByPeer(store.describe())))
        }
    }
}

enum Presence {
    None,
    Partial {
        present: Vec<&'static str>,
        missing: Vec<&'static str>,
    },
    Complete,
}

fn presence(dir: &Path) -> Presence {
    let (present, missing): (Vec<&'static str>, Vec<&'static str>) =
        REQUIRED_FILES.iter().partition(|f| dir.join(f).exists());
    if missing.is_empty() {
        Presence::Complete
    } else if present.is_empty() && !dir.join(CACERTS_FILES[3]).exists() {
        Presence::None
    } else {
        let mut present = present;
        if dir.join(CACERTS_FILES[3]).exists() {
            present.push(CACERTS_FILES[3]);
        }
        Presence::Partial { present, missing }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |e: std::io::Error| CaError::Write {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    // An existing directory may be more open than we want for a key's home.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("ambit-root-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn generates_once_and_persists_privately() {
        let tmp = TempDir::new("generate");
        let store = LocalDirStore {
            dir: tmp.0.join("store"),
        };
        let (first, origin) = load_or_create(None, &store, "cluster.local").await.unwrap();
        assert!(matches!(origin, RootOrigin::Generated(_)));
        assert_eq!(mode(&store.dir.join("ca-key.pem")), 0o600);
        assert_eq!(mode(&store.dir), 0o700);

        let (again, origin) = load_or_create(None, &store, "cluster.local").await.unwrap();
        assert!(matches!(origin, RootOrigin::Stored(_)));
        assert_eq!(
            first.roots(),
            again.roots(),
            "the same root after a restart"
        );
    }

    #[tokio::test]
    async fn partial_store_is_an_error_and_left_alone() {
        let tmp = TempDir::new("partial");
        let store = LocalDirStore { dir: tmp.0.clone() };
        fs::create_dir_all(&tmp.0).unwrap();
        fs::write(tmp.0.join("ca-key.pem"), "someone's key").unwrap();
        let err = load_or_create(None, &store, "cluster.local")
            .await
            .unwrap_err();
        assert!(matches!(err, RootError::Partial { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(tmp.0.join("ca-key.pem")).unwrap(),
            "someone's key"
        );
        assert!(!tmp.0.join("ca-cert.pem").exists());
    }

    #[tokio::test]
    async fn plug_in_ca_wins_and_a_broken_one_stops_start_up() {
        let tmp = TempDir::new("plugin");
        let plug_in = tmp.0.join("cacerts");
        let org = CertificateAuthority::generate("cluster.local").unwrap();
        org.write_cacerts_dir(&plug_in).unwrap();
        let store = LocalDirStore {
            dir: tmp.0.join("store"),
        };
        // Something already stored: the plug-in CA still takes precedence.
        load_or_create(None, &store, "cluster.local").await.unwrap();

        let (ca, origin) = load_or_create(Some(&plug_in), &store, "cluster.local")
            .await
            .unwrap();
        assert_eq!(origin, RootOrigin::PlugIn(plug_in.clone()));
        assert_eq!(ca.roots(), org.roots());

        fs::write(plug_in.join("ca-key.pem"), "not a key").unwrap();
        let err = load_or_create(Some(&plug_in), &store, "cluster.local")
            .await
            .unwrap_err();
        assert!(matches!(err, RootError::PlugIn { .. }), "{err}");
    }

    #[tokio::test]
    async fn empty_plug_in_dir_means_no_plug_in() {
        let tmp = TempDir::new("plugin-empty");
        let plug_in = tmp.0.join("cacerts");
        fs::create_dir_all(&plug_in).unwrap();
        let store = LocalDirStore {
            dir: tmp.0.join("store"),
        };
        let (_, origin) = load_or_create(Some(&plug_in), &store, "cluster.local")
            .await
            .unwrap();
        assert!(matches!(origin, RootOrigin::Generated(_)));
        let (_, origin) = load_or_create(Some(&tmp.0.join("absent")), &store, "cluster.local")
            .await
            .unwrap();
        assert!(matches!(origin, RootOrigin::Stored(_)));
    }
}
