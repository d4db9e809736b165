//! ZDS: one agent → ztunnel datagram, as read from the SOCK_SEQPACKET socket.
//!
//! The bytes come from the node agent, a separate (and possibly newer or buggy) process, so
//! decoding must never panic. Each input is decoded twice: without fds, and with one real fd as
//! an `add` carries, so both the "missing fd" and the "fd taken into the request" paths run.
#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;

use libfuzzer_sys::fuzz_target;
use mesh::zds::{decode_request, ZdsError, ZdsRequest};

fuzz_target!(|data: &[u8]| {
    let without_fd = decode_request(data, vec![]);
    // Only an `add` needs an fd, so without one it can never succeed.
    assert!(
        !matches!(without_fd, Ok(ZdsRequest::Add { .. })),
        "add decoded without a netns fd"
    );

    // /dev/null stands in for a netns: decoding only moves the fd, never inspects it.
    let Ok(file) = File::open("/dev/null") else {
        return;
    };
    let with_fd = decode_request(data, vec![OwnedFd::from(file)]);
    match (&without_fd, &with_fd) {
        // An add is checked for its fd before its fields, so with the fd it either decodes
        // or fails on its contents (an empty uid).
        (Err(ZdsError::MissingFd), Ok(ZdsRequest::Add { .. }) | Err(ZdsError::Decode(_))) => {}
        (Err(ZdsError::MissingFd), other) => panic!("fd did not complete the add: {other:?}"),
        // Any other request refuses a stray fd.
        (Ok(_), Err(ZdsError::UnexpectedFds(1))) => {}
        (Ok(_), other) => panic!("stray fd accepted: {other:?}"),
        // Bad bytes are bad with or without an fd.
        (Err(_), Err(_)) => {}
        (Err(e), Ok(r)) => panic!("fd turned error {e} into {r:?}"),
    }
});
