//! Per-identity rustls configs, rebuilt only when the identity's certificate rotates.
//!
//! Building a rustls config parses roots and sets up verifiers: too costly per connection.
//! The cache keys on the certificate `Arc` the secret manager hands out, so a rotation is
//! picked up by the next connection, while connections already open keep the config (and
//! certificate) they were made with — a rotation never cuts a live connection.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use mesh::ca::CaError;
use mesh::cert::WorkloadCertificate;
use mesh::certmanager::{CertStatus, SecretManager};
use mesh::identity::Identity;
use rustls::{ClientConfig, ServerConfig};

/// Why no TLS config could be had for an identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no certificate for {0}: {1}")]
    Certificate(Identity, CaError),
    #[error("TLS config for {0}: {1}")]
    Config(Identity, String),
}

struct Entry {
    cert: Arc<WorkloadCertificate>,
    server: Option<Arc<ServerConfig>>,
    clients: HashMap<Vec<Identity>, Arc<ClientConfig>>,
}

/// Called once per certificate rotation: `true` renewed, `false` a renewal attempt failed.
pub type RotationHook = Arc<dyn Fn(bool) + Send + Sync>;

/// Hands out TLS configs for local workload identities.
pub struct TlsCache {
    secrets: SecretManager,
    entries: Mutex<HashMap<Identity, Entry>>,
    on_rotation: Option<RotationHook>,
    /// Identities whose rotations are being counted into `on_rotation`.
    watched: Mutex<HashSet<Identity>>,
}

/// Bound on cached client configs per identity (one per distinct destination identity set).
const MAX_CLIENT_CONFIGS: usize = 1024;

impl TlsCache {
    pub fn new(secrets: SecretManager) -> Self {
        TlsCache {
            secrets,
            entries: Mutex::new(HashMap::new()),
            on_rotation: None,
            watched: Mutex::new(HashSet::new()),
        }
    }

    /// Reports every rotation (and failed renewal) of the certificates this cache uses to
    /// `hook`, e.g. to count `ambit_cert_rotations_total`. Rotations happen in the secret
    /// manager's background workers, not when a connection asks, so each identity is watched
    /// from its first use until it is forgotten.
    pub fn with_rotation_hook(mut self, hook: RotationHook) -> Self {
        self.on_rotation = Some(hook);
        self
    }

    pub fn secrets(&self) -> &SecretManager {
        &self.secrets
    }

    async fn cert(&self, id: &Identity) -> Result<Arc<WorkloadCertificate>, TlsSetupError> {
        let cert = self
            .secrets
            .get(id)
            .await
            .map_err(|e| TlsSetupError::Certificate(id.clone(), e))?;
        self.watch_rotations(id);
        Ok(cert)
    }

    fn watch_rotations(&self, id: &Identity) {
        let Some(hook) = self.on_rotation.clone() else {
            return;
        };
        if !self
            .watched
            .lock()
            .expect("watched lock")
            .insert(id.clone())
        {
            return;
        }
        match self.secrets.subscribe(id) {
            Ok(rx) => {
                tokio::spawn(count_rotations(rx, hook));
            }
            Err(_) => {
                // Only outside a runtime, where `get` above could not have succeeded either.
                self.watched.lock().expect("watched lock").remove(id);
            }
        }
    }

    /// Server config presenting `id`'s current certificate.
    pub async fn server_config(&self, id: &Identity) -> Result<Arc<ServerConfig>, TlsSetupError> {
        let cert = self.cert(id).await?;
        let mut entries = self.entries.lock().expect("tls cache lock");
        let entry = fresh_entry(&mut entries, id, &cert);
        if let Some(cfg) = &entry.server {
            return Ok(cfg.clone());
        }
        let cfg = mesh::tls::server_config(&cert)
            .map_err(|e| TlsSetupError::Config(id.clone(), e.to_string()))?;
        entry.server = Some(cfg.clone());
        Ok(cfg)
    }

    /// Client config presenting `id` and accepting only a peer proving one of `expected`.
    pub async fn client_config(
        &self,
        id: &Identity,
        expected: &[Identity],
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let cert = self.cert(id).await?;
        let mut entries = self.entries.lock().expect("tls cache lock");
        let entry = fresh_entry(&mut entries, id, &cert);
        if let Some(cfg) = entry.clients.get(expected) {
            return Ok(cfg.clone());
        }
        let cfg = mesh::tls::client_config(&cert, expected.to_vec())
            .map_err(|e| TlsSetupError::Config(id.clone(), e.to_string()))?;
        if entry.clients.len() >= MAX_CLIENT_CONFIGS {
            entry.clients.clear();
        }
        entry.clients.insert(expected.to_vec(), cfg.clone());
        Ok(cfg)
    }

    /// Drops everything cached for an identity no local workload uses any more.
    pub fn forget(&self, id: &Identity) {
        self.entries.lock().expect("tls cache lock").remove(id);
        self.watched.lock().expect("watched lock").remove(id);
        // Ends the identity's watcher too: its channel closes with the renewal worker.
        self.secrets.forget(id);
    }
}

/// Reports each change of certificate (a rotation) and each failed renewal of an existing
/// certificate, until the identity is forgotten and its channel closes.
async fn count_rotations(mut rx: tokio::sync::watch::Receiver<CertStatus>, hook: RotationHook) {
    let (mut serial, mut failures) = {
        let s = rx.borrow_and_update();
        (s.cert.as_ref().map(|c| c.serial.clone()), s.failures)
    };
    while rx.changed().await.is_ok() {
        let (now, now_failures) = {
            let s = rx.borrow_and_update();
            (s.cert.as_ref().map(|c| c.serial.clone()), s.failures)
        };
        if serial.is_some() && now.is_some() && now != serial {
            hook(true);
        }
        if serial.is_some() && now_failures > failures {
            hook(false);
        }
        serial = now;
        failures = now_failures;
    }
}

/// The entry for `id`, reset if the certificate rotated since it was built.
fn fresh_entry<'a>(
    entries: &'a mut HashMap<Identity, Entry>,
    id: &Identity,
    cert: &Arc<WorkloadCertificate>,
) -> &'a mut Entry {
    let entry = entries.entry(id.clone()).or_insert_with(|| Entry {
        cert: cert.clone(),
        server: None,
        clients: HashMap::new(),
    });
    if !Arc::ptr_eq(&entry.cert, cert) {
        *entry = Entry {
            cert: cert.clone(),
            server: None,
            clients: HashMap::new(),
        };
    }
    entry
}
