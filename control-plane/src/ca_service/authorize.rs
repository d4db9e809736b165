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

#[cfg(test)]
mod tests {
    use mesh::model::Workload;
    use proptest::prelude::*;

    use super::*;

    const TD: &str = "cluster.local";

    fn id(ns: &str, sa: &str) -> Identity {
        Identity::new(TD, ns, sa).unwrap()
    }

    fn pod(name: &str, ns: &str, sa: &str, node: &str) -> Workload {
        Workload {
            name: name.into(),
            namespace: ns.into(),
            service_account: sa.into(),
            node: node.into(),
            ..Workload::default()
        }
    }

    fn agent(node: &str) -> Caller {
        Caller {
            node: node.into(),
            identity: None,
        }
    }

    fn ztunnel(node: &str) -> Caller {
        Caller {
            node: node.into(),
            identity: Some(id("istio-system", "ztunnel")),
        }
    }

    #[test]
    fn decisions() {
        let state = State::new(
            vec![
                pod("web-1", "default", "web", "a"),
                pod("db-1", "default", "db", "b"),
                pod("floating", "default", "nowhere", ""),
            ],
            vec![],
            vec![],
            vec![],
        )
        .unwrap();
        let trusted = [id("istio-system", "ztunnel")];
        let decide = |caller: &Caller, asked: Option<&Identity>| {
            authorize(&state, caller, asked, &trusted, TD)
        };
        let web = id("default", "web");
        let db = id("default", "db");

        assert_eq!(decide(&agent("a"), Some(&web)), Ok(web.clone()));
        assert_eq!(decide(&ztunnel("a"), Some(&web)), Ok(web.clone()));
        assert_eq!(
            decide(&agent("a"), Some(&db)),
            Err(Denied::NotOnNode {
                node: "a".into(),
                requested: db.to_string()
            })
        );
        assert_eq!(decide(&agent("a"), None), Err(Denied::NothingRequested));
        // A workload without a node is nobody's to ask for, not everybody's.
        let nowhere = id("default", "nowhere");
        assert!(matches!(
            decide(&agent(""), Some(&nowhere)),
            Err(Denied::NoNode { .. })
        ));
        assert!(matches!(
            decide(&agent("a"), Some(&nowhere)),
            Err(Denied::NotOnNode { .. })
        ));
        // Own identity, with or without impersonating itself; nobody else's.
        let web_pod = Caller {
            node: "a".into(),
            identity: Some(web.clone()),
        };
        assert_eq!(decide(&web_pod, None), Ok(web.clone()));
        assert_eq!(decide(&web_pod, Some(&web)), Ok(web.clone()));
        assert!(matches!(
            decide(&web_pod, Some(&db)),
            Err(Denied::NotANodeAgent { .. })
        ));
        // Other trust domains are never signed, whoever asks.
        let foreign = Identity::new("other.domain", "default", "web").unwrap();
        assert!(matches!(
            decide(&agent("a"), Some(&foreign)),
            Err(Denied::ForeignTrustDomain { .. })
        ));
        let foreign_pod = Caller {
            node: "a".into(),
            identity: Some(foreign),
        };
        assert!(matches!(
            decide(&foreign_pod, None),
            Err(Denied::ForeignTrustDomain { .. })
        ));
    }

    proptest! {
        /// Whatever the placement, a node agent is granted an identity only if a workload on
        /// its node runs as it, and always granted it in that case.
        #[test]
        fn node_agents_get_exactly_their_nodes_identities(
            placement in proptest::collection::vec((0u8..4, 0u8..4), 0..12),
            caller_node in 0u8..4,
            asked_sa in 0u8..4,
        ) {
            let pods: Vec<Workload> = placement
                .iter()
                .enumerate()
                .map(|(i, (sa, node))| pod(&format!("p{i}"), "ns", &format!("sa{sa}"), &format!("n{node}")))
                .collect();
            let state = State::new(pods, vec![], vec![], vec![]).unwrap();
            let asked = id("ns", &format!("sa{asked_sa}"));
            let result = authorize(&state, &agent(&format!("n{caller_node}")), Some(&asked), &[], TD);
            let expected = placement.iter().any(|(sa, node)| *sa == asked_sa && *node == caller_node);
            prop_assert_eq!(result.is_ok(), expected);
        }
    }
}
