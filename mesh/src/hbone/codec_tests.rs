//! Table and property tests of the pure CONNECT codec.

use std::net::SocketAddr;

use http::{Method, Request, StatusCode};
use proptest::prelude::*;

use super::codec::*;

fn connect_to(authority: &str) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .body(())
        .unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn authority_forms() {
    let ok = [
        ("10.0.2.7:8080", "10.0.2.7:8080"),
        ("[::1]:80", "[::1]:80"),
        ("[fd00::a:1]:15008", "[fd00::a:1]:15008"),
        ("0.0.0.0:0", "0.0.0.0:0"),
    ];
    for (input, want) in ok {
        let r = parse_connect_request(&connect_to(input)).unwrap();
        assert_eq!(r.authority, addr(want), "{input}");
    }
    let bad = [
        "example.com:80", // host names are refused: the peer must name the address
        "10.0.2.7",       // no port
        "::1:80",         // IPv6 without brackets is not a valid authority anyway
        "10.0.2.7:99999", // port out of range
        "10.0.2.300:80",
        "[::1]",
        "user@10.0.0.1:80",
    ];
    for input in bad {
        // Some of these are not even valid URIs; those are bad requests at the h2 layer.
        let Ok(uri) = input.parse::<http::Uri>() else {
            continue;
        };
        let mut req = connect_to("1.1.1.1:1");
        *req.uri_mut() = uri;
        let err = parse_connect_request(&req).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{input}");
    }
    assert!(matches!(
        parse_authority("garbage"),
        Err(ConnectError::BadAuthority(_))
    ));
}

#[test]
fn missing_authority_is_400() {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("/")
        .body(())
        .unwrap();
    let err = parse_connect_request(&req).unwrap_err();
    assert_eq!(err, ConnectError::MissingAuthority);
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn non_connect_is_400() {
    for m in [Method::GET, Method::POST, Method::OPTIONS] {
        let mut req = connect_to("10.0.0.1:80");
        *req.method_mut() = m.clone();
        let err = parse_connect_request(&req).unwrap_err();
        assert_eq!(err, ConnectError::NotConnect(m.to_string()));
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn full_request_round_trips() {
    let r = ConnectRequest {
        authority: addr("[fd00::7]:9080"),
        baggage: Some(Baggage {
            cluster_id: Some("Kubernetes".into()),
            namespace: Some("default".into()),
            workload_type: Some("deployment".into()),
            workload_name: Some("sleep".into()),
            service_name: Some("sleep".into()),
            service_version: Some("v1".into()),
        }),
        forwarded: Some(Forwarded {
            for_addr: Some(addr("10.0.0.9:41234")),
            host: Some("reviews.default.svc.cluster.local".into()),
        }),
        traceparent: Some(TraceParent::random()),
    };
    let req = build_connect_request(&r);
    assert_eq!(req.method(), Method::CONNECT);
    assert_eq!(req.uri().to_string(), "[fd00::7]:9080");
    assert_eq!(
        req.headers()["forwarded"],
        "for=\"10.0.0.9:41234\";host=reviews.default.svc.cluster.local"
    );
    assert_eq!(parse_connect_request(&req).unwrap(), r);
}

#[test]
fn malformed_optional_headers_read_as_absent() {
    let mut req = connect_to("10.0.0.1:80");
    let h = req.headers_mut();
    h.insert("forwarded", "for=\"unterminated".parse().unwrap());
    h.insert(
        "traceparent",
        "00-nothex-0000000000000000-00".parse().unwrap(),
    );
    h.insert("baggage", "nonsense,k8s.unknown.key".parse().unwrap());
    let r = parse_connect_request(&req).unwrap();
    assert_eq!(r, ConnectRequest::new(addr("10.0.0.1:80")));
}

#[test]
fn baggage_parse_and_format() {
    let b = Baggage::parse(
        "k8s.cluster.name=K1,k8s.namespace.name=NS1,k8s.deployment.name=N1,service.name=N2,service.version=V1",
    );
    assert_eq!(
        b,
        Baggage {
            cluster_id: Some("K1".into()),
            namespace: Some("NS1".into()),
            workload_type: Some("deployment".into()),
            workload_name: Some("N1".into()),
            service_name: Some("N2".into()),
            service_version: Some("V1".into()),
        }
    );
    assert_eq!(
        b.to_string(),
        "k8s.cluster.name=K1,k8s.namespace.name=NS1,k8s.deployment.name=N1,service.name=N2,service.version=V1"
    );
}

#[test]
fn baggage_is_tolerant() {
    // Unknown keys, W3C properties, whitespace, empty members, other workload types.
    let b = Baggage::parse(
        " foo=bar , k8s.namespace.name = ns ;prop=1,,=x,novalue,k8s.job.name=j1,cloud.region=r",
    );
    assert_eq!(b.namespace.as_deref(), Some("ns"));
    assert_eq!(b.workload_type.as_deref(), Some("job"));
    assert_eq!(b.workload_name.as_deref(), Some("j1"));
    assert_eq!(b.cluster_id, None);
    // Empty values are absent; keys that only look like workload keys are not.
    let b = Baggage::parse("k8s.cluster.name=,k8s..name=x,k8s.a.b.name=y,service.name=");
    assert!(b.is_empty(), "{b:?}");
    // Split across header lines: a later value wins.
    let b = Baggage::parse_all(["service.name=a", "service.name=b,service.version=2"]);
    assert_eq!(b.service_name.as_deref(), Some("b"));
    assert_eq!(b.service_version.as_deref(), Some("2"));
}

#[test]
fn baggage_formats_only_non_empty_keys() {
    let b = Baggage {
        namespace: Some("default".into()),
        workload_name: Some("ratings".into()),
        service_version: Some(String::new()),
        ..Default::default()
    };
    // A name without a type is written as a deployment, as ztunnel does.
    assert_eq!(
        b.to_string(),
        "k8s.namespace.name=default,k8s.deployment.name=ratings"
    );
    assert_eq!(Baggage::default().to_string(), "");
}

#[test]
fn baggage_escapes_separators() {
    let b = Baggage {
        service_name: Some("a,b;c=d %e".into()),
        ..Default::default()
    };
    let s = b.to_string();
    assert_eq!(s, "service.name=a%2Cb%3Bc%3Dd%20%25e");
    assert_eq!(Baggage::parse(&s), b);
    // A bad escape stays literal.
    assert_eq!(
        Baggage::parse("service.name=100%zz")
            .service_name
            .as_deref(),
        Some("100%zz")
    );
}

#[test]
fn forwarded_parse() {
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        ("for=\"10.1.2.3:80\"", Some("10.1.2.3:80"), None),
        (
            "for=\"[::1]:80\";host=svc.ns",
            Some("[::1]:80"),
            Some("svc.ns"),
        ),
        (
            "For=\"[2001:db8::1]:443\"; Host=\"a.b\"",
            Some("[2001:db8::1]:443"),
            Some("a.b"),
        ),
        // Bare IPs, unknown and obfuscated identifiers carry no address we can use.
        ("for=192.0.2.43;host=h", None, Some("h")),
        ("for=unknown", None, None),
        ("for=_hidden;proto=https;by=_x", None, None),
        // Several hops: the first is the original client.
        (
            "for=\"10.0.0.1:1\", for=\"10.0.0.2:2\"",
            Some("10.0.0.1:1"),
            None,
        ),
        // Separators inside quotes do not split.
        (
            "host=\"a;b,c\";for=\"10.0.0.1:5\"",
            Some("10.0.0.1:5"),
            Some("a;b,c"),
        ),
        ("host=\"q\\\"x\"", None, Some("q\"x")),
        ("for=\"10.0.0.1:1\";;host=h", Some("10.0.0.1:1"), Some("h")),
    ];
    for (input, for_addr, host) in cases {
        let f = Forwarded::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(f.for_addr, for_addr.map(addr), "{input}");
        assert_eq!(f.host.as_deref(), *host, "{input}");
    }
}

#[test]
fn forwarded_errors() {
    assert!(matches!(
        Forwarded::parse("for=\"10.0.0.1:1"),
        Err(ForwardedError::UnterminatedQuote)
    ));
    assert!(matches!(
        Forwarded::parse("for"),
        Err(ForwardedError::MissingEquals(_))
    ));
    assert!(matches!(
        Forwarded::parse("f@r=x"),
        Err(ForwardedError::BadName(_))
    ));
    assert!(matches!(
        Forwarded::parse("for=10.0.0.1:80"),
        Err(ForwardedError::BadValue(_))
    ));
    assert!(matches!(
        Forwarded::parse("for=\"a\"b"),
        Err(ForwardedError::BadValue(_))
    ));
    // A bad later hop still makes the header malformed.
    assert!(Forwarded::parse("for=\"10.0.0.1:1\",for=\"x").is_err());
}

#[test]
fn forwarded_format() {
    let f = Forwarded {
        for_addr: Some(addr("[::1]:80")),
        host: Some("svc.ns.svc.cluster.local".into()),
    };
    assert_eq!(
        f.to_string(),
        "for=\"[::1]:80\";host=svc.ns.svc.cluster.local"
    );
    let f = Forwarded {
        for_addr: None,
        host: Some("needs \"quoting\"".into()),
    };
    assert_eq!(f.to_string(), "host=\"needs \\\"quoting\\\"\"");
    assert_eq!(Forwarded::parse(&f.to_string()).unwrap(), f);
}

#[test]
fn traceparent_format_and_parse() {
    let t = TraceParent::random();
    let s = t.to_string();
    assert_eq!(s.len(), 55);
    let parts: Vec<&str> = s.split('-').collect();
    assert_eq!(parts.len(), 4);
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "00", "Istio sends unsampled traces");
    assert!(s
        .bytes()
        .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    assert_eq!(TraceParent::parse(&s).unwrap(), t);
    assert_ne!(TraceParent::random(), t, "random per connection");

    let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let t = TraceParent::parse(good).unwrap();
    assert_eq!(t.flags, 1);
    assert_eq!(
        t.parent_id,
        [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
    );
    assert_eq!(t.to_string(), good);
    // A future version may carry more fields.
    assert!(TraceParent::parse(&format!("01{}-extra", &good[2..])).is_ok());
}

#[test]
fn traceparent_rejects() {
    use TraceParentError::*;
    let cases = [
        ("", BadLayout),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            BadLayout,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            BadLayout,
        ),
        (
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            NotHex("trace-id"),
        ),
        (
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ForbiddenVersion,
        ),
        (
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            ZeroId("trace-id"),
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            ZeroId("parent-id"),
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            NotHex("flags"),
        ),
        (
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            BadLayout,
        ),
        (
            "0é-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",
            BadLayout,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(TraceParent::parse(input), Err(want), "{input:?}");
    }
}

#[test]
fn fuzz_entry_handles_samples() {
    for sample in [
        &b""[..],
        b"CONNECT\n10.0.0.1:80\nk8s.namespace.name=x\nfor=\"[::1]:1\"\n00-",
        b"\xff\xfe\n\n\n\n\n\n\n",
        b"CONNECT\n[::1]:80\n%\n\"\n-------------------------------------------------------",
    ] {
        fuzz_connect(sample);
    }
}

// ---------------------------------------------------------------------------------------------
// properties

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn opt_value() -> impl Strategy<Value = Option<String>> {
    // Any text at all: formatting must escape whatever would break the list.
    proptest::option::of(any::<String>().prop_filter("non-empty", |s| !s.is_empty()))
}

fn baggage() -> impl Strategy<Value = Baggage> {
    (
        opt_value(),
        opt_value(),
        proptest::option::of((
            label(),
            any::<String>().prop_filter("ne", |s| !s.is_empty()),
        )),
        opt_value(),
        opt_value(),
    )
        .prop_map(
            |(cluster_id, namespace, workload, service_name, service_version)| {
                let (workload_type, workload_name) = match workload {
                    Some((t, n)) => (Some(t), Some(n)),
                    None => (None, None),
                };
                Baggage {
                    cluster_id,
                    namespace,
                    workload_type,
                    workload_name,
                    service_name,
                    service_version,
                }
            },
        )
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

fn forwarded() -> impl Strategy<Value = Forwarded> {
    (
        proptest::option::of(socket_addr()),
        // Printable ASCII, including quotes and separators that force quoting.
        proptest::option::of("[ -~]{1,40}"),
    )
        .prop_map(|(for_addr, host)| Forwarded { for_addr, host })
}

fn traceparent() -> impl Strategy<Value = TraceParent> {
    (any::<[u8; 16]>(), any::<[u8; 8]>(), any::<u8>())
        .prop_filter("ids non-zero", |(t, p, _)| *t != [0; 16] && *p != [0; 8])
        .prop_map(|(trace_id, parent_id, flags)| TraceParent {
            trace_id,
            parent_id,
            flags,
        })
}

proptest! {
    #[test]
    fn parsers_never_panic(s in any::<String>()) {
        let _ = parse_authority(&s);
        let _ = Baggage::parse(&s).to_string();
        let _ = Forwarded::parse(&s).map(|f| f.to_string());
        let _ = TraceParent::parse(&s);
    }

    #[test]
    fn fuzz_entry_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz_connect(&bytes);
    }

    #[test]
    fn header_shaped_garbage_never_panics(s in "[ -~]{0,80}") {
        let _ = Forwarded::parse(&s);
        let _ = Baggage::parse(&s);
        let _ = TraceParent::parse(&s);
    }

    #[test]
    fn baggage_round_trips(b in baggage()) {
        prop_assert_eq!(Baggage::parse(&b.to_string()), b);
    }

    #[test]
    fn forwarded_round_trips(f in forwarded()) {
        let s = f.to_string();
        let parsed = Forwarded::parse(&s);
        if f.is_empty() {
            // An empty header is a single empty element: valid and empty.
            prop_assert_eq!(parsed, Ok(Forwarded::default()));
        } else {
            prop_assert_eq!(parsed, Ok(f));
        }
    }

    #[test]
    fn traceparent_round_trips(t in traceparent()) {
        prop_assert_eq!(TraceParent::parse(&t.to_string()), Ok(t));
    }

    #[test]
    fn connect_request_round_trips(
        authority in socket_addr(),
        b in proptest::option::of(baggage()),
        f in proptest::option::of(forwarded()),
        t in proptest::option::of(traceparent()),
    ) {
        let r = ConnectRequest { authority, baggage: b, forwarded: f, traceparent: t };
        let parsed = parse_connect_request(&build_connect_request(&r)).unwrap();
        // Empty baggage/forwarded are not sent, so they come back absent.
        let want = ConnectRequest {
            baggage: r.baggage.filter(|b| !b.is_empty()),
            forwarded: r.forwarded.filter(|f| !f.is_empty()),
            ..r
        };
        prop_assert_eq!(parsed, want);
    }
}
