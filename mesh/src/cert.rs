//! A workload's certificate: its identity, the chain it presents, its private key and the roots
//! it trusts.
//!
//! Invariants of a [`WorkloadCertificate`]:
//! - `chain` is non-empty and ordered leaf, intermediates, root(s), as the CA returned it;
//! - `identity` is the first SPIFFE URI SAN of the leaf (the principal peers will see);
//! - `not_before`, `not_after` and `serial` are read back from the leaf itself, so they can never
//!   disagree with what a peer validates;
//! - the private key matches the leaf's public key (checked on construction);
//! - `roots` is non-empty.
//!
//! Everything here is pure: no I/O and no clock reads (callers of
//! [`WorkloadCertificate::refresh_at`] supply the jitter and compare against their own clock).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::identity::Identity;

/// Why certificate material could not be turned into a [`WorkloadCertificate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{0} contains no certificate")]
    Empty(&'static str),
    #[error("certificate {index} of the chain is not valid X.509: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error("leaf certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("private key is unusable: {0}")]
    BadKey(String),
    #[error("private key does not match the leaf certificate")]
    KeyMismatch,
}

/// A workload certificate with everything a TLS config needs.
pub struct WorkloadCertificate {
    /// The identity this certificate proves: the leaf's first SPIFFE URI SAN.
    pub identity: Identity,
    /// Leaf first, then intermediates, then root(s).
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Roots peers' certificates must chain to.
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Leaf serial number, lowercase hex (for logs and /config_dump).
    pub serial: String,
}

impl WorkloadCertificate {
    /// Assembles a certificate from DER parts, reading identity, validity and serial from the
    /// leaf and checking that `key` belongs to it.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CertError> {
        let leaf_der = chain.first().ok_or(CertError::Empty("certificate chain"))?;
        if roots.is_empty() {
            return Err(CertError::Empty("root certificates"));
        }
        for (index, der) in chain.iter().enumerate() {
            parse_x509(der).map_err(|reason| CertError::BadCertificate { index, reason })?;
        }
        let leaf = parse_x509(leaf_der)
            .map_err(|reason| CertError::BadCertificate { index: 0, reason })?;
        let identity = spiffe_ids_of_parsed(&leaf)
            .into_iter()
            .next()
            .ok_or(CertError::NoSpiffeId)?;
        let not_before = unix_to_system_time(leaf.validity().not_before.timestamp());
        let not_after = unix_to_system_time(leaf.validity().not_after.timestamp());
        let serial = hex(leaf.raw_serial());

        // A key that does not match the leaf would only show up as a failed handshake on the
        // peer's side; catch it here where the error can name the cause.
        let signing_key = any_supported_type(&key).map_err(|e| CertError::BadKey(e.to_string()))?;
        CertifiedKey::new(vec![leaf_der.clone()], signing_key)
            .keys_match()
            .map_err(|_| CertError::KeyMismatch)?;

        Ok(WorkloadCertificate {
            identity,
            chain,
            key,
            roots,
            not_before,
            not_after,
            serial,
        })
    }

    /// Parses PEM material: the chain (leaf first), the key (PKCS#8, SEC1 or PKCS#1) and the
    /// roots.
    pub fn from_pem(chain_pem: &str, key_pem: &str, roots_pem: &str) -> Result<Self, CertError> {
        let chain = parse_pem_certs(chain_pem, "certificate chain")?;
        let roots = parse_pem_certs(roots_pem, "root certificates")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Pem {
                what: "private key",
                reason: e.to_string(),
            })?;
        Self::from_parts(chain, key, roots)
    }

    /// The private key matching the leaf.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The leaf certificate (always present unless `chain` was emptied after construction).
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }

    /// When to fetch a replacement: at half-life, moved by `jitter_fraction` of the half-life
    /// (e.g. 0.1 → 10 % later, -0.1 → 10 % earlier), so that many workloads that got their
    /// certificates together do not all renew in the same second. The caller draws the jitter,
    /// which keeps this function deterministic. Values outside [-1, 1] (or NaN) are clamped
    /// (NaN → 0) so the result always lies within the validity period.
    pub fn refresh_at(&self, jitter_fraction: f64) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        let jitter = if jitter_fraction.is_nan() {
            0.0
        } else {
            jitter_fraction.clamp(-1.0, 1.0)
        };
        let offset = lifetime.mul_f64(0.5 * (1.0 + jitter));
        self.not_before + offset
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }

    /// The roots as PEM.
    pub fn roots_pem(&self) -> String {
        self.roots
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }
}

impl Clone for WorkloadCertificate {
    fn clone(&self) -> Self {
        WorkloadCertificate {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            serial: self.serial.clone(),
        }
    }
}

// Hand-written so that the key can never end up in a log line.
impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// The URI SANs of `cert` that parse as SPIFFE identities, in certificate order. A certificate
/// that does not parse yields none: callers treat "no identity" as the failure.
pub fn spiffe_ids_of(cert: &CertificateDer) -> Vec<Identity> {
    match X509Certificate::from_der(cert) {
        Ok((_, parsed)) => spiffe_ids_of_parsed(&parsed),
        Err(_) => Vec::new(),
    }
}

/// All URI SANs of a parsed certificate, as raw strings, in order. Empty if there is no SAN
/// extension or it is malformed/duplicated (x509-parser rejects a second SAN extension, which
/// must not be able to smuggle in an identity).
pub(crate) fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn spiffe_ids_of_parsed(cert: &X509Certificate<'_>) -> Vec<Identity> {
    uri_sans(cert)
        .iter()
        .filter_map(|uri| Identity::parse(uri).ok())
        .collect()
}

/// Parses DER as one X.509 certificate with nothing trailing.
pub(crate) fn parse_x509<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after certificate".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses every CERTIFICATE block of `pem`; `what` names the input in errors.
pub fn parse_pem_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::Empty(what));
    }
    Ok(certs)
}

/// Encodes DER as one PEM block with 64-column base64 lines.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// Standard base64 with padding. Written out (a dozen lines) rather than adding a dependency:
// only encoding is needed, decoding is done by rustls-pki-types.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in sextets.iter().enumerate() {
            // A chunk of k bytes yields k+1 significant characters; the rest is padding.
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[*s as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_to_system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// RFC 3339 (UTC, whole seconds) for dumps and logs, without needing `time`'s formatting feature.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => format!("@{secs}"),
    }
}

#[cfg(test)]
mod tests;
