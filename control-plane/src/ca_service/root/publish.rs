//! Publishing the trust bundle ztunnels verify the control plane with: ConfigMap
//! `ambit-ca-root-cert`, key `root-cert.pem`, in the control plane's namespace. ztunnel mounts
//! it at `/var/run/secrets/istio` and reads `root-cert.pem` (`XDS_ROOT_CA`, and `CA_ROOT_CA`
//! by default).
//!
//! Only the roots are published, never the key or the signing certificate's key material.
//! The ConfigMap is created, or updated when its `root-cert.pem` differs from this control
//! plane's bundle (other keys are kept); an update carries the `resourceVersion` read, so a
//! concurrent writer makes it fail with 409 and it is re-read and tried again. API errors are
//! logged and retried with capped exponential back-off: a control plane that cannot publish
//! keeps running (it is not ready, see `run`), it never exits over it.
//!
//! It publishes once per start, then stops: the bundle only changes when the control plane
//! restarts with another CA, and a replica that kept re-asserting its bundle would fight a
//! newer replica during a rolling update.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use mesh_kube::ExponentialBackoff;

/// Default name of the ConfigMap (what ztunnel's DaemonSet mounts).
pub const ROOT_CERT_CONFIGMAP: &str = "ambit-ca-root-cert";
/// The key ztunnel reads (`/var/run/secrets/istio/root-cert.pem`).
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// First wait after a failed attempt; doubled per failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Write conflicts (another replica wrote in between) are retried at once, this many times in
/// a row, before they count as a failure and back off.
const CONFLICT_RETRIES: u32 = 3;

/// What publishing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Created,
    Updated,
    /// The ConfigMap already held this bundle.
    Unchanged,
}

/// Publishes `bundle` (PEM roots) as `root-cert.pem` of ConfigMap `namespace/name`, retrying
/// until it succeeds once. Cancel by dropping the future.
pub async fn publish_root_cert(
    client: kube::Client,
    namespace: &str,
    name: &str,
    bundle: &str,
) -> Published {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let mut backoff = ExponentialBackoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut conflicts = 0;
    loop {
        match publish_once(&api, name, bundle).await {
            Ok(done) => {
                tracing::info!(configmap = %format!("{namespace}/{name}"), outcome = ?done,
                    "published the mesh root certificate");
                return done;
            }
            Err(kube::Error::Api(status)) if status.code == 409 && conflicts < CONFLICT_RETRIES => {
                conflicts += 1;
                continue;
            }
            Err(e) => {
                conflicts = 0;
                let delay = backoff.next().unwrap_or(BACKOFF_MAX);
                tracing::warn!(configmap = %format!("{namespace}/{name}"), error = %e,
                    retry_in = ?delay, "cannot publish the mesh root certificate");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn publish_once(
    api: &Api<ConfigMap>,
    name: &str,
    bundle: &str,
) -> Result<Published, kube::Error> {
    let Some(mut current) = api.get_opt(name).await? else {
        let fresh = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ambit-control-plane".to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                ROOT_CERT_KEY.to_owned(),
                bundle.to_owned(),
            )])),
            ..Default::default()
        };
        api.create(&PostParams::default(), &fresh).await?;
        return Ok(Published::Created);
    };
    let data = current.data.get_or_insert_with(BTreeMap::new);
    if data.get(ROOT_CERT_KEY).map(String::as_str) == Some(bundle) {
        return Ok(Published::Unchanged);
    }
    data.insert(ROOT_CERT_KEY.to_owned(), bundle.to_owned());
    // `current` still carries the resourceVersion read above: a write in between is a 409.
    api.replace(name, &PostParams::default(), &current).await?;
    Ok(Published::Updated)
}
