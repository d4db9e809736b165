//! TokenReview against the Kubernetes API server.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::auth::{ReviewedToken, TokenReviewer};

/// Extra key the API server sets on tokens bound to a pod (Kubernetes 1.30+): the pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// Audience ztunnel's projected token is minted for (Istio's CA audience).
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

/// Reviews tokens with the API server the client points at. The control plane's service
/// account needs `create` on `tokenreviews` (the `system:auth-delegator` ClusterRole).
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
}

impl KubeTokenReviewer {
    /// `audiences`: the token must have been minted for one of these (empty = the API
    /// server's own audience, i.e. any ordinary service-account token; not recommended).
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        KubeTokenReviewer {
            api: Api::all(client),
            audiences,
        }
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewedToken, String>> {
        Box::pin(async move {
            let request = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                },
                ..TokenReview::default()
            };
            let reviewed = self
                .api
                .create(&PostParams::default(), &request)
                .await
                .map_err(|e| e.to_string())?;
            Ok(to_reviewed(reviewed))
        })
    }
}

/// The parts of a TokenReview answer the authenticator uses.
pub fn to_reviewed(review: TokenReview) -> ReviewedToken {
    let Some(status) = review.status else {
        return ReviewedToken {
            error: Some("TokenReview has no status".to_string()),
            ..ReviewedToken::default()
        };
    };
    let user = status.user.unwrap_or_default();
    let node_name = user
        .extra
        .as_ref()
        .and_then(|extra| extra.get(NODE_NAME_EXTRA))
        .and_then(|values| values.first())
        .cloned();
    ReviewedToken {
        authenticated: status.authenticated.unwrap_or(false),
        username: user.username.unwrap_or_default(),
        node_name,
        error: status.error,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    use super::*;

    /// The answer shape the API server sends for a pod-bound ztunnel token.
    #[test]
    fn reads_user_and_node_from_a_review() {
        let json = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {},
            "spec": {"token": "x", "audiences": ["istio-ca"]},
            "status": {
                "authenticated": true,
                "audiences": ["istio-ca"],
                "user": {
                    "username": "system:serviceaccount:istio-system:ztunnel",
                    "uid": "u",
                    "groups": ["system:serviceaccounts"],
                    "extra": {
                        "authentication.kubernetes.io/pod-name": ["ztunnel-abc"],
                        "authentication.kubernetes.io/node-name": ["node-a"]
                    }
                }
            }
        });
        let review: TokenReview = serde_json::from_value(json).unwrap();
        assert_eq!(
            to_reviewed(review),
            ReviewedToken {
                authenticated: true,
                username: "system:serviceaccount:istio-system:ztunnel".into(),
                node_name: Some("node-a".into()),
                error: None,
            }
        );
    }

    #[test]
    fn refused_or_empty_reviews_are_not_authenticated() {
        let refused = TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(false),
                error: Some("invalid bearer token".into()),
                user: Some(UserInfo {
                    extra: Some(BTreeMap::new()),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }),
            ..TokenReview::default()
        };
        let r = to_reviewed(refused);
        assert!(!r.authenticated);
        assert_eq!(r.error.as_deref(), Some("invalid bearer token"));
        assert!(!to_reviewed(TokenReview::default()).authenticated);
    }
}
