//! `istio.v1.auth.IstioCertificateService` (see `proto/citadel.proto`): the messages, the client
//! call and the server routing, written by hand in the shape `prost-build`/`tonic-build` emit.
//!
//! Hand-written because the repository's protobuf generator script did not exist when this was
//! written, and the service is one unary call over four small messages. The field tags and
//! types here ARE the wire contract with Istio: change them only together with
//! `proto/citadel.proto`, and never renumber.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::NamedService;

/// gRPC service name, also the route prefix.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
/// Full HTTP/2 path of the one method.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// Key in [`IstioCertificateRequest::metadata`] naming the identity a node agent asks for on a
/// workload's behalf (Istio's `security.ImpersonatedIdentity`).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM PKCS#10 certificate signing request.
    #[prost(string, tag = "1")]
    pub csr: ::prost::alloc::string::String,
    /// Requested lifetime in seconds; 0 or less means the CA's default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    #[prost(message, optional, tag = "4")]
    pub metadata: ::core::option::Option<Struct>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates, leaf first, root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: ::prost::alloc::vec::Vec<::prost::alloc::string::String>,
}

/// `google.protobuf.Struct`, only as far as string/number/bool/null values go: nested structs
/// and lists (tags 5 and 6) are skipped as unknown fields, leaving `kind` empty.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Struct {
    #[prost(btree_map = "string, message", tag = "1")]
    pub fields: BTreeMap<::prost::alloc::string::String, Value>,
}

/// `google.protobuf.Value` (see [`Struct`] for what is left out).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Value {
    #[prost(oneof = "value::Kind", tags = "1, 2, 3, 4")]
    pub kind: ::core::option::Option<value::Kind>,
}

pub mod value {
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Kind {
        /// `google.protobuf.NullValue` (an enum, varint on the wire; its only value is 0).
        #[prost(int32, tag = "1")]
        NullValue(i32),
        #[prost(double, tag = "2")]
        NumberValue(f64),
        #[prost(string, tag = "3")]
        StringValue(::prost::alloc::string::String),
        #[prost(bool, tag = "4")]
        BoolValue(bool),
    }
}

impl Struct {
    /// A struct holding one string field.
    pub fn with_string(key: &str, value: &str) -> Struct {
        let mut fields = BTreeMap::new();
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
    T::ResponseBody: Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(transport);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("CA service not ready: {}", e.into())))?;
    let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH);
    grpc.unary(request, path, tonic::codec::ProstCodec::default())
        .await
}

/// What a CA implements to be served by [`IstioCertificateServiceServer`].
pub trait IstioCertificateService: Send + Sync + 'static {
    fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> BoxFuture<tonic::Response<IstioCertificateResponse>, tonic::Status>;
}

/// Routes `CreateCertificate` to `T`; any other path of this service is `UNIMPLEMENTED`. Add it to
/// a `tonic::transport::Server` with `add_service`.
pub struct IstioCertificateServiceServer<T> {
    inner: Arc<T>,
}

impl<T> IstioCertificateServiceServer<T> {
    pub fn new(inner: T) -> Self {
        Self::from_arc(Arc::new(inner))
    }

    pub fn from_arc(inner: Arc<T>) -> Self {
        IstioCertificateServiceServer { inner }
    }
}

impl<T> Clone for IstioCertificateServiceServer<T> {
    fn clone(&self) -> Self {
        IstioCertificateServiceServer {
            inner: self.inner.clone(),
        }
    }
}

impl<T> NamedService for IstioCertificateServiceServer<T> {
    const NAME: &'static str = SERVICE_NAME;
}

impl<T, B> Service<http::Request<B>> for IstioCertificateServiceServer<T>
where
    T: IstioCertificateService,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE_PATH {
            let status = tonic::Status::unimplemented(format!(
                "{} has no method {}",
                SERVICE_NAME,
                req.uri().path()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let method = CreateCertificateMethod(self.inner.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic::codec::ProstCodec::default());
            Ok(grpc.unary(method, req).await)
        })
    }
}

struct CreateCertificateMethod<T>(Arc<T>);

impl<T: IstioCertificateService> tonic::server::UnaryService<IstioCertificateRequest>
    for CreateCertificateMethod<T>
{
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<IstioCertificateResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        self.0.create_certificate(request)
    }
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

    /// A nested struct value (tag 5), which we do not model, is skipped rather than failing the
    /// whole request.
    #[test]
    fn unknown_value_kinds_are_skipped() {
        // Value{struct_value: Struct{}} = field 5, length 0.
        let value = [0x2a, 0];
        let mut entry = vec![0x0a, 1, b'k', 0x12, value.len() as u8];
        entry.extend_from_slice(&value);
        let mut bytes = vec![0x22, (entry.len() + 2) as u8, 0x0a, entry.len() as u8];
        bytes.extend_from_slice(&entry);
        let req = IstioCertificateRequest::decode(bytes.as_slice()).unwrap();
        let md = req.metadata.unwrap();
        assert_eq!(md.fields.get("k").unwrap().kind, None);
        assert_eq!(md.string("k"), None);
    }
}
