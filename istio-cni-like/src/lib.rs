//! Transparent capture for ambit: the CNI plugin and the node agent.
//!
//! - `ambit-cni` (the plugin, [`cni`]) is exec'd by the container runtime for every pod. It is
//!   small and synchronous: it parses the CNI request, asks the node agent over a unix socket
//!   ([`protocol`]), and returns only once the agent said the pod is captured (or not enrolled).
//!   Anything else is a CNI error: fail closed, never open.
//! - `cni-agent` (the node daemon, [`agent`]) decides enrollment, installs the in-pod redirect
//!   rules, hands each pod's netns to ztunnel over ZDS, and keeps checking capture health.

pub mod agent;
pub mod cni;
pub mod install;
pub mod protocol;
