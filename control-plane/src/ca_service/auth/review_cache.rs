//! Recent positive TokenReview answers, so the API server sees about one review per token per
//! minute instead of one per xDS stream and certificate request.
//!
//! Why: every ztunnel opens an xDS stream and asks for certificates with the same token; after
//! a control-plane restart all of them reconnect at once. Without a cache each of those is a
//! TokenReview round trip, and a mesh of a few thousand nodes would hammer the API server.
//!
//! Rules:
//! - only answers that *authenticated* the token are kept; a refusal or a failed call is asked
//!   again next time (a token just minted, or an API server back from an outage, must work at
//!   once, and a refused token is not worth memory an attacker could fill);
//! - an entry lives until `min(ttl, the token's exp)` — a revoked token (its pod deleted) is
//!   accepted for at most `ttl` more, an expired one never;
//! - entries are keyed by the SHA-256 of the token: the token itself is never stored or logged;
//! - at most `capacity` entries: a full cache drops expired entries, then the one expiring
//!   soonest.
//!
//! Concurrent first requests with the same token may each review it; that is bounded by the
//! number of callers, and keeps the cache free of in-flight bookkeeping.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
// tokio's clock, so tests can move time without sleeping.
use tokio::time::Instant;

use super::{ReviewedToken, TokenReviewer};

/// How long a positive answer is trusted at most.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Entries kept at most: a few tokens per node of a large cluster (~150 bytes each).
pub const DEFAULT_CAPACITY: usize = 16_384;

type TokenHash = [u8; 32];

struct Entry {
    review: ReviewedToken,
    expires: Instant,
}

/// A [`TokenReviewer`] that remembers what `inner` authenticated, for a short time.
pub struct CachedReviewer<R> {
    inner: R,
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<TokenHash, Entry>>,
}

impl<R> fmt::Debug for CachedReviewer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sizes only: even hashes of credentials have no business in logs.
        f.debug_struct("CachedReviewer")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("entries", &self.len())
            .finish()
    }
}

impl<R: TokenReviewer> CachedReviewer<R> {
    /// [`DEFAULT_TTL`] and [`DEFAULT_CAPACITY`].
    pub fn new(inner: R) -> Self {
        Self::with_limits(inner, DEFAULT_TTL, DEFAULT_CAPACITY)
    }

    pub fn with_limits(inner: R, ttl: Duration, capacity: usize) -> Self {
        CachedReviewer {
            inner,
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }
}

impl<R> CachedReviewer<R> {
    /// Entries held, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenHash, Entry>> {
        // Entries are inserted and removed whole: a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup(&self, key: &TokenHash, now: Instant) -> Option<ReviewedToken> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(e) if e.expires > now => Some(e.review.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: TokenHash, review: ReviewedToken, expires: Instant, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.capacity {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| *k);
                if let Some(k) = soonest {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, Entry { review, expires });
    }
}

impl<R: TokenReviewer> TokenReviewer for CachedReviewer<R> {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewedToken, String>> {
        Box::pin(async move {
            let key = hash(token);
            if let Some(hit) = self.lookup(&key, Instant::now()) {
                return Ok(hit);
            }
            let review = self.inner.review(token).await?;
            if review.authenticated {
                let lifetime = match token_expiry(token) {
                    Some(exp) => exp
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                        .min(self.ttl),
                    // Not a JWT with an `exp` (a legacy secret token never expires): the
                    // API server vouched for it just now, so the ordinary TTL applies.
                    None => self.ttl,
                };
                if !lifetime.is_zero() {
                    let now = Instant::now();
                    self.insert(key, review.clone(), now + lifetime, now);
                }
            }
            Ok(review)
        })
    }
}

fn hash(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The `exp` claim of a JWT, read without verifying the signature: only ever used to *shorten*
/// how long the API server's answer about this very token is trusted.
fn token_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let claims: serde_json::Value = serde_json::from_slice(&base64url_decode(payload)?).ok()?;
    let exp = claims.get("exp")?;
    let secs = exp
        .as_u64()
        .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Unpadded (or padded) base64url, as JWT segments are; `None` on anything else.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover character (6 bits) cannot end a valid encoding.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Answers from a fixed table and counts the calls that reached it.
    #[derive(Clone, Default)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        fail: bool,
    }

    impl Counting {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl TokenReviewer for Counting {
        fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewedToken, String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = self.fail;
            Box::pin(async move {
                if fail {
                    return Err("connection refused".into());
                }
                Ok(if token.starts_with("good") || token.contains('.') {
                    ReviewedToken {
                        authenticated: true,
                        username: format!("system:serviceaccount:ns:{}", token.len()),
                        node_name: Some("node-a".into()),
                        error: None,
                    }
                } else {
                    ReviewedToken {
                        error: Some("invalid bearer token".into()),
                        ..ReviewedToken::default()
                    }
                })
            })
        }
    }

    fn b64url(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    /// A JWT-shaped token whose payload is `claims` (the signature is never checked here).
    fn jwt(claims: serde_json::Value) -> String {
        let header = b64url(br#"{"alg":"RS256"}"#);
        format!("{header}.{}.c2ln", b64url(claims.to_string().as_bytes()))
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[tokio::test]
    async fn a_second_review_of_the_same_token_is_answered_from_the_cache() {
        let inner = Counting::default();
        let cache = CachedReviewer::new(inner.clone());
        let first = cache.review("good-token-1").await.unwrap();
        assert!(first.authenticated);
        let second = cache.review("good-token-1").await.unwrap();
        assert_eq!(second, first);
        assert_eq!(inner.calls(), 1, "the second call made no review");
        // Another token is another review.
        cache.review("good-token-2").await.unwrap();
        assert_eq!(inner.calls(), 2);
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn refused_tokens_and_failed_reviews_are_not_cached() {
        let inner = Counting::default();
        let cache = CachedReviewer::new(inner.clone());
        for _ in 0..2 {
            assert!(!cache.review("bad-token").await.unwrap().authenticated);
        }
        assert_eq!(inner.calls(), 2);
        assert!(cache.is_empty());

        let down = Counting {
            fail: true,
            ..Counting::default()
        };
        let cache = CachedReviewer::new(down.clone());
        for _ in 0..2 {
            assert!(cache.review("good-token").await.is_err());
        }
        assert_eq!(down.calls(), 2);
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_live_until_the_ttl_or_the_token_expiry_whichever_is_first() {
        let inner = Counting::default();
        let cache = CachedReviewer::with_limits(inner.clone(), Duration::from_secs(60), 100);

        // No readable expiry: the TTL.
        cache.review("good-plain").await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        cache.review("good-plain").await.unwrap();
        assert_eq!(inner.calls(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.review("good-plain").await.unwrap();
        assert_eq!(inner.calls(), 2, "reviewed again after the TTL");

        // A token expiring in ~10 s is trusted no longer than that, not for the full TTL.
        let soon = jwt(serde_json::json!({"exp": unix_now() + 10, "sub": "x"}));
        cache.review(&soon).await.unwrap();
        cache.review(&soon).await.unwrap();
        assert_eq!(inner.calls(), 3);
        tokio::time::advance(Duration::from_secs(11)).await;
        cache.review(&soon).await.unwrap();
        assert_eq!(inner.calls(), 4, "reviewed again once the token expired");

        // A token the API server accepts though its exp is past (clock skew): never cached.
        let past = jwt(serde_json::json!({"exp": unix_now() - 5}));
        cache.review(&past).await.unwrap();
        cache.review(&past).await.unwrap();
        assert_eq!(inner.calls(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded_and_evicts_the_soonest_expiring() {
        let inner = Counting::default();
        let cache = CachedReviewer::with_limits(inner.clone(), Duration::from_secs(60), 2);
        cache.review("good-oldest").await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.review("good-middle").await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.review("good-newest").await.unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(inner.calls(), 3);

        cache.review("good-middle").await.unwrap();
        cache.review("good-newest").await.unwrap();
        assert_eq!(inner.calls(), 3, "the two newest are still cached");
        cache.review("good-oldest").await.unwrap();
        assert_eq!(inner.calls(), 4, "the oldest was evicted");
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn tokens_are_kept_only_as_hashes() {
        let cache = CachedReviewer::new(Counting::default());
        cache.review("good-secret-token").await.unwrap();
        let entries = cache.lock();
        assert_eq!(entries.len(), 1);
        let key = entries.keys().next().unwrap();
        assert_eq!(key, &hash("good-secret-token"));
        drop(entries);
        assert!(!format!("{cache:?}").contains("good-secret-token"));
    }

    #[test]
    fn expiry_is_read_from_a_jwt_payload_and_nothing_else() {
        let exp = |t: &str| token_expiry(t).map(|t| t.duration_since(UNIX_EPOCH).unwrap());
        assert_eq!(
            exp(&jwt(serde_json::json!({"exp": 1_700_000_000u64}))),
            Some(Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            exp(&jwt(serde_json::json!({"exp": 1_700_000_000.5}))),
            Some(Duration::from_secs(1_700_000_000))
        );
        assert_eq!(exp(&jwt(serde_json::json!({"sub": "x"}))), None);
        assert_eq!(exp(&jwt(serde_json::json!({"exp": "soon"}))), None);
        assert_eq!(exp(&jwt(serde_json::json!({"exp": -1}))), None);
        assert_eq!(exp("not-a-jwt"), None);
        assert_eq!(exp("a.b"), None);
        assert_eq!(exp("a.b.c.d"), None);
        assert_eq!(exp("a.!!!.c"), None);
        assert_eq!(exp(""), None);

        assert_eq!(base64url_decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64url_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64url_decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(base64url_decode("a"), None);
        assert_eq!(base64url_decode("a+b/"), None);
    }
}
