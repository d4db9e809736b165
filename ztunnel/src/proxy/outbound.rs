//! Outbound (15001): where a workload's connection goes, and carrying it there.
//!
//! The route is decided from the original destination alone: a service VIP picks a healthy
//! endpoint round robin; a workload IP is that workload; anything else is outside the mesh and
//! passes through in plain TCP. HBONE is used only when the chosen workload speaks it.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh::hbone::codec::{Baggage, ConnectRequest, Forwarded, TraceParent};
use mesh::hbone::pool::PoolKey;
use mesh::identity::Identity;
use mesh::model::{Protocol, Service, State, Workload};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::relay::relay;
use super::telemetry::{self, ConnTelemetry, Ends};
use super::{LocalWorkload, ProxyInputs, HBONE_PORT};
use crate::metrics::Reporter;
use crate::socket;

/// Where an outbound connection goes.
#[derive(Debug)]
pub enum Route {
    /// Over HBONE to `workload`'s ztunnel, asking it for `target` (pod IP + target port).
    Hbone {
        workload: Arc<Workload>,
        target: SocketAddr,
        service: Option<Arc<Service>>,
    },
    /// Plain TCP to `target`: outside the mesh, or a mesh workload that does not speak HBONE.
    Passthrough {
        target: SocketAddr,
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    /// A service VIP with no healthy endpoint.
    NoHealthyEndpoint { service: Arc<Service> },
}

/// Decides the route for `orig_dst`; `pick(n)` chooses among `n` endpoints.
pub fn route(state: &State, orig_dst: SocketAddr, pick: impl FnOnce(usize) -> usize) -> Route {
    if let Some(service) = state.service_by_vip(orig_dst.ip()) {
        let endpoints = state.endpoints(service, orig_dst.port());
        if endpoints.is_empty() {
            return Route::NoHealthyEndpoint {
                service: service.clone(),
            };
        }
        let chosen = &endpoints[pick(endpoints.len()) % endpoints.len()];
        let Some(ip) = chosen.workload.workload_ips.first().copied() else {
            return Route::NoHealthyEndpoint {
                service: service.clone(),
            };
        };
        let target = SocketAddr::new(ip, chosen.target_port);
        return to_workload(chosen.workload.clone(), target, Some(service.clone()));
    }
    match state.workload_by_ip(orig_dst.ip()) {
        Some(workload) => to_workload(workload.clone(), orig_dst, None),
        None => Route::Passthrough {
            target: orig_dst,
            workload: None,
            service: None,
        },
    }
}

fn to_workload(
    workload: Arc<Workload>,
    target: SocketAddr,
    service: Option<Arc<Service>>,
) -> Route {
    match workload.protocol {
        Protocol::Hbone => Route::Hbone {
            workload,
            target,
            service,
        },
        Protocol::Tcp => Route::Passthrough {
            target,
            workload: Some(workload),
            service,
        },
    }
}

/// Identities the destination may prove: its own, plus the service's extra SANs.
fn expected_identities(workload: &Workload, service: Option<&Service>) -> Vec<Identity> {
    let mut ids = vec![workload.identity()];
    if let Some(svc) = service {
        ids.extend(
            svc.subject_alt_names
                .iter()
                .filter_map(|s| Identity::parse(s).ok()),
        );
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Baggage describing the source workload to the destination.
pub fn baggage_of(w: Option<&Workload>) -> Option<Baggage> {
    let w = w?;
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Some(Baggage {
        cluster_id: non_empty(&w.cluster_id),
        namespace: non_empty(&w.namespace),
        workload_type: non_empty(if w.workload_type.is_empty() {
            "pod"
        } else {
            &w.workload_type
        }),
        workload_name: non_empty(if w.workload_name.is_empty() {
            &w.name
        } else {
            &w.workload_name
        }),
        service_name: non_empty(&w.canonical_name),
        service_version: non_empty(&w.canonical_revision),
    })
}

pub async fn handle(
    inputs: Arc<ProxyInputs>,
    local: Arc<LocalWorkload>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let orig_dst = match socket::original_dst(&stream) {
        Ok(a) => a,
        Err(e) => {
            debug!(error = %e, "no original destination");
            return;
        }
    };
    let state = inputs.state.current();
    let src = state
        .workload_by_name(&local.info.namespace, &local.info.name)
        .cloned();
    let route = route(&state, orig_dst, |n| {
        let svc = state
            .service_by_vip(orig_dst.ip())
            .map(|s| s.hostname.clone())
            .unwrap_or_default();
        inputs.next_endpoint(&svc, orig_dst.port(), n)
    });
    debug!(?route, %orig_dst, "outbound");
    let mut ends = Ends {
        src: src.as_deref(),
        src_identity: Some(&local.identity),
        ..Default::default()
    };
    match route {
        Route::NoHealthyEndpoint { service } => {
            ends.service = Some(&service);
            telemetry::refused(
                &inputs.metrics,
                Reporter::Source,
                &ends,
                peer,
                orig_dst,
                "UH",
                "no healthy upstream".into(),
            );
        }
        Route::Passthrough {
            target,
            workload,
            service,
        } => {
            ends.dst = workload.as_deref();
            ends.service = service.as_deref();
            let t = ConnTelemetry::open(&inputs.metrics, Reporter::Source, &ends, peer, target);
            let result = async {
                let upstream =
                    socket::connect(&local.netns, target, None, inputs.socket_opts).await?;
                relay(stream, upstream, &t.metrics).await
            }
            .await;
            t.finish(result.err().map(|e| e.to_string()));
        }
        Route::Hbone {
            workload,
            target,
            service,
        } => {
            let expected = expected_identities(&workload, service.as_deref());
            let dst_identity = workload.identity();
            ends.dst = Some(&workload);
            ends.dst_identity = Some(&dst_identity);
            ends.service = service.as_deref();
            ends.mtls = true;
            let t = ConnTelemetry::open(&inputs.metrics, Reporter::Source, &ends, peer, target);
            let result = tunnel(
                &inputs,
                &local,
                src.as_deref(),
                stream,
                peer,
                target,
                service.as_deref(),
                expected,
                &t,
            )
            .await;
            t.finish(result.err());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn tunnel(
    inputs: &ProxyInputs,
    local: &LocalWorkload,
    src: Option<&Workload>,
    stream: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    service: Option<&Service>,
    expected: Vec<Identity>,
    t: &ConnTelemetry,
) -> Result<(), String> {
    let client_cfg = inputs
        .tls
        .client_config(&local.identity, &expected)
        .await
        .map_err(|e| e.to_string())?;
    let hbone_addr = SocketAddr::new(target.ip(), HBONE_PORT);
    let key = PoolKey {
        src_identity: local.identity.clone(),
        dst_identities: expected,
        dst: hbone_addr,
        src_ip: peer.ip(),
    };
    let request = ConnectRequest {
        authority: target,
        baggage: baggage_of(src),
        forwarded: Some(Forwarded {
            for_addr: Some(peer),
            host: service.map(|s| s.hostname.clone()),
        }),
        traceparent: Some(TraceParent::random()),
    };
    let netns = local.netns.clone();
    let opts = inputs.socket_opts;
    let dial = move || async move {
        let tcp = socket::connect(&netns, hbone_addr, None, opts).await?;
        // The server is authenticated by its SPIFFE SAN, not a host name: the name is unused.
        TlsConnector::from(client_cfg)
            .connect(ServerName::IpAddress(hbone_addr.ip().into()), tcp)
            .await
    };
    let (upstream, _response) = inputs
        .pool
        .connect(key, request, dial)
        .await
        .map_err(|e| format!("HBONE to {hbone_addr}: {e}"))?;
    relay(stream, upstream, &t.metrics)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "outbound_tests.rs"]
mod tests;
