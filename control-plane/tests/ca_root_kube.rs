//! The CA root on Kubernetes against the fake API server, through kube's real client: the
//! create-only `ambit-ca-root` Secret store (generate and persist, concurrent starts, partial
//! Secret) and publishing the root certificate ConfigMap ztunnel mounts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use control_plane::ca_service::root::{
    self, Created, KubeSecretStore, Published, RootError, RootOrigin, RootStore,
    ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY,
};
use control_plane::run::kube_client;
use futures::future::BoxFuture;
use mesh::ca::CertificateAuthority;
use serde_json::{json, Value};
use testbed::kube_replay::{self as kr, KubeReplay};

const NS: &str = "istio-system";
const SECRET: &str = "ambit-ca-root";
const TD: &str = "cluster.local";
const WAIT: Duration = Duration::from_secs(20);

async fn client(replay: &KubeReplay) -> kube::Client {
    kube_client(Some(&replay.url())).await.unwrap()
}

async fn store(replay: &KubeReplay) -> KubeSecretStore {
    KubeSecretStore::new(client(replay).await, NS, SECRET)
}

fn requests_to(replay: &KubeReplay, plural: &str, method: &str) -> Vec<u16> {
    replay
        .requests()
        .into_iter()
        .filter(|r| r.plural.as_deref() == Some(plural) && r.method == method)
        .map(|r| r.status)
        .collect()
}

/// A Secret's data value, decoded (through k8s-openapi's own base64 handling).
fn secret_value(secret: &Value, key: &str) -> Option<String> {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(secret.clone()).ok()?;
    String::from_utf8(secret.data?.remove(key)?.0).ok()
}

#[tokio::test]
async fn generated_root_is_persisted_in_the_secret_and_loaded_on_the_next_start() {
    let replay = KubeReplay::start().await.unwrap();
    let (first, origin) = root::load_or_create(None, &store(&replay).await, TD)
        .await
        .unwrap();
    assert!(matches!(origin, RootOrigin::Generated(_)), "{origin:?}");

    let secret = replay.get("Secret", NS, SECRET).expect("Secret written");
    assert_eq!(secret["type"], "Opaque");
    for key in [
        "ca-key.pem",
        "ca-cert.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        assert!(secret_value(&secret, key).is_some(), "{key} in {secret}");
    }
    assert_eq!(
        secret_value(&secret, "root-cert.pem").unwrap(),
        first.roots_pem()
    );

    // A restart (new client, new store) loads the same root and writes nothing.
    let (again, origin) = root::load_or_create(None, &store(&replay).await, TD)
        .await
        .unwrap();
    assert!(matches!(origin, RootOrigin::Stored(_)), "{origin:?}");
    assert_eq!(
        again.roots(),
        first.roots(),
        "the same root after a restart"
    );
    assert_eq!(requests_to(&replay, "secrets", "POST"), vec![201]);
    assert_eq!(replay.get("Secret", NS, SECRET).unwrap(), secret);
}

/// A real store whose `create` waits until both replicas have loaded (found nothing) and
/// generated: the race the Secret's create-only write must settle.
struct BothGenerateFirst {
    inner: KubeSecretStore,
    barrier: Arc<tokio::sync::Barrier>,
}

impl RootStore for BothGenerateFirst {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn load(&self) -> BoxFuture<'_, Result<Option<CertificateAuthority>, RootError>> {
        self.inner.load()
    }
    fn create<'a>(
        &'a self,
        ca: &'a CertificateAuthority,
    ) -> BoxFuture<'a, Result<Created, RootError>> {
        Box::pin(async move {
            self.barrier.wait().await;
            self.inner.create(ca).await
        })
    }
}

#[tokio::test]
async fn two_replicas_starting_together_end_with_one_root() {
    let replay = KubeReplay::start().await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let replica = |inner| {
        let store = BothGenerateFirst {
            inner,
            barrier: barrier.clone(),
        };
        tokio::spawn(async move { root::load_or_create(None, &store, TD).await })
    };
    let a = replica(store(&replay).await);
    let b = replica(store(&replay).await);
    let (a, a_origin) = a.await.unwrap().unwrap();
    let (b, b_origin) = b.await.unwrap().unwrap();

    assert_eq!(a.roots(), b.roots(), "both replicas sign under one root");
    let mut origins = [a_origin, b_origin].map(|o| match o {
        RootOrigin::Generated(_) => "generated",
        RootOrigin::StoredByPeer(_) => "stored by peer",
        other => panic!("unexpected {other:?}"),
    });
    origins.sort();
    assert_eq!(origins, ["generated", "stored by peer"]);
    let mut creates = requests_to(&replay, "secrets", "POST");
    creates.sort();
    assert_eq!(creates, vec![201, 409], "exactly one create won");
    let secret = replay.get("Secret", NS, SECRET).unwrap();
    assert_eq!(
        secret_value(&secret, "root-cert.pem").unwrap(),
        a.roots_pem()
    );
}

#[tokio::test]
async fn a_secret_with_keys_missing_is_refused_and_left_as_is() {
    let replay = KubeReplay::start().await.unwrap();
    let partial = replay
        .apply(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NS},
            "type": "Opaque",
            // base64("someone's key")
            "data": {"ca-key.pem": "c29tZW9uZSdzIGtleQ=="}
        }))
        .unwrap();
    let err = root::load_or_create(None, &store(&replay).await, TD)
        .await
        .unwrap_err();
    match &err {
        RootError::Partial {
            store,
            present,
            missing,
        } => {
            assert!(store.contains("istio-system/ambit-ca-root"), "{err}");
            assert_eq!(present, &vec!["ca-key.pem"]);
            assert_eq!(missing, &vec!["ca-cert.pem", "root-cert.pem"]);
        }
        other => panic!("expected Partial, got {other}"),
    }
    assert_eq!(replay.get("Secret", NS, SECRET).unwrap(), partial);
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        assert!(
            requests_to(&replay, "secrets", method).is_empty(),
            "no {method}"
        );
    }
}

#[tokio::test]
async fn plug_in_ca_wins_over_the_secret() {
    let replay = KubeReplay::start().await.unwrap();
    let store = store(&replay).await;
    let (stored, _) = root::load_or_create(None, &store, TD).await.unwrap();
    let tmp = TempDir::new("plug-in-wins");
    let org = CertificateAuthority::generate(TD).unwrap();
    org.write_cacerts_dir(&tmp.0).unwrap();
    let (ca, origin) = root::load_or_create(Some(&tmp.0), &store, TD)
        .await
        .unwrap();
    assert_eq!(origin, RootOrigin::PlugIn(tmp.0.clone()));
    assert_eq!(ca.roots(), org.roots());
    assert_ne!(ca.roots(), stored.roots());
}

fn configmap_bundle(replay: &KubeReplay) -> Option<String> {
    replay
        .get("ConfigMap", NS, ROOT_CERT_CONFIGMAP)?
        .pointer(&format!("/data/{ROOT_CERT_KEY}"))?
        .as_str()
        .map(str::to_owned)
}

async fn publish(replay: &KubeReplay, bundle: &str) -> Published {
    let client = client(replay).await;
    tokio::time::timeout(
        WAIT,
        root::publish_root_cert(client, NS, ROOT_CERT_CONFIGMAP, bundle),
    )
    .await
    .expect("published in time")
}

#[tokio::test]
async fn root_configmap_is_created_then_updated_when_a_plug_in_ca_replaces_the_root() {
    let replay = KubeReplay::start().await.unwrap();
    let store = store(&replay).await;
    let (generated, _) = root::load_or_create(None, &store, TD).await.unwrap();
    assert_eq!(
        publish(&replay, &generated.roots_pem()).await,
        Published::Created
    );
    assert_eq!(configmap_bundle(&replay), Some(generated.roots_pem()));
    // What ztunnel does with it: the control plane's chain verifies against the bundle.
    let bundle =
        mesh::cert::parse_pem_certs(&configmap_bundle(&replay).unwrap(), "root-cert.pem").unwrap();
    assert_eq!(bundle, generated.roots());

    // A restart with the same root writes nothing.
    let puts_before = requests_to(&replay, "configmaps", "PUT").len();
    assert_eq!(
        publish(&replay, &generated.roots_pem()).await,
        Published::Unchanged
    );
    assert_eq!(requests_to(&replay, "configmaps", "PUT").len(), puts_before);

    // Someone else's key in the same ConfigMap survives the update.
    let mut cm = replay.get("ConfigMap", NS, ROOT_CERT_CONFIGMAP).unwrap();
    cm["data"]["note"] = json!("kept");
    replay.apply(cm).unwrap();

    // The operator adds a plug-in CA and restarts: the new bundle replaces the old one.
    let tmp = TempDir::new("plug-in-publish");
    let org = CertificateAuthority::generate(TD).unwrap();
    org.write_cacerts_dir(&tmp.0).unwrap();
    let (plugged, origin) = root::load_or_create(Some(&tmp.0), &store, TD)
        .await
        .unwrap();
    assert!(matches!(origin, RootOrigin::PlugIn(_)));
    assert_ne!(plugged.roots_pem(), generated.roots_pem());
    assert_eq!(
        publish(&replay, &plugged.roots_pem()).await,
        Published::Updated
    );
    assert_eq!(configmap_bundle(&replay), Some(plugged.roots_pem()));
    let cm = replay.get("ConfigMap", NS, ROOT_CERT_CONFIGMAP).unwrap();
    assert_eq!(cm["data"]["note"], "kept");
}

#[tokio::test]
async fn publishing_retries_api_errors_until_it_succeeds() {
    let replay = KubeReplay::start().await.unwrap();
    let ca = CertificateAuthority::generate(TD).unwrap();
    replay.fail_next(&kr::CONFIG_MAP, 2, 500);
    assert_eq!(publish(&replay, &ca.roots_pem()).await, Published::Created);
    assert_eq!(configmap_bundle(&replay), Some(ca.roots_pem()));
    let gets = requests_to(&replay, "configmaps", "GET");
    assert_eq!(&gets[..2], &[500, 500], "two failures, then {gets:?}");
    assert_eq!(requests_to(&replay, "configmaps", "POST"), vec![201]);
}

#[tokio::test]
async fn a_concurrent_configmap_write_is_re_read_not_overwritten_blindly() {
    let replay = KubeReplay::start().await.unwrap();
    let old = CertificateAuthority::generate(TD).unwrap();
    let new = CertificateAuthority::generate(TD).unwrap();
    assert_eq!(publish(&replay, &old.roots_pem()).await, Published::Created);
    // Both replicas of a new version publish the same new bundle at once: one updates, the
    // other either sees it already there or loses the resourceVersion race and re-reads.
    let bundle = new.roots_pem();
    let (a, b) = tokio::join!(publish(&replay, &bundle), publish(&replay, &bundle));
    let mut outcomes = [a, b];
    outcomes.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(outcomes, [Published::Unchanged, Published::Updated]);
    assert_eq!(configmap_bundle(&replay), Some(new.roots_pem()));
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ambit-ca-kube-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The whole control plane (`run`) with `--kube --ca-root-secret` on an empty cluster: it
/// starts without a plug-in CA, persists its root, publishes it, and is ready only once
/// the ConfigMap holds its root.
#[tokio::test]
async fn control_plane_on_an_empty_cluster_persists_publishes_and_only_then_is_ready() {
    use control_plane::run::{self, ConfigSource, Options, Readiness};

    let replay = KubeReplay::start_with(
        [
            kr::MESH_CONFIG_RESOURCES,
            &[kr::SECRET, kr::CONFIG_MAP, kr::TOKEN_REVIEW],
        ]
        .concat(),
    )
    .await
    .unwrap();
    // Publishing fails until lifted: the replica must stay unready meanwhile.
    replay.fail_next(&kr::CONFIG_MAP, usize::MAX, 403);
    let opts = Options {
        source: ConfigSource::Kube {
            api_url: Some(replay.url()),
        },
        cacerts: Some(PathBuf::from("/nonexistent/cacerts")),
        ca_store: None,
        ca_root_secret: Some(SECRET.to_owned()),
        namespace: Some(NS.to_owned()),
        bootstrap_tokens: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        readiness: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        trust_domain: TD.to_owned(),
        identity: mesh::identity::Identity::new(TD, NS, "ambit-control-plane").unwrap(),
        poll: Duration::from_millis(50),
        debounce: Duration::from_millis(10),
        serving_cert_lifetime: Duration::from_secs(3600),
    };
    let readiness = Readiness::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run::run(opts, readiness.clone(), async {
        let _ = stop_rx.await;
    }));

    // The root is persisted, and publishing is being attempted (and refused) a few times.
    replay
        .wait_until("three refused ConfigMap reads", WAIT, |a| {
            a.requests
                .iter()
                .filter(|r| r.plural.as_deref() == Some("configmaps") && r.status == 403)
                .count()
                >= 3
        })
        .await
        .unwrap();
    let secret = replay.get("Secret", NS, SECRET).expect("root persisted");
    assert!(
        !readiness.is_ready(),
        "not ready before the root is published"
    );
    assert!(!server.is_finished(), "publishing errors must not stop it");

    replay.clear_failures();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !readiness.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        configmap_bundle(&replay),
        secret_value(&secret, "root-cert.pem"),
        "ztunnels get the root the Secret holds"
    );
    let _ = stop_tx.send(());
    tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
