use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::cert::parse_pem_certs;
use crate::tls::testutil::{id, TempDir, TestPki};

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

/// Verifies `chain` (leaf first) against `roots` the way an HBONE peer does.
fn verify(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), String> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(|e| e.to_string())?;
    }
    let leaf = ParsedCertificate::try_from(&chain[0]).map_err(|e| e.to_string())?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    verify_server_cert_signed_by_trust_anchor(&leaf, &store, &chain[1..], UnixTime::now(), algs.all)
        .map_err(|e| e.to_string())
}

fn testdata(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/ca/testdata")
        .join(name)
}

#[test]
fn issued_leaf_is_p256_with_one_critical_spiffe_san_and_verifies() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let cert = ca.issue(&id(SLEEP), DEFAULT_CERT_LIFETIME).unwrap();
    assert_eq!(cert.identity, id(SLEEP));
    assert_eq!(cert.chain.len(), 2, "leaf, root");
    assert_eq!(cert.chain[1], ca.roots()[0]);
    verify(&cert.chain, ca.roots()).unwrap();

    let leaf = parse_x509(&cert.chain[0]).unwrap();
    assert!(!leaf.is_ca());
    assert_eq!(leaf.subject().iter().count(), 0, "empty subject");
    let spki = leaf.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    assert_eq!(
        spki.algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap(),
        OID_EC_P256
    );
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    assert_eq!(san.value.general_names, vec![GeneralName::URI(SLEEP)]);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let lifetime = cert.not_after.duration_since(cert.not_before).unwrap();
    assert_eq!(lifetime, DEFAULT_CERT_LIFETIME + MAX_BACKDATE);
}

#[test]
fn intermediate_cacerts_issue_leaf_intermediate_root_chains() {
    let pki = TestPki::new("inter");
    let ca = pki.ca();
    assert_eq!(ca.roots(), &[pki.root_der()]);
    let cert = ca.issue(&id(SLEEP), Duration::from_secs(600)).unwrap();
    assert_eq!(
        cert.chain[1..],
        [pki.intermediate.der().clone(), pki.root_der()],
        "leaf, intermediate, root"
    );
    verify(&cert.chain, ca.roots()).unwrap();
    // Without the intermediate the leaf does not verify: the chain is really needed.
    assert!(verify(&[cert.chain[0].clone()], ca.roots()).is_err());
}

#[test]
fn chain_without_the_root_gets_it_appended() {
    let pki = TestPki::new("noroot");
    std::fs::write(
        pki.dir.path().join("cert-chain.pem"),
        pki.intermediate.pem(),
    )
    .unwrap();
    let cert = pki
        .ca()
        .issue(&id(SLEEP), Duration::from_secs(600))
        .unwrap();
    assert_eq!(cert.chain.last(), Some(&pki.root_der()));
}

#[test]
fn generated_ca_round_trips_through_a_cacerts_dir_with_a_private_key_file() {
    let ca = CertificateAuthority::generate("example.org").unwrap();
    let dir = TempDir::new("write");
    let target = dir.path().join("cacerts");
    ca.write_cacerts_dir(&target).unwrap();
    let mode = std::fs::metadata(target.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Rewriting over an existing, looser key file still leaves it 0600.
    std::fs::set_permissions(
        target.join("ca-key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    ca.write_cacerts_dir(&target).unwrap();
    let mode = std::fs::metadata(target.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let loaded = CertificateAuthority::from_cacerts_dir(&target).unwrap();
    assert_eq!(loaded.roots(), ca.roots());
    let cert = loaded
        .issue(
            &id("spiffe://example.org/ns/a/sa/b"),
            Duration::from_secs(60),
        )
        .unwrap();
    verify(&cert.chain, ca.roots()).unwrap();
}

#[test]
fn istio_style_rsa_pkcs1_and_ec_sec1_keys_load() {
    // openssl-made roots: `BEGIN RSA PRIVATE KEY` (as in Istio's samples/certs) and
    // `BEGIN EC PRIVATE KEY` without a cert-chain.pem (the root signs directly).
    for dir in ["rsa-pkcs1", "ec-sec1"] {
        let ca = CertificateAuthority::from_cacerts_dir(&testdata(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        let cert = ca.issue(&id(SLEEP), Duration::from_secs(60)).unwrap();
        verify(&cert.chain, ca.roots()).unwrap_or_else(|e| panic!("{dir}: {e}"));
    }
}

#[test]
fn broken_cacerts_dirs_fail_with_named_errors() {
    let pki = TestPki::new("broken");
    let other = TestPki::new("other");
    let path = pki.dir.path();
    let copy = |from: &Path, name: &str| std::fs::copy(from.join(name), path.join(name)).unwrap();

    std::fs::remove_file(path.join("root-cert.pem")).unwrap();
    assert!(matches!(
        CertificateAuthority::from_cacerts_dir(path),
        Err(CaError::Read { path, .. }) if path.ends_with("root-cert.pem")
    ));
    std::fs::write(path.join("root-cert.pem"), pki.root.pem()).unwrap();

    // Key of another CA.
    copy(other.dir.path(), "ca-key.pem");
    assert_eq!(
        CertificateAuthority::from_cacerts_dir(path).unwrap_err(),
        CaError::KeyMismatch
    );

    // Signing cert + key of another PKI, but our chain and roots.
    copy(other.dir.path(), "ca-cert.pem");
    assert_eq!(
        CertificateAuthority::from_cacerts_dir(path).unwrap_err(),
        CaError::ChainDoesNotStartWithCaCert
    );

    // Consistent signing material whose root we do not trust.
    copy(other.dir.path(), "cert-chain.pem");
    assert_eq!(
        CertificateAuthority::from_cacerts_dir(path).unwrap_err(),
        CaError::ChainNotRooted
    );

    // A chain that claims our root although its intermediate was signed by another.
    std::fs::write(
        path.join("cert-chain.pem"),
        format!("{}{}", other.intermediate.pem(), pki.root.pem()),
    )
    .unwrap();
    assert!(matches!(
        CertificateAuthority::from_cacerts_dir(path),
        Err(CaError::ChainInvalid(_))
    ));

    std::fs::write(
        path.join("ca-cert.pem"),
        format!("{}{}", pki.intermediate.pem(), pki.root.pem()),
    )
    .unwrap();
    assert!(matches!(
        CertificateAuthority::from_cacerts_dir(path),
        Err(CaError::BadFile {
            file: "ca-cert.pem",
            ..
        })
    ));

    std::fs::write(path.join("ca-key.pem"), "garbage").unwrap();
    std::fs::write(path.join("ca-cert.pem"), pki.intermediate.pem()).unwrap();
    assert!(matches!(
        CertificateAuthority::from_cacerts_dir(path),
        Err(CaError::BadFile {
            file: "ca-key.pem",
            ..
        })
    ));
}

#[test]
fn a_leaf_is_not_accepted_as_signing_cert() {
    let pki = TestPki::new("leafca");
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["x.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let path = pki.dir.path();
    std::fs::write(path.join("ca-cert.pem"), leaf.pem()).unwrap();
    std::fs::write(path.join("ca-key.pem"), key.serialize_pem()).unwrap();
    assert_eq!(
        CertificateAuthority::from_cacerts_dir(path).unwrap_err(),
        CaError::NotACa
    );
}

#[test]
fn generate_rejects_bad_trust_domains_and_issue_bad_lifetimes() {
    assert!(matches!(
        CertificateAuthority::generate("bad domain"),
        Err(CaError::BadTrustDomain(_))
    ));
    assert!(CertificateAuthority::generate("").is_err());
    let ca = CertificateAuthority::generate("td").unwrap();
    for lifetime in [Duration::ZERO, MAX_CERT_LIFETIME + Duration::from_secs(1)] {
        assert_eq!(
            ca.issue(&id("spiffe://td/ns/a/sa/b"), lifetime)
                .unwrap_err(),
            CaError::BadLifetime(lifetime)
        );
    }
}

fn csr(alg: &'static rcgen::SignatureAlgorithm, sans: Vec<SanType>) -> (String, KeyPair) {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    csr_with(alg, sans, params)
}

fn csr_with(
    alg: &'static rcgen::SignatureAlgorithm,
    sans: Vec<SanType>,
    mut params: CertificateParams,
) -> (String, KeyPair) {
    let key = KeyPair::generate_for(alg).unwrap();
    params.subject_alt_names = sans;
    (params.serialize_request(&key).unwrap().pem().unwrap(), key)
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn sign_csr_issues_for_the_authorised_identity_over_the_csr_key() {
    let pki = TestPki::new("csr");
    let ca = pki.ca();
    let (pem, key) = csr(&PKCS_ECDSA_P256_SHA256, vec![uri(SLEEP)]);
    let chain_pem = ca
        .sign_csr(&pem, &id(SLEEP), Duration::from_secs(3600))
        .unwrap();
    assert_eq!(chain_pem.len(), 3, "leaf, intermediate, root");
    let chain: Vec<_> = chain_pem
        .iter()
        .map(|p| parse_pem_certs(p, "chain").unwrap().remove(0))
        .collect();
    verify(&chain, ca.roots()).unwrap();
    let leaf = parse_x509(&chain[0]).unwrap();
    assert_eq!(leaf.public_key().raw, key.public_key_der().as_slice());
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, vec![GeneralName::URI(SLEEP)]);
    // Extensions the CSR asked for (none here) never carry over; ours are fixed.
    assert!(leaf.extensions().iter().all(|e| !matches!(
        e.parsed_extension(),
        ParsedExtension::UnsupportedExtension { .. }
    )));
}

#[test]
fn sign_csr_rejects_wrong_identity_wrong_key_and_wrong_san_shapes() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let hour = Duration::from_secs(3600);
    let other = "spiffe://cluster.local/ns/default/sa/other";

    let (pem, _) = csr(&PKCS_ECDSA_P256_SHA256, vec![uri(other)]);
    assert_eq!(
        ca.sign_csr(&pem, &id(SLEEP), hour).unwrap_err(),
        CaError::CsrIdentityMismatch {
            requested: other.to_string(),
            authorised: SLEEP.to_string()
        }
    );

    for sans in [
        vec![uri(SLEEP), uri(other)],
        vec![
            uri(SLEEP),
            SanType::DnsName("sleep.default".try_into().unwrap()),
        ],
        vec![SanType::DnsName("sleep.default".try_into().unwrap())],
        vec![uri("spiffe://cluster.local/ns/default")],
        vec![],
    ] {
        let (pem, _) = csr(&PKCS_ECDSA_P256_SHA256, sans.clone());
        assert!(
            matches!(
                ca.sign_csr(&pem, &id(SLEEP), hour),
                Err(CaError::CsrSans(_))
            ),
            "{sans:?}"
        );
    }

    let (pem, _) = csr(&PKCS_ECDSA_P384_SHA384, vec![uri(SLEEP)]);
    assert_eq!(
        ca.sign_csr(&pem, &id(SLEEP), hour).unwrap_err(),
        CaError::CsrKeyNotP256
    );

    assert!(matches!(
        ca.sign_csr("not pem", &id(SLEEP), hour),
        Err(CaError::BadCsr(_))
    ));

    let (pem, _) = csr(&PKCS_ECDSA_P256_SHA256, vec![uri(SLEEP)]);
    assert_eq!(
        ca.sign_csr(&pem, &id(SLEEP), Duration::ZERO).unwrap_err(),
        CaError::BadLifetime(Duration::ZERO)
    );
}

#[test]
fn sign_csr_rejects_a_tampered_csr() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let (pem, _) = csr(&PKCS_ECDSA_P256_SHA256, vec![uri(SLEEP)]);
    let der =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut bytes = der.as_ref().to_vec();
    // Flip a bit inside the SAN URI ("sleep" → "slgep"): same shape, broken signature.
    let pos = bytes.windows(5).position(|w| w == b"sleep").unwrap();
    bytes[pos + 2] ^= 0x02;
    let tampered = to_pem("CERTIFICATE REQUEST", &bytes);
    assert_eq!(
        ca.sign_csr(&tampered, &id(SLEEP), Duration::from_secs(60))
            .unwrap_err(),
        CaError::CsrSignature
    );
}

#[test]
fn cacerts_pem_round_trips_and_debug_hides_the_key() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let files = ca.to_cacerts_pem();
    let again = CertificateAuthority::from_cacerts_pem(&files).unwrap();
    assert_eq!(again.roots(), ca.roots());
    assert_eq!(again.ca_chain(), ca.ca_chain());
    assert!(files.ca_key.contains("PRIVATE KEY"));
    let shown = format!("{files:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(shown.contains("<redacted>"));

    // The same checks as a directory: a key that does not match is refused.
    let other = CertificateAuthority::generate("cluster.local").unwrap();
    let mixed = CacertsPem {
        ca_key: other.to_cacerts_pem().ca_key,
        ..files
    };
    assert_eq!(
        CertificateAuthority::from_cacerts_pem(&mixed).unwrap_err(),
        CaError::KeyMismatch
    );
}
