//! Building a Kubernetes client from a `--kube-api` flag or the environment.

/// Why the Kubernetes client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Kubernetes API URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("no Kubernetes configuration (in-cluster service account or kubeconfig): {0}")]
    Infer(String),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A client for `api_url` when given (plain `http://` without credentials, as `kubectl proxy`
/// or a test's fake API server serve, or `https://` verified against the system roots), else
/// from the in-cluster service account or the kubeconfig.
pub async fn client(api_url: Option<&str>) -> Result<kube::Client, ClientError> {
    let config = match api_url {
        Some(url) => {
            let bad = |message: String| ClientError::Url {
                url: url.to_owned(),
                message,
            };
            let uri = url.parse::<http::Uri>().map_err(|e| bad(e.to_string()))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(bad(
                    "expected http://host[:port] or https://host[:port]".into()
                ));
            }
            kube::Config::new(uri)
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ClientError::Infer(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(ClientError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_api_url_is_named_in_the_error() {
        for url in ["ftp://example", "not a url", "http://"] {
            let Err(e) = client(Some(url)).await else {
                panic!("{url} was accepted");
            };
            assert!(matches!(e, ClientError::Url { .. }), "{url}: {e}");
            assert!(e.to_string().contains(url), "{e}");
        }
        assert!(client(Some("http://127.0.0.1:1")).await.is_ok());
    }
}
