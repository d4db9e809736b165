//! The `traceparent` header (W3C trace context), sent by HBONE peers (Istio: one per connection).
//!
//! Both directions are checked: whatever text parses formats as a 55-character version-00 value
//! that parses back to it; and any ids and flags built from the fuzz bytes format to text that
//! parses back to them, unless an id is all zeros, which the spec forbids and parsing refuses.
#![no_main]

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mesh::hbone::codec::{TraceParent, TraceParentError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = TraceParent::parse(&text) {
        let formatted = parsed.to_string();
        assert_eq!(formatted.len(), 55, "{formatted:?}");
        assert_eq!(TraceParent::parse(&formatted), Ok(parsed), "{formatted:?}");
    }

    let mut u = Unstructured::new(data);
    if let Ok((trace_id, parent_id, flags)) = <([u8; 16], [u8; 8], u8)>::arbitrary(&mut u) {
        let built = TraceParent {
            trace_id,
            parent_id,
            flags,
        };
        let reparsed = TraceParent::parse(&built.to_string());
        if trace_id == [0; 16] {
            assert_eq!(reparsed, Err(TraceParentError::ZeroId("trace-id")));
        } else if parent_id == [0; 8] {
            assert_eq!(reparsed, Err(TraceParentError::ZeroId("parent-id")));
        } else {
            assert_eq!(reparsed, Ok(built));
        }
    }
});
