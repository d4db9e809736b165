//! The CA service: `istio.v1.auth.IstioCertificateService/CreateCertificate` on the control
//! plane's gRPC port, signing workload certificates for node agents.
//!
//! A request goes: authenticate the bearer token ([`auth`]) → decide which identity may be
//! certified ([`authorize`], against the control plane's current [`State`]) → sign the CSR
//! with [`CertificateAuthority::sign_csr`], which also insists that the CSR's only SAN is that
//! identity. Every refusal is logged with the caller and what it asked for.
//!
//! Invariants:
//! - the CA's private key never leaves [`CertificateAuthority`]; responses carry only
//!   certificates (leaf … root);
//! - authorization reads the newest published state on every request, so a pod that moved or
//!   was deleted stops being certifiable for its old node at once;
//! - no request field reaches a certificate except the CSR's public key.

pub mod auth;
pub mod authorize;
pub mod kube;
pub mod root;

use std::sync::Arc;
use std::time::Duration;

use mesh::ca::{CaError, CertificateAuthority, DEFAULT_CERT_LIFETIME, MAX_CERT_LIFETIME};
use mesh::caclient::proto::{
    IstioCertificateRequest, IstioCertificateResponse, IstioCertificateService,
    IstioCertificateServiceServer, IMPERSONATED_IDENTITY,
};
use mesh::identity::Identity;
use mesh::model::State;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub use auth::{AuthError, Authenticator, Caller};

/// Istio's default trusted node agent (`CA_TRUSTED_NODE_ACCOUNTS`): ztunnel's service account.
pub const DEFAULT_NODE_AGENT: (&str, &str) = ("istio-system", "ztunnel");

/// Settings of the CA service.
#[derive(Debug, Clone)]
pub struct CaServiceConfig {
    /// Only identities in this trust domain are certified.
    pub trust_domain: String,
    /// Lifetime when the request asks for none (`validity_duration` ≤ 0).
    pub default_lifetime: Duration,
    /// Longest lifetime granted; longer requests are refused (as Istio does), not shortened,
    /// so a misconfigured client finds out.
    pub max_lifetime: Duration,
    /// Service accounts allowed to ask for identities of workloads on their node (bootstrap
    /// token holders always are).
    pub trusted_node_agents: Vec<Identity>,
}

impl CaServiceConfig {
    /// Defaults for `trust_domain`: 24 h certificates, 90 days at most, ztunnel as node agent.
    pub fn new(trust_domain: &str) -> Self {
        CaServiceConfig {
            trust_domain: trust_domain.to_string(),
            default_lifetime: DEFAULT_CERT_LIFETIME,
            max_lifetime: MAX_CERT_LIFETIME,
            trusted_node_agents: Identity::new(
                trust_domain,
                DEFAULT_NODE_AGENT.0,
                DEFAULT_NODE_AGENT.1,
            )
            .into_iter()
            .collect(),
        }
    }
}

/// The service; wrap it with [`CaService::into_server`] and add it to the gRPC server.
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    authenticator: Arc<dyn Authenticator>,
    state: watch::Receiver<Arc<State>>,
    config: CaServiceConfig,
}

impl CaService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authenticator: Arc<dyn Authenticator>,
        state: watch::Receiver<Arc<State>>,
        config: CaServiceConfig,
    ) -> Self {
        CaService {
            ca,
            authenticator,
            state,
            config,
        }
    }

    pub fn into_server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self)
    }

    async fn handle(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self
            .authenticator
            .authenticate(request.metadata())
            .await
            .inspect_err(|e| {
                tracing::warn!(reason = %e.message(), "CA request refused: not authenticated");
            })?;
        let req = request.into_inner();
        let impersonated = match req.metadata.as_ref().and_then(|m| m.string(IMPERSONATED_IDENTITY))
        {
            Some(s) => Some(Identity::parse(s).map_err(|e| {
                tracing::warn!(%caller, requested = s, "CA request refused: bad ImpersonatedIdentity");
                Status::invalid_argument(format!("{IMPERSONATED_IDENTITY}: {e}"))
            })?),
            None => None,
        };
        let lifetime = self.lifetime(req.validity_duration).ok_or_else(|| {
            Status::invalid_argument(format!(
                "validity_duration {}s exceeds the maximum of {}s",
                req.validity_duration,
                self.config.max_lifetime.as_secs()
            ))
        })?;

        let identity = {
            let state = self.state.borrow();
            authorize::authorize(
                &state,
                &caller,
                impersonated.as_ref(),
                &self.config.trusted_node_agents,
                &self.config.trust_domain,
            )
        }
        .map_err(|denied| {
            tracing::warn!(%caller, requested = ?impersonated.as_ref().map(ToString::to_string),
                reason = %denied, "CA request refused: not authorized");
            Status::permission_denied(denied.to_string())
        })?;

        let chain = self
            .ca
            .sign_csr(&req.csr, &identity, lifetime)
            .map_err(|e| {
                tracing::warn!(%caller, requested = %identity, reason = %e, "CA request refused: CSR");
                csr_status(e)
            })?;
        tracing::info!(%caller, identity = %identity, ?lifetime, "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }

    /// The lifetime to grant for `validity_duration`, or `None` when it is over the maximum.
    fn lifetime(&self, seconds: i64) -> Option<Duration> {
        if seconds <= 0 {
            return Some(self.config.default_lifetime);
        }
        let asked = Duration::from_secs(seconds.unsigned_abs());
        (asked <= self.config.max_lifetime).then_some(asked)
    }
}

/// A CSR asking for an identity other than the authorised one is a permission problem; anything
/// else wrong with it is a malformed request; the rest is ours.
fn csr_status(e: CaError) -> Status {
    match e {
        CaError::CsrIdentityMismatch { .. } => Status::permission_denied(e.to_string()),
        CaError::BadCsr(_)
        | CaError::CsrSignature
        | CaError::CsrKeyNotP256
        | CaError::CsrSans(_)
        | CaError::BadLifetime(_) => Status::invalid_argument(e.to_string()),
        _ => Status::internal(format!("signing failed: {e}")),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.handle(request).await
    }
}

#[cfg(test)]
mod tests;
