//! A workload's leaf certificate as handed back by the CA (or a file), read by
//! `WorkloadCertificate::from_parts`: x509 parsing, then mesh's own reading of the SPIFFE URI
//! SAN, validity and serial, then the key match.
//!
//! Input: the leaf's DER. The key and root are fixed (`fuzz/fixtures/`, made by issuing the
//! seed leaf from a throwaway CA), so the unmutated seed is accepted whole and mutations explore
//! from there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::cert::{parse_pem_certs, WorkloadCertificate};
use mesh::identity::Identity;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const KEY_PEM: &str = include_str!("../fixtures/leaf-key.pem");
const ROOT_PEM: &str = include_str!("../fixtures/root.pem");

fuzz_target!(|data: &[u8]| {
    let (Ok(key), Ok(roots)) = (
        PrivateKeyDer::from_pem_slice(KEY_PEM.as_bytes()),
        parse_pem_certs(ROOT_PEM, "fixture root"),
    ) else {
        panic!("fuzz/fixtures hold a valid key and root");
    };
    let leaf = CertificateDer::from(data.to_vec());
    if let Ok(cert) = WorkloadCertificate::from_parts(vec![leaf], key, roots) {
        assert_eq!(cert.leaf().map(|l| l.as_ref()), Some(data));
        assert_eq!(
            Identity::parse(&cert.identity.to_string()).as_ref(),
            Ok(&cert.identity)
        );
    }
});
