use proptest::prelude::*;

use super::*;

fn ok(text: &str) -> Vec<Object> {
    parse_documents(text)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("unexpected error: {e}")))
        .collect()
}

fn errors(text: &str) -> Vec<ObjectError> {
    parse_documents(text)
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web, version: 2}
  creationTimestamp: "2024-05-01T10:00:00Z"
  ownerReferences: [{kind: ReplicaSet, name: web-7d9f, controller: true}]
spec:
  nodeName: node-a
  serviceAccountName: web
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}]
status:
  phase: Running
  podIP: 10.0.0.5
  podIPs: [{ip: 10.0.0.5}, {ip: "fd00::5"}]
  conditions: [{type: Ready, status: "True"}]
"#;

#[test]
fn reads_a_pod_on_its_real_field_names() {
    let objects = ok(POD);
    let [Object::Pod(p)] = objects.as_slice() else {
        panic!("expected one pod, got {objects:?}");
    };
    assert_eq!(p.metadata.name, "web-1");
    assert_eq!(p.metadata.namespace, "shop");
    // Unquoted label values are read as their text, as the API server would store them.
    assert_eq!(p.metadata.labels["version"], "2");
    assert_eq!(p.spec.node_name, "node-a");
    assert_eq!(p.spec.service_account_name, "web");
    assert_eq!(p.spec.containers[0].ports[0].container_port, 8080);
    assert_eq!(p.status.pod_ip, "10.0.0.5");
    assert_eq!(p.status.pod_ips[1].ip, "fd00::5");
    assert_eq!(p.status.conditions[0].type_, "Ready");
    assert_eq!(p.metadata.owner_references[0].kind, "ReplicaSet");
    assert_eq!(
        p.metadata.creation_timestamp.as_deref(),
        Some("2024-05-01T10:00:00Z")
    );
}

#[test]
fn multi_document_text_yields_one_entry_per_document_and_skips_empty_ones() {
    let text = format!(
        "# leading comment only\n---\n{POD}\n---\n# nothing here\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, namespace: ignored}}\n...\n"
    );
    let objects = ok(&text);
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0].kind(), "Pod");
    // Cluster-scoped: a namespace given on it means nothing.
    assert_eq!(objects[1].object_ref().to_string(), "Namespace shop");
}

#[test]
fn a_broken_document_is_an_error_entry_and_the_rest_still_parse() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n\
                ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: [unclosed\n\
                ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n";
    let results = parse_documents(text);
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok());
    assert!(
        results[2].is_ok(),
        "document after the broken one must parse"
    );
    let e = results[1].as_ref().unwrap_err();
    assert_eq!(e.document, 2);
    assert_eq!(e.line, 4, "the broken document starts at its `---` line");
    assert!(matches!(e.reason, ObjectErrorKind::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("document 2"), "{e}");
}

#[test]
fn type_errors_name_the_field_path() {
    let text =
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: eighty\n";
    let [e] = errors(text).try_into().expect("one error");
    let ObjectErrorKind::Field { path, .. } = &e.reason else {
        panic!("{e}");
    };
    assert_eq!(path, "spec.ports[0].port");
    assert_eq!(e.object.to_string(), "Service s");
}

#[test]
fn documents_that_are_not_objects_say_why() {
    type Expect = fn(&ObjectErrorKind) -> bool;
    let cases: &[(&str, Expect)] = &[
        ("- a\n- b\n", |k| {
            matches!(k, ObjectErrorKind::NotAnObject { found: "a list" })
        }),
        ("apiVersion: v1\nmetadata: {name: x}\n", |k| {
            matches!(k, ObjectErrorKind::MissingKind)
        }),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
            |k| matches!(k, ObjectErrorKind::UnsupportedKind { .. }),
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n",
            |k| matches!(k, ObjectErrorKind::WrongApiVersion { .. }),
        ),
        ("apiVersion: v1\nkind: Pod\nmetadata: {}\n", |k| {
            matches!(k, ObjectErrorKind::MissingName)
        }),
    ];
    for (text, expected) in cases {
        let [e] = errors(text).try_into().expect("one error");
        assert!(expected(&e.reason), "{text:?}: {e}");
    }
    let [e] = errors("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
        .try_into()
        .unwrap();
    assert!(e.is_unsupported_kind());
}

#[test]
fn namespaced_objects_default_to_the_default_namespace() {
    let objects = ok(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p}\n",
    );
    assert_eq!(objects[0].metadata().namespace, "default");
}

#[test]
fn a_list_is_read_item_by_item() {
    let text = "apiVersion: v1\nkind: List\nitems:\n\
                - {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n\
                - {apiVersion: v1, kind: Namespace}\n\
                - {apiVersion: v1, kind: Namespace, metadata: {name: c}}\n";
    let results = parse_documents(text);
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(
        results[1].as_ref().unwrap_err().reason,
        ObjectErrorKind::MissingName
    ));
}

#[test]
fn policy_fields_accept_numbers_and_keep_unknown_fields() {
    let text = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: ns}
spec:
  rules:
  - to: [{operation: {ports: [8080, "9090"], method: [GET]}}]
    when: [{key: destination.port, values: [80]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: pa, namespace: ns}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
"#;
    let objects = ok(text);
    let Object::AuthorizationPolicy(ap) = &objects[0] else {
        panic!()
    };
    let op = &ap.spec.rules[0].to[0].operation;
    assert_eq!(op.ports, ["8080", "9090"]);
    assert!(op.unknown.contains_key("method"), "misspelt field kept");
    assert_eq!(ap.spec.rules[0].when[0].values, ["80"]);
    let Object::PeerAuthentication(pa) = &objects[1] else {
        panic!()
    };
    assert_eq!(
        pa.spec.port_level_mtls["8080"].mode.as_deref(),
        Some("PERMISSIVE")
    );
}

#[test]
fn block_scalars_and_document_markers_on_one_line() {
    // `--- ` followed by content keeps that content in the new document.
    let text = "--- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n\
                --- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n";
    let names: Vec<String> = ok(text).iter().map(|o| o.metadata().name.clone()).collect();
    assert_eq!(names, ["a", "b"]);
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_documents(&text);
    }

    /// YAML-shaped noise around real keys reaches the typed readers, not just the parser.
    #[test]
    fn arbitrary_yaml_objects_never_panic(
        kind in prop::sample::select(vec![
            "Pod", "Service", "EndpointSlice", "Namespace", "AuthorizationPolicy",
            "PeerAuthentication", "List", "Node",
        ]),
        body in prop::collection::vec(
            ("[a-zA-Z]{1,12}", prop_oneof![
                Just("1".to_string()), Just("[a, 2]".to_string()), Just("{x: y}".to_string()),
                Just("null".to_string()), Just("\"s\"".to_string()), Just("-3".to_string()),
                Just("[{mode: STRICT}]".to_string()), Just("70000".to_string()),
            ]),
            0..6,
        ),
    ) {
        let group = if kind.ends_with("Policy") || kind == "PeerAuthentication" {
            "security.istio.io/v1"
        } else {
            "v1"
        };
        let mut text = format!("apiVersion: {group}\nkind: {kind}\nmetadata: {{name: x}}\nspec:\n");
        for (k, v) in &body {
            text.push_str(&format!("  {k}: {v}\n"));
        }
        text.push_str("items:\n");
        for (k, v) in &body {
            text.push_str(&format!("- {{{k}: {v}}}\n"));
        }
        let _ = parse_documents(&text);
    }
}
