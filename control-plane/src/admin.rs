//! The control plane's admin/debug endpoint (`--admin-addr`, default `127.0.0.1:15014`, the
//! port istiod uses for monitoring and debug): `GET /debug/problems` answers the current
//! [`Report`](crate::problems::Report) as JSON, which `ambit config problems` lists.
//!
//! It is served on loopback by default because debug output names every object in the mesh;
//! [`warn_if_exposed`] logs loudly when an operator binds it elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh::ops_http;
use tokio::net::TcpListener;

use crate::problems::ProblemSet;

/// The default admin address: loopback only.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15014";

/// Path of the problem listing.
pub const PROBLEMS_PATH: &str = "/debug/problems";

/// Logs a warning when `addr` is not a loopback address: the listing is then readable by
/// anyone who can reach the pod.
pub fn warn_if_exposed(addr: SocketAddr) {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the admin endpoint is bound beyond loopback; \
            its debug output names every object in the mesh");
    }
}

/// Answers admin requests on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, problems: ProblemSet) {
    ops_http::serve(
        listener,
        Arc::new(move |path| match path {
            PROBLEMS_PATH => match serde_json::to_string_pretty(&problems.report()) {
                Ok(json) => ops_http::respond(StatusCode::OK, "application/json", json + "\n"),
                Err(e) => ops_http::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding the report: {e}\n"),
                ),
            },
            _ => ops_http::text(StatusCode::NOT_FOUND, "not found\n"),
        }),
    )
    .await
}

#[cfg(test)]
mod tests;
