//! A certificate authority that signs workload certificates.
//!
//! It is loaded from Istio's `cacerts` layout (`ca-cert.pem` signing cert, `ca-key.pem` its key,
//! `root-cert.pem`, `cert-chain.pem` = ca-cert up to the root) or generated as a self-signed root
//! for local use. Leaves are ECDSA P-256 with an empty subject and exactly one critical URI SAN,
//! the SPIFFE id; the returned chain is leaf, intermediates, root.
//!
//! Invariants:
//! - the private key never leaves this type except to the control plane's own root store: only
//!   `write_cacerts_dir` (local bootstrap, mode 0600) and `to_cacerts_pem` (the control plane's
//!   Kubernetes Secret store) export it; there is no other accessor;
//! - a loaded CA has been proven consistent at load time: its key matches `ca-cert.pem`, and a
//!   throwaway leaf it signed verified against the roots exactly as a peer would verify it. A bad
//!   `cacerts` directory therefore fails start-up, not the first handshake.

mod der;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;

use crate::cert::{parse_pem_certs, parse_x509, to_pem, CertError, WorkloadCertificate};
use crate::identity::Identity;

/// Workload certificate lifetime unless configured otherwise.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest lifetime the CA will sign (Istio's default maximum workload TTL).
pub const MAX_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a generated self-signed root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves are backdated by up to this much so that a peer whose clock is slightly behind does
/// not reject a certificate issued a moment ago as "not yet valid".
const MAX_BACKDATE: Duration = Duration::from_secs(60);

const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const ROOT_CERT: &str = "root-cert.pem";
const CERT_CHAIN: &str = "cert-chain.pem";

/// Why the CA could not load, sign, or serve a certificate.
///
/// `Clone` so that one failed fetch can be reported to every caller waiting on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{file}: {reason}")]
    BadFile { file: &'static str, reason: String },
    #[error("ca-key.pem does not match the public key of ca-cert.pem")]
    KeyMismatch,
    #[error("ca-cert.pem is not a CA certificate (basicConstraints CA:true missing)")]
    NotACa,
    #[error("cert-chain.pem must start with the certificate in ca-cert.pem")]
    ChainDoesNotStartWithCaCert,
    #[error("cert-chain.pem does not end at (or directly under) a certificate of root-cert.pem")]
    ChainNotRooted,
    #[error("certificates signed by ca-cert.pem do not verify against root-cert.pem: {0}")]
    ChainInvalid(String),
    #[error("invalid trust domain {0:?}")]
    BadTrustDomain(String),
    #[error("certificate lifetime {0:?} is not within (0, {max:?}]", max = MAX_CERT_LIFETIME)]
    BadLifetime(Duration),
    #[error("the signing certificate has expired")]
    CaExpired,
    #[error("CSR is malformed: {0}")]
    BadCsr(String),
    #[error("CSR signature does not verify")]
    CsrSignature,
    #[error("CSR key is not an EC P-256 key")]
    CsrKeyNotP256,
    #[error("CSR must carry exactly one SAN, a SPIFFE URI; found {0}")]
    CsrSans(String),
    #[error("CSR asks for {requested:?} but the caller is authorised for {authorised}")]
    CsrIdentityMismatch {
        requested: String,
        authorised: String,
    },
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("certificate source returned a certificate for {got}, not {requested}")]
    WrongIdentity { requested: String, got: String },
    #[error("certificate source unavailable for {identity}: {reason}")]
    Unavailable { identity: String, reason: String },
    #[error("no valid certificate for {0}: the last one expired and renewal keeps failing")]
    Expired(String),
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// The files of Istio's `cacerts` layout, in memory. `Debug` omits the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CacertsPem {
    /// `ca-cert.pem`: the signing certificate.
    pub ca_cert: String,
    /// `ca-key.pem`: its private key.
    pub ca_key: String,
    /// `root-cert.pem`: the trust bundle.
    pub root_cert: String,
    /// `cert-chain.pem`: `ca-cert.pem` up to a root; optional when `ca-cert.pem` is a root.
    pub cert_chain: Option<String>,
}

impl std::fmt::Debug for CacertsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacertsPem")
            .field("ca_cert", &self.ca_cert)
            .field("ca_key", &"<redacted>")
            .field("root_cert", &self.root_cert)
            .field("cert_chain", &self.cert_chain)
            .finish()
    }
}

/// Signs workload certificates. Never exposes its private key.
pub struct CertificateAuthority {
    /// rcgen's view of `ca-cert.pem` (subject, key identifier), used only as the issuer when
    /// signing; the original DER is what goes on the wire.
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// `ca-cert.pem` up to and including a root: appended to every leaf.
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    /// Leaves must not outlive their issuer: they would fail validation anyway.
    ca_not_after: SystemTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads Istio's `cacerts` layout. `cert-chain.pem` may be omitted when `ca-cert.pem` is
    /// itself a root; when the chain stops one step below a root, that root is appended.
    pub fn from_cacerts_dir(dir: &Path) -> Result<Self, CaError> {
        let chain_path = dir.join(CERT_CHAIN);
        let files = CacertsPem {
            ca_cert: read(dir, CA_CERT)?,
            ca_key: read(dir, CA_KEY)?,
            root_cert: read(dir, ROOT_CERT)?,
            cert_chain: if chain_path.exists() {
                Some(read(dir, CERT_CHAIN)?)
            } else {
                None
            },
        };
        Self::from_cacerts_pem(&files)
    }

    /// Loads the `cacerts` layout from memory (a store that is not a directory, such as the
    /// control plane's Kubernetes Secret), with the same checks as
    /// [`from_cacerts_dir`](Self::from_cacerts_dir).
    pub fn from_cacerts_pem(files: &CacertsPem) -> Result<Self, CaError> {
        let mut ca_certs = pem_certs(&files.ca_cert, CA_CERT)?;
        if ca_certs.len() != 1 {
            return Err(bad(
                CA_CERT,
                "must hold exactly one certificate (put intermediates in cert-chain.pem)",
            ));
        }
        let ca_cert = ca_certs.remove(0);
        let roots = pem_certs(&files.root_cert, ROOT_CERT)?;
        let key = PrivateKeyDer::from_pem_slice(files.ca_key.as_bytes())
            .map_err(|e| bad(CA_KEY, &e.to_string()))?;
        let pkcs8 = der::to_pkcs8(&key).map_err(|e| bad(CA_KEY, &e))?;
        let key = KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8))
            .map_err(|e| bad(CA_KEY, &format!("unsupported key: {e}")))?;

        let chain = match &files.cert_chain {
            Some(pem) => pem_certs(pem, CERT_CHAIN)?,
            None => vec![ca_cert.clone()],
        };
        Self::assemble(ca_cert, key, chain, roots)
    }

    /// A fresh self-signed ECDSA P-256 root for `trust_domain`, for local use and tests.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        // Reuse the identity parser's rules for what a trust domain may contain.
        Identity::new(trust_domain, "x", "x")
            .map_err(|_| CaError::BadTrustDomain(trust_domain.to_string()))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params
            .distinguished_name
            .push(DnType::CommonName, "ambit root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = unix_seconds(SystemTime::now());
        params.not_before = to_offset(now.saturating_sub(MAX_BACKDATE.as_secs()))?;
        params.not_after = to_offset(now + ROOT_LIFETIME.as_secs())?;
        params.serial_number = Some(random_serial());
        let root = params.self_signed(&key).map_err(signing)?;
        let root_der = root.der().clone();
        Self::assemble(
            root_der.clone(),
            key,
            vec![root_der.clone()],
            vec![root_der],
        )
    }

    /// Writes this CA in the `cacerts` layout (for local bootstrap only). Files are replaced
    /// atomically; the key file is created with mode 0600 before any byte of the key is written.
    pub fn write_cacerts_dir(&self, dir: &Path) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(|e| CaError::Write {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let files = self.to_cacerts_pem();
        write_atomic(dir, CA_CERT, &files.ca_cert, 0o644)?;
        write_atomic(dir, CA_KEY, &files.ca_key, 0o600)?;
        write_atomic(dir, ROOT_CERT, &files.root_cert, 0o644)?;
        if let Some(chain) = &files.cert_chain {
            write_atomic(dir, CERT_CHAIN, chain, 0o644)?;
        }
        Ok(())
    }

    /// This CA in the `cacerts` layout, in memory, key included: only for persisting it to the
    /// CA's own root store (see the module invariants).
    pub fn to_cacerts_pem(&self) -> CacertsPem {
        CacertsPem {
            ca_cert: to_pem("CERTIFICATE", &self.chain[0]),
            ca_key: self.key.serialize_pem(),
            root_cert: self.roots_pem(),
            cert_chain: Some(
                self.chain
                    .iter()
                    .map(|c| to_pem("CERTIFICATE", c))
                    .collect(),
            ),
        }
    }

    /// The trust roots workloads should use.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn roots_pem(&self) -> String {
        self.roots
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }

    /// The chain appended to every leaf: `ca-cert.pem` up to the root.
    pub fn ca_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Issues a certificate for `id`, generating its ECDSA P-256 key here (file-CA mode).
    pub fn issue(&self, id: &Identity, lifetime: Duration) -> Result<WorkloadCertificate, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let leaf = self.sign_leaf(&key, id, lifetime)?;
        let mut chain = vec![leaf];
        chain.extend(self.chain.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(WorkloadCertificate::from_parts(
            chain,
            key,
            self.roots.clone(),
        )?)
    }

    /// Signs a PEM PKCS#10 CSR for the identity the caller was authorised for (control-plane CA
    /// service). The CSR must be self-signed with an EC P-256 key and carry exactly one SAN, a
    /// SPIFFE URI equal to `authorised`. Nothing else from the CSR (subject, other extensions)
    /// reaches the certificate: only its public key. Returns PEM certificates, leaf to root.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        authorised: &Identity,
        lifetime: Duration,
    ) -> Result<Vec<String>, CaError> {
        let csr_der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let (rest, csr) = X509CertificationRequest::from_der(&csr_der)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CaError::BadCsr("trailing bytes after the CSR".to_string()));
        }
        // x509-parser's `verify` feature is enabled through rcgen's `x509-parser` feature.
        csr.verify_signature().map_err(|_| CaError::CsrSignature)?;

        let spki = &csr.certification_request_info.subject_pki;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
            return Err(CaError::CsrKeyNotP256);
        }

        let requested = csr_single_uri_san(&csr)?;
        if requested != authorised.to_string() {
            return Err(CaError::CsrIdentityMismatch {
                requested,
                authorised: authorised.to_string(),
            });
        }

        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| CaError::BadCsr(format!("public key: {e}")))?;
        let leaf = self.sign_leaf(&public_key, authorised, lifetime)?;
        Ok(std::iter::once(&leaf)
            .chain(self.chain.iter())
            .map(|c| to_pem("CERTIFICATE", c))
            .collect())
    }

    /// Checks the parts agree with each other and builds the CA (see the module invariants).
    fn assemble(
        ca_cert: CertificateDer<'static>,
        key: KeyPair,
        mut chain: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CaError> {
        let parsed = parse_x509(&ca_cert).map_err(|e| bad(CA_CERT, &e))?;
        if !parsed.is_ca() {
            return Err(CaError::NotACa);
        }
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        // rcgen panics on an RDN with no attribute and cannot represent multi-valued ones;
        // reject both here with an error instead.
        if parsed.subject().iter().any(|rdn| rdn.iter().count() != 1) {
            return Err(bad(
                CA_CERT,
                "subject has an empty or multi-valued RDN, which is not supported",
            ));
        }
        let ca_not_after = UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0),
            );

        if chain.first() != Some(&ca_cert) {
            return Err(CaError::ChainDoesNotStartWithCaCert);
        }
        for (i, c) in chain.iter().enumerate() {
            parse_x509(c).map_err(|e| bad(CERT_CHAIN, &format!("certificate {i}: {e}")))?;
        }
        let last = chain
            .last()
            .cloned()
            .ok_or(CaError::ChainDoesNotStartWithCaCert)?;
        if !roots.contains(&last) {
            let last_issuer = parse_x509(&last)
                .map_err(|e| bad(CERT_CHAIN, &e))?
                .issuer()
                .as_raw()
                .to_vec();
            let parent = roots.iter().find(|r| {
                parse_x509(r)
                    .map(|p| p.subject().as_raw() == last_issuer.as_slice())
                    .unwrap_or(false)
            });
            chain.push(parent.cloned().ok_or(CaError::ChainNotRooted)?);
        }

        let issuer_params = CertificateParams::from_ca_cert_der(&ca_cert)
            .map_err(|e| bad(CA_CERT, &format!("cannot use as issuer: {e}")))?;
        let issuer = issuer_params.self_signed(&key).map_err(signing)?;
        // Peers match a leaf's issuer to its parent's subject byte for byte, so rcgen must
        // reproduce the subject exactly (string types and all).
        let reproduced = parse_x509(issuer.der()).map_err(|e| bad(CA_CERT, &e))?;
        if reproduced.subject().as_raw() != parsed.subject().as_raw() {
            return Err(bad(
                CA_CERT,
                "subject uses an encoding that cannot be reproduced when signing",
            ));
        }

        let ca = CertificateAuthority {
            issuer,
            key,
            chain,
            roots,
            ca_not_after,
        };
        ca.self_test()?;
        Ok(ca)
    }

    /// Signs a throwaway leaf and verifies it the way a peer will.
    fn self_test(&self) -> Result<(), CaError> {
        let probe_id = Identity::new("ca-self-test.invalid", "ambit", "probe")
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let probe = self.issue(&probe_id, Duration::from_secs(60))?;
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store
                .add(root.clone())
                .map_err(|e| bad(ROOT_CERT, &e.to_string()))?;
        }
        let leaf = ParsedCertificate::try_from(&probe.chain[0])
            .map_err(|e| CaError::ChainInvalid(e.to_string()))?;
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &store,
            &probe.chain[1..],
            UnixTime::now(),
            algs.all,
        )
        .map_err(|e| CaError::ChainInvalid(e.to_string()))
    }

    /// Signs a leaf for `id` over `public_key`.
    fn sign_leaf(
        &self,
        public_key: &impl PublicKeyData,
        id: &Identity,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        if lifetime.is_zero() || lifetime > MAX_CERT_LIFETIME {
            return Err(CaError::BadLifetime(lifetime));
        }
        let now = unix_seconds(SystemTime::now());
        let backdate = MAX_BACKDATE.min(lifetime / 10).as_secs();
        let ca_not_after = unix_seconds(self.ca_not_after);
        let not_after = (now + lifetime.as_secs()).min(ca_not_after);
        if not_after <= now {
            return Err(CaError::CaExpired);
        }

        let mut params = CertificateParams::default();
        // Empty subject, identity only in the SAN: what Istio issues and peers expect.
        params.distinguished_name = DistinguishedName::new();
        params.not_before = to_offset(now.saturating_sub(backdate))?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // Both: the same certificate serves as HBONE client and server.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let mut san = CustomExtension::from_oid_content(
            &[2, 5, 29, 17],
            der::san_uri_extension_value(&id.to_string()),
        );
        // RFC 5280: with an empty subject the SAN extension must be critical.
        san.set_criticality(true);
        params.custom_extensions = vec![san];
        let cert = params
            .signed_by(public_key, &self.issuer, &self.key)
            .map_err(signing)?;
        Ok(cert.der().clone())
    }
}

/// The one URI of the CSR's only SAN extension, or why there is not exactly one.
fn csr_single_uri_san(csr: &X509CertificationRequest<'_>) -> Result<String, CaError> {
    let mut sans = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &req.extensions {
            if ext.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
                continue;
            }
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                return Err(CaError::BadCsr("unparsable SAN extension".to_string()));
            };
            sans.push(san);
        }
    }
    let [san] = sans.as_slice() else {
        return Err(CaError::CsrSans(format!("{} SAN extensions", sans.len())));
    };
    match san.general_names.as_slice() {
        [GeneralName::URI(uri)] => {
            Identity::parse(uri).map_err(|e| CaError::CsrSans(e.to_string()))?;
            Ok((*uri).to_string())
        }
        [other] => Err(CaError::CsrSans(format!("a non-URI name {other:?}"))),
        names => Err(CaError::CsrSans(format!("{} names", names.len()))),
    }
}

fn read(dir: &Path, name: &'static str) -> Result<String, CaError> {
    let path = dir.join(name);
    fs::read_to_string(&path).map_err(|e| CaError::Read {
        path,
        reason: e.to_string(),
    })
}

fn pem_certs(pem: &str, file: &'static str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    parse_pem_certs(pem, file).map_err(|e| bad(file, &e.to_string()))
}

/// Writes via a temporary file created with `mode`, then renames it into place, so readers
/// never see a half-written file and the key is never briefly world-readable.
fn write_atomic(dir: &Path, name: &str, contents: &str, mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |e: std::io::Error| CaError::Write {
        path: path.clone(),
        reason: e.to_string(),
    };
    // A stale temp file from a crash could have other permissions: start over.
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)
}

fn bad(file: &'static str, reason: &str) -> CaError {
    CaError::BadFile {
        file,
        reason: reason.to_string(),
    }
}

fn signing(e: rcgen::Error) -> CaError {
    CaError::Signing(e.to_string())
}

/// 16 random bytes, top bit clear so the DER INTEGER is positive without padding.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped by the encoding; keep the length fixed.
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_offset(secs: u64) -> Result<time::OffsetDateTime, CaError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| CaError::Signing(format!("time {secs} out of range")))
}

#[cfg(test)]
mod tests;
