use std::path::PathBuf;

use super::*;

/// A fresh directory under the system temp dir, removed on drop (also when a test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ambit-cp-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
        fs::write(self.0.join(name), contents).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ns(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

#[test]
fn reads_top_level_config_files_in_name_order_and_reports_bad_ones() {
    let dir = TempDir::new("read");
    dir.write("b.yml", format!("{}---\n{}", ns("b1"), ns("b2")));
    dir.write("a.YAML", ns("a"));
    dir.write(
        "c.json",
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}"#,
    );
    dir.write(
        "d.yaml",
        format!("{}---\nkind: [oops\n---\n{}", ns("d1"), ns("d2")),
    );
    dir.write("e.yaml", b"\xff\xfe not utf-8");
    dir.write("notes.txt", ns("ignored-txt"));
    dir.write(".hidden.yaml", ns("ignored-hidden"));
    fs::create_dir(dir.0.join("sub.yaml")).unwrap();
    fs::write(dir.0.join("sub.yaml").join("x.yaml"), ns("ignored-nested")).unwrap();

    let contents = load_folder(&dir.0).unwrap();
    let names: Vec<_> = contents
        .objects
        .iter()
        .map(|o| o.metadata().name.as_str())
        .collect();
    assert_eq!(names, ["a", "b1", "b2", "c", "d1", "d2"]);

    let problems: Vec<String> = contents.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("d.yaml") && problems[0].contains("document 2"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("e.yaml") && problems[1].contains("UTF-8"),
        "{problems:?}"
    );
}

#[test]
fn translate_folder_lists_file_problems_before_translation_problems() {
    let dir = TempDir::new("translate");
    dir.write(
        "mesh.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nstatus: {phase: Running, podIP: 10.0.0.1}\n\
         ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n\
         ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: a}\nspec: {action: CUSTOM}\n",
    );
    let t = translate_folder(&dir.0, &TranslateConfig::default()).unwrap();
    assert_eq!(t.state_inputs.workloads.len(), 1);
    let listed: Vec<_> = t
        .problems
        .iter()
        .map(|p| (p.severity, p.object.kind.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            (Severity::Warning, "Deployment"),
            (Severity::Error, "AuthorizationPolicy")
        ]
    );
    assert!(
        t.problems[0].message.contains("mesh.yaml"),
        "{}",
        t.problems[0]
    );
}

#[test]
fn the_fingerprint_changes_when_a_config_file_does() {
    let dir = TempDir::new("fingerprint");
    dir.write("a.yaml", ns("a"));
    let before = fingerprint(&dir.0).unwrap();
    assert_eq!(before, fingerprint(&dir.0).unwrap());
    dir.write("notes.txt", "not config");
    assert_eq!(
        before,
        fingerprint(&dir.0).unwrap(),
        "non-config files do not count"
    );
    dir.write("a.yaml", ns("a-longer-name"));
    assert_ne!(before, fingerprint(&dir.0).unwrap());
    let edited = fingerprint(&dir.0).unwrap();
    dir.write("b.yaml", ns("b"));
    assert_ne!(edited, fingerprint(&dir.0).unwrap());
}

#[test]
fn a_missing_folder_is_an_error_naming_it() {
    let missing = std::env::temp_dir().join(format!("ambit-cp-{}-missing", std::process::id()));
    let e = load_folder(&missing).unwrap_err();
    assert!(e.to_string().contains("ambit-cp-"), "{e}");
}
