//! One resilient watch: kube-runtime's `watcher` with back-off on errors and a relist when the
//! API server says the resourceVersion it resumes from is gone.

use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::utils::{Backoff as _, StreamBackoff};
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::ExponentialBackoff;

/// Retry and watch-length tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSettings {
    /// First retry delay after an error; it doubles on each further error up to `backoff_max`
    /// and resets once the watch delivers events again.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// `timeoutSeconds` of each watch request: the server ends the watch after it and the
    /// watcher re-issues it from the last resourceVersion.
    pub watch_timeout_secs: u32,
}

impl Default for WatchSettings {
    /// client-go's reflector defaults: back-off 800 ms doubling to 30 s, watches of 290 s.
    fn default() -> Self {
        WatchSettings {
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            watch_timeout_secs: 290,
        }
    }
}

/// A watch request refused with HTTP 410: kube-runtime would retry the same expired
/// resourceVersion forever, so the watcher must be restarted to list again.
pub fn gone_at_watch_start(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410)
}

/// Runs one watcher of `api` until `out` closes, sending `convert(event)` for each event it
/// maps to `Some`. `what` names the resource in logs. Errors are logged and retried with
/// back-off; a 410 at watch start restarts the watcher, which lists again (`Init` … `InitDone`).
pub async fn watch_resource<K, T>(
    api: Api<K>,
    config: watcher::Config,
    settings: WatchSettings,
    what: &'static str,
    out: mpsc::Sender<T>,
    mut convert: impl FnMut(watcher::Event<K>) -> Option<T>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = config.timeout(settings.watch_timeout_secs);
    let mut restarts = ExponentialBackoff::new(settings.backoff_min, settings.backoff_max);
    loop {
        let stream = StreamBackoff::new(
            watcher(api.clone(), config.clone()),
            ExponentialBackoff::new(settings.backoff_min, settings.backoff_max),
        );
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    if matches!(ev, watcher::Event::Apply(_) | watcher::Event::Delete(_)) {
                        // The watch works again: a later 410 restarts without delay growth.
                        restarts.reset();
                    }
                    let Some(converted) = convert(ev) else {
                        continue;
                    };
                    if out.send(converted).await.is_err() {
                        return;
                    }
                }
                Err(e) if gone_at_watch_start(&e) => {
                    info!(
                        resource = what,
                        "watch refused with HTTP 410 Gone; listing again"
                    );
                    break;
                }
                Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                    info!(resource = what, "watch expired (410 Gone); listing again");
                }
                Err(e) => {
                    warn!(resource = what, error = %e, "Kubernetes watch failed; retrying with back-off")
                }
            }
        }
        let delay = restarts.next().unwrap_or(settings.backoff_max);
        debug!(resource = what, ?delay, "restarting the watcher");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_410_at_watch_start_restarts_the_watcher() {
        let status =
            |code| Box::new(kube::core::Status::failure("gone", "Expired").with_code(code));
        assert!(gone_at_watch_start(&watcher::Error::WatchStartFailed(
            kube::Error::Api(status(410))
        )));
        assert!(!gone_at_watch_start(&watcher::Error::WatchStartFailed(
            kube::Error::Api(status(500))
        )));
        assert!(!gone_at_watch_start(&watcher::Error::WatchError(status(
            410
        ))));
    }
}
