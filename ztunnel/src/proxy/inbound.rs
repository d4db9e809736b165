//! Inbound HBONE (15008): terminate mTLS, authenticate the peer's SPIFFE identity, check each
//! CONNECT stream (target, policy), and connect it to the application with the client's
//! original source address.
//!
//! Status codes (protocols.md): 400 for a target that is not this workload, 401 when policy
//! denies, 503 for an unknown local workload, one of ztunnel's own ports, or an app that
//! refuses the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh::authz::ConnInfo;
use mesh::hbone::server::{serve_connection, IncomingConnect};
use mesh::identity::Identity;
use mesh::model::{Service, State, Workload};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::authorize::{authorize, denial_reason};
use super::outbound::baggage_of;
use super::relay::relay;
use super::telemetry::{self, ConnTelemetry, Ends};
use super::{is_proxy_port, LocalWorkload, ProxyInputs};
use crate::metrics::Reporter;
use crate::socket;

/// A peer that cannot finish a TLS handshake in this long is holding a socket for nothing.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn handle(
    inputs: Arc<ProxyInputs>,
    local: Arc<LocalWorkload>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let server_cfg = match inputs.tls.server_config(&local.identity).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot serve HBONE without a certificate");
            return;
        }
    };
    let handshake = TlsAcceptor::from(server_cfg).accept(stream);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            debug!(error = %e, %peer, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let Some(peer_identity) = mesh::tls::peer_identity(tls.get_ref().1) else {
        // The verifier already insists on a SPIFFE SAN; this is belt and braces.
        warn!(%peer, "TLS peer without SPIFFE identity");
        return;
    };
    let peer_identity = Arc::new(peer_identity);
    let drain = inputs.shutdown.drain.clone();
    let handler = {
        let inputs = inputs.clone();
        let local = local.clone();
        move |incoming: IncomingConnect| {
            let inputs = inputs.clone();
            let local = local.clone();
            let peer_identity = peer_identity.clone();
            async move { serve_stream(inputs, local, peer, &peer_identity, incoming).await }
        }
    };
    if let Err(e) = serve_connection(tls, handler, async move { drain.cancelled().await }).await {
        debug!(error = %e, %peer, "HBONE connection ended");
    }
}

/// One CONNECT stream.
async fn serve_stream(
    inputs: Arc<ProxyInputs>,
    local: Arc<LocalWorkload>,
    peer: SocketAddr,
    peer_identity: &Identity,
    incoming: IncomingConnect,
) {
    let target = incoming.request.authority;
    let incoming_host = incoming
        .request
        .forwarded
        .as_ref()
        .and_then(|f| f.host.clone());
    let state = inputs.state.current();
    let src = state.workload_by_ip(peer.ip()).cloned();
    let dst = state
        .workload_by_name(&local.info.namespace, &local.info.name)
        .cloned();
    let mut ends = Ends {
        src: src.as_deref(),
        src_identity: Some(peer_identity),
        dst: dst.as_deref(),
        dst_identity: Some(&local.identity),
        mtls: true,
        ..Default::default()
    };
    let refuse = |ends: &Ends<'_>, status: StatusCode, flag: &str, why: String| {
        telemetry::refused(
            &inputs.metrics,
            Reporter::Destination,
            ends,
            peer,
            target,
            flag,
            why,
        );
        status
    };
    let Some(dst) = dst.as_deref() else {
        let status = refuse(
            &ends,
            StatusCode::SERVICE_UNAVAILABLE,
            "NR",
            format!(
                "unknown local workload {}/{}",
                local.info.namespace, local.info.name
            ),
        );
        incoming.reject(status);
        return;
    };
    if !dst.workload_ips.contains(&target.ip()) {
        let status = refuse(
            &ends,
            StatusCode::BAD_REQUEST,
            "NR",
            format!("target {target} is not this workload"),
        );
        incoming.reject(status);
        return;
    }
    if is_proxy_port(target.port()) {
        let status = refuse(
            &ends,
            StatusCode::SERVICE_UNAVAILABLE,
            "NR",
            format!("target port {} is ztunnel's own", target.port()),
        );
        incoming.reject(status);
        return;
    }
    let conn = ConnInfo {
        src_identity: Some(peer_identity.clone()),
        src_ip: peer.ip(),
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    if let Err(denied) = authorize(&inputs.cfg, &state, dst, &conn) {
        inputs.metrics.record_denied(denial_reason(&denied));
        let status = refuse(&ends, StatusCode::UNAUTHORIZED, "DENY", denied.to_string());
        incoming.reject(status);
        return;
    }
    let orig_src = inputs.cfg.args.enable_orig_src.then_some(peer.ip());
    let upstream = match socket::connect(&local.netns, target, orig_src, inputs.socket_opts).await {
        Ok(s) => s,
        Err(e) => {
            let status = refuse(
                &ends,
                StatusCode::SERVICE_UNAVAILABLE,
                "UF",
                format!("connect to app {target}: {e}"),
            );
            incoming.reject(status);
            return;
        }
    };
    let downstream = match incoming.accept(baggage_of(Some(dst))) {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "client went away before the CONNECT response");
            return;
        }
    };
    ends.dst = Some(dst);
    let service = claimed_service(&state, dst, &incoming_host);
    ends.service = service.as_deref();
    let guard = inputs.conns.track(dst, conn);
    let t = ConnTelemetry::open(&inputs.metrics, Reporter::Destination, &ends, peer, target);
    let result = tokio::select! {
        r = relay(downstream, upstream, &t.metrics) => r.err().map(|e| e.to_string()),
        _ = guard.closed() => Some("closed: denied by updated policy".to_string()),
    };
    t.finish(result);
}

/// The service the client says it addressed (`forwarded: host=`), believed only if the
/// destination workload really is one of its endpoints: a client cannot inflate metric
/// cardinality or claim an arbitrary service.
fn claimed_service(state: &State, dst: &Workload, host: &Option<String>) -> Option<Arc<Service>> {
    let host = host.as_deref()?;
    dst.services
        .keys()
        .find(|key| key.split_once('/').map(|(_, h)| h) == Some(host))
        .and_then(|key| state.service_by_key(key))
        .cloned()
}
