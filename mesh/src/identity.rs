//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Invariant: an [`Identity`] value always formats back to exactly the string it was parsed
//! from, so comparing identities is comparing their canonical strings. Anything that is not of
//! that exact shape (extra or missing segments, empty parts, NUL or other control bytes,
//! non-UTF-8) is rejected rather than guessed at: an identity is only as good as its parser.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";

/// A parsed SPIFFE identity of a Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a valid SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity is not valid UTF-8")]
    NotUtf8,
    #[error("identity {0:?} does not start with spiffe://")]
    MissingScheme(String),
    #[error("identity {0:?} is not of the form spiffe://<td>/ns/<ns>/sa/<sa>")]
    BadShape(String),
    #[error("identity {0:?} has an empty {1}")]
    EmptyPart(String, &'static str),
    #[error("identity {0:?} has a forbidden character in its {1}")]
    BadCharacter(String, &'static str),
}

impl Identity {
    /// Builds an identity from its parts, validating each one as [`Identity::parse`] would.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let whole = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        let id = Self::parse(&whole)?;
        // A part containing '/' would re-split differently: parse() catches that as BadShape,
        // so a successful parse round-trips to exactly these parts.
        Ok(id)
    }

    /// Parses the canonical string form, rejecting anything else.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::MissingScheme(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [td, ns_kw, ns, sa_kw, sa] = parts.as_slice() else {
            return Err(IdentityError::BadShape(s.to_string()));
        };
        if *ns_kw != "ns" || *sa_kw != "sa" {
            return Err(IdentityError::BadShape(s.to_string()));
        }
        for (part, what) in [
            (td, "trust domain"),
            (ns, "namespace"),
            (sa, "service account"),
        ] {
            if part.is_empty() {
                return Err(IdentityError::EmptyPart(s.to_string(), what));
            }
            if !part.chars().all(is_allowed_char) {
                return Err(IdentityError::BadCharacter(s.to_string(), what));
            }
        }
        Ok(Identity {
            trust_domain: (*td).to_string(),
            namespace: (*ns).to_string(),
            service_account: (*sa).to_string(),
        })
    }

    /// Parses raw bytes (e.g. a certificate SAN), rejecting non-UTF-8 input.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let s = std::str::from_utf8(bytes).map_err(|_| IdentityError::NotUtf8)?;
        Self::parse(s)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

/// Characters allowed in a trust domain, namespace or service account. Kubernetes names and
/// SPIFFE trust domains use a subset of these; anything outside (whitespace, control bytes,
/// '%', '?', '#', ...) has no business in an identity and would make matching ambiguous.
fn is_allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Identity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Identity::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats_canonical_form() {
        let id = Identity::parse("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(
            Identity::new("cluster.local", "default", "sleep").unwrap(),
            id
        );
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "spiffe://",
            "http://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/namespace/a/sa/b",
            "spiffe://cluster.local/ns/a/serviceaccount/b",
            "spiffe://cluster.local/ns/a\0/sa/b",
            "spiffe://cluster.local/ns/a b/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            " spiffe://cluster.local/ns/a/sa/b",
        ] {
            assert!(Identity::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            Identity::parse_bytes(b"spiffe://td/ns/\xff/sa/b"),
            Err(IdentityError::NotUtf8)
        );
        assert!(Identity::new("td", "a/sa/b", "c").is_err());
    }

    #[test]
    fn serde_uses_the_string_form() {
        let id: Identity = serde_json::from_str("\"spiffe://td/ns/n/sa/s\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://td/ns/n/sa/s\""
        );
        assert!(serde_json::from_str::<Identity>("\"spiffe://td/ns/n\"").is_err());
    }

    proptest! {
        #[test]
        fn valid_parts_round_trip(
            td in "[a-z0-9.-]{1,20}",
            ns in "[a-z0-9-]{1,20}",
            sa in "[a-z0-9_.-]{1,20}",
        ) {
            let id = Identity::new(&td, &ns, &sa).unwrap();
            prop_assert_eq!(Identity::parse(&id.to_string()).unwrap(), id);
        }

        #[test]
        fn arbitrary_strings_never_panic_and_round_trip_when_accepted(s in ".{0,80}") {
            if let Ok(id) = Identity::parse(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
