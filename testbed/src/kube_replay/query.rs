//! Pure request parsing for the replay API server: REST paths, query strings and selectors.
//!
//! Only what Kubernetes clients (kube-rs, client-go) send to list and watch is understood; anything
//! else is a typed error the server turns into a `400 BadRequest` Status, so a test that relies on
//! an unsupported feature fails loudly instead of silently seeing every object.

use std::collections::BTreeMap;

use serde_json::Value;

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// API group (`""` for the core group under `/api`).
    pub group: String,
    pub version: String,
    /// Resource plural, e.g. `pods`.
    pub plural: String,
    /// The namespace of a namespaced path (`/api/v1/namespaces/{ns}/pods`).
    pub namespace: Option<String>,
    /// A single object's name (`.../pods/{name}`), `None` for a collection.
    pub name: Option<String>,
}

/// Why a request cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("path {0:?} is not an API resource path")]
    Path(String),
    #[error("query parameter {name}: {problem}")]
    Param { name: String, problem: String },
    #[error("selector {selector:?}: {problem}")]
    Selector { selector: String, problem: String },
}

/// Splits `/api/v1/...` or `/apis/{group}/{version}/...` into its parts.
pub fn parse_path(path: &str) -> Result<Target, QueryError> {
    let bad = || QueryError::Path(path.to_owned());
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(bad()),
    };
    let (namespace, plural, name) = match rest {
        // `/api/v1/namespaces/{ns}` is the Namespace object itself; one more segment makes the
        // path a namespaced collection.
        ["namespaces", ns, plural, name @ ..] if name.len() <= 1 => {
            (Some(*ns), *plural, name.first().copied())
        }
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return Err(bad()),
    };
    let empty = version.is_empty()
        || plural.is_empty()
        || namespace.is_some_and(str::is_empty)
        || name.is_some_and(str::is_empty)
        || (segs[0] == "apis" && group.is_empty());
    if empty {
        return Err(bad());
    }
    Ok(Target {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: plural.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

/// Decodes `application/x-www-form-urlencoded` (what HTTP clients put in a query string).
pub fn parse_query(query: &str) -> Result<BTreeMap<String, String>, QueryError> {
    let mut out = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k)?;
        let v = decode(v).map_err(|_| QueryError::Param {
            name: k.clone(),
            problem: format!("{v:?} is not valid percent-encoding"),
        })?;
        out.insert(k, v);
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, QueryError> {
    let bad = || QueryError::Param {
        name: s.to_owned(),
        problem: "not valid percent-encoding".to_owned(),
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The list/watch parameters of a request, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListWatch {
    pub watch: bool,
    /// `resourceVersion`; empty when absent.
    pub resource_version: String,
    pub allow_bookmarks: bool,
    pub timeout_seconds: Option<u64>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub send_initial_events: bool,
    pub fields: Selector,
    pub labels: Selector,
}

impl ListWatch {
    pub fn from_query(q: &BTreeMap<String, String>) -> Result<ListWatch, QueryError> {
        let flag = |name: &str| -> Result<bool, QueryError> {
            match q.get(name).map(String::as_str) {
                None | Some("" | "false" | "0") => Ok(false),
                Some("true" | "1") => Ok(true),
                Some(other) => Err(QueryError::Param {
                    name: name.to_owned(),
                    problem: format!("{other:?} is not a boolean"),
                }),
            }
        };
        let number = |name: &str| -> Result<Option<u64>, QueryError> {
            q.get(name)
                .filter(|v| !v.is_empty())
                .map(|v| {
                    v.parse::<u64>().map_err(|_| QueryError::Param {
                        name: name.to_owned(),
                        problem: format!("{v:?} is not a whole number"),
                    })
                })
                .transpose()
        };
        Ok(ListWatch {
            watch: flag("watch")?,
            resource_version: q.get("resourceVersion").cloned().unwrap_or_default(),
            allow_bookmarks: flag("allowWatchBookmarks")?,
            timeout_seconds: number("timeoutSeconds")?,
            // `limit=0` means "no limit" in the API.
            limit: number("limit")?
                .filter(|&n| n > 0)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
            send_initial_events: flag("sendInitialEvents")?,
            fields: Selector::parse(q.get("fieldSelector").map_or("", String::as_str), false)?,
            labels: Selector::parse(q.get("labelSelector").map_or("", String::as_str), true)?,
        })
    }
}

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Equals(String, String),
    NotEquals(String, String),
    /// Label selectors only: `key` / `!key`.
    Exists(String),
    NotExists(String),
}

/// A field or label selector: every term must hold. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
    labels: bool,
}

impl Selector {
    /// Parses the equality-based syntax (`a=b,c!=d`, and for labels `k` / `!k`). Set-based
    /// label terms (`in`, `notin`) are rejected: no client of this project sends them.
    pub fn parse(s: &str, labels: bool) -> Result<Selector, QueryError> {
        let bad = |problem: &str| QueryError::Selector {
            selector: s.to_owned(),
            problem: problem.to_owned(),
        };
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if term.contains('(') || term.contains(" in ") || term.contains(" notin ") {
                return Err(bad("set-based terms are not supported by kube_replay"));
            }
            let t = if let Some((k, v)) = term.split_once("!=") {
                Term::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Term::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if labels {
                match term.strip_prefix('!') {
                    Some(k) => Term::NotExists(k.trim().to_owned()),
                    None => Term::Exists(term.to_owned()),
                }
            } else {
                return Err(bad("a field selector term needs = or !="));
            };
            let key = match &t {
                Term::Equals(k, _)
                | Term::NotEquals(k, _)
                | Term::Exists(k)
                | Term::NotExists(k) => k,
            };
            if key.is_empty() {
                return Err(bad("a term has an empty key"));
            }
            terms.push(t);
        }
        Ok(Selector { terms, labels })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether `obj` (a full API object) is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let value = |key: &str| -> Option<String> {
                if self.labels {
                    obj.pointer("/metadata/labels")
                        .and_then(|l| l.get(key))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                } else {
                    field_value(obj, key)
                }
            };
            match t {
                Term::Equals(k, v) => value(k).unwrap_or_default() == *v,
                // A missing label satisfies `k!=v`, as in Kubernetes.
                Term::NotEquals(k, v) => value(k).unwrap_or_default() != *v,
                Term::Exists(k) => value(k).is_some(),
                Term::NotExists(k) => value(k).is_none(),
            }
        })
    }
}

/// The value a field selector compares for dotted `path` (`spec.nodeName`): strings as they
/// are, booleans and numbers printed, missing or null as `None` (which compares as `""`).
pub fn field_value(obj: &Value, path: &str) -> Option<String> {
    let mut v = obj;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
