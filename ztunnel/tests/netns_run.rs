//! `Netns::run` enters a pod's namespace and always comes back, on any thread, also after the
//! own-namespace handle is cached by the first call.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use testbed::TestBed;
use ztunnel::netns::{Netns, PodNetns};

#[test]
fn run_enters_the_pod_namespace_and_returns_on_every_thread() {
    let mut bed = TestBed::new("netns_run").expect("test bed (needs root)");
    let node = bed.add_node("n1").unwrap();
    let pod = bed.add_pod(&node, "p1").unwrap();
    let fd: OwnedFd = pod.netns.open().unwrap().into();
    let netns = Netns::Pod(Arc::new(PodNetns::from_fd(fd).unwrap()));
    let pod_inode = netns.inode().unwrap();
    let own = Netns::current_inode().unwrap();
    assert_ne!(own, pod_inode);

    // Several threads, several calls each: the first call caches the way back, later calls and
    // other threads must still land in the pod and return to ztunnel's own namespace.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let netns = netns.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let inside = netns.run(Netns::current_inode).unwrap();
                    assert_eq!(inside, pod_inode);
                    assert_eq!(Netns::current_inode().unwrap(), own);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(netns.run(Netns::current_inode).unwrap(), pod_inode);
    assert_eq!(Netns::current_inode().unwrap(), own);
}
