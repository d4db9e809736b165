//! Which identity a caller may get a certificate for. Pure: the caller, the identity asked for
//! and the control plane's current view of the mesh in, a decision out.
//!
//! Rules (Istio's node authorization, ambient flavour):
//! - asking for your own identity (no impersonation, or impersonating yourself) is allowed;
//! - asking for another identity is allowed only to a node agent (a bootstrap-token holder, or
//!   a service account listed as a trusted node agent), and only for an identity some workload
//!   scheduled on that agent's node runs as;
//! - the identity must be in the CA's trust domain.

use mesh::identity::Identity;
use mesh::model::State;

use super::auth::Caller;

/// Why a request was refused. Each names what was asked and by whom, for the log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the caller has no identity of its own and asked for none (ImpersonatedIdentity)")]
    NothingRequested,
    #[error("{requested} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        requested: String,
        trust_domain: String,
    },
    #[error("{caller} is not a trusted node agent and may only ask for its own identity, not {requested}")]
    NotANodeAgent { caller: String, requested: String },
    #[error("the credential of {caller} names no node, so it cannot ask for {requested}")]
    NoNode { caller: String, requested: String },
    #[error("no workload on node {node:?} runs as {requested}")]
    NotOnNode { node: String, requested: String },
}

/// The identity to certify, or why not.
pub fn authorize(
    state: &State,
    caller: &Caller,
    impersonated: Option<&Identity>,
    trusted_node_agents: &[Identity],
    trust_domain: &str,
) -> Result<Identity, Denied> {
    let requested = match (impersonated, &caller.identity) {
        (Some(asked), _) => asked.clone(),
        (None, Some(own)) => own.clone(),
        (None, None) => return Err(Denied::NothingRequested),
    };
    if requested.trust_domain() != trust_domain {
        return Err(Denied::ForeignTrustDomain {
            requested: requested.to_string(),
            trust_domain: trust_domain.to_string(),
        });
    }
    if caller.identity.as_ref() == Some(&requested) {
        return Ok(requested);
    }
    let is_node_agent = match &caller.identity {
        None => true,
        Some(own) => trusted_node_agents.contains(own),
    };
    if !is_node_agent {
        return Err(Denied::NotANodeAgent {
            caller: caller.to_string(),
            requested: requested.to_string(),
        });
    }
    if caller.node.is_empty() {
        return Err(Denied::NoNode {
            caller: caller.to_string(),
            requested: requested.to_string(),
        });
    }
    let on_node = state
        .workloads()
        .any(|w| w.node == caller.node && w.identity() == requested);
    if on_node {
        Ok(requested)
    } else {
        Err(Denied::NotOnNode {
            node: caller.node.clone(),
            requested: requested.to_string(),
        })
    }
}
