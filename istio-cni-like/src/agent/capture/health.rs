//! Capture health: periodically verifies, for every enrolled pod, that its rules are exactly as
//! configured and that ztunnel's listeners exist in its netns; repairs what it can.
//!
//! State changes per pod: a problem found → `repairing` (visible in the gauge while the repair
//! runs) → `captured` when the repair verified, else `failed` with the reason. Every problem is
//! logged at warn, every failure at error: silent capture loss is what this exists to prevent.

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::{zds_pod, Agent, Health};
use crate::agent::{listeners, rules};

impl Agent {
    /// One pass of the health check over every enrolled pod.
    pub async fn health_check(&self) {
        let _ops = self.ops.lock().await;
        let pods: Vec<String> = self.table(|t| {
            t.iter()
                .filter(|(_, r)| r.health.enrolled())
                .map(|(u, _)| u.clone())
                .collect()
        });
        for uid in pods {
            let verdict = self.check_one(&uid).await;
            let before = self.table(|t| t.get(&uid).map(|r| r.health));
            match verdict {
                Ok(()) => {
                    if before != Some(Health::Captured) {
                        info!(%uid, "capture verified");
                    }
                    self.set_health(&uid, Health::Captured, None);
                }
                Err(problem) => {
                    error!(%uid, %problem, "pod capture FAILED: traffic of this pod is not (fully) going through ztunnel");
                    self.set_health(&uid, Health::Failed, Some(problem));
                }
            }
        }
    }

    async fn check_one(&self, uid: &str) -> Result<(), String> {
        let Some((state, config)) =
            self.table(|t| t.get(uid).map(|r| (r.state.clone(), r.config.clone())))
        else {
            return Ok(());
        };
        let name = format!("{}/{}", state.namespace, state.name);
        if !state.netns.exists() {
            return Err(format!(
                "network namespace {} is gone but the pod was never deleted (DEL)",
                state.netns.display()
            ));
        }

        if let Some(cfg) = &config {
            let problems = rules::check(&self.ipt, &state.netns, cfg, &self.settings.families)
                .await
                .map_err(|e| format!("reading rules: {e}"))?;
            if !problems.is_empty() {
                warn!(pod = %name, %uid, problems = ?problems, "redirect rules drifted; repairing");
                self.set_health(uid, Health::Repairing, Some(problems.join("; ")));
                self.metrics.repaired("rules");
                rules::apply(&self.ipt, &state.netns, cfg, &self.settings.families)
                    .await
                    .map_err(|e| format!("repairing rules: {e}"))?;
                let left = rules::check(&self.ipt, &state.netns, cfg, &self.settings.families)
                    .await
                    .map_err(|e| format!("reading rules: {e}"))?;
                if !left.is_empty() {
                    return Err(format!(
                        "rules still wrong after repair: {}",
                        left.join("; ")
                    ));
                }
                info!(pod = %name, %uid, "redirect rules repaired");
            }
        }

        let ports = self.listener_ports();
        let missing = listeners::missing(&state.netns, &ports)
            .await
            .map_err(|e| format!("reading listeners: {e}"))?;
        if missing.is_empty() {
            return Ok(());
        }
        if !self.hub.is_connected() {
            return Err(format!(
                "ztunnel listeners missing on ports {missing:?} and ztunnel is not connected"
            ));
        }
        warn!(pod = %name, %uid, ?missing, "ztunnel listeners missing; re-sending the pod to ztunnel");
        self.set_health(
            uid,
            Health::Repairing,
            Some(format!("listeners missing on {missing:?}")),
        );
        self.metrics.repaired("listeners");
        let deadline = Instant::now() + self.settings.add_timeout;
        self.hub
            .add(&zds_pod(&state), deadline)
            .await
            .map_err(|e| format!("re-adding the pod to ztunnel: {e}"))?;
        let still = listeners::missing(&state.netns, &ports)
            .await
            .map_err(|e| format!("reading listeners: {e}"))?;
        if still.is_empty() {
            info!(pod = %name, %uid, "ztunnel listeners restored");
            Ok(())
        } else {
            Err(format!(
                "ztunnel acknowledged the pod but listeners are still missing on {still:?}"
            ))
        }
    }
}
