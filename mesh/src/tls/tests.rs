//! Real handshakes with real certificates over an in-memory pipe.

use std::sync::Arc;
use std::time::Duration;

use rcgen::SanType;
use rustls::{CipherSuite, HandshakeKind, ProtocolVersion};

use super::testutil::{handshake, id, ping_pong, TestPki};
use super::*;
use crate::ca::CertificateAuthority;

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
const TEN_MIN: Duration = Duration::from_secs(600);

fn issue(ca: &CertificateAuthority, who: &str) -> WorkloadCertificate {
    ca.issue(&id(who), TEN_MIN).unwrap()
}

/// A client config with our server verifier but chosen client credentials (or none).
fn custom_client(
    roots: &[CertificateDer<'static>],
    expected: &str,
    provider: Arc<CryptoProvider>,
    creds: Option<(
        Vec<CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
) -> Arc<rustls::ClientConfig> {
    let verifier =
        SpiffeServerVerifier::new(roots, ExpectedIdentities(vec![id(expected)])).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match creds {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// The rustls error the server side failed with.
fn server_error(result: &super::testutil::Handshake) -> rustls::Error {
    match &result.1 {
        Ok(_) => panic!("server accepted the handshake"),
        Err(e) => tls_error(e),
    }
}

fn tls_error(e: &std::io::Error) -> rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| panic!("not a rustls error: {e}"))
}

/// The SPIFFE-check failure inside a rustls certificate error, if that is what it is.
fn identity_error(e: &rustls::Error) -> Option<PeerIdentityError> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<PeerIdentityError>().cloned()
        }
        _ => None,
    }
}

#[tokio::test]
async fn mutual_tls_through_an_intermediate_negotiates_tls13_h2_and_names_both_peers() {
    let pki = TestPki::new("tls");
    let ca = pki.ca();
    let client_cert = issue(&ca, CLIENT);
    let server_cert = issue(&ca, SERVER);
    assert_eq!(server_cert.chain.len(), 3, "leaf, intermediate, root");

    let (client, server) = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, vec![id(SERVER)]).unwrap(),
    )
    .await;
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    ping_pong(&mut client, &mut server).await;

    let server_conn = server.get_ref().1;
    assert_eq!(
        server_conn.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(server_conn.alpn_protocol(), Some(ALPN_H2));
    let suite = server_conn.negotiated_cipher_suite().unwrap().suite();
    assert!(matches!(
        suite,
        CipherSuite::TLS13_AES_256_GCM_SHA384 | CipherSuite::TLS13_AES_128_GCM_SHA256
    ));
    assert_eq!(peer_identity(server_conn), Some(id(CLIENT)));
    assert_eq!(peer_identity_of(client.get_ref().1), Some(id(SERVER)));
    // No SNI: the server cannot (and need not) pick a certificate by name.
    assert_eq!(server_conn.server_name(), None);
}

#[tokio::test]
async fn client_accepts_any_expected_identity_and_rejects_unexpected_ones() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let client_cert = issue(&ca, CLIENT);
    let server_cert = issue(&ca, SERVER);
    let waypoint = "spiffe://cluster.local/ns/default/sa/waypoint";

    let ok = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, vec![id(waypoint), id(SERVER)]).unwrap(),
    )
    .await;
    assert!(ok.0.is_ok() && ok.1.is_ok());

    let (client, _) = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, vec![id(waypoint)]).unwrap(),
    )
    .await;
    let err = tls_error(&client.unwrap_err());
    assert_eq!(
        identity_error(&err),
        Some(PeerIdentityError::Unexpected {
            found: vec![SERVER.to_string()],
            expected: vec![waypoint.to_string()],
        })
    );
}

#[tokio::test]
async fn client_rejects_a_server_from_another_root_even_with_the_expected_id() {
    let ours = CertificateAuthority::generate("cluster.local").unwrap();
    let theirs = CertificateAuthority::generate("cluster.local").unwrap();
    let (client, _) = handshake(
        server_config(&issue(&theirs, SERVER)).unwrap(),
        client_config(&issue(&ours, CLIENT), vec![id(SERVER)]).unwrap(),
    )
    .await;
    // Both generated roots have the same subject, so path building finds "our" root and the
    // signature check is what fails.
    let err = tls_error(&client.unwrap_err());
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::BadSignature)
    );
}

#[tokio::test]
async fn server_requires_a_client_certificate() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let server_cert = issue(&ca, SERVER);
    let result = handshake(
        server_config(&server_cert).unwrap(),
        custom_client(ca.roots(), SERVER, provider(), None),
    )
    .await;
    assert_eq!(
        server_error(&result),
        rustls::Error::NoCertificatesPresented
    );
}

#[tokio::test]
async fn server_rejects_clients_from_another_trust_domain() {
    // Same root, so only the trust-domain rule can be what rejects it.
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let outsider = issue(&ca, "spiffe://other.domain/ns/default/sa/sleep");
    let result = handshake(
        server_config(&issue(&ca, SERVER)).unwrap(),
        client_config(&outsider, vec![id(SERVER)]).unwrap(),
    )
    .await;
    assert_eq!(
        identity_error(&server_error(&result)),
        Some(PeerIdentityError::WrongTrustDomain {
            found: "spiffe://other.domain/ns/default/sa/sleep".to_string(),
            trust_domain: "cluster.local".to_string(),
        })
    );
}

#[tokio::test]
async fn server_rejects_clients_without_spiffe_id_or_with_a_foreign_principal_first() {
    let pki = TestPki::new("nospiffe");
    let ca = pki.ca();
    let uri = |s: &str| SanType::URI(s.try_into().unwrap());
    let cases = [
        (
            vec![SanType::DnsName("sleep.default".try_into().unwrap())],
            PeerIdentityError::NoSpiffeId,
        ),
        (
            vec![uri("https://sleep.default/")],
            PeerIdentityError::NoSpiffeId,
        ),
        // The principal is the first SPIFFE SAN; a later in-domain SAN must not launder it.
        (
            vec![uri("spiffe://evil.td/ns/a/sa/b"), uri(CLIENT)],
            PeerIdentityError::WrongTrustDomain {
                found: "spiffe://evil.td/ns/a/sa/b".to_string(),
                trust_domain: "cluster.local".to_string(),
            },
        ),
    ];
    for (sans, expected_error) in cases {
        let creds = pki.raw_leaf(sans);
        let result = handshake(
            server_config(&issue(&ca, SERVER)).unwrap(),
            custom_client(ca.roots(), SERVER, provider(), Some(creds)),
        )
        .await;
        assert_eq!(identity_error(&server_error(&result)), Some(expected_error));
    }
}

#[tokio::test]
async fn server_rejects_a_client_from_another_root() {
    let ours = CertificateAuthority::generate("cluster.local").unwrap();
    let theirs = CertificateAuthority::generate("cluster.local").unwrap();
    let stranger = issue(&theirs, CLIENT);
    let result = handshake(
        server_config(&issue(&ours, SERVER)).unwrap(),
        custom_client(
            ours.roots(),
            SERVER,
            provider(),
            Some((stranger.chain.clone(), stranger.key().clone_key())),
        ),
    )
    .await;
    assert_eq!(
        server_error(&result),
        rustls::Error::InvalidCertificate(CertificateError::BadSignature)
    );
}

#[tokio::test]
async fn other_cipher_suites_and_protocols_are_refused() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let server = server_config(&issue(&ca, SERVER)).unwrap();
    let client_cert = issue(&ca, CLIENT);
    let creds = || Some((client_cert.chain.clone(), client_cert.key().clone_key()));

    // TLS 1.3 with ChaCha20 only: no suite in common.
    let chacha_only = Arc::new(CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        ..ring::default_provider()
    });
    let result = handshake(
        server.clone(),
        custom_client(ca.roots(), SERVER, chacha_only, creds()),
    )
    .await;
    assert_eq!(
        server_error(&result),
        rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon)
    );

    // ALPN other than h2.
    let mut http11 = (*custom_client(ca.roots(), SERVER, provider(), creds())).clone();
    http11.alpn_protocols = vec![b"http/1.1".to_vec()];
    let result = handshake(server.clone(), Arc::new(http11)).await;
    assert_eq!(server_error(&result), rustls::Error::NoApplicationProtocol);
}

#[test]
fn a_tls12_only_client_hello_is_refused() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let server = server_config(&issue(&ca, SERVER)).unwrap();
    let mut conn = rustls::ServerConnection::new(server).unwrap();
    let hello = tls12_client_hello();
    conn.read_tls(&mut hello.as_slice()).unwrap();
    let err = conn.process_new_packets().unwrap_err();
    assert_eq!(
        err,
        rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::SupportedVersionsExtensionRequired
        )
    );
}

/// A syntactically valid ClientHello offering TLS 1.2 only (no supported_versions extension)
/// with an ECDHE-ECDSA-AES128-GCM suite, as an old client would send.
fn tls12_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0xc0, 0x2b]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let sig_algs: &[u8] = &[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03];
    let groups: &[u8] = &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17];
    let exts = [sig_algs, groups].concat();
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn every_handshake_is_full_so_identity_checks_always_run() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let server = server_config(&issue(&ca, SERVER)).unwrap();
    let client = client_config(&issue(&ca, CLIENT), vec![id(SERVER)]).unwrap();
    for _ in 0..2 {
        let (c, s) = handshake(server.clone(), client.clone()).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        // Drive post-handshake messages (where tickets would travel) before looking.
        ping_pong(&mut c, &mut s).await;
        assert_eq!(c.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    }
}

#[test]
fn config_builders_refuse_nonsense() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    assert_eq!(
        client_config(&issue(&ca, CLIENT), Vec::new()).unwrap_err(),
        TlsError::NoExpectedIdentities
    );
    let p = provider();
    assert_eq!(p.cipher_suites.len(), 2);
    assert!(p
        .cipher_suites
        .iter()
        .all(|s| s.version() == &rustls::version::TLS13));
}
