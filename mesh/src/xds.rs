//! The xDS wire types (generated from `proto/`) and the pure conversions between them and
//! ambit's model ([`crate::model`], [`crate::authz`]). Shared by the control plane's delta ADS
//! server and ztunnel's client; no I/O here.
//!
//! Resource types on the one ADS stream (Istio's names, plus one of ambit's own):
//!
//! | type URL | message | resource name |
//! | --- | --- | --- |
//! | [`ADDRESS_TYPE_URL`] | `istio.workload.Address` (Workload or Service) | workload uid; service `namespace/hostname` |
//! | [`AUTHORIZATION_TYPE_URL`] | `istio.security.Authorization` | `namespace/name` |
//! | [`PEER_AUTHENTICATION_TYPE_URL`] | `ambit.security.PeerAuthentication` | `namespace/name` |
//!
//! Istio's workload API has no PeerAuthentication: istiod folds it into generated
//! Authorization policies. ambit's translation keeps namespace-wide PeerAuthentications as
//! [`crate::authz::PeerAuthentication`] (ztunnel applies Istio's precedence itself), so they
//! travel as an ambit resource type on the same stream. An Istio ztunnel never subscribes to
//! it; ambit's control plane already turns workload-level PeerAuthentications into DENY
//! Authorizations, so nothing an Istio client needs is only in this type except the
//! namespace/mesh-wide STRICT default.
//!
//! Conversions to proto are total. Where the proto cannot say what the model says, the
//! encoding errs towards denying more (see [`authorization_to_proto`]). Conversions from proto
//! reject what the model cannot hold (a 5-byte IP, a port above 65535, an enum value this
//! build does not know) with an [`XdsError`] naming the field.

use prost::Message;

#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod gen;

mod authz;
mod workload;

pub use authz::{
    authorization_to_proto, peer_authentication_to_proto, proto_to_authorization,
    proto_to_peer_authentication,
};
pub use workload::{
    proto_to_address, proto_to_service, proto_to_workload, service_address, service_to_proto,
    workload_address, workload_to_proto, AddressResource,
};

#[cfg(test)]
mod tests;

/// Short paths to the generated messages.
pub mod proto {
    /// `ambit.security`: PeerAuthentication.
    pub use super::gen::ambit::security as ambit;
    /// `envoy.service.discovery.v3`: the delta ADS messages and the gRPC client and server.
    pub use super::gen::envoy::service::discovery::v3 as discovery;
    /// `google.protobuf`: Any, Struct, Value, Empty.
    pub use super::gen::google::protobuf as google;
    /// `istio.security`: Authorization, Rule, Clause, Match, ...
    pub use super::gen::istio::security;
    /// `istio.workload`: Address, Workload, Service, ...
    pub use super::gen::istio::workload;
}

/// Istio's workload API resource: a Workload or a Service.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// Istio's L4 authorization policy resource.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";
/// ambit's namespace-wide mTLS mode resource (see the module docs).
pub const PEER_AUTHENTICATION_TYPE_URL: &str =
    "type.googleapis.com/ambit.security.PeerAuthentication";

/// A wire value the model cannot hold. `field` is a path such as `workload.addresses[1]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdsError {
    #[error("{field}: {len} bytes is not an IPv4 (4) or IPv6 (16) address")]
    BadIp { field: String, len: usize },
    #[error("{field}: prefix length {length} is too long for {address}")]
    BadPrefix {
        field: String,
        address: std::net::IpAddr,
        length: u32,
    },
    #[error("{field}: {value} is not a port (0-65535)")]
    PortOutOfRange { field: String, value: u32 },
    #[error("{field}: port {port} is listed twice")]
    DuplicatePort { field: String, port: u16 },
    #[error("{field}: unknown enum value {value}")]
    UnknownEnum { field: String, value: i32 },
    #[error("{field}: not set")]
    Missing { field: String },
    #[error(
        "{field}: address {address} is in network {network:?} but the first is in {first:?}; \
         ambit keeps one network per service"
    )]
    MixedNetworks {
        field: String,
        address: std::net::IpAddr,
        network: String,
        first: String,
    },
    #[error("resource type {got:?} where {expected:?} was expected")]
    WrongType { expected: String, got: String },
    #[error("{type_url}: {message}")]
    Decode { type_url: String, message: String },
}

/// Wraps a message as a `google.protobuf.Any` of `type_url`.
pub fn to_any<M: Message>(type_url: &str, message: &M) -> proto::google::Any {
    proto::google::Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    }
}

/// Unwraps an `Any` that must be of `type_url`.
pub fn from_any<M: Message + Default>(
    type_url: &str,
    any: &proto::google::Any,
) -> Result<M, XdsError> {
    if any.type_url != type_url {
        return Err(XdsError::WrongType {
            expected: type_url.to_string(),
            got: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|e| XdsError::Decode {
        type_url: type_url.to_string(),
        message: e.to_string(),
    })
}

/// The field path of element `i` of `field`, for errors.
fn at(field: &str, i: usize) -> String {
    format!("{field}[{i}]")
}

fn port(field: impl FnOnce() -> String, value: u32) -> Result<u16, XdsError> {
    u16::try_from(value).map_err(|_| XdsError::PortOutOfRange {
        field: field(),
        value,
    })
}

fn ip_from_bytes(field: impl FnOnce() -> String, b: &[u8]) -> Result<std::net::IpAddr, XdsError> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        Ok(std::net::IpAddr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
        Ok(std::net::IpAddr::from(v6))
    } else {
        Err(XdsError::BadIp {
            field: field(),
            len: b.len(),
        })
    }
}

fn ip_to_bytes(ip: &std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// An enum field's value, or [`XdsError::UnknownEnum`].
fn enum_value<E: TryFrom<i32>>(field: &str, value: i32) -> Result<E, XdsError> {
    E::try_from(value).map_err(|_| XdsError::UnknownEnum {
        field: field.to_string(),
        value,
    })
}
