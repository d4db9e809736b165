//! The control-plane process: wires a config source (a watched local folder, or the Kubernetes
//! API), the mesh CA, the xDS server and the CA service on one mTLS port, plus a readiness
//! endpoint.
//!
//! Data flow: folder or cluster → translation → `State` on a watch channel → (a) debounced xDS
//! snapshots pushed to every ztunnel, (b) the CA service's node authorization, which always
//! judges against the newest state.

mod events;
mod kube_source;
mod readiness;
mod source;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh::ca::{CaError, CertificateAuthority};
use mesh::identity::Identity;
use tokio::net::TcpListener;

use crate::ca_service::auth::review_cache::CachedReviewer;
use crate::ca_service::auth::{
    AnyOf, Authenticator, BootstrapTokenAuthenticator, TokenFileError, TokenReviewAuthenticator,
};
use crate::ca_service::kube::{KubeTokenReviewer, DEFAULT_AUDIENCE};
use crate::ca_service::root::{
    self, Created, KubeSecretStore, LocalDirStore, RootError, RootStore, ROOT_CERT_CONFIGMAP,
};
use crate::ca_service::{CaService, CaServiceConfig};
use crate::folder::FolderError;
use crate::problems::ProblemSet;
use crate::translate::TranslateConfig;
use crate::xds::{self, XdsServer};

pub use events::{
    event_for, post_events, Involved, REASON_INVALID, REASON_WARNING, REPORTING_CONTROLLER,
};
pub use kube_source::{
    client as kube_client, convert, step, translate_snapshot, Entry, Key, KubeSettings, KubeSource,
    KubeSourceError, Step, Stores, WatchedKind, WATCHED_KINDS,
};
pub use readiness::Readiness;
pub use source::{FolderSource, DEFAULT_POLL};

/// How long a stopping control plane waits for open streams to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);

/// Where the mesh config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A watched folder of YAML (`--local-dir`).
    LocalDir(PathBuf),
    /// The Kubernetes API (`--kube`): at `api_url` (`--kube-api`), else in-cluster or
    /// kubeconfig.
    Kube { api_url: Option<String> },
}

/// Everything the process needs, already validated by the binary's flag parsing.
#[derive(Debug, Clone)]
pub struct Options {
    pub source: ConfigSource,
    /// Plug-in CA directory (Istio `cacerts` layout).
    pub cacerts: Option<PathBuf>,
    /// Where a generated root is persisted (0700 directory, 0600 key).
    pub ca_store: Option<PathBuf>,
    /// With `--kube`: the Secret a generated root is persisted in (create-only, shared by
    /// replicas), instead of `ca_store`.
    pub ca_root_secret: Option<String>,
    /// With `--kube`: the control plane's own namespace (its CA Secret and the published root
    /// ConfigMap); `None` = the client's default (in-cluster: the pod's namespace).
    pub namespace: Option<String>,
    /// Per-node bootstrap tokens (`<node> <token>` lines) for xDS and CA callers. Required
    /// without Kubernetes (nobody could authenticate otherwise); optional with it.
    pub bootstrap_tokens: Option<PathBuf>,
    /// The xDS + CA port (15012).
    pub listen: SocketAddr,
    /// `/healthz/ready`.
    pub readiness: SocketAddr,
    /// Admin/debug endpoint (`/debug/problems`); loopback unless the operator says otherwise.
    pub admin: SocketAddr,
    pub trust_domain: String,
    /// The SPIFFE id of the control plane's own serving certificate.
    pub identity: Identity,
    /// How often the folder is checked for changes.
    pub poll: Duration,
    /// xDS debounce window.
    pub debounce: Duration,
    /// Lifetime of the control plane's serving certificate (renewed at half-life).
    pub serving_cert_lifetime: Duration,
}

/// Why the control plane could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--local-dir: {0}")]
    Folder(#[from] FolderError),
    #[error("root of trust: {0}")]
    Root(#[from] RootError),
    #[error("--bootstrap-tokens: {0}")]
    Tokens(#[from] TokenFileError),
    #[error("--kube: {0}")]
    Kube(#[from] KubeSourceError),
    #[error("no way to authenticate callers: give --bootstrap-tokens or use --kube")]
    NoAuthenticator,
    #[error("serving certificate: {0}")]
    Tls(#[from] xds::tls::TlsSetupError),
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A store for when only a plug-in directory was given: nothing is stored, and generating a
/// root is refused, because a root generated without a store would change on every restart and
/// silently invalidate every certificate in the mesh.
struct NoStore(PathBuf);

impl RootStore for NoStore {
    fn describe(&self) -> String {
        format!(
            "no --ca-store or --ca-root-secret (plug-in CA {} expected)",
            self.0.display()
        )
    }
    fn load(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Option<CertificateAuthority>, RootError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    fn create<'a>(
        &'a self,
        _: &'a CertificateAuthority,
    ) -> futures::future::BoxFuture<'a, Result<Created, RootError>> {
        Box::pin(std::future::ready(Err(RootError::Store {
            store: self.describe(),
            source: CaError::Write {
                path: self.0.clone(),
                reason: "the plug-in CA directory has no CA files and no --ca-store or \
                         --ca-root-secret was given to persist a generated root"
                    .to_string(),
            },
        })))
    }
}

/// The running config source, held only so it lives (and watches) while serving: dropping it
/// stops the watch.
#[allow(dead_code)]
enum Source {
    Folder(FolderSource),
    Kube(KubeSource),
}

/// Aborts a helper task when `run` returns, on every path.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Picks the signing CA: plug-in, else stored, else generated and persisted. `kube` is the
/// API client when running with `--kube` (the Secret store needs it).
pub async fn load_ca(
    opts: &Options,
    kube: Option<&kube::Client>,
) -> Result<CertificateAuthority, RunError> {
    let store: Box<dyn RootStore> =
        match (&opts.ca_root_secret, kube, &opts.ca_store, &opts.cacerts) {
            (Some(secret), Some(client), _, _) => Box::new(KubeSecretStore::new(
                client.clone(),
                &own_namespace(opts, client),
                secret,
            )),
            (_, _, Some(dir), _) => Box::new(LocalDirStore { dir: dir.clone() }),
            (_, _, None, Some(plug_in)) => Box::new(NoStore(plug_in.clone())),
            // The binary's flag parsing requires one of them.
            _ => Box::new(NoStore(PathBuf::from("<none>"))),
        };
    let (ca, origin) =
        root::load_or_create(opts.cacerts.as_deref(), store.as_ref(), &opts.trust_domain).await?;
    tracing::info!(?origin, "mesh CA loaded");
    Ok(ca)
}

/// The namespace of the CA Secret and the root ConfigMap.
fn own_namespace(opts: &Options, client: &kube::Client) -> String {
    opts.namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned())
}

/// Binds one of the control plane's ports; the error names which.
async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { what, addr, source })
}

/// Runs until `shutdown` completes, then stops accepting and returns.
pub async fn run(
    opts: Options,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let translate_cfg = TranslateConfig {
        trust_domain: opts.trust_domain.clone(),
        ..TranslateConfig::default()
    };
    let mut shutdown = std::pin::pin!(shutdown);
    // The first translation happens before anything is served, so the first xDS push and the
    // first CA decision already see the config rather than an empty mesh.
    let problems = ProblemSet::default();
    let (source, states, kube) = match &opts.source {
        ConfigSource::LocalDir(dir) => {
            let (source, states) =
                FolderSource::start_reporting(dir, translate_cfg, opts.poll, problems.clone())?;
            (Source::Folder(source), states, None)
        }
        ConfigSource::Kube { api_url } => {
            let client = kube_source::client(api_url.as_deref()).await?;
            let (source, mut states) = KubeSource::start_reporting(
                client.clone(),
                translate_cfg,
                KubeSettings::default(),
                problems.clone(),
            );
            tracing::info!("waiting for the first list of every watched Kubernetes kind");
            tokio::select! {
                changed = states.changed() => {
                    if changed.is_err() {
                        // The source task ended before its first state: it only does when
                        // it panicked, which has been reported already.
                        return Ok(());
                    }
                }
                () = &mut shutdown => return Ok(()),
            }
            (Source::Kube(source), states, Some(client))
        }
    };

    let ca = Arc::new(load_ca(&opts, kube.as_ref()).await?);
    // On Kubernetes, publish the bundle ztunnels verify this replica with (started once the
    // ports are bound, below).
    let publish = kube.as_ref().map(|client| {
        let (client, ns, bundle) = (client.clone(), own_namespace(&opts, client), ca.roots_pem());
        async move { root::publish_root_cert(client, &ns, ROOT_CERT_CONFIGMAP, &bundle).await }
    });
    let tokens = match &opts.bootstrap_tokens {
        Some(path) => Some(Arc::new(BootstrapTokenAuthenticator::from_file(path)?)),
        None => None,
    };
    // Events go to the cluster in their own task: posting them never delays serving.
    let _events_task = kube.clone().map(|client| {
        let instance = std::env::var("POD_NAME").unwrap_or_else(|_| "control-plane".into());
        AbortOnDrop(tokio::spawn(events::post_events(
            client,
            problems.clone(),
            instance,
        )))
    });
    let reviewer = kube.map(|client| {
        let reviewer = KubeTokenReviewer::new(client, vec![DEFAULT_AUDIENCE.to_string()]);
        // Every ztunnel presents its token on each xDS stream and certificate request.
        let reviewer = CachedReviewer::new(reviewer);
        Arc::new(TokenReviewAuthenticator::new(reviewer, &opts.trust_domain))
    });
    // Bootstrap tokens first: checking them is local, a TokenReview is an API call.
    let ca_auth: Arc<dyn Authenticator> = match (&tokens, reviewer) {
        (Some(t), Some(r)) => Arc::new(AnyOf(vec![t.clone(), r])),
        (Some(t), None) => t.clone(),
        (None, Some(r)) => r,
        (None, None) => return Err(RunError::NoAuthenticator),
    };
    // One authenticator for both services: a token that gets a ztunnel its certificates also
    // gets it its config (mesh certificate holders need no token for xDS).
    let (snapshots, _debounce_task) = xds::debounced_snapshots(states.clone(), opts.debounce);
    let xds_server = XdsServer::new(snapshots, Some(ca_auth.clone()));
    let ca_service = CaService::new(
        ca.clone(),
        ca_auth,
        states,
        CaServiceConfig::new(&opts.trust_domain),
    );
    let tls = xds::tls::server_config(ca, opts.identity.clone(), opts.serving_cert_lifetime)?;

    let listener = bind("xDS/CA port", opts.listen).await?;
    let ready_listener = bind("readiness", opts.readiness).await?;
    let admin_listener = bind("admin", opts.admin).await?;
    crate::admin::warn_if_exposed(opts.admin);
    let _admin_task = AbortOnDrop(tokio::spawn(crate::admin::serve(admin_listener, problems)));
    let ready_task = tokio::spawn(readiness.clone().serve(ready_listener));
    // Both listeners are bound and the first translation is in: ztunnels may connect now (on
    // Kubernetes, once the root they verify this replica with is published).
    let _publish_task = match publish {
        None => {
            readiness.set_ready();
            None
        }
        Some(publish) => {
            let readiness = readiness.clone();
            Some(AbortOnDrop(tokio::spawn(async move {
                publish.await;
                readiness.set_ready();
            })))
        }
    };
    tracing::info!(listen = %opts.listen, readiness = %opts.readiness, admin = %opts.admin,
        identity = %opts.identity, "control plane serving xDS and CA");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(xds_server.into_service())
        .add_service(ca_service.into_server())
        .serve_with_incoming_shutdown(xds::tls::incoming(listener, tls), async {
            let _ = stop_rx.await;
        });
    let mut server = std::pin::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = &mut shutdown => {
            let _ = stop_tx.send(());
            // Graceful shutdown waits for in-flight requests, and an xDS stream never ends by
            // itself: bound the wait. ztunnels keep their config and reconnect elsewhere.
            match tokio::time::timeout(DRAIN_DEADLINE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::info!(deadline = ?DRAIN_DEADLINE, "closing remaining xDS streams");
                    Ok(())
                }
            }
        }
    }
    .map_err(|source| RunError::Serve {
        addr: opts.listen,
        source,
    });
    ready_task.abort();
    drop(source);
    tracing::info!("control plane stopped");
    result
}
