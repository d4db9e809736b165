//! Tests of the pure codec: golden protobuf bytes (computed by hand from zds.proto, so a wrong
//! tag or type in `proto.rs` fails here), decode rules, and never-panic properties.

use std::os::fd::OwnedFd;

use proptest::prelude::*;
use prost::Message;

use super::codec::{
    decode_ack, decode_hello, encode_ack, encode_hello, encode_request, OutRequest,
};
use super::proto::{workload_request, AddWorkload, WorkloadRequest};
use super::{decode_request, Version, WorkloadInfo, ZdsError, ZdsRequest, MAX_MESSAGE_LEN};

fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null")
        .expect("open /dev/null")
        .into()
}

fn info() -> WorkloadInfo {
    WorkloadInfo {
        name: "n".to_string(),
        namespace: "ns".to_string(),
        service_account: "sa".to_string(),
    }
}

// Golden encodings. Each byte is (field_number << 3 | wire_type) or a length/value;
// wire type 0 = varint, 2 = length-delimited.

#[test]
fn hello_golden_bytes() {
    // ZdsHello.version (1, varint) = V1 (1).
    assert_eq!(encode_hello(), [0x08, 0x01]);
}

#[test]
fn add_with_info_golden_bytes() {
    let info = info();
    let bytes = encode_request(OutRequest::Add {
        uid: "ab",
        info: Some(&info),
    })
    .unwrap();
    #[rustfmt::skip]
    let expected = [
        0x0a, 0x11,                   // WorkloadRequest.add (1, len) 17 bytes
          0x0a, 0x02, b'a', b'b',     //   AddWorkload.uid (1, len) "ab"
          0x12, 0x0b,                 //   AddWorkload.workload_info (2, len) 11 bytes
            0x0a, 0x01, b'n',         //     WorkloadInfo.name (1) "n"
            0x12, 0x02, b'n', b's',   //     WorkloadInfo.namespace (2) "ns"
            0x1a, 0x02, b's', b'a',   //     WorkloadInfo.service_account (3) "sa"
    ];
    assert_eq!(bytes, expected);
}

#[test]
fn add_without_info_golden_bytes() {
    let bytes = encode_request(OutRequest::Add {
        uid: "ab",
        info: None,
    })
    .unwrap();
    assert_eq!(bytes, [0x0a, 0x04, 0x0a, 0x02, b'a', b'b']);
}

#[test]
fn keep_golden_bytes() {
    // WorkloadRequest.keep is field 5: (5 << 3 | 2) = 0x2a; KeepWorkload.uid is field 1.
    let bytes = encode_request(OutRequest::Keep { uid: "u" }).unwrap();
    assert_eq!(bytes, [0x2a, 0x03, 0x0a, 0x01, b'u']);
}

#[test]
fn del_golden_bytes() {
    // WorkloadRequest.del is field 2 (0x12); DelWorkload.uid is field 2 too (0x12).
    let bytes = encode_request(OutRequest::Del { uid: "u" }).unwrap();
    assert_eq!(bytes, [0x12, 0x03, 0x12, 0x01, b'u']);
}

#[test]
fn snapshot_sent_golden_bytes() {
    // An empty oneof member is still present on the wire: field 3, length 0.
    let bytes = encode_request(OutRequest::SnapshotSent).unwrap();
    assert_eq!(bytes, [0x1a, 0x00]);
}

#[test]
fn ack_golden_bytes() {
    // WorkloadResponse.ack (1, len); success is an empty Ack (proto3 omits the empty string).
    assert_eq!(encode_ack(None), [0x0a, 0x00]);
    // Ack.error (1, len) "x".
    assert_eq!(encode_ack(Some("x")), [0x0a, 0x03, 0x0a, 0x01, b'x']);
}

#[test]
fn golden_bytes_decode_to_the_same_requests() {
    let add = [
        0x0a, 0x11, 0x0a, 0x02, b'a', b'b', 0x12, 0x0b, 0x0a, 0x01, b'n',
    ]
    .into_iter()
    .chain([0x12, 0x02, b'n', b's', 0x1a, 0x02, b's', b'a'])
    .collect::<Vec<u8>>();
    match decode_request(&add, vec![dev_null()]).unwrap() {
        ZdsRequest::Add {
            uid, workload_info, ..
        } => {
            assert_eq!(uid, "ab");
            assert_eq!(workload_info, Some(info()));
        }
        other => panic!("expected add, got {other:?}"),
    }
    assert!(matches!(
        decode_request(&[0x2a, 0x03, 0x0a, 0x01, b'u'], vec![]).unwrap(),
        ZdsRequest::Keep { uid } if uid == "u"
    ));
    assert!(matches!(
        decode_request(&[0x12, 0x03, 0x12, 0x01, b'u'], vec![]).unwrap(),
        ZdsRequest::Del { uid } if uid == "u"
    ));
    assert!(matches!(
        decode_request(&[0x1a, 0x00], vec![]).unwrap(),
        ZdsRequest::SnapshotSent
    ));
    assert_eq!(decode_hello(&[0x08, 0x01]).unwrap(), Version::V1);
    assert!(decode_ack(&[0x0a, 0x00]).is_ok());
    assert!(matches!(
        decode_ack(&[0x0a, 0x03, 0x0a, 0x01, b'x']),
        Err(ZdsError::Rejected(text)) if text == "x"
    ));
}

#[test]
fn add_needs_exactly_one_fd() {
    let add = encode_request(OutRequest::Add {
        uid: "a",
        info: None,
    })
    .unwrap();
    assert!(matches!(
        decode_request(&add, vec![]),
        Err(ZdsError::MissingFd)
    ));
    assert!(matches!(
        decode_request(&add, vec![dev_null(), dev_null()]),
        Err(ZdsError::UnexpectedFds(2))
    ));
}

#[test]
fn only_add_may_carry_fds() {
    for request in [
        OutRequest::Keep { uid: "a" },
        OutRequest::Del { uid: "a" },
        OutRequest::SnapshotSent,
    ] {
        let bytes = encode_request(request).unwrap();
        assert!(
            matches!(
                decode_request(&bytes, vec![dev_null()]),
                Err(ZdsError::UnexpectedFds(1))
            ),
            "{request:?} with an fd must be refused"
        );
    }
}

#[test]
fn bad_requests_are_decode_errors() {
    // Not protobuf at all (field 0 is invalid).
    assert!(matches!(
        decode_request(&[0x00, 0xff, 0xff], vec![]),
        Err(ZdsError::Decode(_))
    ));
    // Length prefix running past the end.
    assert!(matches!(
        decode_request(&[0x0a, 0x7f, 0x0a], vec![dev_null()]),
        Err(ZdsError::Decode(_))
    ));
    // Valid protobuf without a payload, and the removed `no_snapshot_present` (field 4).
    assert!(matches!(
        decode_request(&[], vec![]),
        Err(ZdsError::Decode(_))
    ));
    assert!(matches!(
        decode_request(&[0x22, 0x00], vec![]),
        Err(ZdsError::Decode(_))
    ));
    // An add whose uid is empty.
    let empty_uid = WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload::default())),
    }
    .encode_to_vec();
    assert!(matches!(
        decode_request(&empty_uid, vec![dev_null()]),
        Err(ZdsError::Decode(msg)) if msg.contains("empty uid")
    ));
}

#[test]
fn hello_versions() {
    assert!(matches!(
        decode_hello(&[]),
        Err(ZdsError::VersionMismatch(0))
    ));
    assert!(matches!(
        decode_hello(&[0x08, 0x07]),
        Err(ZdsError::VersionMismatch(7))
    ));
    assert!(matches!(decode_hello(&[0x08]), Err(ZdsError::Decode(_))));
}

#[test]
fn ack_without_payload_is_a_decode_error() {
    assert!(matches!(decode_ack(&[]), Err(ZdsError::Decode(_))));
}

#[test]
fn empty_error_text_still_means_failure() {
    assert!(matches!(
        decode_ack(&encode_ack(Some(""))),
        Err(ZdsError::Rejected(text)) if text == "unspecified error"
    ));
}

#[test]
fn long_ack_errors_are_cut_to_fit_one_datagram() {
    // Multi-byte characters so the cut has to land on a character boundary.
    let long = format!("a{}", "é".repeat(MAX_MESSAGE_LEN));
    let bytes = encode_ack(Some(&long));
    assert!(bytes.len() <= MAX_MESSAGE_LEN, "{} bytes", bytes.len());
    match decode_ack(&bytes) {
        Err(ZdsError::Rejected(text)) => {
            assert!(long.starts_with(&text));
            assert!(
                text.len() >= MAX_MESSAGE_LEN - 8,
                "cut too short: {}",
                text.len()
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn oversized_requests_are_refused_before_sending() {
    let uid = "u".repeat(MAX_MESSAGE_LEN);
    assert!(matches!(
        encode_request(OutRequest::Del { uid: &uid }),
        Err(ZdsError::TooLarge(n)) if n > MAX_MESSAGE_LEN
    ));
}

proptest! {
    #[test]
    fn decode_request_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        fd_count in 0usize..3,
    ) {
        let fds = (0..fd_count).map(|_| dev_null()).collect();
        let _ = decode_request(&bytes, fds);
    }

    #[test]
    fn decode_ack_and_hello_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_ack(&bytes);
        let _ = decode_hello(&bytes);
    }

    #[test]
    fn add_round_trips(
        uid in "[a-z0-9-]{1,40}",
        name in ".{0,40}",
        namespace in ".{0,20}",
        service_account in ".{0,20}",
        with_info: bool,
    ) {
        let info = WorkloadInfo { name, namespace, service_account };
        let bytes = encode_request(OutRequest::Add {
            uid: &uid,
            info: with_info.then_some(&info),
        }).unwrap();
        match decode_request(&bytes, vec![dev_null()]).unwrap() {
            ZdsRequest::Add { uid: got_uid, workload_info, .. } => {
                prop_assert_eq!(got_uid, uid);
                prop_assert_eq!(workload_info, with_info.then_some(info));
            }
            other => prop_assert!(false, "expected add, got {:?}", other),
        }
    }

    #[test]
    fn keep_and_del_round_trip(uid in ".{1,60}") {
        let keep = encode_request(OutRequest::Keep { uid: &uid }).unwrap();
        let del = encode_request(OutRequest::Del { uid: &uid }).unwrap();
        let keep_ok = matches!(decode_request(&keep, vec![]), Ok(ZdsRequest::Keep { uid: u }) if u == uid);
        let del_ok = matches!(decode_request(&del, vec![]), Ok(ZdsRequest::Del { uid: u }) if u == uid);
        prop_assert!(keep_ok, "keep did not round-trip");
        prop_assert!(del_ok, "del did not round-trip");
    }
}
