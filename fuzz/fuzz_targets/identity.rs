//! SPIFFE identities, as read from a peer certificate's URI SAN and from policy/config files.
//!
//! Checks the module's stated invariant: an identity that parses formats back to exactly the
//! bytes it came from, and one built from parts (split on `\n`) keeps exactly those parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::identity::Identity;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = Identity::parse_bytes(data) {
        assert_eq!(id.to_string().as_bytes(), data);
    }

    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (td, ns, sa) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if let Ok(id) = Identity::new(td, ns, sa) {
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            (td, ns, sa)
        );
    }
});
