//! Retry delays for watches.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// Exponential back-off without jitter: one watcher per component and resource, whose retries
/// are already spread by when each one's watch broke.
#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl ExponentialBackoff {
    /// Starts at `min` and doubles up to `max` (a `max` below `min` is raised to it rather
    /// than shrinking delays).
    pub fn new(min: Duration, max: Duration) -> ExponentialBackoff {
        ExponentialBackoff {
            min,
            max: max.max(min),
            next: min,
        }
    }
}

impl Iterator for ExponentialBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        Some(d)
    }
}

impl Backoff for ExponentialBackoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_its_cap_and_resets() {
        let mut b = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<u128> = b.by_ref().take(4).map(|d| d.as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
        let mut b = ExponentialBackoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.nth(3), Some(Duration::from_secs(2)));
    }
}
