//! `ambit manifest generate`: the Kubernetes install, built from typed API objects.
//!
//! What is installed (all in one namespace, `istio-system` by default so Istio's root-namespace
//! conventions — mesh-wide policies live there — hold unchanged):
//!
//! - the `security.istio.io` CRDs ambit reads (AuthorizationPolicy, PeerAuthentication);
//! - the control plane: Deployment (2 replicas, spread over nodes), Service `:15012`
//!   (xDS + CA), PodDisruptionBudget, and its RBAC (read-only cluster-wide; write access only
//!   to its own CA Secret and root-certificate ConfigMap, through a namespaced Role);
//! - ztunnel: DaemonSet in the pod network, no Kubernetes API access at all (it talks only to
//!   the control plane, authenticating with a projected service-account token);
//! - the cni-agent: host-network DaemonSet whose init container installs `ambit-cni` into
//!   `/opt/cni/bin`; the agent then keeps it chained in `/etc/cni/net.d`.
//!
//! Invariants:
//! - Pure: options in, objects out, no I/O. The same options always render byte-identical
//!   YAML (k8s-openapi serializes fields in a fixed order and maps are `BTreeMap`s), which is
//!   what lets `manifests/ambit.yaml` be checked for staleness byte-for-byte.
//! - Every container drops ALL capabilities and adds back only what its component needs; only
//!   the two node agents run as root.
//! - Every option is validated before any object is built: bad input is a [`ManifestError`]
//!   naming the option, never a manifest the API server would reject.

mod cni;
mod common;
mod control_plane;
mod crds;
#[cfg(test)]
mod tests;
mod ztunnel;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Image repository prefix used when `--hub` is not given.
pub const DEFAULT_HUB: &str = "ambit";
/// Namespace used when `--namespace` is not given: Istio's root namespace, which is also the
/// default `AMBIT_ROOT_NAMESPACE` of ztunnel and the control plane's translation.
pub const DEFAULT_NAMESPACE: &str = "istio-system";
/// Name of the control plane's Deployment, Service, ServiceAccount and RBAC objects.
pub const CONTROL_PLANE: &str = "ambit-control-plane";
/// Name of ztunnel's DaemonSet and ServiceAccount (Istio's name, so tooling that looks for
/// `app=ztunnel` finds it).
pub const ZTUNNEL: &str = "ztunnel";
/// Name of the cni-agent's DaemonSet, ServiceAccount and RBAC objects.
pub const CNI_AGENT: &str = "ambit-cni-agent";
/// Port of the control plane's xDS and CA gRPC services (mTLS).
pub const XDS_PORT: i32 = 15012;
/// Readiness port (`/healthz/ready`) of every component.
pub const READINESS_PORT: i32 = 15021;
/// Secret holding the CA root key and certificate, persisted by the control plane.
pub const CA_ROOT_SECRET: &str = "ambit-ca-root";
/// ConfigMap the control plane publishes with only the root certificate (`root-cert.pem`), so
/// ztunnel can verify the control plane without ever seeing the CA key.
pub const CA_ROOT_CERT_CONFIGMAP: &str = "ambit-ca-root-cert";

/// What `ambit manifest generate` can be asked to vary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Image repository prefix: images are `<hub>/<component>:<tag>`.
    pub hub: String,
    /// Image tag shared by all components.
    pub tag: String,
    /// Namespace everything namespaced is installed into.
    pub namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hub: DEFAULT_HUB.to_string(),
            tag: env!("CARGO_PKG_VERSION").to_string(),
            namespace: DEFAULT_NAMESPACE.to_string(),
        }
    }
}

impl Options {
    /// The image reference of one component (`control-plane`, `ztunnel`, `cni-agent`).
    pub fn image(&self, component: &str) -> String {
        format!("{}/{component}:{}", self.hub, self.tag)
    }
}

/// Why a manifest could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid --{option} {value:?}: {reason}")]
    InvalidOption {
        option: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot serialize {kind} {name} to YAML: {source}")]
    Serialize {
        kind: &'static str,
        name: String,
        source: serde_yaml::Error,
    },
}

macro_rules! objects {
    ($($variant:ident),* $(,)?) => {
        /// One object of the install, typed.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Object {
            $($variant($variant),)*
        }

        impl Object {
            /// The object's `kind`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Object::$variant(_) => <$variant as k8s_openapi::Resource>::KIND,)*
                }
            }

            /// The object's metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Object::$variant(o) => &o.metadata,)*
                }
            }

            fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
                match self {
                    $(Object::$variant(o) => serde_yaml::to_string(o),)*
                }
            }
        }

        $(impl From<$variant> for Object {
            fn from(o: $variant) -> Self {
                Object::$variant(o)
            }
        })*
    };
}

objects!(
    Namespace,
    CustomResourceDefinition,
    ServiceAccount,
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
    Service,
    Deployment,
    PodDisruptionBudget,
    DaemonSet,
);

impl Object {
    /// `metadata.name`, empty if unset (never the case for generated objects).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }
}

/// Every object of the install, in an order `kubectl apply -f` can create them in: the
/// namespace and CRDs first, then identities and their permissions, then workloads.
pub fn objects(opts: &Options) -> Result<Vec<Object>, ManifestError> {
    validate(opts)?;
    let ns = opts.namespace.as_str();
    let mut namespace = common::meta(ns, None, "ambit");
    // The node agents need host paths, the host network and added capabilities, which the
    // `baseline` and `restricted` Pod Security levels reject; a cluster enforcing either by
    // default would otherwise refuse to create their pods.
    namespace
        .labels
        .get_or_insert_with(Default::default)
        .insert(
            "pod-security.kubernetes.io/enforce".to_string(),
            "privileged".to_string(),
        );
    let mut out = vec![Object::from(Namespace {
        metadata: namespace,
        ..Default::default()
    })];
    out.extend(crds::all());
    out.extend(control_plane::rbac(ns));
    out.extend(ztunnel::rbac(ns));
    out.extend(cni::rbac(ns));
    out.extend(control_plane::workload(opts));
    out.extend(ztunnel::workload(opts));
    out.extend(cni::workload(opts));
    Ok(out)
}

/// Renders objects as one multi-document YAML stream with a header naming its generator.
pub fn render(objects: &[Object]) -> Result<String, ManifestError> {
    let mut out = String::from(
        "# ambit install manifest. Generated by `ambit manifest generate`: do not edit by hand.\n",
    );
    for object in objects {
        let yaml = object
            .to_yaml()
            .map_err(|source| ManifestError::Serialize {
                kind: object.kind(),
                name: object.name().to_string(),
                source,
            })?;
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    Ok(out)
}

/// [`objects`] then [`render`]: what `ambit manifest generate` prints.
pub fn generate(opts: &Options) -> Result<String, ManifestError> {
    render(&objects(opts)?)
}

fn validate(opts: &Options) -> Result<(), ManifestError> {
    let bad = |option, value: &str, reason| ManifestError::InvalidOption {
        option,
        value: value.to_string(),
        reason,
    };
    if let Err(reason) = check_hub(&opts.hub) {
        return Err(bad("hub", &opts.hub, reason));
    }
    if let Err(reason) = check_tag(&opts.tag) {
        return Err(bad("tag", &opts.tag, reason));
    }
    if let Err(reason) = check_dns_label(&opts.namespace) {
        return Err(bad("namespace", &opts.namespace, reason));
    }
    Ok(())
}

/// A registry host (with optional port) and repository path, as in `ghcr.io/org` or
/// `localhost:5000/ambit`: lowercase path components, no empty component.
fn check_hub(hub: &str) -> Result<(), &'static str> {
    if hub.is_empty() {
        return Err("must not be empty");
    }
    if hub.split('/').any(str::is_empty) {
        return Err("has an empty path component (leading, trailing or doubled '/')");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-:/".contains(c);
    if !hub.chars().all(allowed) {
        return Err("may hold only lowercase letters, digits, '.', '_', '-', ':' and '/'");
    }
    Ok(())
}

/// The OCI distribution spec's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), &'static str> {
    let mut chars = tag.chars();
    match chars.next() {
        None => return Err("must not be empty"),
        Some(c) if !(c.is_ascii_alphanumeric() || c == '_') => {
            return Err("must start with a letter, digit or '_'")
        }
        Some(_) => {}
    }
    if tag.len() > 128 {
        return Err("is longer than 128 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err("may hold only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// RFC 1123 label, as Kubernetes requires of namespace names.
fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("may hold only lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}
