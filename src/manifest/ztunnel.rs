//! ztunnel: one per node, in its own pod network namespace (not the host's), entering each
//! enrolled pod's namespace through the file descriptors the cni-agent hands over on the ZDS
//! socket.
//!
//! It never talks to the Kubernetes API (no RBAC, no automounted API token): it talks only to
//! the control plane, authenticating with a projected service-account token whose audience
//! is the CA, and verifying the control plane against the root certificate the control plane
//! publishes in a ConfigMap. Capabilities are Istio's ztunnel chart's: NET_ADMIN (socket marks,
//! transparent sockets), SYS_ADMIN (`setns` into pod namespaces), NET_RAW (transparent/raw
//! sockets).

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, PodSpec, PodTemplateSpec, ProjectedVolumeSource, ServiceAccount,
    ServiceAccountTokenProjection, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::common::{self, env, env_field, meta, mount};
use super::{Object, Options, CA_ROOT_CERT_CONFIGMAP, CONTROL_PLANE, XDS_PORT, ZTUNNEL};

/// Directory shared with the cni-agent (a host path on both sides) holding the ZDS socket.
pub const ZDS_DIR: &str = "/var/run/ztunnel";
/// The ZDS socket itself (ztunnel's `INPOD_UDS`, the agent's `--zds-socket`).
pub const ZDS_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// Where the projected token is mounted, and its file name in there.
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const TOKEN_FILE: &str = "istio-token";
/// Audience of ztunnel's token: the control plane's TokenReview checks it, so a token minted
/// for another audience cannot be replayed against the CA. Istio's name, so the same token
/// also works against istiod.
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// Where the root-certificate ConfigMap is mounted (Istio's path for the same file).
const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";
/// SIGTERM-to-SIGKILL window; ztunnel's own drain deadline is set a little shorter so it
/// closes connections itself rather than being killed mid-drain.
const TERMINATION_GRACE_SECONDS: i64 = 30;
const DRAIN_DEADLINE: &str = "25s";

pub fn rbac(ns: &str) -> Vec<Object> {
    vec![ServiceAccount {
        metadata: meta(ZTUNNEL, Some(ns), ZTUNNEL),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
    .into()]
}

pub fn workload(opts: &Options) -> Vec<Object> {
    let ns = opts.namespace.as_str();
    let control_plane = format!("{CONTROL_PLANE}.{ns}.svc:{XDS_PORT}");

    let mut container = common::container("istio-proxy", opts.image("ztunnel"));
    container.ports = Some(vec![
        common::port("ztunnel-stats", 15020),
        common::port("http-ready", super::READINESS_PORT),
    ]);
    container.env = Some(vec![
        env("XDS_ADDRESS", &control_plane),
        env("CA_ADDRESS", &control_plane),
        env("XDS_ROOT_CA", &format!("{ROOT_CERT_DIR}/root-cert.pem")),
        env("AMBIT_XDS_TOKEN_FILE", &format!("{TOKEN_DIR}/{TOKEN_FILE}")),
        env("PROXY_MODE", "shared"),
        env("INPOD_UDS", ZDS_SOCKET),
        env("AMBIT_DRAIN_DEADLINE", DRAIN_DEADLINE),
        // The xDS node id and metadata, and the node the CA checks certificate requests against.
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("NODE_NAME", "spec.nodeName"),
        env_field("INSTANCE_IP", "status.podIP"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]);
    container.readiness_probe = Some(common::readiness_probe());
    // No CPU limit: CFS throttling would add latency to every proxied connection on the node;
    // the request reserves ztunnel's share and the memory limit bounds it.
    container.resources = Some(common::resources("200m", "128Mi", None, "1Gi"));
    container.security_context = Some(common::root_security_context(&[
        "NET_ADMIN",
        "SYS_ADMIN",
        "NET_RAW",
    ]));
    container.volume_mounts = Some(vec![
        mount("ztunnel-sock-dir", ZDS_DIR),
        mount("root-cert", ROOT_CERT_DIR),
        mount("token", TOKEN_DIR),
        mount("tmp", "/tmp"),
    ]);

    let volumes = vec![
        // DirectoryOrCreate: the cni-agent may not have started yet; it creates the socket.
        common::host_path_volume("ztunnel-sock-dir", ZDS_DIR, "DirectoryOrCreate"),
        // Not optional: without the root, ztunnel could not verify the control plane, so the
        // pod waits (visibly, in its events) until the control plane has published it.
        Volume {
            name: "root-cert".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: CA_ROOT_CERT_CONFIGMAP.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "token".to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.to_string()),
                        expiration_seconds: Some(43200),
                        path: TOKEN_FILE.to_string(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        common::empty_dir_volume("tmp"),
    ];

    let daemonset = DaemonSet {
        metadata: meta(ZTUNNEL, Some(ns), ZTUNNEL),
        spec: Some(DaemonSetSpec {
            selector: common::selector(ZTUNNEL),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(common::pod_labels(ZTUNNEL)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(ZTUNNEL.to_string()),
                    automount_service_account_token: Some(false),
                    node_selector: Some(common::node_selector_linux()),
                    tolerations: Some(common::tolerate_everything()),
                    priority_class_name: Some("system-node-critical".to_string()),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![daemonset.into()]
}
