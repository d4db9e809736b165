//! Keeps one current certificate per local identity and renews it before it expires.
//!
//! Each identity has one worker task that owns the fetching: it fetches from the
//! [`CertSource`], publishes the result on a `watch` channel, sleeps until half-life (± jitter),
//! and fetches again. Consequences, which are the invariants of this module:
//! - concurrent `get()`s for one identity share one fetch (they all wait on the same channel);
//! - the old certificate is served until the new one is published, and, when renewal fails,
//!   until it expires (retrying with capped exponential backoff meanwhile);
//! - nothing is ever revoked from under a connection: holders keep their own `Arc`s;
//! - timers run on tokio time (deadlines are converted from the certificate's wall-clock
//!   validity when it arrives), so paused-clock tests drive rotation deterministically.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use rand::Rng;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ca::{CaError, CertificateAuthority, DEFAULT_CERT_LIFETIME};
use crate::cert::{rfc3339, WorkloadCertificate};
use crate::identity::Identity;

/// Where certificates come from: the local file CA now, the control plane's CA over gRPC later.
pub trait CertSource: Send + Sync + 'static {
    fn fetch(&self, id: &Identity) -> BoxFuture<'static, Result<WorkloadCertificate, CaError>>;
}

/// A local CA issuing certificates of a fixed lifetime.
#[derive(Debug, Clone)]
pub struct FileCa {
    pub ca: Arc<CertificateAuthority>,
    pub lifetime: Duration,
}

impl CertSource for FileCa {
    fn fetch(&self, id: &Identity) -> BoxFuture<'static, Result<WorkloadCertificate, CaError>> {
        // Signing is a few hundred microseconds of CPU: not worth a blocking-pool hop.
        let result = self.ca.issue(id, self.lifetime);
        Box::pin(async move { result })
    }
}

/// A bare CA issues certificates of [`DEFAULT_CERT_LIFETIME`].
impl CertSource for Arc<CertificateAuthority> {
    fn fetch(&self, id: &Identity) -> BoxFuture<'static, Result<WorkloadCertificate, CaError>> {
        let result = self.issue(id, DEFAULT_CERT_LIFETIME);
        Box::pin(async move { result })
    }
}

/// Tuning of renewal; the defaults suit production.
#[derive(Debug, Clone)]
pub struct SecretManagerConfig {
    /// Renewal happens at half-life moved by up to ± this fraction of the half-life.
    pub jitter: f64,
    /// First retry delay after a failed fetch; doubles per consecutive failure.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Lower bound between successful fetches, so a source handing out certificates that are
    /// already past half-life cannot make the worker spin.
    pub min_refresh_interval: Duration,
    /// A fetch taking longer counts as failed (and is retried): a hung CA connection must not
    /// stall renewal, nor first-time `get()` callers, forever.
    pub fetch_timeout: Duration,
}

impl Default for SecretManagerConfig {
    fn default() -> Self {
        SecretManagerConfig {
            jitter: 0.1,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(1),
            fetch_timeout: Duration::from_secs(30),
        }
    }
}

/// Lifecycle of one identity's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    /// First fetch in flight; nothing to serve yet.
    Initializing,
    /// Serving a certificate; next renewal is scheduled.
    Available,
    /// Renewal in flight; still serving the current certificate.
    Refreshing,
    /// The last fetch failed; a retry is scheduled. The current certificate (if any, and
    /// unexpired) is still served.
    Retrying,
    /// Renewal kept failing and the certificate has expired (reported by `dump` only).
    Expired,
}

/// What subscribers see for one identity.
#[derive(Debug, Clone)]
pub struct CertStatus {
    pub cert: Option<Arc<WorkloadCertificate>>,
    pub state: CertState,
    pub last_error: Option<CaError>,
    /// Consecutive failed fetches.
    pub failures: u32,
    /// When `cert` stops being served, on tokio's clock.
    expires: Option<Instant>,
}

impl CertStatus {
    /// The certificate, if there is one and it has not expired.
    pub fn usable(&self) -> Option<&Arc<WorkloadCertificate>> {
        match (self.cert.as_ref(), self.expires) {
            (Some(cert), Some(expires)) if Instant::now() < expires => Some(cert),
            _ => None,
        }
    }
}

/// One row of /config_dump's certificate section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertDump {
    pub identity: String,
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub state: CertState,
    pub last_error: Option<String>,
    pub failures: u32,
}

/// Caches and renews one certificate per identity. Cheap to clone (shares its state).
#[derive(Clone)]
pub struct SecretManager {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn CertSource>,
    config: SecretManagerConfig,
    entries: Mutex<HashMap<Identity, Entry>>,
}

struct Entry {
    rx: watch::Receiver<CertStatus>,
    worker: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Workers do not hold the manager, so they would otherwise renew forever.
        let entries = self
            .entries
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for entry in entries.values() {
            entry.worker.abort();
        }
    }
}

impl SecretManager {
    pub fn new(source: Arc<dyn CertSource>) -> Self {
        Self::with_config(source, SecretManagerConfig::default())
    }

    pub fn with_config(source: Arc<dyn CertSource>, config: SecretManagerConfig) -> Self {
        SecretManager {
            inner: Arc::new(Inner {
                source,
                config,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The current certificate for `id`, fetching it first if this identity is new. Callers
    /// should call this per new connection. While no usable certificate exists and the last
    /// fetch failed, this returns that failure at once rather than waiting for the retry.
    pub async fn get(&self, id: &Identity) -> Result<Arc<WorkloadCertificate>, CaError> {
        let mut rx = self.subscribe(id)?;
        loop {
            {
                let status = rx.borrow_and_update();
                if let Some(cert) = status.usable() {
                    return Ok(cert.clone());
                }
                if status.cert.is_some() && status.last_error.is_some() {
                    return Err(CaError::Expired(id.to_string()));
                }
                if let Some(e) = &status.last_error {
                    return Err(e.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(CaError::Unavailable {
                    identity: id.to_string(),
                    reason: "identity was forgotten while waiting".to_string(),
                });
            }
        }
    }

    /// Watches `id`'s certificate (starting its worker if needed): a change notification per
    /// fetch attempt and rotation; the current value counts as seen. The channel closes when the
    /// identity is forgotten. Must be called within a Tokio runtime.
    pub fn subscribe(&self, id: &Identity) -> Result<watch::Receiver<CertStatus>, CaError> {
        let mut entries = self.lock();
        if let Some(entry) = entries.get(id) {
            let mut rx = entry.rx.clone();
            rx.mark_unchanged();
            return Ok(rx);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CaError::Unavailable {
            identity: id.to_string(),
            reason: "SecretManager used outside a Tokio runtime".to_string(),
        })?;
        let (tx, rx) = watch::channel(CertStatus {
            cert: None,
            state: CertState::Initializing,
            last_error: None,
            failures: 0,
            expires: None,
        });
        let worker = runtime.spawn(run_worker(
            id.clone(),
            self.inner.source.clone(),
            self.inner.config.clone(),
            tx,
        ));
        entries.insert(
            id.clone(),
            Entry {
                rx: rx.clone(),
                worker,
            },
        );
        Ok(rx)
    }

    /// Stops renewing `id` (its last local workload left). Connections already holding its
    /// certificate keep it.
    pub fn forget(&self, id: &Identity) {
        if let Some(entry) = self.lock().remove(id) {
            entry.worker.abort();
        }
    }

    /// Snapshot for /config_dump, sorted by identity.
    pub fn dump(&self) -> Vec<CertDump> {
        let entries = self.lock();
        let mut rows: Vec<CertDump> = entries
            .iter()
            .map(|(id, entry)| {
                let status = entry.rx.borrow();
                let expired = status.cert.is_some() && status.usable().is_none();
                CertDump {
                    identity: id.to_string(),
                    serial: status.cert.as_ref().map(|c| c.serial.clone()),
                    not_after: status.cert.as_ref().map(|c| rfc3339(c.not_after)),
                    state: if expired {
                        CertState::Expired
                    } else {
                        status.state
                    },
                    last_error: status.last_error.as_ref().map(ToString::to_string),
                    failures: status.failures,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.identity.cmp(&b.identity));
        rows
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        // The map is only ever inserted into or removed from whole; a panic elsewhere cannot
        // leave it half-updated, so a poisoned lock is still safe to use.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Fetch, publish, sleep until renewal, repeat; on failure keep the old certificate and retry.
async fn run_worker(
    id: Identity,
    source: Arc<dyn CertSource>,
    config: SecretManagerConfig,
    tx: watch::Sender<CertStatus>,
) {
    let jitter = if config.jitter.is_finite() {
        config.jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    loop {
        let fetched = tokio::time::timeout(config.fetch_timeout, source.fetch(&id))
            .await
            .unwrap_or_else(|_| {
                Err(CaError::Unavailable {
                    identity: id.to_string(),
                    reason: format!("fetch timed out after {:?}", config.fetch_timeout),
                })
            });
        let result = fetched.and_then(|cert| {
            if cert.identity == id {
                Ok(cert)
            } else {
                Err(CaError::WrongIdentity {
                    requested: id.to_string(),
                    got: cert.identity.to_string(),
                })
            }
        });
        match result {
            Ok(cert) => {
                let wall_now = SystemTime::now();
                let now = Instant::now();
                let until = |t: SystemTime| t.duration_since(wall_now).unwrap_or(Duration::ZERO);
                let drawn = rand::thread_rng().gen_range(-jitter..=jitter);
                let refresh_in = until(cert.refresh_at(drawn)).max(config.min_refresh_interval);
                let expires = now + until(cert.not_after);
                tracing::info!(identity = %id, serial = %cert.serial, ?refresh_in, "certificate ready");
                tx.send_replace(CertStatus {
                    cert: Some(Arc::new(cert)),
                    state: CertState::Available,
                    last_error: None,
                    failures: 0,
                    expires: Some(expires),
                });
                tokio::time::sleep(refresh_in).await;
                tx.send_modify(|s| s.state = CertState::Refreshing);
            }
            Err(e) => {
                let mut failures = 0;
                tx.send_modify(|s| {
                    s.failures = s.failures.saturating_add(1);
                    s.state = CertState::Retrying;
                    s.last_error = Some(e.clone());
                    failures = s.failures;
                });
                let delay = backoff(&config, failures);
                tracing::warn!(identity = %id, error = %e, failures, ?delay, "certificate fetch failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `initial * 2^(failures-1)`, capped, then spread by ±10 % so that many identities failing
/// together do not retry in lockstep.
fn backoff(config: &SecretManagerConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = config
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(config.max_backoff);
    base.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

#[cfg(test)]
mod tests;
