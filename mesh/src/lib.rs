//! ambit's shared core.
//!
//! Pure logic (identity parsing, policy evaluation, the HBONE CONNECT codec, the config model,
//! redirect-rule rendering) stays free of I/O so it can be unit-, property- and fuzz-tested.
//! The async pieces (HBONE client/server, certificate rotation) are thin wrappers around it.

pub mod authz;
pub mod ca;
pub mod caclient;
pub mod cert;
pub mod certmanager;
pub mod hbone;
pub mod identity;
pub mod model;
pub mod ops_http;
pub mod redirect;
pub mod tls;
pub mod xds;
pub mod zds;
