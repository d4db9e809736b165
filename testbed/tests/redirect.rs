//! The in-pod redirect rules applied in real namespaces: they install as rendered, re-install
//! without change, capture outbound and inbound TCP to ztunnel's ports with the original
//! destination recoverable, and let ztunnel's marked sockets and node probes through. Needs root;
//! fails (never skips) without it.

use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
};
use std::os::fd::AsRawFd;
use std::time::Duration;

use mesh::redirect::{self, Family, RedirectConfig};
use socket2::{Domain, SockRef, Socket, Type};
use testbed::{Iptables, Netns, Pod, TestBed};

const APP_PORT: u16 = 8080;
/// Bounds every wait so a broken rule fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(5);

/// Reads the pre-NAT destination of a redirected connection (SO_ORIGINAL_DST /
/// IP6T_SO_ORIGINAL_DST), which is how ztunnel learns where the app wanted to go.
#[allow(unsafe_code)]
fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    if stream.local_addr()?.is_ipv4() {
        // SAFETY: sockaddr_in is plain old data, so all-zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of_val(&sa) as libc::socklen_t;
        // SAFETY: `sa` and `len` are valid for writes for the duration of the call, and `len`
        // holds the size of `sa`, so the kernel writes at most that many bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                libc::SO_ORIGINAL_DST,
                (&raw mut sa).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(sa.sin_port),
        )))
    } else {
        // SAFETY: sockaddr_in6 is plain old data, so all-zero is a valid value.
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of_val(&sa) as libc::socklen_t;
        // SAFETY: as above, with the IPv6 structure and its size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                libc::IP6T_SO_ORIGINAL_DST,
                (&raw mut sa).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(sa.sin6_port),
            0,
            0,
        )))
    }
}

/// A listener inside `ns` on `addr`; IPv6 listeners are v6-only so each family is told apart.
fn listen(ns: &Netns, addr: SocketAddr) -> TcpListener {
    ns.run(|| -> io::Result<TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(16)?;
        Ok(s.into())
    })
    .unwrap_or_else(|e| panic!("listen on {addr} in {}: {e}", ns.name()))
}

/// Connects from inside `ns`, optionally with SO_MARK set the way ztunnel marks its sockets.
fn connect(ns: &Netns, dst: SocketAddr, mark: Option<u32>) -> TcpStream {
    ns.run(|| -> io::Result<TcpStream> {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
        if let Some(mark) = mark {
            s.set_mark(mark)?;
        }
        s.connect_timeout(&dst.into(), WAIT)?;
        s.set_read_timeout(Some(WAIT))?;
        Ok(s.into())
    })
    .unwrap_or_else(|e| panic!("connect to {dst} from {}: {e}", ns.name()))
}

/// Accepts a connection arriving on `l` within `timeout` (zero: only one already queued).
/// Linux applies SO_RCVTIMEO to accept(), which gives a bounded wait without polling loops.
fn accept_within(l: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
    if timeout.is_zero() {
        l.set_nonblocking(true).unwrap();
    } else {
        l.set_nonblocking(false).unwrap();
        SockRef::from(l).set_read_timeout(Some(timeout)).unwrap();
    }
    let accepted = l.accept();
    l.set_nonblocking(false).unwrap();
    match accepted {
        Ok((stream, peer)) => {
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            Some((stream, peer))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("accept on {:?}: {e}", l.local_addr()),
    }
}

/// Whether a connection is already queued on `l` (consumes it).
fn pending(l: &TcpListener) -> bool {
    accept_within(l, Duration::ZERO).is_some()
}

/// Accepts the connection that must now be arriving on `l` and checks data flows both ways.
fn accept_and_echo(l: &TcpListener, client: &mut TcpStream) -> (TcpStream, SocketAddr) {
    let Some((mut server, peer)) = accept_within(l, WAIT) else {
        panic!("no connection arrived on {:?}", l.local_addr());
    };
    client.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    server.read_exact(&mut buf).unwrap();
    server.write_all(&buf).unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    (server, peer)
}

fn wildcard(family: Family, port: u16) -> SocketAddr {
    match family {
        Family::V4 => (Ipv4Addr::UNSPECIFIED, port).into(),
        Family::V6 => (Ipv6Addr::UNSPECIFIED, port).into(),
    }
}

fn pod_addr(pod: &Pod, family: Family, port: u16) -> SocketAddr {
    match family {
        Family::V4 => (pod.ip, port).into(),
        Family::V6 => (pod.ip6.expect("bed has IPv6"), port).into(),
    }
}

/// `iptables-save` without the lines that change by themselves (timestamps, counters).
fn normalized_save(ns: &Netns, family: Family) -> String {
    let save = Iptables::get().unwrap().save(ns, family).unwrap();
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => format!("{} [0:0]", &l[..i]),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn rules_install_as_rendered_and_reinstall_is_idempotent() {
    let mut bed = TestBed::new("rules_install").unwrap();
    let node = bed.add_node("node1").unwrap();
    let pod = bed.add_pod(&node, "pod-a").unwrap();
    let cfg = RedirectConfig {
        exclude_outbound_ports: vec![9000],
        exclude_inbound_ports: vec![8081],
        exclude_outbound_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:96::/64".parse().unwrap(),
        ],
        ..RedirectConfig::default()
    };
    let clean = [Family::V4, Family::V6].map(|f| normalized_save(&pod.netns, f));

    pod.install_redirect_rules(&cfg).unwrap();
    let first = [Family::V4, Family::V6].map(|f| normalized_save(&pod.netns, f));
    for (family, save) in [Family::V4, Family::V6].into_iter().zip(&first) {
        // The kernel reports every rendered rule back verbatim: rendering uses iptables-save's
        // canonical form, so what we test in mesh is what runs.
        let rendered = redirect::iptables_restore_input(&cfg, family);
        for rule in rendered.lines().filter(|l| l.starts_with("-A ")) {
            assert!(
                save.lines().any(|l| l == rule),
                "{family:?}: {rule:?} missing from\n{save}"
            );
        }
    }
    let rules4 = pod.netns.exec(&["ip", "-4", "rule", "show"]).unwrap();
    assert!(
        rules4.contains("32764:") && rules4.contains("fwmark 0x111/0xfff lookup 100"),
        "{rules4}"
    );
    let rules6 = pod.netns.exec(&["ip", "-6", "rule", "show"]).unwrap();
    assert!(rules6.contains("fwmark 0x111/0xfff lookup 100"), "{rules6}");
    let table = pod
        .netns
        .exec(&["ip", "-4", "route", "show", "table", "100"])
        .unwrap();
    assert_eq!(table.trim(), "local default dev lo scope host");

    pod.install_redirect_rules(&cfg).unwrap();
    let second = [Family::V4, Family::V6].map(|f| normalized_save(&pod.netns, f));
    assert_eq!(first, second, "re-installing changed the ruleset");
    let rules4_again = pod.netns.exec(&["ip", "-4", "rule", "show"]).unwrap();
    assert_eq!(rules4, rules4_again, "re-installing duplicated the ip rule");

    // A changed config converges too: DNS capture off drops the raw-table chains.
    let no_dns = RedirectConfig {
        dns_capture: false,
        ..cfg.clone()
    };
    pod.install_redirect_rules(&no_dns).unwrap();
    let save = normalized_save(&pod.netns, Family::V4);
    assert!(
        !save.contains("15053") && !save.contains("CT --zone"),
        "{save}"
    );
    assert_eq!(
        save.matches("-A OUTPUT -j ISTIO_OUTPUT").count(),
        2,
        "{save}"
    );

    pod.remove_redirect_rules().unwrap();
    for (family, before) in [Family::V4, Family::V6].into_iter().zip(&clean) {
        let after = normalized_save(&pod.netns, family);
        assert!(!after.contains("ISTIO"), "{after}");
        // nft keeps the now-empty tables around; no rule and no chain of ours remains.
        assert!(before.lines().all(|l| after.contains(l)));
    }
    let rules = pod.netns.exec(&["ip", "rule", "show"]).unwrap();
    assert!(!rules.contains("lookup 100"), "{rules}");
    pod.remove_redirect_rules().expect("removing twice is fine");
}

/// The contract's main data-path check, for one family: an app connect is captured on 15001
/// with the original destination intact, a ztunnel-marked socket goes straight out.
fn outbound_capture(family: Family) {
    let mut bed = TestBed::new(&format!("outbound_{family:?}")).unwrap();
    let n1 = bed.add_node("node1").unwrap();
    let n2 = bed.add_node("node2").unwrap();
    let a = bed.add_pod(&n1, "pod-a").unwrap();
    let b = bed.add_pod(&n2, "pod-b").unwrap();
    let cfg = RedirectConfig::default();
    let app = listen(&b.netns, wildcard(family, APP_PORT));
    let ztunnel_outbound = listen(&a.netns, wildcard(family, cfg.outbound_port));
    let dst = pod_addr(&b, family, APP_PORT);

    a.install_redirect_rules(&cfg).unwrap();

    let mut client = connect(&a.netns, dst, None);
    let (server, _) = accept_and_echo(&ztunnel_outbound, &mut client);
    assert_eq!(original_dst(&server).unwrap(), dst);
    assert!(!pending(&app), "captured connection must not reach the app");

    let mut marked = connect(&a.netns, dst, Some(cfg.ztunnel_mark));
    let (_, peer) = accept_and_echo(&app, &mut marked);
    assert_eq!(
        peer.ip(),
        pod_addr(&a, family, 0).ip(),
        "bypass keeps the pod's source"
    );
    assert!(!pending(&ztunnel_outbound), "marked socket was captured");

    // Connections to the pod itself stay local (no capture of the app talking to itself).
    let own = listen(&a.netns, pod_addr(&a, family, APP_PORT));
    let mut to_self = connect(&a.netns, pod_addr(&a, family, APP_PORT), None);
    accept_and_echo(&own, &mut to_self);

    a.remove_redirect_rules().unwrap();
    let mut plain = connect(&a.netns, dst, None);
    accept_and_echo(&app, &mut plain);
    assert!(!pending(&ztunnel_outbound));
}

#[test]
fn outbound_connect_is_redirected_to_15001_ipv4() {
    outbound_capture(Family::V4);
}

#[test]
fn outbound_connect_is_redirected_to_15001_ipv6() {
    outbound_capture(Family::V6);
}

/// Inbound capture to 15006, HBONE port untouched, and node probes (SNATed on the node) let
/// through to the app.
fn inbound_capture_and_probes(family: Family) {
    let mut bed = TestBed::new(&format!("inbound_{family:?}")).unwrap();
    let n1 = bed.add_node("node1").unwrap();
    let n2 = bed.add_node("node2").unwrap();
    let a = bed.add_pod(&n1, "pod-a").unwrap();
    let b = bed.add_pod(&n2, "pod-b").unwrap();
    let cfg = RedirectConfig::default();
    let app = listen(&b.netns, wildcard(family, APP_PORT));
    let inbound = listen(&b.netns, wildcard(family, cfg.inbound_plain_port));
    let hbone = listen(&b.netns, wildcard(family, cfg.hbone_port));
    b.install_redirect_rules(&cfg).unwrap();

    let dst = pod_addr(&b, family, APP_PORT);
    let mut client = connect(&a.netns, dst, None);
    let (server, peer) = accept_and_echo(&inbound, &mut client);
    assert_eq!(original_dst(&server).unwrap(), dst);
    assert_eq!(peer.ip(), pod_addr(&a, family, 0).ip());
    assert!(!pending(&app));

    let mut to_hbone = connect(&a.netns, pod_addr(&b, family, cfg.hbone_port), None);
    accept_and_echo(&hbone, &mut to_hbone);

    // A probe from the node: SNATed to the probe address on the node, accepted in the pod.
    n2.install_probe_snat(&cfg).unwrap();
    n2.install_probe_snat(&cfg)
        .expect("re-installing the probe SNAT is fine");
    let mut probe = connect(&n2.netns, dst, None);
    let (_, peer) = accept_and_echo(&app, &mut probe);
    let probe_ip = match family {
        Family::V4 => IpAddr::V4(cfg.probe_snat_v4),
        Family::V6 => IpAddr::V6(cfg.probe_snat_v6),
    };
    assert_eq!(peer.ip(), probe_ip);
    assert!(!pending(&inbound));
    let node_save = normalized_save(&n2.netns, family);
    assert_eq!(
        node_save.matches("-A POSTROUTING -j ISTIO_POSTRT").count(),
        1,
        "{node_save}"
    );

    // The SNAT is limited to the node's pods: the node's own traffic elsewhere keeps its address.
    let (other_ip, other_ns) = match family {
        Family::V4 => (IpAddr::V4(n1.ip), &n1.netns),
        Family::V6 => (IpAddr::V6(n1.ip6.unwrap()), &n1.netns),
    };
    let elsewhere = listen(other_ns, SocketAddr::new(other_ip, APP_PORT));
    let mut c = connect(&n2.netns, SocketAddr::new(other_ip, APP_PORT), None);
    let (_, peer) = accept_and_echo(&elsewhere, &mut c);
    assert_ne!(peer.ip(), probe_ip);

    n2.remove_probe_snat().unwrap();
    assert!(!normalized_save(&n2.netns, family).contains("ISTIO_POSTRT"));
}

#[test]
fn inbound_capture_and_node_probes_ipv4() {
    inbound_capture_and_probes(Family::V4);
}

#[test]
fn inbound_capture_and_node_probes_ipv6() {
    inbound_capture_and_probes(Family::V6);
}
