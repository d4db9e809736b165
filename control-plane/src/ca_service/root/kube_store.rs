//! The root store on Kubernetes: one Opaque Secret (default `ambit-ca-root`) in the control
//! plane's namespace, with the keys of the `cacerts` layout, so it can later be copied as is
//! into a plug-in `cacerts` Secret (docs/ca.md, "Rotating the root").
//!
//! Create-only: the Secret is written with a POST and never updated. When two replicas start
//! together on an empty cluster, both generate, exactly one POST succeeds and the other gets
//! `409 AlreadyExists`; [`super::load_or_create`] then discards the loser's root and loads the
//! winner's. A Secret that exists but lacks some keys is refused and left as it is.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use mesh::ca::{CacertsPem, CertificateAuthority};

use super::{Created, RootError, RootStore, CACERTS_FILES, REQUIRED_FILES};

/// Default name of the Secret (what the manifests' RBAC grants `get` on).
pub const DEFAULT_SECRET: &str = "ambit-ca-root";

/// A Secret in the `cacerts` layout, read and created through the API server.
#[derive(Clone)]
pub struct KubeSecretStore {
    client: kube::Client,
    namespace: String,
    name: String,
}

impl std::fmt::Debug for KubeSecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl KubeSecretStore {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> KubeSecretStore {
        KubeSecretStore {
            client,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn api_error(&self, what: &str, e: kube::Error) -> RootError {
        RootError::Api {
            store: self.describe(),
            reason: format!("{what}: {e}"),
        }
    }

    async fn load_now(&self) -> Result<Option<CertificateAuthority>, RootError> {
        let Some(secret) = self
            .api()
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error("reading the Secret", e))?
        else {
            return Ok(None);
        };
        let data = secret.data.unwrap_or_default();
        let text = |key: &'static str| -> Result<Option<String>, RootError> {
            data.get(key)
                .map(|v| {
                    String::from_utf8(v.0.clone()).map_err(|_| RootError::Api {
                        store: self.describe(),
                        reason: format!("key {key} is not UTF-8 PEM"),
                    })
                })
                .transpose()
        };
        let (present, missing): (Vec<&'static str>, Vec<&'static str>) =
            REQUIRED_FILES.iter().partition(|k| data.contains_key(**k));
        if !missing.is_empty() {
            // Includes a Secret with none of the keys: it exists, so it is somebody's, and a
            // create-only store cannot (and must not) write over it.
            let mut present = present;
            if data.contains_key(CACERTS_FILES[3]) {
                present.push(CACERTS_FILES[3]);
            }
            return Err(RootError::Partial {
                store: self.describe(),
                present,
                missing,
            });
        }
        let files = CacertsPem {
            ca_key: text("ca-key.pem")?.unwrap_or_default(),
            ca_cert: text("ca-cert.pem")?.unwrap_or_default(),
            root_cert: text("root-cert.pem")?.unwrap_or_default(),
            cert_chain: text("cert-chain.pem")?,
        };
        CertificateAuthority::from_cacerts_pem(&files)
            .map(Some)
            .map_err(|source| RootError::Store {
                store: self.describe(),
                source,
            })
    }

    async fn create_now(&self, ca: &CertificateAuthority) -> Result<Created, RootError> {
        let files = ca.to_cacerts_pem();
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            data.insert(key.to_owned(), ByteString(value.into_bytes()));
        };
        put("ca-key.pem", files.ca_key);
        put("ca-cert.pem", files.ca_cert);
        put("root-cert.pem", files.root_cert);
        if let Some(chain) = files.cert_chain {
            put("cert-chain.pem", chain);
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ambit-control-plane".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Default::default()
        };
        match self.api().create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(Created::Stored),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Created::AlreadyExists),
            Err(e) => Err(self.api_error("creating the Secret", e)),
        }
    }
}

impl RootStore for KubeSecretStore {
    fn describe(&self) -> String {
        format!("CA root Secret {}/{}", self.namespace, self.name)
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<CertificateAuthority>, RootError>> {
        Box::pin(self.load_now())
    }

    fn create<'a>(
        &'a self,
        ca: &'a CertificateAuthority,
    ) -> BoxFuture<'a, Result<Created, RootError>> {
        Box::pin(self.create_now(ca))
    }
}
