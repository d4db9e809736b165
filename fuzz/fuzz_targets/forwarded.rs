//! The `forwarded` header (RFC 7239 `for="<ip:port>";host=<name>`), sent by HBONE peers.
//!
//! Both directions are checked:
//! - whatever text parses formats to text that parses back to the same value;
//! - any `Forwarded` built from the fuzz bytes (any socket address, any host string, quotes and
//!   backslashes included) formats to text that parses back to it (an empty host reads as
//!   absent).
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libfuzzer_sys::arbitrary::{Arbitrary, Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use mesh::hbone::codec::Forwarded;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = Forwarded::parse(&text) {
        let formatted = parsed.to_string();
        assert_eq!(
            Forwarded::parse(&formatted),
            Ok(parsed),
            "changed through {formatted:?}"
        );
    }

    let mut u = Unstructured::new(data);
    if let Ok((for_addr, host)) = built(&mut u) {
        let built = Forwarded { for_addr, host };
        let formatted = built.to_string();
        let expected = Forwarded {
            host: built.host.filter(|h| !h.is_empty()),
            ..built
        };
        assert_eq!(
            Forwarded::parse(&formatted),
            Ok(expected),
            "changed through {formatted:?}"
        );
    }
});

fn built(u: &mut Unstructured<'_>) -> ArbResult<(Option<SocketAddr>, Option<String>)> {
    let addr = match u.int_in_range(0..=2u8)? {
        0 => None,
        1 => Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::arbitrary(u)?),
            u16::arbitrary(u)?,
        ))),
        // Flow info is not part of an address's text form, so it is left at 0; the scope id is.
        _ => Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(u128::arbitrary(u)?),
            u16::arbitrary(u)?,
            0,
            u32::arbitrary(u)?,
        ))),
    };
    Ok((addr, Option::<String>::arbitrary(u)?))
}
