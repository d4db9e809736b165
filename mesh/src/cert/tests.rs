use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::SanType;

use super::*;
use crate::ca::CertificateAuthority;
use crate::tls::testutil::{id, TestPki};

fn issued(lifetime: Duration) -> WorkloadCertificate {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    ca.issue(&id("spiffe://cluster.local/ns/default/sa/sleep"), lifetime)
        .unwrap()
}

fn key_pem(cert: &WorkloadCertificate) -> String {
    to_pem("PRIVATE KEY", cert.key().secret_der())
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (input, expected) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
    }
}

#[test]
fn pem_round_trips_through_rustls_parser() {
    let cert = issued(Duration::from_secs(3600));
    let parsed = parse_pem_certs(&cert.chain_pem(), "chain").unwrap();
    assert_eq!(parsed, cert.chain);
    // Long DER wraps at 64 columns.
    assert!(cert.chain_pem().lines().all(|l| l.len() <= 64));
}

#[test]
fn from_pem_reads_back_identity_validity_and_serial() {
    let cert = issued(Duration::from_secs(3600));
    let again =
        WorkloadCertificate::from_pem(&cert.chain_pem(), &key_pem(&cert), &cert.roots_pem())
            .unwrap();
    assert_eq!(again.identity, cert.identity);
    assert_eq!(again.serial, cert.serial);
    assert_eq!(again.not_before, cert.not_before);
    assert_eq!(again.not_after, cert.not_after);
    assert_eq!(again.chain, cert.chain);
    assert_eq!(again.roots, cert.roots);
    assert_eq!(cert.serial.len(), 32, "16-byte serial in hex");
    let lifetime = cert.not_after.duration_since(cert.not_before).unwrap();
    // Backdated by a tenth of the lifetime (at most a minute), whole seconds.
    assert_eq!(lifetime, Duration::from_secs(3600 + 60));
}

#[test]
fn from_pem_rejects_bad_material_with_named_errors() {
    let cert = issued(Duration::from_secs(3600));
    let other = issued(Duration::from_secs(3600));
    assert_eq!(
        WorkloadCertificate::from_pem(&cert.chain_pem(), &key_pem(&other), &cert.roots_pem())
            .unwrap_err(),
        CertError::KeyMismatch
    );
    assert_eq!(
        WorkloadCertificate::from_pem("", &key_pem(&cert), &cert.roots_pem()).unwrap_err(),
        CertError::Empty("certificate chain")
    );
    assert_eq!(
        WorkloadCertificate::from_pem(&cert.chain_pem(), &key_pem(&cert), "").unwrap_err(),
        CertError::Empty("root certificates")
    );
    assert!(matches!(
        WorkloadCertificate::from_pem(&cert.chain_pem(), "not a key", &cert.roots_pem()),
        Err(CertError::Pem {
            what: "private key",
            ..
        })
    ));
    let garbage = to_pem("CERTIFICATE", b"\x30\x03\x02\x01\x01");
    assert!(matches!(
        WorkloadCertificate::from_pem(&garbage, &key_pem(&cert), &cert.roots_pem()),
        Err(CertError::BadCertificate { index: 0, .. })
    ));
}

#[test]
fn from_pem_requires_a_spiffe_id() {
    let pki = TestPki::new("nospiffe");
    let (chain, key) = pki.raw_leaf(vec![SanType::DnsName("example.com".try_into().unwrap())]);
    let chain_pem: String = chain.iter().map(|c| to_pem("CERTIFICATE", c)).collect();
    let err = WorkloadCertificate::from_pem(
        &chain_pem,
        &to_pem("PRIVATE KEY", key.secret_der()),
        &to_pem("CERTIFICATE", &pki.root_der()),
    )
    .unwrap_err();
    assert_eq!(err, CertError::NoSpiffeId);
}

#[test]
fn spiffe_ids_keep_order_and_skip_other_uris() {
    let pki = TestPki::new("order");
    let uri = |s: &str| SanType::URI(s.try_into().unwrap());
    let (chain, _) = pki.raw_leaf(vec![
        uri("https://example.com/"),
        uri("spiffe://b.td/ns/n/sa/second"),
        SanType::DnsName("x.example".try_into().unwrap()),
        uri("spiffe://a.td/ns/n/sa/third"),
        uri("spiffe://a.td/ns/n"),
    ]);
    assert_eq!(
        spiffe_ids_of(&chain[0]),
        vec![
            id("spiffe://b.td/ns/n/sa/second"),
            id("spiffe://a.td/ns/n/sa/third")
        ]
    );
    assert!(spiffe_ids_of(&CertificateDer::from(vec![0x30, 0x00])).is_empty());
    assert!(spiffe_ids_of(&CertificateDer::from(Vec::new())).is_empty());
}

#[test]
fn refresh_at_is_half_life_moved_by_jitter_and_clamped() {
    let mut cert = issued(Duration::from_secs(3600));
    cert.not_before = UNIX_EPOCH + Duration::from_secs(1000);
    cert.not_after = UNIX_EPOCH + Duration::from_secs(2000);
    let at = |j: f64| cert.refresh_at(j).duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(at(0.0), Duration::from_secs(1500));
    assert_eq!(at(0.1), Duration::from_secs(1550));
    assert_eq!(at(-0.1), Duration::from_secs(1450));
    assert_eq!(at(5.0), Duration::from_secs(2000));
    assert_eq!(at(-5.0), Duration::from_secs(1000));
    assert_eq!(at(f64::NAN), Duration::from_secs(1500));
    // Inverted validity never panics; it refreshes immediately.
    cert.not_after = UNIX_EPOCH;
    assert_eq!(cert.refresh_at(0.1), UNIX_EPOCH + Duration::from_secs(1000));
}

#[test]
fn debug_output_never_contains_the_key() {
    let cert = issued(Duration::from_secs(3600));
    let shown = format!("{cert:?}");
    assert!(shown.contains("spiffe://cluster.local/ns/default/sa/sleep"));
    assert!(!shown.contains(&hex(cert.key().secret_der())));
    assert!(!shown.contains("secret"));
}

#[test]
fn rfc3339_formats_utc_seconds() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        "2023-11-14T22:13:20Z"
    );
    assert!(rfc3339(SystemTime::now()).ends_with('Z'));
}
