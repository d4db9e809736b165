//! The outbound HBONE connection pool.
//!
//! Invariants:
//! - Connections are shared only between requests with an equal [`PoolKey`]: same source
//!   identity and IP (the TLS client cert and the spoofed source), same destination address and
//!   same set of acceptable destination identities (what the TLS handshake verified).
//! - A connection carries at most `min(max_streams_per_conn, peer's MAX_CONCURRENT_STREAMS)`
//!   streams at once. A slot is reserved under the pool lock before the request is sent and
//!   released when the [`H2Stream`] (or the failed attempt) is dropped.
//! - At most one dial per key is in flight. Callers that find no room wait for it and then
//!   re-check; if it fails they all get its error (no serial retry storm against a dead peer).
//! - A connection that received GOAWAY or failed is never handed out again; one left with no
//!   streams for `idle_timeout` is removed and closed (GOAWAY, then the socket).
//! - The pool lock is a std mutex held only for bookkeeping, never across an await.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, Instrument};

use super::codec::{build_connect_request, ConnectRequest};
use super::settings;
use super::stream::H2Stream;
use super::HboneError;
use crate::identity::Identity;

/// What makes two outbound tunnels shareable. Build it with [`PoolKey::new`], which sorts and
/// de-duplicates `dst_identities` so the same set always yields the same key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src_identity: Identity,
    /// Identities the destination may present, sorted.
    pub dst_identities: Vec<Identity>,
    /// The HBONE endpoint (`<pod ip>:15008` or a waypoint's).
    pub dst: SocketAddr,
    /// The source IP the connection is made from (ztunnel spoofs the pod's IP).
    pub src_ip: IpAddr,
}

impl PoolKey {
    pub fn new(
        src_identity: Identity,
        mut dst_identities: Vec<Identity>,
        dst: SocketAddr,
        src_ip: IpAddr,
    ) -> Self {
        dst_identities.sort();
        dst_identities.dedup();
        PoolKey {
            src_identity,
            dst_identities,
            dst,
            src_ip,
        }
    }
}

/// Pool tuning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most streams one connection carries at once (the peer may allow fewer).
    pub max_streams_per_conn: usize,
    /// A connection with no streams for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_streams_per_conn: settings::CLIENT_MAX_STREAMS_PER_CONN,
            idle_timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// Shared outbound HBONE connections. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("cfg", &self.inner.cfg)
            .field("connections", &self.connections())
            .finish()
    }
}

struct Inner {
    cfg: PoolConfig,
    next_id: AtomicU64,
    keys: Mutex<HashMap<PoolKey, Entry>>,
}

#[derive(Default)]
struct Entry {
    conns: Vec<Conn>,
    /// Present while one caller dials for this key; others subscribe and wait.
    dialing: Option<watch::Receiver<DialOutcome>>,
}

/// `None` until the dial finishes; a sender dropped while still `None` means the dialer was
/// cancelled, and a waiter should try again itself.
type DialOutcome = Option<Result<(), SharedDialError>>;

/// A dial failure as every waiter receives it (io::Error is not Clone).
#[derive(Clone, Debug)]
struct SharedDialError {
    kind: io::ErrorKind,
    message: String,
}

struct Conn {
    id: u64,
    sender: SendRequest<Bytes>,
    /// Streams in use; the driver task watches it to spot idleness.
    active: Arc<watch::Sender<usize>>,
}

impl Conn {
    /// False once the connection failed or the peer sent GOAWAY: h2 then refuses new streams.
    fn is_usable(&self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        matches!(self.sender.clone().poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    fn has_room(&self, max: usize) -> bool {
        let limit = max.min(self.sender.current_max_send_streams());
        *self.active.borrow() < limit
    }

    fn reserve(&self) -> Slot {
        self.active.send_modify(|n| *n += 1);
        Slot {
            active: self.active.clone(),
        }
    }
}

/// What `checkout` does once it has released the lock.
enum Next<D> {
    /// Another caller is dialing: wait for its outcome, then look again.
    Wait(watch::Receiver<DialOutcome>),
    /// Nobody is: dial with this closure, announcing the outcome on this channel.
    Dial(D, watch::Sender<DialOutcome>),
    /// A dial is needed but this caller's closure was already used.
    NoDial,
}

/// One reserved stream on a connection; released on drop.
struct Slot {
    active: Arc<watch::Sender<usize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Pool {
    pub fn new(cfg: PoolConfig) -> Self {
        Pool {
            inner: Arc::new(Inner {
                cfg,
                next_id: AtomicU64::new(0),
                keys: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Open connections across all keys (those still handed out; draining ones excluded).
    pub fn connections(&self) -> usize {
        self.inner.lock().values().map(|e| e.conns.len()).sum()
    }

    /// Opens a CONNECT stream to `req.authority` over a pooled connection for `key`, dialing
    /// with `dial` if none has room. Racing callers for one key share a single in-flight dial;
    /// a connection is used for at most min(100, peer's SETTINGS_MAX_CONCURRENT_STREAMS)
    /// streams at once; idle connections close after idle_timeout. A stream refused because
    /// its connection is going away is retried once on another (or a newly dialed) connection.
    pub async fn connect<D, Fut, IO>(
        &self,
        key: PoolKey,
        req: ConnectRequest,
        dial: D,
    ) -> Result<(H2Stream, http::Response<()>), HboneError>
    where
        D: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut dial = Some(dial);
        let (sender, slot) = self.checkout(&key, &mut dial).await?;
        match send_connect(sender, slot, &req).await {
            Err(e) if e.is_retryable() => {
                debug!(error = %e, "HBONE stream refused, retrying on another connection");
                match self.checkout(&key, &mut dial).await {
                    Ok((sender, slot)) => send_connect(sender, slot, &req).await,
                    // Nothing to retry on: the original failure is the informative one.
                    Err(_) => Err(e),
                }
            }
            r => r,
        }
    }

    /// Finds a connection with room for `key` (reserving a slot on it), waits for an in-flight
    /// dial, or dials one.
    async fn checkout<D, Fut, IO>(
        &self,
        key: &PoolKey,
        dial: &mut Option<D>,
    ) -> Result<(SendRequest<Bytes>, Slot), HboneError>
    where
        D: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let max = self.inner.cfg.max_streams_per_conn;
        loop {
            // Decide under the lock, act after releasing it.
            let next = {
                let mut keys = self.inner.lock();
                let entry = keys.entry(key.clone()).or_default();
                entry.conns.retain(Conn::is_usable);
                if let Some(c) = entry.conns.iter().find(|c| c.has_room(max)) {
                    return Ok((c.sender.clone(), c.reserve()));
                }
                match &entry.dialing {
                    Some(rx) => Next::Wait(rx.clone()),
                    None => match dial.take() {
                        Some(d) => {
                            let (tx, rx) = watch::channel(None);
                            entry.dialing = Some(rx);
                            Next::Dial(d, tx)
                        }
                        None => Next::NoDial,
                    },
                }
            };
            match next {
                Next::Wait(mut rx) => {
                    // Err only means the dialer went away; the value says whether it finished.
                    let _ = rx.changed().await;
                    let outcome = rx.borrow().clone();
                    if let Some(Err(e)) = outcome {
                        return Err(HboneError::Dial(io::Error::new(
                            e.kind,
                            format!("shared dial failed: {}", e.message),
                        )));
                    }
                }
                Next::Dial(d, tx) => {
                    let guard = DialGuard {
                        inner: &self.inner,
                        key,
                        tx: Some(tx),
                    };
                    return self.dial_new(key, d, guard).await;
                }
                // Only reachable on the retry path, whose caller reports the original error.
                Next::NoDial => return Err(HboneError::ConnectionClosed),
            }
        }
    }

    async fn dial_new<D, Fut, IO>(
        &self,
        key: &PoolKey,
        dial: D,
        mut guard: DialGuard<'_>,
    ) -> Result<(SendRequest<Bytes>, Slot), HboneError>
    where
        D: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = &self.inner.cfg;
        let io = match dial().await {
            Ok(io) => io,
            Err(e) => {
                guard.finish(Err(SharedDialError {
                    kind: e.kind(),
                    message: e.to_string(),
                }));
                return Err(HboneError::Dial(e));
            }
        };
        let (sender, conn) = match settings::client_builder(cfg.max_streams_per_conn)
            .handshake::<IO, Bytes>(io)
            .await
        {
            Ok(pair) => pair,
            Err(e) => {
                guard.finish(Err(SharedDialError {
                    kind: io::ErrorKind::Other,
                    message: format!("HTTP/2 handshake: {e}"),
                }));
                return Err(HboneError::Handshake(e));
            }
        };

        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // The dialer's own stream is counted from the start, so no waiter can take its slot.
        let active = Arc::new(watch::channel(1usize).0);
        let idle_rx = active.subscribe();
        let slot = Slot {
            active: active.clone(),
        };
        {
            let mut keys = self.inner.lock();
            let entry = keys.entry(key.clone()).or_default();
            entry.conns.push(Conn {
                id,
                sender: sender.clone(),
                active,
            });
        }
        let span = tracing::debug_span!("hbone_conn", id, dst = %key.dst);
        tokio::spawn(
            drive(
                conn,
                Arc::downgrade(&self.inner),
                key.clone(),
                id,
                idle_rx,
                cfg.idle_timeout,
            )
            .instrument(span),
        );
        guard.finish(Ok(()));
        Ok((sender, slot))
    }
}

impl Inner {
    /// The pool's bookkeeping stays consistent even if a holder panicked, so poisoning is
    /// ignored rather than propagated as a second panic.
    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, Entry>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove_conn(&self, key: &PoolKey, id: u64) {
        let mut keys = self.lock();
        if let Some(entry) = keys.get_mut(key) {
            entry.conns.retain(|c| c.id != id);
            if entry.conns.is_empty() && entry.dialing.is_none() {
                keys.remove(key);
            }
        }
    }
}

/// Ends a key's in-flight dial: clears the marker and tells the waiters. Dropped without
/// `finish` (the dialing caller was cancelled) it still clears the marker, and the waiters see
/// a closed channel with no outcome and retry.
struct DialGuard<'a> {
    inner: &'a Arc<Inner>,
    key: &'a PoolKey,
    tx: Option<watch::Sender<DialOutcome>>,
}

impl DialGuard<'_> {
    fn finish(&mut self, outcome: Result<(), SharedDialError>) {
        self.clear();
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(outcome));
        }
    }

    fn clear(&self) {
        let mut keys = self.inner.lock();
        if let Some(entry) = keys.get_mut(self.key) {
            entry.dialing = None;
            if entry.conns.is_empty() {
                keys.remove(self.key);
            }
        }
    }
}

impl Drop for DialGuard<'_> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.clear();
        }
    }
}

async fn send_connect(
    sender: SendRequest<Bytes>,
    slot: Slot,
    req: &ConnectRequest,
) -> Result<(H2Stream, http::Response<()>), HboneError> {
    let mut sender = sender.ready().await?;
    let (response, send) = sender.send_request(build_connect_request(req), false)?;
    // Holding the handle would keep an idle-closed connection alive.
    drop(sender);
    let response = response.await?;
    if response.status() != http::StatusCode::OK {
        return Err(HboneError::Status(response.status()));
    }
    let (parts, recv) = response.into_parts();
    let stream = H2Stream::new(send, recv, Some(Box::new(slot)));
    Ok((stream, http::Response::from_parts(parts, ())))
}

/// Drives one client connection until it closes, its peer stops answering PINGs, or it sits
/// idle for `idle_timeout`; then takes it out of the pool.
async fn drive<IO>(
    mut conn: Connection<IO, Bytes>,
    pool: Weak<Inner>,
    key: PoolKey,
    id: u64,
    mut active: watch::Receiver<usize>,
    idle_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let keepalive = settings::keepalive(
        conn.ping_pong(),
        settings::PING_INTERVAL,
        settings::PING_TIMEOUT,
    );
    let idle_closed = tokio::select! {
        r = &mut conn => {
            debug!(result = ?r, "HBONE connection closed");
            false
        }
        e = keepalive => {
            debug!(error = %e, "HBONE peer unresponsive, dropping connection");
            false
        }
        _ = wait_idle(&pool, &key, id, &mut active, idle_timeout) => true,
    };
    if let Some(inner) = pool.upgrade() {
        inner.remove_conn(&key, id);
    }
    if idle_closed {
        // The pool's handle is gone, so h2 sends GOAWAY and closes once polled; bound the wait
        // in case the peer never reads it.
        debug!("closing idle HBONE connection");
        let _ = tokio::time::timeout(settings::PING_TIMEOUT, conn).await;
    }
}

/// Resolves once the connection has had no streams for `idle_timeout`, having removed it from
/// the pool under the lock (so no checkout can reserve a slot on it in between).
async fn wait_idle(
    pool: &Weak<Inner>,
    key: &PoolKey,
    id: u64,
    active: &mut watch::Receiver<usize>,
    idle_timeout: Duration,
) {
    loop {
        if active.wait_for(|n| *n == 0).await.is_err() {
            // The pool entry (and with it the counter) is gone; the connection closes itself.
            return std::future::pending().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(idle_timeout) => {
                let Some(inner) = pool.upgrade() else { return };
                let mut keys = inner.lock();
                if *active.borrow() == 0 {
                    if let Some(entry) = keys.get_mut(key) {
                        entry.conns.retain(|c| c.id != id);
                    }
                    return;
                }
            }
            _ = active.changed() => {}
        }
    }
}
