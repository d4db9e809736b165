//! Serde forms that derive cannot express: Istio ztunnel's `StringMatch` (whose `Presence()` is an
//! empty tuple variant), Istio's `{namespace, serviceAccount}` service-account matches, and
//! Istio's `UNSET` mTLS mode.
//!
//! `StringMatch` is read through `deserialize_any` so that every shape Istio's derive accepts
//! works: a single-key map (`{Exact: foo}`, the JSON and block-YAML form) and a YAML tag
//! (`!Exact foo`, what serde_yaml itself writes). Anything else is an error naming the problem.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::ser::{SerializeTupleVariant, Serializer};
use serde::{Deserialize, Serialize};

use super::{MtlsMode, StringMatch};

const KINDS: &[&str] = &["Exact", "Prefix", "Suffix", "Presence"];

#[derive(Deserialize)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Presence,
}

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StringMatch::Exact(v) => s.serialize_newtype_variant("StringMatch", 0, "Exact", v),
            StringMatch::Prefix(v) => s.serialize_newtype_variant("StringMatch", 1, "Prefix", v),
            StringMatch::Suffix(v) => s.serialize_newtype_variant("StringMatch", 2, "Suffix", v),
            // Istio's `Presence()`: an empty tuple variant, `{Presence: []}`.
            StringMatch::Presence => s
                .serialize_tuple_variant("StringMatch", 3, "Presence", 0)?
                .end(),
        }
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MatchVisitor {
            service_account: false,
        })
    }
}

/// Deserializes a service-account match list whose entries are either [`StringMatch`]es or
/// Istio's `{namespace: ns, serviceAccount: sa}`, which becomes `Exact("ns/sa")`.
pub(super) fn service_accounts<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<StringMatch>, D::Error> {
    struct Entry(StringMatch);
    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(MatchVisitor {
                service_account: true,
            })
            .map(Entry)
        }
    }
    let entries = Vec::<Entry>::deserialize(d)?;
    Ok(entries.into_iter().map(|e| e.0).collect())
}

struct MatchVisitor {
    /// Also accept `{namespace, serviceAccount}`.
    service_account: bool,
}

impl<'de> Visitor<'de> for MatchVisitor {
    type Value = StringMatch;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string match such as {Exact: value}, {Prefix: value}, {Suffix: value} or {Presence: []}")?;
        if self.service_account {
            f.write_str(", or {namespace: ns, serviceAccount: sa}")?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        // `Presence` carries no value, so its bare name is unambiguous. Bare strings are not
        // read as exact matches: Istio rejects them, and guessing would hide typos.
        if v == "Presence" {
            Ok(StringMatch::Presence)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let (kind, value) = data.variant::<Kind>()?;
        match kind {
            Kind::Exact => value.newtype_variant().map(StringMatch::Exact),
            Kind::Prefix => value.newtype_variant().map(StringMatch::Prefix),
            Kind::Suffix => value.newtype_variant().map(StringMatch::Suffix),
            Kind::Presence => value
                .newtype_variant::<NoValue>()
                .map(|_| StringMatch::Presence),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::invalid_length(0, &self));
        };
        let result = match key.as_str() {
            "Exact" => StringMatch::Exact(map.next_value()?),
            "Prefix" => StringMatch::Prefix(map.next_value()?),
            "Suffix" => StringMatch::Suffix(map.next_value()?),
            "Presence" => {
                map.next_value::<NoValue>()?;
                StringMatch::Presence
            }
            "namespace" | "serviceAccount" if self.service_account => {
                return service_account_struct(key, map);
            }
            other => return Err(de::Error::unknown_variant(other, KINDS)),
        };
        if let Some(extra) = map.next_key::<String>()? {
            return Err(de::Error::custom(format_args!(
                "a string match has exactly one key, found {key:?} and {extra:?}"
            )));
        }
        Ok(result)
    }
}

/// Finishes `{namespace: ns, serviceAccount: sa}` whose first key has been read.
fn service_account_struct<'de, A: MapAccess<'de>>(
    first: String,
    mut map: A,
) -> Result<StringMatch, A::Error> {
    let mut namespace: Option<String> = None;
    let mut service_account: Option<String> = None;
    let mut key = Some(first);
    while let Some(k) = key {
        let slot = match k.as_str() {
            "namespace" => &mut namespace,
            "serviceAccount" => &mut service_account,
            other => {
                return Err(de::Error::unknown_field(
                    other,
                    &["namespace", "serviceAccount"],
                ))
            }
        };
        if slot.is_some() {
            return Err(de::Error::custom(format_args!("duplicate field `{k}`")));
        }
        *slot = Some(map.next_value()?);
        key = map.next_key()?;
    }
    let namespace = namespace.ok_or_else(|| de::Error::missing_field("namespace"))?;
    let service_account =
        service_account.ok_or_else(|| de::Error::missing_field("serviceAccount"))?;
    Ok(StringMatch::Exact(format!("{namespace}/{service_account}")))
}

/// The value of `Presence`: nothing, `[]` or `{}`.
struct NoValue;

impl<'de> Deserialize<'de> for NoValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoValueVisitor)
    }
}

struct NoValueVisitor;

impl<'de> Visitor<'de> for NoValueVisitor {
    type Value = NoValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("no value for Presence (null, [] or {})")
    }

    fn visit_unit<E: de::Error>(self) -> Result<NoValue, E> {
        Ok(NoValue)
    }

    fn visit_none<E: de::Error>(self) -> Result<NoValue, E> {
        Ok(NoValue)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoValue, A::Error> {
        match seq.next_element::<de::IgnoredAny>()? {
            None => Ok(NoValue),
            Some(_) => Err(de::Error::invalid_length(1, &self)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoValue, A::Error> {
        match map.next_key::<de::IgnoredAny>()? {
            None => Ok(NoValue),
            Some(_) => Err(de::Error::invalid_length(1, &self)),
        }
    }
}

/// A mode that may be Istio's `UNSET`.
#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum MaybeMode {
    Unset,
    Strict,
    Permissive,
    Disable,
}

impl From<MaybeMode> for Option<MtlsMode> {
    fn from(m: MaybeMode) -> Self {
        match m {
            MaybeMode::Unset => None,
            MaybeMode::Strict => Some(MtlsMode::Strict),
            MaybeMode::Permissive => Some(MtlsMode::Permissive),
            MaybeMode::Disable => Some(MtlsMode::Disable),
        }
    }
}

pub(super) fn optional_mtls_mode<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<MtlsMode>, D::Error> {
    Ok(Option::<MaybeMode>::deserialize(d)?.and_then(Into::into))
}

pub(super) fn port_level_mtls<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<u16, MtlsMode>, D::Error> {
    let raw = BTreeMap::<u16, MaybeMode>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(port, m)| Option::<MtlsMode>::from(m).map(|m| (port, m)))
        .collect())
}
