//! ambit's control plane.
//!
//! This crate's pure core turns the YAML users already write (Kubernetes core objects and
//! Istio's `security.istio.io` policies) into ambit's data-plane model ([`mesh::model`],
//! [`mesh::authz`]): [`objects`] reads documents, [`mod@translate`] converts them, [`folder`] reads
//! a directory of them. None of it does network I/O or needs an async runtime; the xDS server,
//! CA service ([`ca_service`]) and Kubernetes watches are layered on top.

pub mod admin;
pub mod ca_service;
pub mod folder;
pub mod objects;
pub mod problems;
pub mod run;
pub mod translate;
pub mod xds;

pub use objects::{parse_documents, Object, ObjectError, ObjectRef};
pub use translate::{translate, Problem, Severity, StateInputs, TranslateConfig, Translation};
