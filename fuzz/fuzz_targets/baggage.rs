//! The `baggage` header (W3C baggage with OpenTelemetry k8s keys), sent by every HBONE peer.
//!
//! Both directions are checked:
//! - parsing any text and formatting the result is a fixed point (`parse(format(parse(x))) ==
//!   parse(x)`), the formatted value is always a legal header value, and baggage split over
//!   several header lines reads as the same lines joined by `,`;
//! - any `Baggage` built from the fuzz bytes formats to text that parses back to it, up to the
//!   documented normalisation (empty values read as absent, an unusable workload type is written
//!   as `deployment`, a type without a name is not written).
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mesh::hbone::codec::{Baggage, DEFAULT_WORKLOAD_TYPE};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = Baggage::parse(&text);
    let formatted = parsed.to_string();
    assert_eq!(
        Baggage::parse(&formatted),
        parsed,
        "changed through {formatted:?}"
    );
    if !formatted.is_empty() {
        assert!(
            HeaderValue::from_str(&formatted).is_ok(),
            "formatted baggage {formatted:?} is not a legal header value"
        );
    }
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(
        Baggage::parse_all(lines.iter().copied()),
        Baggage::parse(&lines.join(","))
    );

    let mut u = Unstructured::new(data);
    if let Ok(fields) = <[Option<String>; 6]>::arbitrary(&mut u) {
        let [cluster_id, namespace, workload_type, workload_name, service_name, service_version] =
            fields;
        let built = Baggage {
            cluster_id,
            namespace,
            workload_type,
            workload_name,
            service_name,
            service_version,
        };
        let formatted = built.to_string();
        assert_eq!(
            Baggage::parse(&formatted),
            normalized(built),
            "changed through {formatted:?}"
        );
    }
});

/// What the header can carry of `b`.
fn normalized(b: Baggage) -> Baggage {
    let present = |v: Option<String>| v.filter(|v| !v.is_empty());
    let workload_name = present(b.workload_name);
    let workload_type = workload_name.as_ref().map(|_| {
        b.workload_type
            .filter(|k| usable_type(k))
            .unwrap_or_else(|| DEFAULT_WORKLOAD_TYPE.to_string())
    });
    Baggage {
        cluster_id: present(b.cluster_id),
        namespace: present(b.namespace),
        workload_type,
        workload_name,
        service_name: present(b.service_name),
        service_version: present(b.service_version),
    }
}

/// A type that fits `k8s.<type>.name` without colliding with the cluster and namespace keys.
fn usable_type(k: &str) -> bool {
    !k.is_empty()
        && k != "cluster"
        && k != "namespace"
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}
