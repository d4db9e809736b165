//! The workload lookups of a [`State`](super::State) (by uid, by name, by IP), held as
//! positions in the state's workload list rather than as owned copies of the keys.
//!
//! Why: the first version kept a `String` copy of every uid, of every `(namespace, name)` and a
//! `BTreeMap` per IP (one tree node allocation each), about 600 bytes per workload; ztunnel
//! holds the whole mesh, so this is paid 10,000 times at scale (docs/benchmarks.md). Here a
//! workload costs one hash-table slot per uid and per IP plus 4 bytes in the name order, and
//! lookups read the key back from the workload itself.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::Workload;

/// The lookups over a workload list fixed at construction; positions are `u32` (a mesh of
/// more than 4 billion workloads is not a case).
#[derive(Debug, Clone, Default)]
pub(super) struct WorkloadIndex {
    /// Keyed by the workload's own uid (see [`ByUid`]): no second copy of the key.
    by_uid: HashSet<ByUid>,
    /// Positions sorted by `(namespace, name, position)`: binary search finds the first
    /// workload of a name in config order.
    by_name: Box<[u32]>,
    /// IP → the workload a lookup without a network gets: the default network ("") first,
    /// then the lexically first network.
    by_ip: HashMap<IpAddr, u32>,
    /// Only for IPs used in more than one network (rare: overlapping multi-network meshes):
    /// every owner, sorted by network.
    shared_ips: HashMap<IpAddr, Box<[u32]>>,
}

impl WorkloadIndex {
    /// Indexes `workloads`, whose uids are unique and whose (network, IP) pairs are unique
    /// (checked by validation before this).
    pub(super) fn new(workloads: &[Arc<Workload>]) -> WorkloadIndex {
        let pos = |i: usize| u32::try_from(i).expect("fewer than 2^32 workloads");
        let by_uid = workloads.iter().map(|w| ByUid(w.clone())).collect();

        let mut by_name: Vec<u32> = (0..workloads.len()).map(pos).collect();
        by_name.sort_by(|&a, &b| {
            let (wa, wb) = (&workloads[a as usize], &workloads[b as usize]);
            (&wa.namespace, &wa.name, a).cmp(&(&wb.namespace, &wb.name, b))
        });

        let mut by_ip: HashMap<IpAddr, u32> = HashMap::new();
        let mut shared: HashMap<IpAddr, Vec<u32>> = HashMap::new();
        for (i, w) in workloads.iter().enumerate() {
            for ip in &w.workload_ips {
                let i = pos(i);
                match by_ip.get(ip) {
                    None => {
                        by_ip.insert(*ip, i);
                    }
                    // The same IP listed twice by one workload.
                    Some(&first) if first == i => {}
                    Some(&first) => {
                        let owners = shared.entry(*ip).or_insert_with(|| vec![first]);
                        if !owners.contains(&i) {
                            owners.push(i);
                        }
                    }
                }
            }
        }
        let shared_ips = shared
            .into_iter()
            .map(|(ip, mut owners)| {
                // Stable: for a (network, IP) given twice, the first in config order wins.
                owners.sort_by(|&a, &b| {
                    workloads[a as usize]
                        .network
                        .cmp(&workloads[b as usize].network)
                });
                by_ip.insert(ip, owners[0]);
                (ip, owners.into_boxed_slice())
            })
            .collect();
        by_ip.shrink_to_fit();
        WorkloadIndex {
            by_uid,
            by_name: by_name.into_boxed_slice(),
            by_ip,
            shared_ips,
        }
    }

    pub(super) fn by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.by_uid.get(uid).map(|k| &k.0)
    }

    /// The position of the first workload (in config order) with this namespace and name.
    pub(super) fn by_name(
        &self,
        workloads: &[Arc<Workload>],
        namespace: &str,
        name: &str,
    ) -> Option<usize> {
        let key = |&i: &u32| {
            let w = &workloads[i as usize];
            (w.namespace.as_str(), w.name.as_str())
        };
        let first = self.by_name.partition_point(|i| key(i) < (namespace, name));
        let i = *self.by_name.get(first)?;
        (key(&i) == (namespace, name)).then_some(i as usize)
    }

    /// The position of the workload with this IP, preferring the default network.
    pub(super) fn by_ip(&self, ip: IpAddr) -> Option<usize> {
        self.by_ip.get(&ip).map(|&i| i as usize)
    }

    /// The position of the workload with this IP in this network.
    pub(super) fn by_addr(
        &self,
        workloads: &[Arc<Workload>],
        network: &str,
        ip: IpAddr,
    ) -> Option<usize> {
        let in_network = |&i: &u32| workloads[i as usize].network == network;
        match self.shared_ips.get(&ip) {
            Some(owners) => owners.iter().find(|i| in_network(i)).map(|&i| i as usize),
            None => self
                .by_ip
                .get(&ip)
                .filter(|i| in_network(i))
                .map(|&i| i as usize),
        }
    }
}

/// A workload as a set member keyed by its uid, so `HashSet<ByUid>::get(&str)` finds it
/// without the set holding a copy of the uid. Hash and equality are the uid's, as `Borrow`
/// requires.
#[derive(Debug, Clone)]
struct ByUid(Arc<Workload>);

impl Hash for ByUid {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.uid.as_str().hash(state)
    }
}

impl PartialEq for ByUid {
    fn eq(&self, other: &Self) -> bool {
        self.0.uid == other.0.uid
    }
}

impl Eq for ByUid {}

impl Borrow<str> for ByUid {
    fn borrow(&self) -> &str {
        &self.0.uid
    }
}
