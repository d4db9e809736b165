//! The node agent (`cni-agent`): decides which pods are captured, installs their redirect rules,
//! hands their network namespaces to ztunnel over ZDS and keeps checking that capture holds.

pub mod enrollment;
pub mod exec;
pub mod iptables;
pub mod listeners;
pub mod rules;
pub mod source;
