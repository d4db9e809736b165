//! `istio.v1.auth.IstioCertificateService` (`proto/citadel.proto`): the generated messages,
//! client and server (from `scripts/gen-protos.sh`, in `crate::xds::gen`), re-exported under
//! the CA's names, plus the metadata helpers both ends use.
//!
//! The field tags in `proto/citadel.proto` ARE the wire contract with Istio: never renumber.

pub use crate::xds::gen::google::protobuf::{value, Struct, Value};
pub use crate::xds::gen::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
pub use crate::xds::gen::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
pub use crate::xds::gen::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};

use tonic::codegen::{Body, Bytes, StdError};

/// gRPC service name.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
/// Key in [`IstioCertificateRequest::metadata`] naming the identity a node agent asks for on a
/// workload's behalf (Istio's `security.ImpersonatedIdentity`).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

// An inherent impl on the generated type (same crate), so call sites read naturally.
impl Struct {
    /// A struct holding one string field.
    pub fn with_string(key: &str, value: &str) -> Struct {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            key.to_string(),
            Value {
                kind: Some(value::Kind::StringValue(value.to_string())),
            },
        );
        Struct { fields }
    }

    /// The string value of `key`, if present and a string.
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.fields.get(key)?.kind.as_ref()? {
            value::Kind::StringValue(s) => Some(s),
            _ => None,
        }
    }
}

/// Calls `CreateCertificate` on any tonic transport (a `Channel` in production).
pub async fn create_certificate<T>(
    transport: T,
    request: tonic::Request<IstioCertificateRequest>,
) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    IstioCertificateServiceClient::new(transport)
        .create_certificate(request)
        .await
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Bytes as Go's protobuf encodes an Istio request with an ImpersonatedIdentity, written out
    /// by hand from the field tags, so a renumbering here cannot go unnoticed.
    #[test]
    fn wire_layout_matches_istio() {
        let req = IstioCertificateRequest {
            csr: "C".into(),
            validity_duration: 60,
            metadata: Some(Struct::with_string(IMPERSONATED_IDENTITY, "x")),
        };
        let bytes = req.encode_to_vec();
        let mut expected = vec![0x0a, 1, b'C', 0x18, 60, 0x22];
        // Struct{fields: {"ImpersonatedIdentity": Value{string_value: "x"}}}
        let key = IMPERSONATED_IDENTITY.as_bytes();
        let value = [0x1a, 1, b'x'];
        let mut entry = vec![0x0a, key.len() as u8];
        entry.extend_from_slice(key);
        entry.extend_from_slice(&[0x12, value.len() as u8]);
        entry.extend_from_slice(&value);
        let mut strukt = vec![0x0a, entry.len() as u8];
        strukt.extend_from_slice(&entry);
        expected.push(strukt.len() as u8);
        expected.extend_from_slice(&strukt);
        assert_eq!(bytes, expected);

        let back = IstioCertificateRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            back.metadata.unwrap().string(IMPERSONATED_IDENTITY),
            Some("x")
        );

        let resp = IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
        };
        assert_eq!(resp.encode_to_vec(), vec![0x0a, 1, b'a', 0x0a, 1, b'b']);
    }

    /// A metadata value that is not a string (here a nested struct) is not mistaken for one.
    #[test]
    fn non_string_values_are_not_strings() {
        // Value{struct_value: Struct{}} = field 5, length 0.
        let value = [0x2a, 0];
        let mut entry = vec![0x0a, 1, b'k', 0x12, value.len() as u8];
        entry.extend_from_slice(&value);
        let mut bytes = vec![0x22, (entry.len() + 2) as u8, 0x0a, entry.len() as u8];
        bytes.extend_from_slice(&entry);
        let req = IstioCertificateRequest::decode(bytes.as_slice()).unwrap();
        let md = req.metadata.unwrap();
        assert!(matches!(
            md.fields.get("k").unwrap().kind,
            Some(value::Kind::StructValue(_))
        ));
        assert_eq!(md.string("k"), None);
    }
}
