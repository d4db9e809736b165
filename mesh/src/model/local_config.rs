//! ztunnel's local config file (Istio's `LOCAL_XDS_PATH`), read in the same YAML format Istio's
//! ztunnel reads, so one file drives either implementation.
//!
//! Two top-level forms are accepted:
//! - a mapping `{workloads, services, policies}` (Istio's `LocalConfig`), plus ambit's extension
//!   `peerAuthentications: [PeerAuthentication]`;
//! - the legacy form: the whole file is a list of workloads.
//!
//! Fields Istio defines and ambit does not use yet are accepted and ignored, so real Istio files
//! load; a typo in a field name is therefore ignored too (Istio's own `deny_unknown_fields`
//! would reject it, but rejecting Istio's newer fields would be worse for a shared file).
//!
//! Every error names where it is: the field path (`workloads[1].workloadIps[0]`), plus the line
//! and column when the YAML parser knows them. Parsing never panics on any input.

use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::validate::validate;
use super::{ModelError, ModelWarning, Service, State, Workload};
use crate::authz::{Authorization, PeerAuthentication};

/// Istio's `LocalWorkload` is a workload plus the map of services it backs; ambit's
/// [`Workload`] already carries that map (`services`), so the two are one type.
pub type LocalWorkload = Workload;

/// The parsed, validated contents of a local config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalConfig {
    /// With Istio's defaults applied ([`Workload::apply_defaults`]): uid, trust domain,
    /// service account and cluster id are filled in.
    pub workloads: Vec<LocalWorkload>,
    pub services: Vec<Service>,
    pub policies: Vec<Authorization>,
    /// ambit extension (Istio's local config has no PeerAuthentication).
    pub peer_authentications: Vec<PeerAuthentication>,
}

/// Why a local config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    /// The text is not YAML at all.
    #[error("invalid YAML{}: {message}", at(*.line, *.column))]
    Syntax {
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// The top level is neither a mapping nor a list of workloads.
    #[error("the config must be a mapping (workloads, services, policies, peerAuthentications) or a list of workloads, not {found}")]
    Shape { found: &'static str },
    /// A field has the wrong type or value; `path` is e.g. `workloads[1].workloadIps[0]`.
    #[error("{path}: {message}{}", at(*.line, *.column))]
    Field {
        path: String,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// The objects are well-formed but break a model rule (duplicates, empty names, ...).
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl ConfigError {
    /// The field path the error is about, when it is about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Field { path, .. } => Some(path),
            ConfigError::Model(e) => Some(&e.path),
            _ => None,
        }
    }
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        _ => String::new(),
    }
}

/// Parses and validates; the error names the offending field path, e.g.
/// `workloads[1].workloadIps[0]: invalid IP address syntax`.
pub fn parse(yaml: &str) -> Result<LocalConfig, ConfigError> {
    let mut config = parse_unvalidated(yaml)?;
    config
        .workloads
        .iter_mut()
        .for_each(Workload::apply_defaults);
    config.validate()?;
    Ok(config)
}

/// [`parse`] for raw bytes (a fuzz target's input, or a file of unknown encoding).
pub fn parse_bytes(b: &[u8]) -> Result<LocalConfig, ConfigError> {
    let yaml = std::str::from_utf8(b).map_err(|e| ConfigError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    parse(yaml)
}

/// Reads, parses and validates the file at `path` and builds the [`State`].
pub fn load(path: &Path) -> Result<State, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_bytes(&bytes)?.into_state()
}

impl LocalConfig {
    /// Checks the model rules without building a [`State`]; returns the tolerated oddities.
    pub fn validate(&self) -> Result<Vec<ModelWarning>, ConfigError> {
        Ok(validate(
            &self.workloads,
            &self.services,
            &self.policies,
            &self.peer_authentications,
        )?)
    }

    pub fn into_state(self) -> Result<State, ConfigError> {
        Ok(State::new(
            self.workloads,
            self.services,
            self.policies,
            self.peer_authentications,
        )?)
    }
}

fn parse_unvalidated(yaml: &str) -> Result<LocalConfig, ConfigError> {
    // First pass: is it YAML, and which of the two forms? Only the top level's kind is kept
    // (a `serde_yaml::Value` of the whole file would cost several times the file in memory
    // at the peak of a load); the rest is skipped, so any error here is syntax.
    let top: TopLevel = serde_yaml::from_str(yaml).map_err(|e| {
        let loc = e.location();
        ConfigError::Syntax {
            message: strip_location(&e.to_string()),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
        }
    })?;
    // Second pass from the text so errors keep their line and column.
    match top {
        // An empty file is an empty config: nothing to serve yet.
        TopLevel::Null => Ok(LocalConfig::default()),
        TopLevel::Mapping => typed(yaml, ""),
        TopLevel::Sequence => Ok(LocalConfig {
            workloads: typed(yaml, "workloads")?,
            ..LocalConfig::default()
        }),
        TopLevel::Other(found) => Err(ConfigError::Shape { found }),
    }
}

/// The kind of a YAML document's top-level node, read without building its contents.
enum TopLevel {
    Null,
    Mapping,
    Sequence,
    /// A scalar or tagged value, named for the error message.
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> serde::de::Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML document")
    }
    fn visit_unit<E>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Null)
    }
    fn visit_none<E>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Null)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Mapping)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Sequence)
    }
    fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_i128<E>(self, _: i128) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_u128<E>(self, _: u128) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a string"))
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<TopLevel, A::Error> {
        // serde_yaml hands a `!tag value` to visitors as an enum.
        use serde::de::VariantAccess;
        let (IgnoredAny, variant) = data.variant::<IgnoredAny>()?;
        variant.newtype_variant::<IgnoredAny>()?;
        Ok(TopLevel::Other("a tagged value"))
    }
}

/// Deserialises `yaml` as `T`, tracking the field path; `prefix` is prepended to the path
/// (the legacy list form's elements are `workloads[i]`).
fn typed<T: serde::de::DeserializeOwned>(yaml: &str, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(yaml)).map_err(|e| {
        let raw_path = e.path().to_string();
        let inner = e.into_inner();
        let loc = inner.location();
        // serde_yaml tracks the path as well (in its own spelling) and puts it in front of its
        // message; keep it once, in the structured field.
        let message = strip_yaml_path(&strip_location(&inner.to_string()));
        let path = match (prefix, raw_path.as_str()) {
            ("", p) => p.to_string(),
            (pre, ".") => pre.to_string(),
            (pre, p) if p.starts_with('[') => format!("{pre}{p}"),
            (pre, p) => format!("{pre}.{p}"),
        };
        ConfigError::Field {
            path,
            message,
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
        }
    })
}

/// Drops a leading `path: ` that serde_yaml puts in front of its messages. A path has no
/// spaces or quotes, while serde's own messages ("invalid type: ...") do before any colon.
fn strip_yaml_path(message: &str) -> String {
    match message.split_once(": ") {
        Some((head, rest))
            if !head.is_empty()
                && head
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-[]?".contains(c)) =>
        {
            rest.to_string()
        }
        _ => message.to_string(),
    }
}

/// serde_yaml appends " at line L column C" to its messages; ours carry the location as data.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_string(),
        _ => message.to_string(),
    }
}
