//! Choosing the CA's root of trust at start-up (see docs/ca.md).
//!
//! Order: a plug-in CA (Istio's `cacerts` layout, typically an intermediate issued by the
//! organisation's PKI) when its files are present; else the root this control plane generated
//! on an earlier start, from its [`RootStore`]; else a new self-signed root, written to the
//! store before it signs anything, so every later start finds the same one.
//!
//! Invariants:
//! - a configured plug-in directory that holds a key but does not load stops start-up: falling
//!   back to another root would silently split the mesh into two trust domains;
//! - a store holding part of a CA (some files missing) is an error, never overwritten: that is
//!   someone's root key, or the remains of one;
//! - the key is only ever written with mode 0600 (by [`CertificateAuthority::write_cacerts_dir`]),
//!   in a directory created with mode 0700, and never leaves through any other path.

use std::fs;
use std::path::{Path, PathBuf};

use mesh::ca::{CaError, CertificateAuthority};

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
}

/// Where a generated root is kept between restarts. A Kubernetes Secret (`ambit-ca-root`) is
/// the other intended implementation; it must be create-only (fail if it exists) so two
/// replicas starting together cannot both generate and persist different roots.
pub trait RootStore {
    /// For logs and errors.
    fn describe(&self) -> String;
    /// The stored CA, `None` if nothing is stored, or an error if what is stored is unusable.
    fn load(&self) -> Result<Option<CertificateAuthority>, RootError>;
    /// Persists a newly generated CA.
    fn store(&self, ca: &CertificateAuthority) -> Result<(), RootError>;
}

/// A directory in the `cacerts` layout on local disk.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    pub dir: PathBuf,
}

impl RootStore for LocalDirStore {
    fn describe(&self) -> String {
        format!("CA root store {}", self.dir.display())
    }

    fn load(&self) -> Result<Option<CertificateAuthority>, RootError> {
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

    fn store(&self, ca: &CertificateAuthority) -> Result<(), RootError> {
        let err = |source| RootError::Store {
            store: self.describe(),
            source,
        };
        create_private_dir(&self.dir).map_err(err)?;
        ca.write_cacerts_dir(&self.dir).map_err(err)
    }
}

/// Where the CA in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootOrigin {
    PlugIn(PathBuf),
    Stored(String),
    Generated(String),
}

/// Sets up the CA (see the module header for the order).
pub fn load_or_create(
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
    if let Some(ca) = store.load()? {
        return Ok((ca, RootOrigin::Stored(store.describe())));
    }
    let ca =
        CertificateAuthority::generate(trust_domain).map_err(|source| RootError::Generate {
            trust_domain: trust_domain.to_string(),
            source,
        })?;
    store.store(&ca)?;
    tracing::warn!(store = %store.describe(), "generated a new self-signed mesh root");
    Ok((ca, RootOrigin::Generated(store.describe())))
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

    #[test]
    fn generates_once_and_persists_privately() {
        let tmp = TempDir::new("generate");
        let store = LocalDirStore {
            dir: tmp.0.join("store"),
        };
        let (first, origin) = load_or_create(None, &store, "cluster.local").unwrap();
        assert!(matches!(origin, RootOrigin::Generated(_)));
        assert_eq!(mode(&store.dir.join("ca-key.pem")), 0o600);
        assert_eq!(mode(&store.dir), 0o700);

        let (again, origin) = load_or_create(None, &store, "cluster.local").unwrap();
        assert!(matches!(origin, RootOrigin::Stored(_)));
        assert_eq!(
            first.roots(),
            again.roots(),
            "the same root after a restart"
        );
    }

    #[test]
    fn partial_store_is_an_error_and_left_alone() {
        let tmp = TempDir::new("partial");
        let store = LocalDirStore { dir: tmp.0.clone() };
        fs::create_dir_all(&tmp.0).unwrap();
        fs::write(tmp.0.join("ca-key.pem"), "someone's key").unwrap();
        let err = load_or_create(None, &store, "cluster.local").unwrap_err();
        assert!(matches!(err, RootError::Partial { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(tmp.0.join("ca-key.pem")).unwrap(),
            "someone's key"
        );
        assert!(!tmp.0.join("ca-cert.pem").exists());
    }

    #[test]
    fn plug_in_ca_wins_and_a_broken_one_stops_start_up() {
        let tmp = TempDir::new("plugin");
        let plug_in = tmp.0.join("cacerts");
        let org = CertificateAuthority::generate("cluster.local").unwrap();
        org.write_cacerts_dir(&plug_in).unwrap();
        let store = LocalDirStore {
            dir: tmp.0.join("store"),
        };
        // Something already stored: the plug-in CA still takes precedence.
        load_or_create(None, &store, "cluster.local").unwrap();

        let (ca, origin) = load_or_create(Some(&plug_in), &store, "cluster.local").unwrap();
        assert_eq!(origin, RootOrigin::PlugIn(plug_in.clone()));
        assert_eq!(ca.roots(), org.roots());

        fs::write(plug_in.join("ca-key.pem"), "not a key").unwrap();
        let err = load_or_create(Some(&plug_in), &store, "cluster.local").unwrap_err();
        assert!(matches!(err, RootError::PlugIn { .. }), "{err}");
    }

    #[test]
    fn empty_plug_in_dir_means_no_plug_in() {
        let tmp = TempDir::new("plugin-empty");
        let plug_in = tmp.0.join("cacerts");
        fs::create_dir_all(&plug_in).unwrap();
        let store = LocalDirStore {
            dir: tmp.0.join("store"),
        };
        let (_, origin) = load_or_create(Some(&plug_in), &store, "cluster.local").unwrap();
        assert!(matches!(origin, RootOrigin::Generated(_)));
        let (_, origin) =
            load_or_create(Some(&tmp.0.join("absent")), &store, "cluster.local").unwrap();
        assert!(matches!(origin, RootOrigin::Stored(_)));
    }
}
