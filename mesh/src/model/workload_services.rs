//! [`WorkloadServices`]: the services a workload backs, `namespace/hostname` → (service port →
//! target port), as a sorted list instead of a `BTreeMap`.
//!
//! Why: nearly every workload backs one or two services, and a `BTreeMap` allocates a whole
//! leaf node for its first entry (room for 11 `String` keys and 11 values: about 550 bytes).
//! ztunnel holds every workload of the mesh, so at 10,000 workloads that node was a quarter of
//! the model's heap (docs/benchmarks.md). A sorted `Vec` sized to its contents costs one
//! 48-byte slot per service. Lookups are a binary search over one or two entries.
//!
//! Serde and map-like reading are as before: serialised as a map in key order, deserialised
//! from one (so field paths in errors are unchanged).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Service port → target port, for one service a workload backs.
pub type ServicePorts = BTreeMap<u16, u16>;

/// The services a workload backs, keyed by `namespace/hostname`; keys are unique and kept
/// sorted, so iteration is in key order as with a map.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkloadServices(Vec<(String, ServicePorts)>);

impl WorkloadServices {
    pub fn new() -> WorkloadServices {
        WorkloadServices::default()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The port map for service `key`.
    pub fn get(&self, key: &str) -> Option<&ServicePorts> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets the port map for `key`, returning the one it replaces.
    pub fn insert(&mut self, key: String, ports: ServicePorts) -> Option<ServicePorts> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, ports)),
            Err(i) => {
                self.0.insert(i, (key, ports));
                None
            }
        }
    }

    /// The port map for `key`, inserted empty if absent (a map's `entry(key).or_default()`).
    pub fn ports_mut(&mut self, key: &str) -> &mut ServicePorts {
        let i = match self.find(key) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (key.to_string(), ServicePorts::new()));
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn remove(&mut self, key: &str) -> Option<ServicePorts> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> + '_ {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn iter(&self) -> Iter<'_> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear()
    }

    /// Drops spare capacity: a frozen workload (in a `State`) keeps exactly its entries.
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit()
    }
}

/// Iterator over `(key, ports)` in key order.
pub type Iter<'a> = std::iter::Map<
    std::slice::Iter<'a, (String, ServicePorts)>,
    fn(&'a (String, ServicePorts)) -> (&'a String, &'a ServicePorts),
>;

impl<'a> IntoIterator for &'a WorkloadServices {
    type Item = (&'a String, &'a ServicePorts);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl FromIterator<(String, ServicePorts)> for WorkloadServices {
    /// A key given twice keeps its last port map, as collecting into a map does.
    fn from_iter<I: IntoIterator<Item = (String, ServicePorts)>>(iter: I) -> Self {
        let map: BTreeMap<String, ServicePorts> = iter.into_iter().collect();
        WorkloadServices::from(map)
    }
}

impl From<BTreeMap<String, ServicePorts>> for WorkloadServices {
    fn from(map: BTreeMap<String, ServicePorts>) -> Self {
        // A BTreeMap iterates sorted and unique: the invariant holds as is.
        WorkloadServices(map.into_iter().collect())
    }
}

impl std::ops::Index<&str> for WorkloadServices {
    type Output = ServicePorts;
    /// Panics when the workload does not back `key`, as a map's index does.
    fn index(&self, key: &str) -> &ServicePorts {
        self.get(key)
            .unwrap_or_else(|| panic!("workload does not back service {key:?}"))
    }
}

impl Serialize for WorkloadServices {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for WorkloadServices {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, ServicePorts>::deserialize(deserializer).map(WorkloadServices::from)
    }
}

impl WorkloadServices {
    /// For tests of the frozen state's footprint.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(p: &[(u16, u16)]) -> ServicePorts {
        p.iter().copied().collect()
    }

    #[test]
    fn reads_like_a_map_in_key_order() {
        let mut s = WorkloadServices::new();
        assert!(s.insert("ns/b".into(), ports(&[(80, 8080)])).is_none());
        assert!(s.insert("ns/a".into(), ports(&[(81, 0)])).is_none());
        assert!(s.insert("ns/c".into(), ports(&[])).is_none());
        let old = s.insert("ns/b".into(), ports(&[(80, 9090)]));
        assert_eq!(old, Some(ports(&[(80, 8080)])));
        assert_eq!(s.keys().collect::<Vec<_>>(), ["ns/a", "ns/b", "ns/c"]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.get("ns/b"), Some(&ports(&[(80, 9090)])));
        assert_eq!(s["ns/a"], ports(&[(81, 0)]));
        assert!(s.get("ns/d").is_none() && !s.contains_key("ns/"));
        assert_eq!(s.remove("ns/c"), Some(ports(&[])));
        assert_eq!((&s).into_iter().count(), 2);

        s.ports_mut("ns/0").insert(1, 2);
        s.ports_mut("ns/0").insert(3, 4);
        assert_eq!(s.keys().next().map(String::as_str), Some("ns/0"));
        assert_eq!(s["ns/0"], ports(&[(1, 2), (3, 4)]));
    }

    #[test]
    fn collecting_keeps_the_last_of_a_repeated_key_sorted() {
        let s: WorkloadServices = [
            ("ns/z".to_string(), ports(&[(1, 1)])),
            ("ns/a".to_string(), ports(&[(2, 2)])),
            ("ns/z".to_string(), ports(&[(3, 3)])),
        ]
        .into_iter()
        .collect();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["ns/a", "ns/z"]);
        assert_eq!(s["ns/z"], ports(&[(3, 3)]));
    }

    #[test]
    fn serde_shape_is_the_map_it_replaced() {
        let map: BTreeMap<String, ServicePorts> = [
            ("ns/web".to_string(), ports(&[(80, 8080), (443, 0)])),
            ("ns/api".to_string(), ports(&[(9090, 9090)])),
        ]
        .into_iter()
        .collect();
        let s = WorkloadServices::from(map.clone());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        let back: WorkloadServices = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
