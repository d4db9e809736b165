//! A PKCS#10 certificate signing request as the control-plane CA service receives it from a
//! workload, to `CertificateAuthority::sign_csr`.
//!
//! Input: the CSR's DER (PEM-encoded here, so the fuzzer mutates DER rather than base64). The
//! CA is generated once per process; the caller is authorised for one fixed identity, which the
//! seed CSR asks for.
//!
//! Checks, beyond "no panic": whatever is signed comes back as a parseable PEM chain.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mesh::ca::CertificateAuthority;
use mesh::cert::{parse_pem_certs, to_pem};
use mesh::identity::Identity;

fuzz_target!(|data: &[u8]| {
    static CA: OnceLock<(CertificateAuthority, Identity)> = OnceLock::new();
    let (ca, authorised) = CA.get_or_init(|| {
        let ca = CertificateAuthority::generate("cluster.local").expect("CA generates");
        let id = Identity::parse("spiffe://cluster.local/ns/default/sa/client").expect("valid id");
        (ca, id)
    });
    let pem = to_pem("CERTIFICATE REQUEST", data);
    if let Ok(chain) = ca.sign_csr(&pem, authorised, Duration::from_secs(3600)) {
        assert!(!chain.is_empty());
        for cert in &chain {
            parse_pem_certs(cert, "signed chain").expect("signed certificates parse");
        }
    }
});
