//! The delta ADS stream: connect, subscribe, apply, (N)ACK, reconnect.
//!
//! One task owns the [`ResourceCache`] for the life of the process, across streams, so a
//! dropped stream costs nothing but freshness: the last published [`State`] stays in force,
//! and the next stream re-subscribes with `initial_resource_versions` so the server sends only
//! what changed (and what was removed) while the client was away.
//!
//! Nothing is published before the first complete push (a response for every subscribed type):
//! a state with workloads but not yet their authorization policies would let through traffic
//! the policies deny.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rustls_pki_types::ServerName;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use super::cache::{Kind, ResourceCache};
use super::proto;
use super::tls::TlsConnectorService;
use super::NodeInfo;
use crate::readiness::BlockReady;
use crate::state::StatePublisher;

/// Largest response accepted (the control plane's own encoding limit).
const MAX_RESPONSE: usize = 256 << 20;

/// Reconnect delays: doubling from `initial` up to `max`, with jitter so a fleet of ztunnels
/// does not reconnect in lock-step after a control-plane restart.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failed attempts (1 = first failure): between
    /// half and all of `initial * 2^(failures-1)`, capped at `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        let full = self.initial.saturating_mul(1 << exp).min(self.max);
        let half = full / 2;
        half + full
            .saturating_sub(half)
            .mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }
}

/// Everything the client needs to reach and authenticate to the control plane.
#[derive(Clone)]
pub struct XdsClientConfig {
    /// `host:port`.
    pub address: String,
    /// Name checked against the server certificate's DNS/IP SANs (the host of the address).
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    /// File holding the bearer token; re-read on every connect so a rotated (projected
    /// service-account) token is picked up.
    pub token_file: Option<PathBuf>,
    pub node: NodeInfo,
    pub backoff: Backoff,
}

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot read the xDS token file {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the xDS token in {path} is not a valid header value")]
    BadToken { path: PathBuf },
    /// Boxed: a `Status` is large and this error is returned on every stream's end.
    #[error("xDS stream failed: {0}")]
    Grpc(Box<tonic::Status>),
    #[error("the control plane closed the xDS stream")]
    Closed,
}

impl From<tonic::Status> for StreamError {
    fn from(s: tonic::Status) -> Self {
        StreamError::Grpc(Box::new(s))
    }
}

/// The client task: owns the cache, publishes states, releases readiness on the first
/// complete push.
pub struct XdsClient {
    cfg: XdsClientConfig,
    publisher: StatePublisher,
    cache: ResourceCache,
    ready: Option<BlockReady>,
    on_result: Box<dyn Fn(bool) + Send + Sync>,
    /// Whether `cache` holds changes not yet published (e.g. received before the push was
    /// complete, or kept after a state-level rejection).
    dirty: bool,
}

impl XdsClient {
    pub fn new(
        cfg: XdsClientConfig,
        publisher: StatePublisher,
        ready: Option<BlockReady>,
        on_result: impl Fn(bool) + Send + Sync + 'static,
    ) -> Self {
        XdsClient {
            cfg,
            publisher,
            cache: ResourceCache::default(),
            ready,
            on_result: Box::new(on_result),
            dirty: false,
        }
    }

    /// Runs forever: one stream at a time, reconnecting with backoff when a stream ends.
    pub async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let mut got_response = false;
            let err = self.stream_once(&mut got_response).await;
            // A stream that delivered config was healthy: start the backoff over.
            if got_response {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let delay = self.cfg.backoff.delay(failures);
            warn!(error = %err, retry_in = ?delay, "xDS stream down; serving the last config");
            tokio::time::sleep(delay).await;
        }
    }

    async fn connect(&self) -> Result<Channel, StreamError> {
        let connect_err = |source| StreamError::Connect {
            address: self.cfg.address.clone(),
            source,
        };
        let endpoint = Endpoint::from_shared(format!("https://{}", self.cfg.address))
            .map_err(connect_err)?
            .connect_timeout(Duration::from_secs(10))
            // Detects a control plane that vanished without closing the connection, so the
            // client reconnects instead of waiting on a dead stream forever.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let connector = TlsConnectorService {
            address: self.cfg.address.clone(),
            server_name: self.cfg.server_name.clone(),
            config: self.cfg.tls.clone(),
        };
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(connect_err)
    }

    fn bearer(
        &self,
    ) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, StreamError> {
        let Some(path) = &self.cfg.token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path).map_err(|source| StreamError::Token {
            path: path.clone(),
            source,
        })?;
        format!("Bearer {}", token.trim())
            .parse()
            .map(Some)
            .map_err(|_| StreamError::BadToken { path: path.clone() })
    }

    /// One stream, from connect to its end; returns why it ended.
    async fn stream_once(&mut self, got_response: &mut bool) -> StreamError {
        match self.try_stream(got_response).await {
            Ok(()) => StreamError::Closed,
            Err(e) => e,
        }
    }

    async fn try_stream(&mut self, got_response: &mut bool) -> Result<(), StreamError> {
        let channel = self.connect().await?;
        let (tx, rx) = mpsc::channel(Kind::ALL.len() + 4);
        for kind in Kind::ALL {
            // Capacity covers every initial request, so these never wait.
            let _ = tx.try_send(self.subscribe_request(kind));
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(bearer) = self.bearer()? {
            request.metadata_mut().insert("authorization", bearer);
        }
        // A large mesh's initial push is one big response; tonic's 4 MiB default would fail
        // it forever. Same ceiling as the control plane's encoding limit.
        let mut client = proto::AdsClient::new(channel).max_decoding_message_size(MAX_RESPONSE);
        let mut responses = client
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        info!(address = %self.cfg.address, node = %self.cfg.node.node_id(), "xDS stream open");
        while let Some(resp) = responses.message().await? {
            *got_response = true;
            let reply = self.handle(&resp);
            drop(resp);
            // The decoded response, the per-resource decode garbage and (unless a reader still
            // holds it) the replaced state are free now: hand the pages back at once rather
            // than on jemalloc's decay timer, which a quiet stream never advances. Responses
            // are debounced by the control plane, so this runs at most a few times a second.
            crate::alloc::release_freed_memory();
            if tx.send(reply).await.is_err() {
                // The request side is gone: the stream is over; the next message() says why.
                continue;
            }
        }
        Ok(())
    }

    /// The first request of a stream for `kind`: a wildcard subscription, carrying what the
    /// client already holds so a reconnect resyncs instead of restarting.
    fn subscribe_request(&self, kind: Kind) -> proto::DeltaDiscoveryRequest {
        proto::DeltaDiscoveryRequest {
            node: Some(self.cfg.node.to_proto()),
            type_url: kind.type_url().to_string(),
            initial_resource_versions: self.cache.versions(kind),
            ..Default::default()
        }
    }

    /// Applies one response and returns its ACK or NACK.
    pub(crate) fn handle(
        &mut self,
        resp: &proto::DeltaDiscoveryResponse,
    ) -> proto::DeltaDiscoveryRequest {
        let mut problems = Vec::new();
        match self.cache.apply(resp) {
            Ok(applied) => {
                debug!(
                    type_url = %resp.type_url,
                    nonce = %resp.nonce,
                    resources = resp.resources.len(),
                    removed = resp.removed_resources.len(),
                    changed = applied.changed,
                    "xDS response"
                );
                self.dirty |= applied.changed;
                if let Some(msg) = applied.nack_message() {
                    problems.push(msg);
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
        if self.cache.complete() && (self.dirty || self.ready.is_some()) {
            match self.cache.build_state() {
                Ok(state) => {
                    for w in state.warnings() {
                        debug!(warning = %w, "xDS config warning");
                    }
                    self.publisher.publish(state);
                    self.dirty = false;
                    if let Some(ready) = self.ready.take() {
                        info!("first complete xDS push applied");
                        ready.ready();
                    }
                }
                Err(e) => problems.push(format!("resulting config is invalid: {e}")),
            }
        }
        let error_detail = if problems.is_empty() {
            (self.on_result)(true);
            None
        } else {
            let message = problems.join("; ");
            warn!(type_url = %resp.type_url, nonce = %resp.nonce, error = %message,
                "NACK: rejected xDS config; keeping the last good one");
            self.publisher.reject(message.clone());
            (self.on_result)(false);
            Some(proto::Status {
                // google.rpc.Code INVALID_ARGUMENT, as Envoy and Istio's ztunnel send.
                code: 3,
                message,
                ..Default::default()
            })
        };
        proto::DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        }
    }
}
