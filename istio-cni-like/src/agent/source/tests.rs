use super::*;

const NS: &str =
    "kind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n";
const POD: &str = "kind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {nodeName: n1}\n";

fn file(name: &str, text: &str) -> (PathBuf, Result<String, String>) {
    (PathBuf::from(name), Ok(text.to_owned()))
}

#[test]
fn multi_document_files_keep_namespaces_and_pods_only() {
    let text = format!("{NS}---\n{POD}---\nkind: Service\nmetadata: {{name: s}}\n---\n");
    let objects = parse_file("a.yaml", &text).unwrap();
    assert_eq!(objects.len(), 2);
    assert!(matches!(objects[0], Object::Namespace(_)));
    assert!(matches!(objects[1], Object::Pod(_)));
}

#[test]
fn json_and_lists_parse() {
    let json = r#"{"kind":"List","items":[{"kind":"Namespace","metadata":{"name":"a"}},{"kind":"Pod","metadata":{"name":"p","namespace":"a"},"status":{"podIPs":[{"ip":"10.0.0.9"}]}}]}"#;
    let objects = parse_file("l.json", json).unwrap();
    assert_eq!(objects.len(), 2);
}

#[test]
fn errors_name_file_and_document_index() {
    let err = parse_file("x.yaml", &format!("{NS}---\nkind: Pod\nmetadata: {{}}\n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "x.yaml: document 1: Pod has no metadata.name"
    );
    let err = parse_file("y.yaml", "kind: [unclosed\n").unwrap_err();
    assert!(
        matches!(&err, FileError::Syntax { file, index: 0, .. } if file == "y.yaml"),
        "{err}"
    );
}

#[test]
fn view_is_filtered_to_this_node() {
    let mut view = ClusterView::default();
    view.extend(parse_file("a", POD).unwrap(), Some("n2"));
    assert!(view.pods.is_empty());
    view.extend(parse_file("a", POD).unwrap(), Some("n1"));
    assert!(view.pod("shop", "web").is_some());
    // Pods without a nodeName are kept (a manifest for "this node").
    let mut view = ClusterView::default();
    view.extend(
        parse_file("a", "kind: Pod\nmetadata: {name: x}").unwrap(),
        Some("n1"),
    );
    assert!(view.pod("default", "x").is_some());
}

#[test]
fn malformed_edit_keeps_last_good_objects_and_deletion_drops_them() {
    let mut scanner = FolderScanner::default();
    let (view, errors) = scanner.scan(vec![file("ns.yaml", NS), file("pod.yaml", POD)], None);
    assert!(errors.is_empty());
    assert!(view.namespace("shop").is_some() && view.pod("shop", "web").is_some());

    // A broken save of ns.yaml: reported once, previous objects kept.
    let (view, errors) = scanner.scan(
        vec![
            file("ns.yaml", "kind: Namespace\nmetadata: {"),
            file("pod.yaml", POD),
        ],
        None,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().starts_with("ns.yaml: document 0"));
    assert!(view.namespace("shop").is_some());
    let (_, errors) = scanner.scan(
        vec![
            file("ns.yaml", "kind: Namespace\nmetadata: {"),
            file("pod.yaml", POD),
        ],
        None,
    );
    assert!(errors.is_empty(), "unchanged broken file reported again");

    // The namespace file is removed: its namespace goes.
    let (view, _) = scanner.scan(vec![file("pod.yaml", POD)], None);
    assert!(view.namespace("shop").is_none());
    assert!(view.pod("shop", "web").is_some());
}

#[test]
fn manifest_extensions() {
    for (name, ok) in [
        ("a.yaml", true),
        ("a.yml", true),
        ("a.json", true),
        ("a.txt", false),
        (".a.yaml", false),
        ("yaml", false),
    ] {
        assert_eq!(is_manifest(Path::new(name)), ok, "{name}");
    }
}

#[tokio::test]
async fn folder_source_publishes_changes() {
    let dir = std::env::temp_dir().join(format!("ambit-folder-src-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ns.yaml"), NS).unwrap();
    let src = FolderSource::start(dir.clone(), Duration::from_millis(10), None);
    let mut rx = src.subscribe();
    let view = rx.wait_for(|v| v.is_some()).await.unwrap().clone().unwrap();
    assert!(view.namespace("shop").is_some());
    std::fs::write(dir.join("pod.yml"), POD).unwrap();
    rx.wait_for(|v| v.as_ref().is_some_and(|v| v.pod("shop", "web").is_some()))
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
