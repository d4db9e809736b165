//! Minimal serde views of the Kubernetes and Istio objects ambit translates, on their real
//! field names, and the multi-document YAML reader that produces them.
//!
//! Only the fields translation needs are declared; every other field is ignored, as a real
//! object carries many (status, managedFields, ...). The exception is the policy kinds, whose
//! unknown fields are *kept* (`unknown`) so translation can treat a field it does not
//! understand fail-safe instead of silently dropping a condition an ALLOW rule depended on.
//!
//! Invariants of [`parse_documents`]: it never panics and never fails as a whole; each document
//! (or each item of a `kind: List`) yields exactly one entry, an [`Object`] or an
//! [`ObjectError`] naming the document, its first line, and what is wrong. Documents that are
//! empty (only comments) yield nothing. Every [`Object`] has a non-empty name, and a non-empty
//! namespace when its kind is namespaced (Kubernetes' `default` when the document omits it, as
//! `kubectl apply` does).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

pub(crate) mod de;

#[cfg(test)]
mod tests;

pub use de::IntOrString;

/// Labels or annotations.
pub type Labels = BTreeMap<String, String>;

/// One object ambit understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Box<Pod>),
    Service(Service),
    EndpointSlice(EndpointSlice),
    ServiceAccount(ServiceAccount),
    Node(Node),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Node(_) => "Node",
            Object::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Object::PeerAuthentication(_) => "PeerAuthentication",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
        }
    }

    /// Kind, namespace and name: how problems name the object.
    pub fn object_ref(&self) -> ObjectRef {
        let m = self.metadata();
        ObjectRef {
            kind: self.kind().to_string(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
        }
    }
}

/// Names an object in a problem report: `Pod default/web-1`, `Namespace prod`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Empty when the document did not say (or was not a mapping at all).
    pub kind: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.kind.is_empty() {
            "object"
        } else {
            &self.kind
        };
        match (self.namespace.is_empty(), self.name.is_empty()) {
            (_, true) => write!(f, "{kind} (unnamed)"),
            (true, false) => write!(f, "{kind} {}", self.name),
            (false, false) => write!(f, "{kind} {}/{}", self.namespace, self.name),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    #[serde(deserialize_with = "de::labels")]
    pub labels: Labels,
    #[serde(deserialize_with = "de::labels")]
    pub annotations: Labels,
    /// RFC 3339 (`2024-05-01T10:00:00Z`); Istio picks the oldest of conflicting policies.
    pub creation_timestamp: Option<String>,
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub controller: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ServiceAccount {
    pub metadata: ObjectMeta,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Node {
    pub metadata: ObjectMeta,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    pub node_name: String,
    pub service_account_name: String,
    /// Deprecated alias of `serviceAccountName`, still accepted by Kubernetes.
    pub service_account: String,
    pub host_network: bool,
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    pub name: String,
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerPort {
    pub name: String,
    pub container_port: u16,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    pub phase: String,
    /// Kept as text: a bad address is a translation problem naming the pod.
    #[serde(rename = "podIP")]
    pub pod_ip: String,
    #[serde(rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PodIp {
    pub ip: String,
}

/// A status condition (`type: Ready`, `status: "True"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: String,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    pub ports: Vec<ServicePort>,
    /// `None` (or empty): endpoints come from EndpointSlices instead of pods.
    #[serde(deserialize_with = "de::labels")]
    pub selector: Labels,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// Absent: the same as `port`. A name: resolved per pod from its container ports.
    pub target_port: Option<IntOrString>,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    pub address_type: String,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    pub conditions: SliceConditions,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SliceConditions {
    /// Absent means ready (Kubernetes: "should be interpreted as true").
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SlicePort {
    pub name: String,
    pub port: Option<u16>,
    pub protocol: Option<String>,
}

/// `spec.selector` of the Istio security kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSelector {
    #[serde(deserialize_with = "de::labels")]
    pub match_labels: Labels,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    /// Kept opaque: any target reference means "enforced by a waypoint", whatever it names.
    pub target_ref: Option<Value>,
    pub target_refs: Vec<Value>,
    /// `ALLOW` (also when absent), `DENY`, `AUDIT` or `CUSTOM`.
    pub action: Option<String>,
    pub rules: Vec<Rule>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Rule {
    pub from: Vec<From>,
    pub to: Vec<To>,
    pub when: Vec<When>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct From {
    pub source: Source,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct To {
    pub operation: Operation,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    #[serde(deserialize_with = "de::strings")]
    pub principals: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_principals: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub request_principals: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_request_principals: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub namespaces: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_namespaces: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub service_accounts: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_service_accounts: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub ip_blocks: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_ip_blocks: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    #[serde(deserialize_with = "de::strings")]
    pub hosts: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_hosts: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub ports: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_ports: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub methods: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_methods: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub paths: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_paths: Vec<String>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

/// A `when` condition: `key` with `values` (any matches) and `notValues` (none matches).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct When {
    pub key: String,
    #[serde(deserialize_with = "de::strings")]
    pub values: Vec<String>,
    #[serde(deserialize_with = "de::strings")]
    pub not_values: Vec<String>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<MutualTls>,
    /// Port (as text: YAML writes it as a number key) → mode.
    #[serde(deserialize_with = "de::map")]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct MutualTls {
    /// `STRICT`, `PERMISSIVE`, `DISABLE`, `UNSET`; absent is `UNSET`.
    pub mode: Option<String>,
}

/// Why one document (or one item of a `kind: List`) is not an [`Object`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {document} (line {line}){}: {reason}", describe(.object))]
pub struct ObjectError {
    /// 1-based position of the document in the text (`---` separated).
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// As much of the object's identity as could be read.
    pub object: ObjectRef,
    pub reason: ObjectErrorKind,
}

fn describe(object: &ObjectRef) -> String {
    if object.kind.is_empty() && object.name.is_empty() {
        String::new()
    } else {
        format!(" {object}")
    }
}

impl ObjectError {
    /// A kind ambit does not read (a Deployment next to its Service, say) is not a mistake in
    /// the document; callers may list it less loudly than a broken one.
    pub fn is_unsupported_kind(&self) -> bool {
        matches!(self.reason, ObjectErrorKind::UnsupportedKind { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectErrorKind {
    #[error("invalid YAML: {message}")]
    Syntax { message: String },
    #[error("not a Kubernetes object (expected a mapping with apiVersion, kind and metadata, found {found})")]
    NotAnObject { found: &'static str },
    #[error("`kind` is missing or not a string")]
    MissingKind,
    #[error("{kind} ({api_version}) is not a kind ambit reads; ignored")]
    UnsupportedKind { api_version: String, kind: String },
    #[error("apiVersion {api_version:?} is not a version of {kind} (expected {expected})")]
    WrongApiVersion {
        api_version: String,
        kind: String,
        expected: &'static str,
    },
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    #[error("metadata.name must not be empty")]
    MissingName,
}

/// The kinds ambit reads, with the API group they must come from.
const KINDS: &[(&str, &str)] = &[
    ("Namespace", ""),
    ("Pod", ""),
    ("Service", ""),
    ("ServiceAccount", ""),
    ("Node", ""),
    ("EndpointSlice", "discovery.k8s.io"),
    ("AuthorizationPolicy", "security.istio.io"),
    ("PeerAuthentication", "security.istio.io"),
];

/// Reads every document of a multi-document YAML (or JSON) text; see the module invariants.
pub fn parse_documents(text: &str) -> Vec<Result<Object, ObjectError>> {
    let mut out = Vec::new();
    let mut document = 0;
    for (line, chunk) in split_documents(text) {
        if is_blank(chunk) {
            // Only comments: not a document anyone would count.
            continue;
        }
        document += 1;
        let fail = |object: ObjectRef, reason| ObjectError {
            document,
            line,
            object,
            reason,
        };
        let value: Value = match serde_yaml::from_str(chunk) {
            Ok(v) => v,
            Err(e) => {
                let message = match e.location() {
                    // Report lines of the whole text, not of the chunk.
                    Some(loc) => format!(
                        "{} (line {})",
                        strip_location(&e.to_string()),
                        line + loc.line() - 1
                    ),
                    None => e.to_string(),
                };
                out.push(Err(fail(
                    ObjectRef::default(),
                    ObjectErrorKind::Syntax { message },
                )));
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        parse_value(value, &mut |r| {
            out.push(r.map_err(|b| {
                let (o, k) = *b;
                fail(o, k)
            }))
        });
    }
    out
}

/// Boxed: the error side is much larger than the object handles it travels with.
type Parsed = Result<Object, Box<(ObjectRef, ObjectErrorKind)>>;

/// One document's value: an object, or a `kind: List` (what `kubectl get -o yaml` prints) whose
/// items are each parsed on their own.
fn parse_value(value: Value, emit: &mut dyn FnMut(Parsed)) {
    let Value::Mapping(map) = value else {
        emit(Err(Box::new((
            ObjectRef::default(),
            ObjectErrorKind::NotAnObject {
                found: value_kind(&value),
            },
        ))));
        return;
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
        match map.get("items") {
            Some(Value::Sequence(items)) => {
                for item in items {
                    parse_value(item.clone(), emit);
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => emit(Err(Box::new((
                ObjectRef {
                    kind: kind.to_string(),
                    ..ObjectRef::default()
                },
                ObjectErrorKind::Field {
                    path: "items".to_string(),
                    message: "must be a list".to_string(),
                },
            )))),
        }
        return;
    }
    emit(parse_object(Value::Mapping(map)));
}

fn parse_object(value: Value) -> Parsed {
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    let meta = value.get("metadata");
    let meta_text = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut object = ObjectRef {
        kind: text("kind").unwrap_or_default(),
        namespace: meta_text("namespace"),
        name: meta_text("name"),
    };
    if object.kind.is_empty() {
        return Err(Box::new((object, ObjectErrorKind::MissingKind)));
    }
    let api_version = text("apiVersion").unwrap_or_default();
    let Some(&(_, group)) = KINDS.iter().find(|(k, _)| *k == object.kind) else {
        return Err(Box::new((
            object.clone(),
            ObjectErrorKind::UnsupportedKind {
                api_version,
                kind: object.kind,
            },
        )));
    };
    let actual_group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if actual_group != group || api_version.is_empty() {
        let expected = match group {
            "" => "v1",
            "discovery.k8s.io" => "discovery.k8s.io/v1",
            _ => "security.istio.io/v1",
        };
        return Err(Box::new((
            object.clone(),
            ObjectErrorKind::WrongApiVersion {
                api_version,
                kind: object.kind,
                expected,
            },
        )));
    }
    let cluster_scoped = matches!(object.kind.as_str(), "Namespace" | "Node");
    let parsed = match object.kind.as_str() {
        "Namespace" => typed(value).map(Object::Namespace),
        "Pod" => typed(value).map(|p| Object::Pod(Box::new(p))),
        "Service" => typed(value).map(Object::Service),
        "ServiceAccount" => typed(value).map(Object::ServiceAccount),
        "Node" => typed(value).map(Object::Node),
        "EndpointSlice" => typed(value).map(Object::EndpointSlice),
        "AuthorizationPolicy" => typed(value).map(Object::AuthorizationPolicy),
        _ => typed(value).map(Object::PeerAuthentication),
    };
    let mut parsed = parsed.map_err(|k| Box::new((object.clone(), k)))?;
    if parsed.metadata().name.is_empty() {
        return Err(Box::new((object, ObjectErrorKind::MissingName)));
    }
    let meta = metadata_mut(&mut parsed);
    if cluster_scoped {
        // A namespace on a cluster-scoped object means nothing; Kubernetes drops it.
        meta.namespace.clear();
    } else if meta.namespace.is_empty() {
        meta.namespace = "default".to_string();
    }
    object.namespace = meta.namespace.clone();
    Ok(parsed)
}

fn metadata_mut(o: &mut Object) -> &mut ObjectMeta {
    match o {
        Object::Namespace(o) => &mut o.metadata,
        Object::Pod(o) => &mut o.metadata,
        Object::Service(o) => &mut o.metadata,
        Object::EndpointSlice(o) => &mut o.metadata,
        Object::ServiceAccount(o) => &mut o.metadata,
        Object::Node(o) => &mut o.metadata,
        Object::AuthorizationPolicy(o) => &mut o.metadata,
        Object::PeerAuthentication(o) => &mut o.metadata,
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ObjectErrorKind> {
    serde_path_to_error::deserialize(value).map_err(|e| ObjectErrorKind::Field {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Splits at `---` lines, returning each document with its 1-based first line. Done by hand
/// rather than with serde_yaml's multi-document reader, which stops at the first syntax error:
/// one broken document must not hide the ones after it.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0; // byte offset of the current document
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_start = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let is_end = bare == "...";
        if is_start || is_end {
            if offset > start || i > 0 {
                docs.push((start_line, &text[start..offset]));
            }
            // `--- |` and friends keep the rest of the line as the document's first content.
            start = if is_start {
                offset + 3
            } else {
                offset + line.len()
            };
            start_line = i + 1 + usize::from(is_end);
        }
        offset += line.len();
    }
    if start < text.len() {
        docs.push((start_line, &text[start..]));
    }
    docs
}

fn is_blank(chunk: &str) -> bool {
    chunk
        .lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

/// serde_yaml appends " at line L column C" (relative to the chunk); the caller reports the
/// line in the whole text instead.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_string(),
        _ => message.to_string(),
    }
}
