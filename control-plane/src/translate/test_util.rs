//! Shared by the translation tests: YAML in, model out, and the destination ztunnel's decision
//! for a connection (the same steps as `ztunnel/src/proxy/authorize.rs`).

use std::net::IpAddr;

use mesh::authz::{check_mtls, effective_mtls_mode, evaluate, ConnInfo, MtlsMode};
use mesh::identity::Identity;
use mesh::model::State;

use super::{translate, Problem, Severity, TranslateConfig, Translation};
use crate::objects::parse_documents;

pub(crate) fn run(yaml: &str) -> Translation {
    run_with(yaml, &TranslateConfig::default())
}

pub(crate) fn run_with(yaml: &str, cfg: &TranslateConfig) -> Translation {
    let objects: Vec<_> = parse_documents(yaml)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("test YAML must parse: {e}")))
        .collect();
    translate(&objects, cfg)
}

pub(crate) fn state(t: &Translation) -> State {
    t.clone()
        .into_state()
        .unwrap_or_else(|e| panic!("translation must build a State: {e}"))
}

/// Problems of `severity` whose field is `field`.
pub(crate) fn problems<'a>(
    t: &'a Translation,
    severity: Severity,
    field: &str,
) -> Vec<&'a Problem> {
    t.problems
        .iter()
        .filter(|p| p.severity == severity && p.field == field)
        .collect()
}

/// A namespace, optionally enrolled in ambient.
pub(crate) fn namespace(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        "{istio.io/dataplane-mode: ambient}"
    } else {
        "{}"
    };
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n")
}

/// A running, ready pod with one IP and an `http` container port 8080.
pub(crate) fn pod(ns: &str, name: &str, ip: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
         spec:\n  nodeName: node-a\n  serviceAccountName: {name}-sa\n  containers:\n  - name: app\n    ports: [{{name: http, containerPort: 8080}}]\n\
         status:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    )
}

/// What the destination ztunnel decides for a connection to `ns/name` on `port`, from
/// `client` (`ns/sa`, `None` for plaintext).
pub(crate) fn allowed(
    state: &State,
    default_mtls: MtlsMode,
    dst: (&str, &str),
    port: u16,
    client: Option<(&str, &str)>,
) -> bool {
    let w = state
        .workload_by_name(dst.0, dst.1)
        .unwrap_or_else(|| panic!("no workload {}/{}", dst.0, dst.1));
    let conn = ConnInfo {
        src_identity: client.map(|(ns, sa)| Identity::new("cluster.local", ns, sa).unwrap()),
        src_ip: "10.9.9.9".parse::<IpAddr>().unwrap(),
        dst_ip: w.workload_ips[0],
        dst_port: port,
    };
    let mode = effective_mtls_mode(
        default_mtls,
        "istio-system",
        state.peer_authentications(),
        &w.namespace,
        port,
    );
    check_mtls(mode, &conn).is_ok() && evaluate(state.policies_for(w), &conn).is_allowed()
}
