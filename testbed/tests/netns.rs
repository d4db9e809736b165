//! The test bed's own guarantees: code really runs inside the namespaces, and every namespace is
//! gone after the bed is dropped, also when the test panicked. Needs root; fails (never skips)
//! without it.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

use testbed::{NetnsTaskError, TestBed};

/// Interface names and addresses as seen by the calling thread's netns.
fn interfaces() -> Vec<(String, Option<IpAddr>)> {
    nix::ifaddrs::getifaddrs()
        .expect("getifaddrs")
        .map(|ifa| {
            let ip = ifa.address.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            });
            (ifa.interface_name, ip)
        })
        .collect()
}

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn names_with_prefix(prefix: &str) -> Vec<String> {
    netns_list()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn run_executes_inside_the_netns() {
    let mut bed = TestBed::new("run_inside").unwrap();
    let node = bed.add_node("node1").unwrap();
    let pod = bed.add_pod(&node, "pod-a").unwrap();

    let in_pod = pod.netns.run(interfaces);
    assert!(
        in_pod.contains(&("eth0".to_owned(), Some(IpAddr::V4(pod.ip)))),
        "{in_pod:?}"
    );
    assert!(
        in_pod.contains(&("eth0".to_owned(), pod.ip6.map(IpAddr::V6))),
        "{in_pod:?}"
    );
    let in_node = node.netns.run(interfaces);
    assert!(
        in_node.iter().any(|(n, _)| n == "p2-pod-a"),
        "node sees the pod veth: {in_node:?}"
    );
    assert!(in_node.contains(&("eth0".to_owned(), Some(IpAddr::V4(node.ip)))));
    // Nothing of the bed leaks into the namespace the test runs in.
    let here = interfaces();
    assert!(
        !here.iter().any(|(_, ip)| *ip == Some(IpAddr::V4(pod.ip))),
        "{here:?}"
    );

    // A socket made inside stays inside: binding the pod address only works in the pod.
    let listener = pod
        .netns
        .run(|| TcpListener::bind((pod.ip, 0)))
        .expect("pod address is local in the pod netns");
    assert_eq!(listener.local_addr().unwrap().ip(), IpAddr::V4(pod.ip));
    let err = TcpListener::bind((pod.ip, 0)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable);
}

#[test]
fn run_propagates_panics() {
    let bed = TestBed::new("run_panics").unwrap();
    let wire = bed.wire().clone();
    let caught = panic::catch_unwind(AssertUnwindSafe(|| wire.run(|| panic!("boom inside"))));
    let payload = caught.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom inside"));
}

#[test]
fn spawn_drives_a_future_inside_the_netns() {
    let mut bed = TestBed::new("spawn_inside").unwrap();
    let node = bed.add_node("node1").unwrap();
    let pod = bed.add_pod(&node, "pod-a").unwrap();
    let ip = pod.ip;
    let task = pod.netns.spawn(move || async move {
        let l = tokio::net::TcpListener::bind((ip, 0)).await?;
        l.local_addr()
    });
    let addr: SocketAddr = task.join().unwrap().unwrap();
    assert_eq!(addr.ip(), IpAddr::V4(pod.ip));

    // Panics and aborts are reported, not lost.
    let panicked = pod.netns.spawn(|| async { panic!("task boom") }).join();
    assert!(
        matches!(panicked, Err(NetnsTaskError::Panicked(ref m)) if m == "task boom"),
        "{panicked:?}"
    );
    let mut pending = pod.netns.spawn(std::future::pending::<()>);
    pending.abort();
    assert!(matches!(pending.join(), Err(NetnsTaskError::Aborted)));
}

#[tokio::test]
async fn spawned_task_can_be_awaited_from_another_runtime() {
    let mut bed = TestBed::new("spawn_await").unwrap();
    let node = bed.add_node("node1").unwrap();
    let names = node
        .netns
        .spawn(|| async { interfaces().into_iter().map(|(n, _)| n).collect::<Vec<_>>() })
        .await
        .unwrap();
    assert!(names.iter().any(|n| n == "eth0"));
}

#[test]
fn command_and_exec_run_inside_the_netns() {
    let mut bed = TestBed::new("exec_inside").unwrap();
    let node = bed.add_node("node1").unwrap();
    let pod = bed.add_pod(&node, "pod-a").unwrap();
    let addrs = pod
        .netns
        .exec(&["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(addrs.contains(&format!("{}/32", pod.ip)), "{addrs}");
    let status = pod.netns.command("true").status().unwrap();
    assert!(status.success());
    let err = pod
        .netns
        .exec(&["ip", "link", "show", "nosuchdev0"])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("nosuchdev0") && msg.contains(pod.netns.name()),
        "{msg}"
    );
    assert!(pod.netns.exec(&[]).is_err());
}

#[test]
fn namespaces_are_deleted_on_drop() {
    let mut bed = TestBed::new("cleanup_drop").unwrap();
    let n1 = bed.add_node("node1").unwrap();
    let n2 = bed.add_node("node2").unwrap();
    bed.add_pod(&n1, "pod-a").unwrap();
    bed.add_pod(&n2, "pod-b").unwrap();
    bed.add_host("host").unwrap();
    let prefix = bed.prefix().to_owned();
    let mut created = bed.namespaces();
    created.sort();
    let mut listed = names_with_prefix(&prefix);
    listed.sort();
    assert_eq!(listed, created);
    assert_eq!(created.len(), 6);
    assert!(
        created.iter().all(|n| n.contains("cleanup_drop")),
        "named after the test: {created:?}"
    );
    drop(bed);
    assert_eq!(names_with_prefix(&prefix), Vec::<String>::new());
}

#[test]
fn namespaces_are_deleted_when_the_test_panics() {
    let seen = Mutex::new((String::new(), 0));
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut bed = TestBed::new("cleanup_panic").unwrap();
        let node = bed.add_node("node1").unwrap();
        bed.add_pod(&node, "pod-a").unwrap();
        *seen.lock().unwrap() = (
            bed.prefix().to_owned(),
            names_with_prefix(bed.prefix()).len(),
        );
        panic!("test failed half-way");
    }));
    assert!(result.is_err());
    let (prefix, count) = seen.into_inner().unwrap();
    assert_eq!(count, 3, "wire, node and pod existed before the panic");
    assert_eq!(names_with_prefix(&prefix), Vec::<String>::new());
}

#[test]
fn parallel_beds_reuse_the_address_plan_without_colliding() {
    let mut a = TestBed::new("same_name").unwrap();
    let mut b = TestBed::new("same_name").unwrap();
    assert_ne!(a.prefix(), b.prefix());
    let na = a.add_node("node1").unwrap();
    let nb = b.add_node("node1").unwrap();
    assert_eq!(na.ip, nb.ip);
    let pa = a.add_pod(&na, "pod").unwrap();
    let pb = b.add_pod(&nb, "pod").unwrap();
    assert_eq!(pa.ip, pb.ip);
    assert_ne!(pa.netns.name(), pb.netns.name());
}

#[test]
fn bad_requests_are_errors() {
    let mut bed = TestBed::new("bad_requests").unwrap();
    let node = bed.add_node("node1").unwrap();
    let host = bed.add_host("host").unwrap();
    assert!(bed.add_node("node1").is_err(), "duplicate name");
    assert!(bed.add_node("bad name").is_err());
    assert!(bed.add_node("wire").is_err());
    assert!(bed.add_node(&"x".repeat(40)).is_err());
    let err = bed.add_pod(&host, "pod").unwrap_err();
    assert!(format!("{err}").contains("host"), "{err}");
    bed.add_pod(&node, "pod").unwrap();
    assert!(bed.add_pod(&node, "pod").is_err(), "duplicate pod");
    assert!(
        bed.set_ipv6(false).is_err(),
        "IPv6 is fixed once members exist"
    );

    let other = TestBed::new("bad_requests_other").unwrap();
    drop(other);
}
