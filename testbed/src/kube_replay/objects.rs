//! The API resources the replay server knows, and builders for objects with the shapes a real
//! API server returns (structure from the Kubernetes API reference: `apiVersion`/`kind`,
//! `metadata` with `uid`/`resourceVersion`/`creationTimestamp`, `spec`, `status`).

use serde_json::{json, Map, Value};

/// One API resource: where it lives and what its objects are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// API group, `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// URL plural, e.g. `pods`.
    pub plural: &'static str,
    pub namespaced: bool,
}

impl Resource {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of a list response (`PodList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The collection path across all namespaces (`/api/v1/pods`).
    pub fn path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}/{}", self.version, self.plural)
        } else {
            format!("/apis/{}/{}/{}", self.group, self.version, self.plural)
        }
    }
}

pub const POD: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    namespaced: true,
};
pub const NAMESPACE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    namespaced: false,
};
pub const NODE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    namespaced: false,
};
pub const SERVICE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    namespaced: true,
};
pub const CONFIG_MAP: Resource = Resource {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    namespaced: true,
};
pub const ENDPOINT_SLICE: Resource = Resource {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    namespaced: true,
};

/// What [`super::KubeReplay::start`] serves.
pub const DEFAULT_RESOURCES: &[Resource] = &[
    POD,
    NAMESPACE,
    NODE,
    SERVICE,
    CONFIG_MAP,
    ENDPOINT_SLICE,
    SECRET,
    CORE_EVENT,
    EVENT,
    TOKEN_REVIEW,
];

/// The `creationTimestamp` every stored object gets (fixed, so tests stay deterministic).
pub const CREATION_TIMESTAMP: &str = "2024-01-01T00:00:00Z";

fn labels_map(labels: &[(&str, &str)]) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect::<Map<_, _>>(),
    )
}

/// A Namespace as `GET /api/v1/namespaces/{name}` returns it (server-set metadata is filled in
/// when it is stored).
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut all = labels.to_vec();
    // The API server labels every namespace with its own name (since Kubernetes 1.22).
    all.push(("kubernetes.io/metadata.name", name));
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": labels_map(&all) },
        "spec": { "finalizers": ["kubernetes"] },
        "status": { "phase": "Active" }
    })
}

/// A running Pod scheduled on `node` with address `ip` (one container, the default service
/// account unless `labels`/edits say otherwise).
pub fn pod(namespace: &str, name: &str, node: &str, ip: &str, labels: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels_map(labels),
            "annotations": {}
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": node,
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0
        },
        "status": {
            "phase": "Running",
            "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": CREATION_TIMESTAMP }],
            "hostIP": "172.16.0.1",
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "startTime": CREATION_TIMESTAMP,
            "qosClass": "BestEffort"
        }
    })
}

/// A `Status` failure object (the body of an error response, or the object of a watch `ERROR`).
pub fn status_failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    })
}

/// One line of a watch stream.
pub fn watch_event(kind: &str, object: &Value) -> Value {
    json!({ "type": kind, "object": object })
}

/// The object of a `BOOKMARK` event: only kind, apiVersion and the resourceVersion.
pub fn bookmark(resource: &Resource, resource_version: u64) -> Value {
    json!({
        "kind": resource.kind,
        "apiVersion": resource.api_version(),
        "metadata": { "resourceVersion": resource_version.to_string(), "creationTimestamp": null }
    })
}
/// Istio's `security.istio.io/v1` AuthorizationPolicy (a CRD: served only when a test passes it
/// to [`super::KubeReplay::start_with`]).
pub const AUTHORIZATION_POLICY: Resource = Resource {
    group: "security.istio.io",
    version: "v1",
    kind: "AuthorizationPolicy",
    plural: "authorizationpolicies",
    namespaced: true,
};
/// Istio's `security.istio.io/v1` PeerAuthentication (a CRD, like [`AUTHORIZATION_POLICY`]).
pub const PEER_AUTHENTICATION: Resource = Resource {
    group: "security.istio.io",
    version: "v1",
    kind: "PeerAuthentication",
    plural: "peerauthentications",
    namespaced: true,
};
/// Core `v1` Secret.
pub const SECRET: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    namespaced: true,
};
/// Core `v1` Event (what `kubectl describe` shows under "Events").
pub const CORE_EVENT: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    namespaced: true,
};
/// `events.k8s.io/v1` Event (what kube-runtime's event recorder writes).
pub const EVENT: Resource = Resource {
    group: "events.k8s.io",
    version: "v1",
    kind: "Event",
    plural: "events",
    namespaced: true,
};
/// `authentication.k8s.io/v1` TokenReview: create-only, answered from the tokens scripted with
/// [`super::KubeReplay::review_token`] and never stored.
pub const TOKEN_REVIEW: Resource = Resource {
    group: "authentication.k8s.io",
    version: "v1",
    kind: "TokenReview",
    plural: "tokenreviews",
    namespaced: false,
};

/// The audience a TokenReview without `spec.audiences` checks: the API server's own.
pub const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// What the API server knows about one bearer token, for [`super::KubeReplay::review_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// `status.user` of a successful review (`username`, `uid`, `groups`, `extra`).
    pub user: Value,
    /// The audiences the token was minted for.
    pub audiences: Vec<String>,
}

/// A projected service-account token of `namespace/service_account`, minted for `audiences`;
/// bound to a pod on `node` when `pod` (pod name, node name) is given — then the review carries
/// the `authentication.kubernetes.io/{pod-name,pod-uid,node-name,node-uid}` extras, as the API
/// server does for pod-bound tokens (Kubernetes 1.30+).
pub fn service_account_token(
    namespace: &str,
    service_account: &str,
    pod: Option<(&str, &str)>,
    audiences: &[&str],
) -> TokenIdentity {
    let mut user = json!({
        "username": format!("system:serviceaccount:{namespace}:{service_account}"),
        "uid": format!("5a1f0000-0000-4000-8000-{:012x}", service_account.len()),
        "groups": [
            "system:serviceaccounts",
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated"
        ]
    });
    if let Some((pod_name, node)) = pod {
        user["extra"] = json!({
            "authentication.kubernetes.io/credential-id": ["JTI=7b0d6e1c-0000-4000-8000-000000000001"],
            "authentication.kubernetes.io/pod-name": [pod_name],
            "authentication.kubernetes.io/pod-uid": ["9c1d0000-0000-4000-8000-000000000001"],
            "authentication.kubernetes.io/node-name": [node],
            "authentication.kubernetes.io/node-uid": ["4e2b0000-0000-4000-8000-000000000001"]
        });
    }
    TokenIdentity {
        user,
        audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
    }
}

/// The kinds the control plane's `--kube` source watches: a replay server for it must serve
/// at least these (tests add what else they exercise, e.g. [`SECRET`] or [`TOKEN_REVIEW`]).
pub const MESH_CONFIG_RESOURCES: &[Resource] = &[
    NAMESPACE,
    POD,
    SERVICE,
    ENDPOINT_SLICE,
    AUTHORIZATION_POLICY,
    PEER_AUTHENTICATION,
];
