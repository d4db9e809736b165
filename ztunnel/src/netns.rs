//! Running socket set-up inside a pod's network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole
//! life. So ztunnel enters a pod's namespace only for the instant it takes to create a socket
//! (`socket()` + options + `bind`/`listen`), then returns to its own, on the same thread and
//! without yielding to the async runtime in between. The namespace is held as an open fd
//! (from ZDS), so a pod's namespace stays valid for as long as ztunnel serves it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, OnceLock};

use nix::sched::{setns, CloneFlags};

/// A network namespace ztunnel can create sockets in.
#[derive(Clone, Debug)]
pub enum Netns {
    /// The namespace ztunnel itself runs in (dedicated mode, and tests).
    Current,
    /// A pod's namespace, held open by fd.
    Pod(Arc<PodNetns>),
}

/// An open handle on a pod's network namespace.
#[derive(Debug)]
pub struct PodNetns {
    fd: OwnedFd,
    inode: u64,
}

impl PodNetns {
    /// Takes ownership of a namespace fd (as received over ZDS).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let inode = File::from(fd.try_clone()?).metadata()?.ino();
        Ok(PodNetns { fd, inode })
    }

    /// The namespace's inode number: equal inodes are the same namespace.
    pub fn inode(&self) -> u64 {
        self.inode
    }
}

impl Netns {
    /// Runs `f` with the current thread inside this namespace, then restores the thread's own.
    /// `f` must be quick and synchronous: it runs on whatever thread calls this.
    pub fn run<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        match self {
            Netns::Current => f(),
            Netns::Pod(pod) => {
                let own = own_netns()?;
                setns(pod.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                let result = f();
                // Failing to return would leave a runtime worker thread in a pod's namespace and
                // every later socket of ztunnel in the wrong place: that is not recoverable.
                if let Err(e) = setns(own.as_fd(), CloneFlags::CLONE_NEWNET) {
                    panic!("cannot return to ztunnel's own network namespace: {e}");
                }
                result
            }
        }
    }

    /// The inode of the namespace this thread is in now (for tests and diagnostics).
    pub fn current_inode() -> io::Result<u64> {
        Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
    }

    /// The namespace's inode, if it is a pod's.
    pub fn inode(&self) -> Option<u64> {
        match self {
            Netns::Current => None,
            Netns::Pod(p) => Some(p.inode),
        }
    }
}

/// ztunnel's own namespace, opened once. Every thread is in it whenever it is not inside
/// [`Netns::run`], so whichever thread opens it first sees the right one. Opening it on every
/// call cost an `openat` + `close` per upstream connection, about 3% of ztunnel's CPU in the
/// connection-rate benchmark (benches/dataplane.rs).
static OWN_NETNS: OnceLock<File> = OnceLock::new();

fn own_netns() -> io::Result<&'static File> {
    if let Some(own) = OWN_NETNS.get() {
        return Ok(own);
    }
    let own = File::open("/proc/thread-self/ns/net")?;
    // A racing thread may have set it first; both opened the same namespace.
    Ok(OWN_NETNS.get_or_init(|| own))
}
