//! The committed install manifest is what `ambit manifest generate` prints today, and every
//! document in it is valid against the pinned Kubernetes version's schemas.

use std::path::Path;
use std::process::Command;

const REGENERATE: &str =
    "regenerate with: cargo run -p ambit -- manifest generate > manifests/ambit.yaml";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_manifest_is_up_to_date() {
    let output = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["manifest", "generate"])
        .output()
        .expect("running ambit manifest generate");
    assert!(
        output.status.success(),
        "ambit manifest generate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = repo_root().join("manifests/ambit.yaml");
    let committed = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}; {REGENERATE}", path.display()));
    if committed != output.stdout {
        let generated = String::from_utf8_lossy(&output.stdout);
        let committed = String::from_utf8_lossy(&committed);
        // Point at the first differing line: the whole file is too long to be useful in a
        // failure message.
        let first_diff = generated
            .lines()
            .zip(committed.lines())
            .position(|(g, c)| g != c)
            .unwrap_or_else(|| generated.lines().count().min(committed.lines().count()));
        panic!(
            "manifests/ambit.yaml is stale (first difference at line {}: generated {:?}, committed {:?}); {REGENERATE}",
            first_diff + 1,
            generated.lines().nth(first_diff).unwrap_or("<end of output>"),
            committed.lines().nth(first_diff).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn committed_manifest_validates_against_kubernetes_schemas() {
    let script = repo_root().join("scripts/validate-manifests.sh");
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
