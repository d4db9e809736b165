//! The wire types the client uses, from `mesh::xds`, under short names, plus the small
//! adapters between them and the client's own types.

pub use mesh::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient as AdsClient;
pub use mesh::xds::proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Resource, Status,
};
pub use mesh::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, PEER_AUTHENTICATION_TYPE_URL};

use mesh::xds::proto::google::{value, Struct, Value};

/// A `Node` with Istio's id and string-valued metadata.
pub fn node(id: String, metadata: Vec<(&'static str, String)>) -> Node {
    let fields = metadata
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value {
                    kind: Some(value::Kind::StringValue(v)),
                },
            )
        })
        .collect();
    Node {
        id,
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}
