//! Who is calling: `authorization: Bearer <token>` turned into a [`Caller`].
//!
//! Two kinds of token:
//! - per-node bootstrap tokens from a file (machines without Kubernetes): the token names the
//!   node, and its holder is that node's agent;
//! - Kubernetes service-account tokens, checked by the API server (TokenReview): the token names
//!   a service account and, for pod-bound tokens, the node the pod runs on.
//!
//! Shared by the CA service and the xDS server, which authenticate callers the same way (one
//! asynchronous [`Authenticator`]: a ztunnel whose token gets it certificates gets it config).
//! TokenReview answers are cached briefly ([`review_cache`]) so that reconnecting ztunnels do
//! not turn into a TokenReview per request against the API server.

pub mod review_cache;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use futures::future::BoxFuture;
use mesh::identity::Identity;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// An authenticated caller: the xDS server's type, so that one authentication serves both
/// services. For the CA, `node` is the node the credential names (empty when it names none) and
/// `identity` is `None` for node bootstrap tokens (their holder is a node agent, nothing else).
pub use crate::xds::auth::Caller;

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.identity {
            Some(id) => write!(f, "{id} on node {:?}", self.node),
            None => write!(f, "node agent of {:?}", self.node),
        }
    }
}

/// Turns request metadata into a [`Caller`], or `UNAUTHENTICATED`.
///
/// Asynchronous because checking a Kubernetes token is an API call. Used by both the CA
/// service and the xDS server (for callers without a mesh certificate).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, Status>>;
}

/// Why a caller was not authenticated. Converts to the gRPC status the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing authorization header")]
    MissingHeader,
    #[error("authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("empty bearer token")]
    EmptyToken,
    #[error("unknown bootstrap token")]
    UnknownToken,
    #[error("token review: {0}")]
    NotAuthenticated(String),
    #[error("{0:?} is not a service account")]
    NotServiceAccount(String),
    #[error("service account: {0}")]
    BadServiceAccount(String),
    /// The token could not be checked (API server unreachable): the caller may retry.
    #[error("cannot verify the token right now")]
    ReviewUnavailable,
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::ReviewUnavailable => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        }
    }
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .ok_or(AuthError::MissingHeader)?;
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::EmptyToken);
    }
    Ok(token)
}

/// Shortest bootstrap token accepted: 16 characters of a random token are ~96 bits or more.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a bootstrap token file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("line {line}: expected `<node-name> <token>`")]
    Shape { line: usize },
    #[error("line {line}: node name {node:?} has characters a Kubernetes node name cannot have")]
    BadNode { line: usize, node: String },
    #[error("line {line}: token for node {node:?} is shorter than {MIN_TOKEN_LEN} characters")]
    ShortToken { line: usize, node: String },
    #[error("line {line}: this token is also given to node {other:?}; tokens must be unique")]
    DuplicateToken { line: usize, other: String },
}

/// Per-node bootstrap tokens: lines of `<node-name> <token>`; blank lines and `#` comments are
/// ignored. A node may have several tokens (to rotate one without downtime); a token belongs to
/// one node only.
#[derive(Clone, Default)]
pub struct BootstrapTokens {
    entries: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for BootstrapTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Node names only: the tokens are credentials.
        let nodes: Vec<&str> = self.entries.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("BootstrapTokens")
            .field("nodes", &nodes)
            .finish()
    }
}

impl BootstrapTokens {
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [node, token] = fields.as_slice() else {
                return Err(TokenFileError::Shape { line });
            };
            if !is_node_name(node) {
                return Err(TokenFileError::BadNode {
                    line,
                    node: (*node).to_string(),
                });
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(TokenFileError::ShortToken {
                    line,
                    node: (*node).to_string(),
                });
            }
            if let Some((other, _)) = entries
                .iter()
                .find(|(n, t)| n != node && t.as_slice() == token.as_bytes())
            {
                return Err(TokenFileError::DuplicateToken {
                    line,
                    other: other.clone(),
                });
            }
            entries.push(((*node).to_string(), token.as_bytes().to_vec()));
        }
        Ok(BootstrapTokens { entries })
    }

    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// The node `token` belongs to. Every entry is compared, each in constant time, so the
    /// response time does not reveal how much of a guess was right or which entry matched.
    pub fn node_of(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (node, known) in &self.entries {
            if constant_time_eq(known, token.as_bytes()) {
                found = Some(node.as_str());
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Byte-wise equality whose running time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// RFC 1123 subdomain, what Kubernetes allows as a node name.
fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// Bootstrap tokens from a file, re-read when the file changes (so tokens can be added or
/// rotated without restarting the control plane). A changed file that does not parse is
/// reported and the previous tokens stay in force.
pub struct BootstrapTokenAuthenticator {
    path: PathBuf,
    cache: Mutex<(Option<FileStamp>, Arc<BootstrapTokens>)>,
}

/// What tells us the file changed: modification time and length.
type FileStamp = (Option<SystemTime>, u64);

impl BootstrapTokenAuthenticator {
    /// Loads `path` now: a missing or malformed file stops start-up with the reason.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let stamp = stamp(path);
        let tokens = BootstrapTokens::from_file(path)?;
        if tokens.is_empty() {
            tracing::warn!(path = %path.display(), "bootstrap token file has no tokens");
        }
        Ok(BootstrapTokenAuthenticator {
            path: path.to_path_buf(),
            cache: Mutex::new((stamp, Arc::new(tokens))),
        })
    }

    /// The tokens in force, re-reading the file first if it changed.
    pub fn tokens(&self) -> Arc<BootstrapTokens> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamp(&self.path);
        if now != cache.0 {
            match BootstrapTokens::from_file(&self.path) {
                Ok(tokens) => {
                    tracing::info!(path = %self.path.display(), "bootstrap tokens reloaded");
                    *cache = (now, Arc::new(tokens));
                }
                Err(e) => {
                    // Remember the stamp so a broken file is reported once, not per request.
                    tracing::error!(path = %self.path.display(), error = %e,
                        "bootstrap token file changed but is invalid; keeping the previous tokens");
                    cache.0 = now;
                }
            }
        }
        cache.1.clone()
    }
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

impl Authenticator for BootstrapTokenAuthenticator {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, Status>> {
        let result = bearer_token(metadata).and_then(|token| {
            self.tokens()
                .node_of(token)
                .map(|node| Caller {
                    node: node.to_string(),
                    identity: None,
                })
                .ok_or(AuthError::UnknownToken)
        });
        Box::pin(async move { result.map_err(Status::from) })
    }
}

/// What the Kubernetes API server said about a token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReviewedToken {
    pub authenticated: bool,
    /// `system:serviceaccount:<namespace>:<name>` for service-account tokens.
    pub username: String,
    /// The `authentication.kubernetes.io/node-name` extra of a pod-bound token.
    pub node_name: Option<String>,
    /// Why the API server refused the token, when it did.
    pub error: Option<String>,
}

/// The TokenReview call, behind a trait so the authenticator's rules are testable without an
/// API server ([`super::kube::KubeTokenReviewer`] is the real one).
pub trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewedToken, String>>;
}

/// Kubernetes service-account tokens: the caller is the token's service account, on the node
/// its pod is bound to.
pub struct TokenReviewAuthenticator<R> {
    reviewer: R,
    trust_domain: String,
}

impl<R: TokenReviewer> TokenReviewAuthenticator<R> {
    pub fn new(reviewer: R, trust_domain: &str) -> Self {
        TokenReviewAuthenticator {
            reviewer,
            trust_domain: trust_domain.to_string(),
        }
    }

    /// The caller a reviewed token stands for.
    pub fn caller(&self, review: ReviewedToken) -> Result<Caller, AuthError> {
        if !review.authenticated {
            let why = review
                .error
                .unwrap_or_else(|| "token not authenticated".into());
            return Err(AuthError::NotAuthenticated(why));
        }
        let parts: Vec<&str> = review.username.split(':').collect();
        let ["system", "serviceaccount", namespace, name] = parts.as_slice() else {
            return Err(AuthError::NotServiceAccount(review.username));
        };
        let identity = Identity::new(&self.trust_domain, namespace, name)
            .map_err(|e| AuthError::BadServiceAccount(e.to_string()))?;
        Ok(Caller {
            node: review.node_name.unwrap_or_default(),
            identity: Some(identity),
        })
    }
}

impl<R: TokenReviewer> Authenticator for TokenReviewAuthenticator<R> {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, Status>> {
        Box::pin(async move {
            let token = bearer_token(metadata)?;
            let review = self.reviewer.review(token).await.map_err(|e| {
                // Our problem, not the caller's: let it retry.
                tracing::warn!(error = %e, "TokenReview call failed");
                AuthError::ReviewUnavailable
            })?;
            self.caller(review).map_err(Status::from)
        })
    }
}

/// Tries each authenticator in order; the first that accepts wins. For a control plane that
/// serves both Kubernetes nodes and bootstrap-token machines.
pub struct AnyOf(pub Vec<Arc<dyn Authenticator>>);

impl Authenticator for AnyOf {
    fn authenticate<'a>(
        &'a self,
        metadata: &'a MetadataMap,
    ) -> BoxFuture<'a, Result<Caller, Status>> {
        Box::pin(async move {
            let mut last = Status::unauthenticated("no authenticator configured");
            for auth in &self.0 {
                match auth.authenticate(metadata).await {
                    Ok(caller) => return Ok(caller),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef-one";
    const T2: &str = "0123456789abcdef-two";

    #[test]
    fn token_file_parsing() {
        let tokens = BootstrapTokens::parse(&format!(
            "# comment\n\nnode-a {T1}\n  node-b\t{T2}  \nnode-a 0123456789abcdef-rotated\n"
        ))
        .unwrap();
        assert_eq!(tokens.node_of(T1), Some("node-a"));
        assert_eq!(tokens.node_of(T2), Some("node-b"));
        assert_eq!(tokens.node_of("0123456789abcdef-rotated"), Some("node-a"));
        // Only exact matches: no prefixes, no extensions, no case folding.
        assert_eq!(tokens.node_of(&T1[..T1.len() - 1]), None);
        assert_eq!(tokens.node_of(&format!("{T1}x")), None);
        assert_eq!(tokens.node_of(&T1.to_uppercase()), None);
        assert_eq!(tokens.node_of(""), None);

        let err = |text: &str| BootstrapTokens::parse(text).unwrap_err();
        assert_eq!(err("node-a\n"), TokenFileError::Shape { line: 1 });
        assert_eq!(
            err(&format!("\nnode-a {T1} extra")),
            TokenFileError::Shape { line: 2 }
        );
        assert!(matches!(
            err(&format!("Node_A {T1}")),
            TokenFileError::BadNode { line: 1, .. }
        ));
        assert!(matches!(
            err("node-a short"),
            TokenFileError::ShortToken { line: 1, .. }
        ));
        assert_eq!(
            err(&format!("node-a {T1}\nnode-b {T1}")),
            TokenFileError::DuplicateToken {
                line: 2,
                other: "node-a".into()
            }
        );
        assert!(BootstrapTokens::parse("").unwrap().is_empty());
    }

    #[test]
    fn tokens_never_reach_debug_output() {
        let tokens = BootstrapTokens::parse(&format!("node-a {T1}")).unwrap();
        let dbg = format!("{tokens:?}");
        assert!(dbg.contains("node-a") && !dbg.contains(T1), "{dbg}");
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    fn md(auth: Option<&str>) -> MetadataMap {
        let mut md = MetadataMap::new();
        if let Some(v) = auth {
            md.insert("authorization", v.parse().unwrap());
        }
        md
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer_token(&md(Some("Bearer abc"))), Ok("abc"));
        assert_eq!(bearer_token(&md(Some("bearer abc "))), Ok("abc"));
        assert_eq!(bearer_token(&md(None)), Err(AuthError::MissingHeader));
        assert_eq!(
            bearer_token(&md(Some("Basic abc"))),
            Err(AuthError::NotBearer)
        );
        assert_eq!(bearer_token(&md(Some("Bearer"))), Err(AuthError::NotBearer));
        assert_eq!(
            bearer_token(&md(Some("Bearer  "))),
            Err(AuthError::EmptyToken)
        );
        assert_eq!(
            Status::from(AuthError::ReviewUnavailable).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            Status::from(AuthError::UnknownToken).code(),
            tonic::Code::Unauthenticated
        );
    }

    #[tokio::test]
    async fn token_file_is_reloaded_and_a_broken_one_ignored() {
        let dir = std::env::temp_dir().join(format!("ambit-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, format!("node-a {T1}\n")).unwrap();
        let auth = BootstrapTokenAuthenticator::from_file(&path).unwrap();
        let who = |t: &str| {
            let md = md(Some(&format!("Bearer {t}")));
            let auth = &auth;
            async move { auth.authenticate(&md).await.map(|c| c.node) }
        };
        assert_eq!(who(T1).await.unwrap(), "node-a");
        assert!(who(T2).await.is_err());

        // A different length guarantees a new stamp even on coarse-mtime filesystems.
        std::fs::write(&path, format!("node-b {T2}\n# rotated\n")).unwrap();
        assert_eq!(who(T2).await.unwrap(), "node-b");
        assert!(who(T1).await.is_err());

        std::fs::write(&path, "this line is broken\n").unwrap();
        assert_eq!(who(T2).await.unwrap(), "node-b", "previous tokens stay");
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(matches!(
            BootstrapTokenAuthenticator::from_file(&dir.join("missing")),
            Err(TokenFileError::Read { .. })
        ));
    }

    struct NoReview;
    impl TokenReviewer for NoReview {
        fn review<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<ReviewedToken, String>> {
            Box::pin(async { Err("connection refused".to_string()) })
        }
    }

    #[tokio::test]
    async fn token_review_outcomes() {
        let auth = TokenReviewAuthenticator::new(NoReview, "cluster.local");
        let reviewed = |username: &str, node: Option<&str>| ReviewedToken {
            authenticated: true,
            username: username.into(),
            node_name: node.map(Into::into),
            error: None,
        };
        assert_eq!(
            auth.caller(reviewed(
                "system:serviceaccount:istio-system:ztunnel",
                Some("n1")
            )),
            Ok(Caller {
                node: "n1".into(),
                identity: Some(Identity::new("cluster.local", "istio-system", "ztunnel").unwrap()),
            })
        );
        assert_eq!(
            auth.caller(reviewed("system:serviceaccount:default:web", None))
                .unwrap()
                .node,
            ""
        );
        assert!(matches!(
            auth.caller(reviewed("system:node:n1", None)),
            Err(AuthError::NotServiceAccount(_))
        ));
        assert!(matches!(
            auth.caller(reviewed("system:serviceaccount:a:b:c", None)),
            Err(AuthError::NotServiceAccount(_))
        ));
        let refused = ReviewedToken {
            error: Some("token expired".into()),
            ..ReviewedToken::default()
        };
        assert_eq!(
            auth.caller(refused),
            Err(AuthError::NotAuthenticated("token expired".into()))
        );
        // The API server being away is not the caller's fault.
        let err = auth.authenticate(&md(Some("Bearer x"))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn any_of_takes_the_first_that_accepts() {
        let tokens = Arc::new(BootstrapTokenAuthenticator {
            path: PathBuf::from("/nonexistent"),
            cache: Mutex::new((
                None,
                Arc::new(BootstrapTokens::parse(&format!("node-a {T1}")).unwrap()),
            )),
        });
        let review = Arc::new(TokenReviewAuthenticator::new(NoReview, "cluster.local"));
        let any = AnyOf(vec![tokens, review]);
        let ok = any.authenticate(&md(Some(&format!("Bearer {T1}")))).await;
        assert_eq!(ok.unwrap().node, "node-a");
        let err = any
            .authenticate(&md(Some("Bearer other")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
