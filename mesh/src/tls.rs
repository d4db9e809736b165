//! rustls configurations for HBONE mTLS, and the SPIFFE checks on both sides.
//!
//! Invariants of every config built here:
//! - ring provider with exactly TLS13_AES_256_GCM_SHA384 and TLS13_AES_128_GCM_SHA256, TLS 1.3
//!   only, ALPN `h2`;
//! - no session resumption, in either direction: a resumed session skips certificate
//!   verification, and here verification is where the identity checks happen (the expected
//!   identities differ per destination, and peers rotate certificates);
//! - the client sends no SNI (it would carry nothing meaningful: the server picks its
//!   certificate by which workload's listener accepted the connection), so callers may pass any
//!   `ServerName`, conventionally the destination IP;
//! - client side: the server's chain must reach our roots (no hostname check) and one of its URI
//!   SANs must be a SPIFFE id among the expected ones;
//! - server side: a client certificate is mandatory, must reach our roots, and its first SPIFFE
//!   URI SAN, the principal authorization sees, must be in our trust domain.
//!
//! A config holds its own `Arc` of the certificate material, so a connection opened with an old
//! certificate keeps working after rotation; new connections should build (or fetch cached)
//! configs from the current certificate.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, Resumption};
use rustls::crypto::{
    ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConnection, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cert::{spiffe_ids_of, WorkloadCertificate};
use crate::identity::Identity;

/// The only application protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS config could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TlsError {
    #[error("no expected peer identities: a client config would accept no server")]
    NoExpectedIdentities,
    #[error("root certificate rejected: {0}")]
    BadRoot(String),
    #[error("cannot build certificate verifier: {0}")]
    Verifier(String),
    #[error("rustls rejected the configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why a peer certificate failed the SPIFFE checks (carried inside rustls'
/// `CertificateError::Other` so logs say what was wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer certificate has identities {found:?}, none of the expected {expected:?}")]
    Unexpected {
        found: Vec<String>,
        expected: Vec<String>,
    },
    #[error("peer certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("peer identity {found} is not in trust domain {trust_domain}")]
    WrongTrustDomain { found: String, trust_domain: String },
}

/// ring with only the two TLS 1.3 AES-GCM suites HBONE uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        ..ring::default_provider()
    })
}

/// Server side of HBONE for `cert`'s workload; clients must be in `cert.identity`'s trust domain.
pub fn server_config(cert: &WorkloadCertificate) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let roots = root_store(&cert.roots)?;
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = SpiffeClientVerifier {
        inner,
        trust_domain: cert.identity.trust_domain().to_string(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert.chain.clone(), cert.key().clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client side of HBONE presenting `cert`, accepting only servers proving one of `expected`.
pub fn client_config(
    cert: &WorkloadCertificate,
    expected: Vec<Identity>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    if expected.is_empty() {
        return Err(TlsError::NoExpectedIdentities);
    }
    let verifier = SpiffeServerVerifier::new(&cert.roots, ExpectedIdentities(expected))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain.clone(), cert.key().clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The principal of a completed server-side handshake: the client's first SPIFFE URI SAN.
pub fn peer_identity(conn: &ServerConnection) -> Option<Identity> {
    peer_identity_of(conn)
}

/// The first SPIFFE URI SAN of the peer's leaf, on either side of a completed handshake.
pub fn peer_identity_of(state: &CommonState) -> Option<Identity> {
    let leaf = state.peer_certificates()?.first()?;
    spiffe_ids_of(leaf).into_iter().next()
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| TlsError::BadRoot(e.to_string()))?;
    }
    Ok(Arc::new(store))
}

fn identity_failure(e: PeerIdentityError) -> rustls::Error {
    tracing::debug!(error = %e, "peer certificate rejected");
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// What a client accepts once the server's chain reached the trust roots. One verifier
/// ([`SpiffeServerVerifier`]) does the chain and signature checks for every TLS client in the
/// mesh; the implementations of this trait only say which server is the right one.
pub trait ServerAcceptance: fmt::Debug + Send + Sync + 'static {
    /// `found` are the leaf's SPIFFE ids, in order. An `Err` says why the server is refused.
    fn accept(
        &self,
        found: &[Identity],
        leaf: &ParsedCertificate<'_>,
        server_name: &ServerName<'_>,
    ) -> Result<(), Arc<dyn std::error::Error + Send + Sync>>;
}

/// HBONE: the server must prove one of the destination's expected identities.
#[derive(Debug)]
struct ExpectedIdentities(Vec<Identity>);

impl ServerAcceptance for ExpectedIdentities {
    fn accept(
        &self,
        found: &[Identity],
        _leaf: &ParsedCertificate<'_>,
        _server_name: &ServerName<'_>,
    ) -> Result<(), Arc<dyn std::error::Error + Send + Sync>> {
        if found.iter().any(|id| self.0.contains(id)) {
            return Ok(());
        }
        let e = PeerIdentityError::Unexpected {
            found: found.iter().map(ToString::to_string).collect(),
            expected: self.0.iter().map(ToString::to_string).collect(),
        };
        tracing::debug!(error = %e, "peer certificate rejected");
        Err(Arc::new(e))
    }
}

/// Client-side verifier: chain to the roots (no hostname check: servers are identified by
/// SPIFFE id, not by name), then whatever `acceptance` requires of the leaf.
pub struct SpiffeServerVerifier<A> {
    roots: Arc<RootCertStore>,
    acceptance: A,
    algorithms: WebPkiSupportedAlgorithms,
}

impl<A: ServerAcceptance> SpiffeServerVerifier<A> {
    /// A verifier trusting exactly `roots` (at least one).
    pub fn new(roots: &[CertificateDer<'static>], acceptance: A) -> Result<Self, TlsError> {
        let store = root_store(roots)?;
        if store.is_empty() {
            return Err(TlsError::BadRoot("no root certificates".to_string()));
        }
        Ok(SpiffeServerVerifier {
            roots: store,
            acceptance,
            algorithms: provider().signature_verification_algorithms,
        })
    }
}

impl<A: fmt::Debug> fmt::Debug for SpiffeServerVerifier<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("acceptance", &self.acceptance)
            .finish_non_exhaustive()
    }
}

impl<A: ServerAcceptance> ServerCertVerifier for SpiffeServerVerifier<A> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The same chain validation WebPkiServerVerifier performs, minus the hostname check.
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let found = spiffe_ids_of(end_entity);
        match self.acceptance.accept(&found, &parsed, server_name) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(e),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server-side verifier: rustls' WebPki client verifier (mandatory cert, chain to roots), then
/// a SPIFFE principal in our trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        // Authorization uses the first SPIFFE id, so that is the one that must be ours; a
        // foreign-domain principal must not slip through on the strength of a later SAN.
        let principal = spiffe_ids_of(end_entity)
            .into_iter()
            .next()
            .ok_or_else(|| identity_failure(PeerIdentityError::NoSpiffeId))?;
        if principal.trust_domain() != self.trust_domain {
            return Err(identity_failure(PeerIdentityError::WrongTrustDomain {
                found: principal.to_string(),
                trust_domain: self.trust_domain.clone(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
