//! Hand-written prost messages for `proto/zds.proto` (protobuf package `istio.workload.zds`).
//!
//! There is no `protoc` on the build machines, so these mirror the `.proto` file by hand. The
//! invariant that matters is wire compatibility with Istio's istio-cni and ztunnel: every field
//! number, scalar type and enum value below must match `zds.proto` exactly. The golden-bytes
//! tests in `codec.rs` pin the encodings so a typo in a tag shows up as a test failure rather
//! than as a silent interop bug.
//!
//! Fields Istio has since added for Windows (`AddWorkload.windows_namespace`, ...) are not
//! declared: prost skips unknown fields, so messages carrying them still decode here.

/// `enum Version`: the ZDS protocol version ztunnel announces in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Version {
    /// `NOT_USED = 0`: proto3's mandatory zero value; never a valid announcement.
    NotUsed = 0,
    /// `V1 = 1`: the only version that exists.
    V1 = 1,
}

/// `message ZdsHello`: the first datagram ztunnel sends after connecting.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ZdsHello {
    /// `Version version = 1`.
    #[prost(enumeration = "Version", tag = "1")]
    pub version: i32,
}

/// `message WorkloadInfo`: the pod's identity as the node agent sees it.
///
/// Tag 4 (`trust_domain`) is reserved upstream and deliberately absent here.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct WorkloadInfo {
    /// `string name = 1`: the pod name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `string namespace = 2`: the pod's Kubernetes namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// `string service_account = 3`: the pod's service account.
    #[prost(string, tag = "3")]
    pub service_account: String,
}

/// `message AddWorkload`: enrol a pod; its netns fd travels as SCM_RIGHTS ancillary data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddWorkload {
    /// `string uid = 1`: the pod UID.
    #[prost(string, tag = "1")]
    pub uid: String,
    /// `WorkloadInfo workload_info = 2`.
    #[prost(message, optional, tag = "2")]
    pub workload_info: Option<WorkloadInfo>,
}

/// `message KeepWorkload`: during a snapshot, keep a pod whose netns the agent no longer holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeepWorkload {
    /// `string uid = 1`.
    #[prost(string, tag = "1")]
    pub uid: String,
}

/// `message DelWorkload`: the pod is gone; stop proxying for it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DelWorkload {
    /// `string uid = 2`: note 2, unlike `KeepWorkload`'s 1; upstream numbers it this way.
    #[prost(string, tag = "2")]
    pub uid: String,
}

/// `message SnapshotSent`: every enrolled pod has been replayed; reconcile now.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotSent {}

/// `message Ack`: ztunnel's answer to each request. An empty `error` means success.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// `string error = 1`.
    #[prost(string, tag = "1")]
    pub error: String,
}

/// `message WorkloadRequest`: agent → ztunnel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadRequest {
    /// `oneof payload`.
    #[prost(oneof = "workload_request::Payload", tags = "1, 5, 2, 3")]
    pub payload: Option<workload_request::Payload>,
}

/// Nested types of [`WorkloadRequest`].
pub mod workload_request {
    /// `oneof payload` of `WorkloadRequest`. Tag 4 (`no_snapshot_present`) was removed upstream.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Payload {
        /// `AddWorkload add = 1`.
        #[prost(message, tag = "1")]
        Add(super::AddWorkload),
        /// `KeepWorkload keep = 5`.
        #[prost(message, tag = "5")]
        Keep(super::KeepWorkload),
        /// `DelWorkload del = 2`.
        #[prost(message, tag = "2")]
        Del(super::DelWorkload),
        /// `SnapshotSent snapshot_sent = 3`.
        #[prost(message, tag = "3")]
        SnapshotSent(super::SnapshotSent),
    }
}

/// `message WorkloadResponse`: ztunnel → agent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadResponse {
    /// `oneof payload`.
    #[prost(oneof = "workload_response::Payload", tags = "1")]
    pub payload: Option<workload_response::Payload>,
}

/// Nested types of [`WorkloadResponse`].
pub mod workload_response {
    /// `oneof payload` of `WorkloadResponse`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Payload {
        /// `Ack ack = 1`.
        #[prost(message, tag = "1")]
        Ack(super::Ack),
    }
}
