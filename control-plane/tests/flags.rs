//! Flag combinations that cannot work are refused before anything starts, naming the flag.

use std::process::Command;

fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(args)
        .env_clear()
        .output()
        .expect("run control-plane");
    assert_eq!(out.status.code(), Some(2), "{args:?} was not refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn kubernetes_only_flags_need_kube() {
    let err = refused(&[
        "--local-dir",
        "/nonexistent",
        "--ca-store",
        "/nonexistent",
        "--bootstrap-tokens",
        "/nonexistent",
        "--kube-api",
        "http://127.0.0.1:1",
    ]);
    assert!(err.contains("--kube-api: needs --kube"), "{err}");
    let err = refused(&[
        "--local-dir",
        "/nonexistent",
        "--bootstrap-tokens",
        "/nonexistent",
        "--ca-root-secret",
        "ambit-ca-root",
    ]);
    assert!(err.contains("--ca-root-secret: needs --kube"), "{err}");
}

#[test]
fn a_root_store_is_required() {
    let err = refused(&["--kube"]);
    assert!(err.contains("--ca-store"), "{err}");
    let err = refused(&["--local-dir", "/nonexistent", "--ca-store", "/nonexistent"]);
    assert!(err.contains("--bootstrap-tokens"), "{err}");
}
