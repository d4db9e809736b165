//! An HBONE CONNECT request as the inbound server receives it from any mesh peer.
//!
//! Input: lines split on `\n`: method, URI (the `:authority`), forwarded, traceparent, and every
//! remaining line one more `baggage` header (peers may split baggage over several lines).
//! Lines `http` refuses (bad method token, bad URI, bytes not allowed in a header value) are
//! left at their defaults, as h2 would never hand such a request over.
//!
//! Checks, beyond "no panic": an accepted request is a CONNECT, and what the client side builds
//! from it parses back to the same request, so ambit → ambit hops lose nothing.
#![no_main]

use http::{HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use mesh::hbone::codec::{
    build_connect_request, parse_authority, parse_connect_request, ConnectRequest, BAGGAGE_HEADER,
    FORWARDED_HEADER, TRACEPARENT_HEADER,
};

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let method = lines.next().unwrap_or_default();
    let uri = lines.next().unwrap_or_default();
    let forwarded = lines.next().unwrap_or_default();
    let traceparent = lines.next().unwrap_or_default();

    // The authority parser on its own also sees text `Uri` would refuse.
    let _ = parse_authority(&String::from_utf8_lossy(uri));

    let mut req = Request::new(());
    if let Ok(m) = Method::from_bytes(method) {
        *req.method_mut() = m;
    }
    if let Ok(u) = Uri::try_from(uri) {
        *req.uri_mut() = u;
    }
    let headers = req.headers_mut();
    for (name, value) in [
        (FORWARDED_HEADER, forwarded),
        (TRACEPARENT_HEADER, traceparent),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }
    for value in lines {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(BAGGAGE_HEADER, v);
        }
    }

    let Ok(parsed) = parse_connect_request(&req) else {
        return;
    };
    assert_eq!(req.method(), Method::CONNECT);

    let rebuilt = build_connect_request(&parsed);
    let reparsed = parse_connect_request(&rebuilt)
        .unwrap_or_else(|e| panic!("built request {rebuilt:?} does not parse: {e}"));
    assert_eq!(
        reparsed,
        sendable(parsed),
        "request changed through build/parse"
    );
});

/// What survives a build: a `forwarded` with neither field is not worth a header, so the client
/// leaves it out and it reads back as absent.
fn sendable(mut r: ConnectRequest) -> ConnectRequest {
    r.forwarded = r.forwarded.filter(|f| !f.is_empty());
    r
}
