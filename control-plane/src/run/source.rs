//! The local-folder config source: polls the folder's fingerprint and re-translates on change.
//!
//! Polling (not inotify) because it is what works everywhere the folder may live — bind mounts,
//! ConfigMap volumes (which swap a symlink), network file systems — and a stat of a few files
//! every 200 ms costs nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh::model::State;
use tokio::sync::watch;

use crate::folder::{fingerprint, translate_folder, Fingerprint, FolderError};
use crate::problems::ProblemSet;
use crate::translate::{TranslateConfig, Translation};

/// Default poll interval of the folder.
pub const DEFAULT_POLL: Duration = Duration::from_millis(200);

/// A running folder watch; dropping it stops the watch (the last state stays on the channel).
pub struct FolderSource {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FolderSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FolderSource {
    /// Translates `dir` once (an unreadable folder is an error: the operator named the wrong
    /// path), then keeps the returned channel current.
    pub fn start(
        dir: &Path,
        cfg: TranslateConfig,
        poll: Duration,
    ) -> Result<(FolderSource, watch::Receiver<Arc<State>>), FolderError> {
        Self::start_reporting(dir, cfg, poll, ProblemSet::default())
    }

    /// [`start`](Self::start), keeping `problems` current with every translation.
    pub fn start_reporting(
        dir: &Path,
        cfg: TranslateConfig,
        poll: Duration,
        problems: ProblemSet,
    ) -> Result<(FolderSource, watch::Receiver<Arc<State>>), FolderError> {
        let seen = fingerprint(dir)?;
        let first = translate_folder(dir, &cfg)?;
        let state = to_state(first, dir, &problems).unwrap_or_default();
        let (tx, rx) = watch::channel(Arc::new(state));
        let task = tokio::spawn(watch_folder(
            dir.to_path_buf(),
            cfg,
            poll,
            seen,
            tx,
            problems,
        ));
        Ok((FolderSource { task }, rx))
    }
}

async fn watch_folder(
    dir: PathBuf,
    cfg: TranslateConfig,
    poll: Duration,
    mut seen: Fingerprint,
    tx: watch::Sender<Arc<State>>,
    problems: ProblemSet,
) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported_error = false;
    loop {
        ticker.tick().await;
        let (d, c, prev) = (dir.clone(), cfg.clone(), seen.clone());
        // File reads and YAML parsing are blocking work; keep them off the server's threads.
        let result = tokio::task::spawn_blocking(move || {
            let now = fingerprint(&d)?;
            if now == prev {
                return Ok((now, None));
            }
            let translation = translate_folder(&d, &c)?;
            Ok::<_, FolderError>((now, Some(translation)))
        })
        .await;
        let (now, translation) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // A folder that vanished (an unmounted volume, a `mv` in progress) keeps the
                // last good config: emptying the mesh would cut every connection.
                if !reported_error {
                    tracing::error!(error = %e, "config folder unreadable; keeping the last config");
                    reported_error = true;
                }
                continue;
            }
            Err(join) => {
                tracing::error!(error = %join, "config translation task failed");
                return;
            }
        };
        reported_error = false;
        seen = now;
        let Some(translation) = translation else {
            continue;
        };
        if let Some(state) = to_state(translation, &dir, &problems) {
            if tx.send(Arc::new(state)).is_err() {
                return;
            }
        }
    }
}

/// Records the translation's problems (logging the new ones) and builds the state; `None`
/// (logged) when the whole model is inconsistent, in which case the previous state stays in
/// force.
fn to_state(translation: Translation, dir: &Path, problems: &ProblemSet) -> Option<State> {
    // Each problem names the object and field; the object itself was skipped and the rest of
    // the folder still applies.
    problems.update(
        &format!("folder {}", dir.display()),
        translation.problems.iter().cloned(),
    );
    let s = &translation.state_inputs;
    let (workloads, policies) = (s.workloads.len(), s.policies.len());
    match translation.into_state() {
        Ok(state) => {
            tracing::info!(folder = %dir.display(), workloads, policies, "config translated");
            Some(state)
        }
        Err(e) => {
            tracing::error!(folder = %dir.display(), error = %e,
                "translated config is inconsistent; keeping the previous config");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, uid: {name}}}\n\
             spec: {{nodeName: n1, serviceAccountName: sa}}\nstatus: {{podIP: {ip}}}\n"
        )
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels: {istio.io/dataplane-mode: ambient}\n";

    async fn next(rx: &mut watch::Receiver<Arc<State>>) -> Arc<State> {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("no new state")
            .expect("source stopped");
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn translates_at_start_and_on_change_skipping_bad_objects() {
        let dir = std::env::temp_dir().join(format!("ambit-cp-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ns.yaml"), NS).unwrap();
        std::fs::write(dir.join("a.yaml"), pod("a", "10.1.0.2")).unwrap();

        let (source, mut rx) =
            FolderSource::start(&dir, TranslateConfig::default(), Duration::from_millis(20))
                .unwrap();
        assert_eq!(rx.borrow_and_update().workloads().count(), 1);

        // A new pod file plus a broken one: the pod arrives, the broken file is skipped.
        std::fs::write(dir.join("b.yaml"), pod("b", "10.1.0.3")).unwrap();
        std::fs::write(dir.join("broken.yaml"), "kind: Pod\nmetadata: [").unwrap();
        let state = next(&mut rx).await;
        assert_eq!(state.workloads().count(), 2);

        // The folder disappearing keeps the last state rather than emptying the mesh.
        std::fs::remove_dir_all(&dir).unwrap();
        let gone = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        assert!(gone.is_err(), "state changed after the folder vanished");
        assert_eq!(rx.borrow().workloads().count(), 2);
        drop(source);
    }

    fn policy(name: &str, action: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: default}}\n\
             spec: {{action: {action}, rules: [{{from: [{{source: {{principals: [x]}}}}]}}]}}\n"
        )
    }

    #[tokio::test]
    async fn problems_list_the_bad_policy_while_the_good_one_applies() {
        let dir = std::env::temp_dir().join(format!("ambit-cp-problems-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ns.yaml"), NS).unwrap();
        std::fs::write(dir.join("good.yaml"), policy("good", "DENY")).unwrap();
        std::fs::write(dir.join("bad.yaml"), policy("bad", "PERMIT")).unwrap();

        let problems = ProblemSet::default();
        let (source, mut rx) = FolderSource::start_reporting(
            &dir,
            TranslateConfig::default(),
            Duration::from_millis(20),
            problems.clone(),
        )
        .unwrap();
        let names: Vec<String> = rx
            .borrow_and_update()
            .policies()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(names, ["good"]);
        let report = problems.report();
        assert_eq!(report.errors, 1, "{report:?}");
        assert_eq!(report.problems[0].name, "bad");
        assert_eq!(report.problems[0].field, "spec.action");

        // Fixing the file empties the set on the next translation.
        let mut changes = problems.subscribe();
        std::fs::write(dir.join("bad.yaml"), policy("bad", "ALLOW")).unwrap();
        let state = next(&mut rx).await;
        assert_eq!(state.policies().count(), 2);
        tokio::time::timeout(Duration::from_secs(10), changes.wait_for(|p| p.is_empty()))
            .await
            .expect("problem not resolved")
            .unwrap();
        drop(source);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_folder_is_an_error_at_start() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let err = FolderSource::start(
            Path::new("/nonexistent/ambit-config"),
            TranslateConfig::default(),
            DEFAULT_POLL,
        )
        .err()
        .expect("error");
        assert!(
            err.to_string().contains("/nonexistent/ambit-config"),
            "{err}"
        );
    }
}
