//! Plain routing between pods, nodes and hosts, before any mesh rule. Needs root; fails (never
//! skips) without it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use testbed::{Netns, TestBed};

/// Opens `dst` from inside `from`, sends a line, and returns the source address the listener
/// saw and the bytes it read. The listener is bound before connecting, so no waiting is needed.
fn tcp_roundtrip(from: &Netns, listener: &TcpListener, dst: SocketAddr) -> SocketAddr {
    let mut client = from
        .run(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect {dst} from {}: {e}", from.name()));
    client.write_all(b"ping").unwrap();
    let (mut server, peer) = listener.accept().unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    peer
}

fn listen(ns: &Netns, ip: IpAddr) -> (TcpListener, SocketAddr) {
    let l = ns.run(|| TcpListener::bind((ip, 0))).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[test]
fn pod_to_pod_across_nodes_ipv4_and_ipv6() {
    let mut bed = TestBed::new("pod_to_pod").unwrap();
    let n1 = bed.add_node("node1").unwrap();
    let n2 = bed.add_node("node2").unwrap();
    let a = bed.add_pod(&n1, "pod-a").unwrap();
    let b = bed.add_pod(&n2, "pod-b").unwrap();
    let c = bed.add_pod(&n1, "pod-c").unwrap();
    assert_ne!(a.ip, b.ip);

    for (src, dst) in [(&a, &b), (&b, &a), (&a, &c)] {
        for (src_ip, dst_ip) in src.ips().into_iter().zip(dst.ips()) {
            let (l, addr) = listen(&dst.netns, dst_ip);
            let peer = tcp_roundtrip(&src.netns, &l, addr);
            // Routed, not NATed: the destination sees the source pod's own address.
            assert_eq!(peer.ip(), src_ip, "{} -> {}", src.name, dst.name);
        }
    }
    assert_eq!(a.ips().len(), 2, "IPv6 is on by default");
}

#[test]
fn nodes_and_hosts_reach_pods_and_each_other() {
    let mut bed = TestBed::new("node_host").unwrap();
    let n1 = bed.add_node("node1").unwrap();
    let host = bed.add_host("host").unwrap();
    // Added after the host: the host must still learn this node's pod routes.
    let n2 = bed.add_node("node2").unwrap();
    let b = bed.add_pod(&n2, "pod-b").unwrap();
    assert!(host.pod_cidrs().is_empty());
    assert_eq!(n2.pod_cidrs().len(), 2);

    let (l, addr) = listen(&host.netns, IpAddr::V4(host.ip));
    assert_eq!(tcp_roundtrip(&b.netns, &l, addr).ip(), IpAddr::V4(b.ip));
    let (l, addr) = listen(&b.netns, IpAddr::V6(b.ip6.unwrap()));
    assert_eq!(
        tcp_roundtrip(&host.netns, &l, addr).ip(),
        IpAddr::V6(host.ip6.unwrap())
    );
    let (l, addr) = listen(&b.netns, IpAddr::V4(b.ip));
    assert_eq!(tcp_roundtrip(&n1.netns, &l, addr).ip(), IpAddr::V4(n1.ip));
    let (l, addr) = listen(&n1.netns, IpAddr::V4(n1.ip));
    assert_eq!(tcp_roundtrip(&n2.netns, &l, addr).ip(), IpAddr::V4(n2.ip));
}

#[test]
fn ipv6_can_be_turned_off() {
    let mut bed = TestBed::new("no_ipv6").unwrap();
    bed.set_ipv6(false).unwrap();
    let n1 = bed.add_node("node1").unwrap();
    let n2 = bed.add_node("node2").unwrap();
    let a = bed.add_pod(&n1, "pod-a").unwrap();
    let b = bed.add_pod(&n2, "pod-b").unwrap();
    assert_eq!((n1.ip6, a.ip6), (None, None));
    assert_eq!(n1.pod_cidrs().len(), 1);
    let (l, addr) = listen(&b.netns, IpAddr::V4(b.ip));
    assert_eq!(tcp_roundtrip(&a.netns, &l, addr).ip(), IpAddr::V4(a.ip));
    let global6 = a
        .netns
        .exec(&["ip", "-6", "addr", "show", "scope", "global"])
        .unwrap();
    assert!(global6.trim().is_empty(), "{global6}");
}
