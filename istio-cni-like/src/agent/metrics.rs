//! The agent's Prometheus metrics.
//!
//! - `ambit_cni_pods{state="captured|repairing|failed|pending"}`: enrolled pods per capture state.
//! - `ambit_cni_repairs_total{kind="rules|listeners"}`: repairs the health check made.
//! - `ambit_cni_events_total{command,outcome}`: plugin requests answered.
//! - `ambit_cni_ztunnel_connected`: 1 while a ztunnel is connected over ZDS.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Capture states exported by `ambit_cni_pods`.
pub const STATES: [&str; 4] = ["captured", "repairing", "failed", "pending"];

pub struct Metrics {
    registry: Registry,
    pods: Family<Labels, Gauge>,
    repairs: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    ztunnel_connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let pods = Family::<Labels, Gauge>::default();
        registry.register(
            "ambit_cni_pods",
            "Enrolled pods by capture state",
            pods.clone(),
        );
        let repairs = Family::<Labels, Counter>::default();
        registry.register(
            "ambit_cni_repairs",
            "Capture repairs made by the health check, by what was repaired",
            repairs.clone(),
        );
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "ambit_cni_events",
            "CNI plugin requests answered, by command and outcome",
            events.clone(),
        );
        let ztunnel_connected = Gauge::default();
        registry.register(
            "ambit_cni_ztunnel_connected",
            "1 while ztunnel is connected to the ZDS socket",
            ztunnel_connected.clone(),
        );
        // Every state present from the start, so dashboards see 0 rather than nothing.
        for state in STATES {
            pods.get_or_create(&vec![("state", state)]).set(0);
        }
        Metrics {
            registry,
            pods,
            repairs,
            events,
            ztunnel_connected,
        }
    }
}

impl Metrics {
    /// Sets the per-state gauge to the given counts.
    pub fn set_pods(&self, counts: [i64; 4]) {
        for (state, n) in STATES.iter().zip(counts) {
            self.pods.get_or_create(&vec![("state", *state)]).set(n);
        }
    }

    pub fn repaired(&self, kind: &'static str) {
        self.repairs.get_or_create(&vec![("kind", kind)]).inc();
    }

    pub fn event(&self, command: &'static str, outcome: &'static str) {
        self.events
            .get_or_create(&vec![("command", command), ("outcome", outcome)])
            .inc();
    }

    pub fn set_ztunnel_connected(&self, connected: bool) {
        self.ztunnel_connected.set(i64::from(connected));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_states_and_counters() {
        let m = Metrics::default();
        m.set_pods([2, 0, 1, 0]);
        m.repaired("rules");
        m.event("ADD", "captured");
        let text = m.encode();
        assert!(
            text.contains("ambit_cni_pods{state=\"captured\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ambit_cni_pods{state=\"repairing\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("ambit_cni_pods{state=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ambit_cni_repairs_total{kind=\"rules\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ambit_cni_events_total{command=\"ADD\",outcome=\"captured\"} 1"),
            "{text}"
        );
    }
}
