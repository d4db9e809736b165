//! The CA's private key from Istio's `cacerts` directory (`ca-key.pem`), as
//! `CertificateAuthority::from_cacerts_dir` reads it.
//!
//! Istio keys are often PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`), which `mesh`
//! rewraps as PKCS#8 with a hand-written DER reader; that reader is what this target is for.
//! Input: one byte choosing the PEM label, then the key's DER (PEM-encoded here, so the fuzzer
//! mutates DER rather than base64). The certificates are the valid test `cacerts` of `mesh`.
//!
//! `from_cacerts_dir` only reads a directory, so each process writes its certificates once into
//! its own temporary directory and rewrites `ca-key.pem` per input.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mesh::ca::CertificateAuthority;
use mesh::cert::to_pem;

const EC: [(&str, &str); 2] = [
    (
        "ca-cert.pem",
        include_str!("../../mesh/src/ca/testdata/ec-sec1/ca-cert.pem"),
    ),
    (
        "root-cert.pem",
        include_str!("../../mesh/src/ca/testdata/ec-sec1/root-cert.pem"),
    ),
];
const RSA: [(&str, &str); 3] = [
    (
        "ca-cert.pem",
        include_str!("../../mesh/src/ca/testdata/rsa-pkcs1/ca-cert.pem"),
    ),
    (
        "root-cert.pem",
        include_str!("../../mesh/src/ca/testdata/rsa-pkcs1/root-cert.pem"),
    ),
    (
        "cert-chain.pem",
        include_str!("../../mesh/src/ca/testdata/rsa-pkcs1/cert-chain.pem"),
    ),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, der)) = data.split_first() else {
        return;
    };
    // The RSA test CA for a PKCS#1 key, the EC one otherwise, so that the seeds load whole.
    let (label, dir) = match selector % 3 {
        0 => ("PRIVATE KEY", dir("ec", &EC)),
        1 => ("RSA PRIVATE KEY", dir("rsa", &RSA)),
        _ => ("EC PRIVATE KEY", dir("ec", &EC)),
    };
    let Some(dir) = dir else {
        return;
    };
    if std::fs::write(dir.join("ca-key.pem"), to_pem(label, der)).is_err() {
        return;
    }
    let _ = CertificateAuthority::from_cacerts_dir(dir);
});

/// This process's `cacerts` directory for `name`, created on first use.
fn dir(name: &'static str, certs: &[(&str, &str)]) -> Option<&'static PathBuf> {
    static EC_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    static RSA_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let cell = if name == "ec" { &EC_DIR } else { &RSA_DIR };
    cell.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("ambit-fuzz-ca-key-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        for (file, pem) in certs {
            std::fs::write(dir.join(file), pem).ok()?;
        }
        Some(dir)
    })
    .as_ref()
}
