//! ztunnel's memory holding the generated mesh: the translated state written as a local config
//! file (Istio's `LocalConfig` YAML, `LOCAL_XDS_PATH`), loaded by the release ztunnel in
//! shared mode in a node netns of the test bed, with no pods handed over (so no per-pod
//! proxies: what is measured is the state itself).

use std::path::{Path, PathBuf};
use std::time::Duration;

use control_plane::StateInputs;
use mesh::authz::{Authorization, PeerAuthentication};
use mesh::model::{Service, Workload};
use serde::Serialize;
use testbed::fixture::Fixture;

use crate::procfs;

/// The local config file's top level (what `mesh::model::local_config::parse` reads).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LocalConfigOut<'a> {
    workloads: &'a [Workload],
    services: &'a [Service],
    policies: &'a [Authorization],
    peer_authentications: &'a [PeerAuthentication],
}

/// One ztunnel load: a label, and the file it reads.
pub struct Case {
    pub label: String,
    pub workloads: usize,
    pub path: PathBuf,
    /// Live heap bytes of the `State` ztunnel builds from this file (parsed and built here,
    /// with the same functions ztunnel calls).
    pub state_heap: usize,
}

/// Writes `inputs` with only the first `workloads` workloads (and services/policies only if
/// `with_rest`) to `dir/<label>.yaml`, checking ztunnel's parser accepts it and sees them all.
pub fn write_case(
    dir: &Path,
    label: &str,
    inputs: &StateInputs,
    workloads: usize,
    with_rest: bool,
) -> Case {
    let n = workloads.min(inputs.workloads.len());
    let empty: (&[Service], &[Authorization], &[PeerAuthentication]) = (&[], &[], &[]);
    let (services, policies, peer) = if with_rest {
        (
            &inputs.services[..],
            &inputs.policies[..],
            &inputs.peer_authentications[..],
        )
    } else {
        empty
    };
    // Workloads name the policies that select them; without the policies the file would not
    // validate, so the bare case drops those references.
    let mut ws: Vec<Workload> = inputs.workloads[..n].to_vec();
    if !with_rest {
        for w in &mut ws {
            w.authorization_policies.clear();
            w.services.clear();
        }
    }
    let yaml = serde_yaml::to_string(&LocalConfigOut {
        workloads: &ws,
        services,
        policies,
        peer_authentications: peer,
    })
    .expect("serialize local config");
    let before = crate::heap::live_bytes();
    let state = mesh::model::local_config::parse(&yaml)
        .and_then(|c| c.into_state())
        .unwrap_or_else(|e| panic!("ztunnel would refuse the {label} config: {e}"));
    let state_heap = crate::heap::live_bytes().saturating_sub(before);
    assert_eq!(
        state.workloads().count(),
        n,
        "{label}: workloads round-trip"
    );
    assert_eq!(
        state.services().count(),
        services.len(),
        "{label}: services"
    );
    assert_eq!(
        state.policies().count(),
        policies.len(),
        "{label}: policies"
    );
    drop(state);
    let path = dir.join(format!("{label}.yaml"));
    std::fs::write(&path, yaml).expect("write local config");
    Case {
        label: label.to_string(),
        workloads: n,
        path,
        state_heap,
    }
}

/// RSS figures of one ztunnel, in KiB.
pub struct Reading {
    pub label: String,
    pub workloads: usize,
    pub file_bytes: u64,
    pub rss_ready_kib: u64,
    pub rss_settled_kib: u64,
    pub anon_settled_kib: u64,
    pub hwm_kib: u64,
}

/// Starts one ztunnel per case, all at once (one node netns each, so their ports do not
/// collide), waits until each is ready (ready means its config is loaded), reads RSS, then
/// reads it again after `settle`: jemalloc returns the pages freed after parsing the file on
/// its decay timer, and the settled figure is the one that says what the state costs.
pub fn measure(fx: &mut Fixture, cases: &[Case], settle: Duration) -> Vec<Reading> {
    let malloc_conf = std::env::var("BENCH_ZTUNNEL_MALLOC_CONF").ok();
    let mut running = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let node = fx.add_node(&format!("z{i}"));
        let mut env = vec![
            ("RUST_LOG", "warn"),
            ("LOCAL_XDS_PATH", case.path.to_str().expect("utf-8 path")),
        ];
        // For allocator experiments: jemalloc (ztunnel's default) reads its options from
        // `_RJEM_MALLOC_CONF` (tikv-jemallocator prefixes its symbols).
        if let Some(conf) = malloc_conf.as_deref() {
            env.push(("_RJEM_MALLOC_CONF", conf));
        }
        running.push(fx.start_ztunnel(&node, &env));
    }
    let mut ready = Vec::new();
    for z in &running {
        z.serve(&[]);
        assert_ne!(
            procfs::comm(z.pid()),
            "ip",
            "pid {} is the ip wrapper",
            z.pid()
        );
        ready.push(procfs::status_kib(z.pid(), "VmRSS"));
    }
    std::thread::sleep(settle);
    let out = cases
        .iter()
        .zip(&running)
        .zip(ready)
        .map(|((case, z), rss_ready_kib)| Reading {
            label: case.label.clone(),
            workloads: case.workloads,
            file_bytes: std::fs::metadata(&case.path).map_or(0, |m| m.len()),
            rss_ready_kib,
            rss_settled_kib: procfs::status_kib(z.pid(), "VmRSS"),
            anon_settled_kib: procfs::status_kib(z.pid(), "RssAnon"),
            hwm_kib: procfs::status_kib(z.pid(), "VmHWM"),
        })
        .collect();
    drop(running);
    out
}
