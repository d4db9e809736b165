//! The little DER the CA writes and reads by hand: a critical URI-only SubjectAltName extension
//! body, and the PKCS#8 wrapping of PKCS#1 (RSA) and SEC1 (EC) private keys.
//!
//! Why by hand: rcgen marks SANs non-critical, but a leaf with an empty subject must carry a
//! critical SAN (RFC 5280 §4.2.1.6, and Istio's leaves do); and with the ring backend rcgen only
//! loads PKCS#8 keys, while Istio `cacerts` keys are often `BEGIN RSA PRIVATE KEY` (PKCS#1) or
//! `BEGIN EC PRIVATE KEY` (SEC1). Parsing never panics: every length is bounds-checked.

use rustls_pki_types::PrivateKeyDer;

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
/// GeneralName uniformResourceIdentifier: [6] IMPLICIT IA5String.
const TAG_GENERAL_NAME_URI: u8 = 0x86;

/// 1.2.840.113549.1.1.1 rsaEncryption.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.10045.2.1 id-ecPublicKey.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// Encodes one tag-length-value with a definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Body of a SubjectAltName extension holding exactly one URI.
pub(crate) fn san_uri_extension_value(uri: &str) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &tlv(TAG_GENERAL_NAME_URI, uri.as_bytes()))
}

/// Returns PKCS#8 DER for any of the key encodings found in `cacerts` directories.
pub(crate) fn to_pkcs8(key: &PrivateKeyDer<'_>) -> Result<Vec<u8>, String> {
    match key {
        PrivateKeyDer::Pkcs8(k) => Ok(k.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Pkcs1(k) => {
            let alg = tlv(
                TAG_SEQUENCE,
                &[tlv(TAG_OID, OID_RSA_ENCRYPTION), tlv(TAG_NULL, &[])].concat(),
            );
            Ok(wrap_pkcs8(&alg, k.secret_pkcs1_der()))
        }
        PrivateKeyDer::Sec1(k) => {
            let curve = sec1_curve_oid(k.secret_sec1_der())?;
            let alg = tlv(
                TAG_SEQUENCE,
                &[tlv(TAG_OID, OID_EC_PUBLIC_KEY), tlv(TAG_OID, curve)].concat(),
            );
            Ok(wrap_pkcs8(&alg, k.secret_sec1_der()))
        }
        _ => Err("unsupported private key encoding".to_string()),
    }
}

fn wrap_pkcs8(algorithm: &[u8], private_key: &[u8]) -> Vec<u8> {
    tlv(
        TAG_SEQUENCE,
        &[
            tlv(TAG_INTEGER, &[0]),
            algorithm.to_vec(),
            tlv(TAG_OCTET_STRING, private_key),
        ]
        .concat(),
    )
}

/// The namedCurve OID in a SEC1 ECPrivateKey's `[0] parameters`. PKCS#8 carries the curve in
/// the algorithm identifier instead, so it must be lifted out.
fn sec1_curve_oid(sec1: &[u8]) -> Result<&[u8], String> {
    let (tag, body, _) = read_tlv(sec1)?;
    if tag != TAG_SEQUENCE {
        return Err("EC private key is not a SEQUENCE".to_string());
    }
    let (tag, _, rest) = read_tlv(body)?;
    if tag != TAG_INTEGER {
        return Err("EC private key lacks its version".to_string());
    }
    let (tag, _, mut rest) = read_tlv(rest)?;
    if tag != TAG_OCTET_STRING {
        return Err("EC private key lacks its private key octets".to_string());
    }
    while !rest.is_empty() {
        let (tag, body, next) = read_tlv(rest)?;
        if tag == TAG_CONTEXT_0_CONSTRUCTED {
            let (tag, oid, _) = read_tlv(body)?;
            if tag == TAG_OID {
                return Ok(oid);
            }
            return Err("EC private key parameters are not a named curve".to_string());
        }
        rest = next;
    }
    Err("EC private key does not name its curve; convert it to PKCS#8".to_string())
}

/// Reads one TLV: (tag, content, rest). Only single-byte tags and definite lengths (all DER needs).
fn read_tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let truncated = || "truncated DER".to_string();
    let (&tag, rest) = input.split_first().ok_or_else(truncated)?;
    let (&first, rest) = rest.split_first().ok_or_else(truncated)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad DER length".to_string());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(truncated());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let encoded = tlv(TAG_OCTET_STRING, &content);
            let (tag, body, rest) = read_tlv(&encoded).unwrap();
            assert_eq!((tag, body.len(), rest.len()), (TAG_OCTET_STRING, len, 0));
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x00],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x80],
        ] {
            assert!(read_tlv(bad).is_err(), "{bad:?}");
            assert!(sec1_curve_oid(bad).is_err(), "{bad:?}");
        }
        // A SEC1 key without parameters cannot be converted.
        let no_params = tlv(
            TAG_SEQUENCE,
            &[tlv(TAG_INTEGER, &[1]), tlv(TAG_OCTET_STRING, &[9; 32])].concat(),
        );
        assert!(sec1_curve_oid(&no_params).unwrap_err().contains("PKCS#8"));
    }
}
