//! Inbound plaintext (15006): connections that reached the workload without HBONE. They carry
//! no authenticated principal, so STRICT mTLS refuses them; otherwise they are authorized like
//! any other connection (with no principal) and passed to the app with their source address.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh::authz::ConnInfo;
use tokio::net::TcpStream;
use tracing::debug;

use super::authorize::{authorize, denial_reason};
use super::relay::relay;
use super::telemetry::{self, ConnTelemetry, Ends};
use super::{is_proxy_port, LocalWorkload, ProxyInputs};
use crate::metrics::Reporter;
use crate::socket;

pub async fn handle(
    inputs: Arc<ProxyInputs>,
    local: Arc<LocalWorkload>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let target = match socket::original_dst(&stream) {
        Ok(a) => a,
        Err(e) => {
            debug!(error = %e, "no original destination");
            return;
        }
    };
    let state = inputs.state.current();
    let src = state.workload_by_ip(peer.ip()).cloned();
    let dst = state
        .workload_by_name(&local.info.namespace, &local.info.name)
        .cloned();
    let ends = Ends {
        src: src.as_deref(),
        dst: dst.as_deref(),
        dst_identity: Some(&local.identity),
        ..Default::default()
    };
    let Some(dst) = dst.as_deref() else {
        telemetry::refused(
            &inputs.metrics,
            Reporter::Destination,
            &ends,
            peer,
            target,
            "NR",
            "unknown local workload".into(),
        );
        return;
    };
    if is_proxy_port(target.port()) {
        // Only reachable by a rule mistake; never loop into ourselves.
        telemetry::refused(
            &inputs.metrics,
            Reporter::Destination,
            &ends,
            peer,
            target,
            "NR",
            "target is a ztunnel port".into(),
        );
        return;
    }
    let conn = ConnInfo {
        src_identity: None,
        src_ip: peer.ip(),
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    if let Err(denied) = authorize(&inputs.cfg, &state, dst, &conn) {
        inputs.metrics.record_denied(denial_reason(&denied));
        telemetry::refused(
            &inputs.metrics,
            Reporter::Destination,
            &ends,
            peer,
            target,
            "DENY",
            denied.to_string(),
        );
        return;
    }
    let orig_src = inputs.cfg.args.enable_orig_src.then_some(peer.ip());
    let t = ConnTelemetry::open(&inputs.metrics, Reporter::Destination, &ends, peer, target);
    let guard = inputs.conns.track(dst, conn);
    let result = async {
        let upstream = socket::connect(&local.netns, target, orig_src, inputs.socket_opts).await?;
        tokio::select! {
            r = relay(stream, upstream, &t.metrics) => r.map(|_| ()),
            _ = guard.closed() => Err(std::io::Error::other("closed: denied by updated policy")),
        }
    }
    .await;
    t.finish(result.err().map(|e| e.to_string()));
}
