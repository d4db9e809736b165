//! Allocator housekeeping: giving memory back to the OS after a config load.
//!
//! Why: loading a config (a local file or an xDS push) allocates far more transient memory than
//! the resulting `State` holds (the parser's and decoder's intermediate values, the old state).
//! jemalloc returns freed pages only on its decay timer, which advances on allocator activity
//! in the same arena; the loading thread then goes quiet, so at 10,000 workloads about 9 KB per
//! workload stayed resident long after the load (docs/benchmarks.md, control-plane scale).
//! Purging right after a load returns those pages at once, without changing the decay settings
//! the data plane runs with (so its idle and after-load RSS behave as before).

/// Returns the dirty and muzzy pages of every jemalloc arena to the OS. Call after a config
/// load or update, once the parse garbage and the replaced state are dropped. A no-op without
/// the `jemalloc` feature (glibc's `malloc_trim` would be the analogue; glibc is not the
/// default and is kept as it was).
pub fn release_freed_memory() {
    #[cfg(feature = "jemalloc")]
    jemalloc::purge_all_arenas();
}

#[cfg(feature = "jemalloc")]
mod jemalloc {
    /// `arena.<i>.purge` with `i = MALLCTL_ARENAS_ALL` (4096 in jemalloc 5, which
    /// tikv-jemalloc-sys 0.6 bundles): purge unused dirty pages of all arenas.
    pub(super) const PURGE_ALL: &[u8] = b"arena.4096.purge\0";

    pub(super) fn purge_all_arenas() {
        // SAFETY: the name is a NUL-terminated constant; this control takes no input and
        // gives no output, so null pointers with zero lengths are what jemalloc expects.
        #[allow(unsafe_code)]
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            // Only memory stays higher; nothing else depends on it.
            tracing::debug!(rc, "jemalloc arena purge failed");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The control name is accepted by the bundled jemalloc (a typo or a changed
    /// `MALLCTL_ARENAS_ALL` would make mallctl return ENOENT/EFAULT, and the purge would
    /// silently do nothing).
    #[cfg(feature = "jemalloc")]
    #[test]
    fn purge_control_exists() {
        #[allow(unsafe_code)]
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                super::jemalloc::PURGE_ALL.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(rc, 0);
    }
}
