//! Helpers for the lifecycle end-to-end tests (e2e_lifecycle.rs): dual-stack workloads and echo
//! servers, a bulk echo transfer, a raw TLS probe of a ztunnel's HBONE port, and a ztunnel
//! started in dedicated mode inside a pod's netns (no ZDS agent).
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::ca::CertificateAuthority;
use mesh::identity::Identity;
use testbed::fixture::{http_get, wait_until, Fixture, Ztunnel};
use testbed::{Netns, Pod};

/// Workload entry listing both of the pod's addresses (IPv4 first, then IPv6), as a dual-stack
/// pod's entry in Istio's LocalConfig does.
pub fn dual_stack_workload_yaml(pod: &Pod, namespace: &str, sa: &str, node: &str) -> String {
    let ips: Vec<String> = pod.ips().iter().map(|ip| format!("\"{ip}\"")).collect();
    format!(
        "- uid: {name}\n  name: {name}\n  namespace: {namespace}\n  serviceAccount: {sa}\n  node: {node}\n  protocol: HBONE\n  workloadIps: [{ips}]\n",
        name = pod.name,
        ips = ips.join(", "),
    )
}

/// An echo server like the fixture's, but on any address family: greets each connection with
/// `<pod> saw <peer>\n`, then echoes. Binding `[::]` here sets IPV6_V6ONLY, so the IPv6 test
/// proves the IPv6 path and cannot silently ride over IPv4.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Echo {
    pub fn start_v6(pod: &Pod, port: u16) -> Echo {
        let ip6 = pod.ip6.expect("pod has no IPv6 address");
        let bind = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let listener = pod
            .netns
            .run(|| -> std::io::Result<TcpListener> {
                let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
                s.set_only_v6(true)?;
                s.set_reuse_address(true)?;
                s.bind(&bind.into())?;
                s.listen(64)?;
                Ok(s.into())
            })
            .expect("bind IPv6 echo server");
        let accepted = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (acc, prs, name) = (accepted.clone(), peers.clone(), pod.name.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                acc.fetch_add(1, Ordering::SeqCst);
                let Ok(peer) = conn.peer_addr() else { continue };
                prs.lock().unwrap().push(peer);
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = writeln!(conn, "{name} saw {peer}");
                    let mut buf = [0u8; 65536];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Echo {
            addr: SocketAddr::new(IpAddr::V6(ip6), port),
            accepted,
            peers,
        }
    }
}

/// A bulk transfer through an echo server: each round writes a chunk with a round-specific
/// pattern and reads the same bytes back, so a cut or a corrupted stream fails the round.
pub struct Transfer {
    stream: TcpStream,
    pub echoed: usize,
}

pub const CHUNK: usize = 64 * 1024;

impl Transfer {
    /// Connects from `pod` and consumes the echo server's greeting line.
    pub fn open(pod: &Pod, dst: SocketAddr) -> std::io::Result<Transfer> {
        let stream = pod
            .netns
            .run(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut greeting = Vec::new();
        BufReader::new(&stream)
            .take(256)
            .read_until(b'\n', &mut greeting)?;
        // BufReader may have read past the line only if the server sent more than the greeting
        // unprompted; it does not (it echoes only what we send), so nothing is lost here.
        if !greeting.ends_with(b"\n") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before greeting",
            ));
        }
        Ok(Transfer { stream, echoed: 0 })
    }

    /// One chunk out and back; checks every byte.
    pub fn round(&mut self, n: usize) -> std::io::Result<()> {
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 + n * 7) as u8).collect();
        self.stream.write_all(&chunk)?;
        let mut back = vec![0u8; CHUNK];
        self.stream.read_exact(&mut back)?;
        if back != chunk {
            return Err(std::io::Error::other(format!("round {n}: echo corrupted")));
        }
        self.echoed += CHUNK;
        Ok(())
    }
}

/// Sends SIGTERM without waiting (the drain is observed while it happens).
pub fn sigterm(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
}

/// Waits for a child to exit, failing after `timeout`; returns its status.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let mut status = None;
    wait_until("process exit", timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.expect("exited")
}

/// The readiness status code (`/healthz/ready`) of a shared-mode ztunnel, 0 if unreachable.
pub fn readiness_status(zt: &Ztunnel) -> u16 {
    let addr = SocketAddr::new(IpAddr::V4(zt.node.ip), 15021);
    http_get(&zt.node.netns, addr, "/healthz/ready")
        .map(|(s, _)| s)
        .unwrap_or(0)
}

/// The dump's `certificates[]` row for `identity`: (serial, not_after).
pub fn cert_row(dump: &serde_json::Value, identity: &str) -> Option<(String, String)> {
    dump["certificates"].as_array()?.iter().find_map(|c| {
        (c["identity"] == identity).then(|| {
            (
                c["serial"].as_str().unwrap_or_default().to_string(),
                c["not_after"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// Uids in the dump's `servedWorkloads`.
pub fn served_uids(dump: &serde_json::Value) -> Vec<String> {
    dump["servedWorkloads"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Opens a TLS connection to a ztunnel's HBONE port from `netns`, as a mesh client with a
/// certificate of `client_id` from the fixture's CA, and returns the serial (lowercase hex, as
/// the config dump spells it) of the leaf certificate the ztunnel presented.
pub fn presented_serial(
    netns: &Netns,
    hbone: SocketAddr,
    ca_dir: &Path,
    client_id: &Identity,
    server_id: &Identity,
) -> String {
    let ca = CertificateAuthority::from_cacerts_dir(ca_dir).expect("load CA");
    let cert = ca
        .issue(client_id, Duration::from_secs(60))
        .expect("probe cert");
    let cfg = mesh::tls::client_config(&cert, vec![server_id.clone()]).expect("client config");
    let tcp = netns
        .run(|| TcpStream::connect_timeout(&hbone, Duration::from_secs(5)))
        .expect("connect to HBONE port");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(hbone.ip().into());
    let conn = rustls::ClientConnection::new(cfg, name).expect("TLS client");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("TLS handshake with ztunnel");
    }
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server presented a certificate");
    der_serial_hex(leaf).expect("leaf serial")
}

/// The serial number of a DER X.509 certificate, in lowercase hex of its content octets.
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber
/// INTEGER, ... }, ... }: two SEQUENCE headers in, skip the explicit version, read the INTEGER.
fn der_serial_hex(der: &[u8]) -> Option<String> {
    fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | x as usize);
        Some((tag, 2 + n, len))
    }
    let (_, h, _) = header(der)?; // Certificate
    let tbs = der.get(h..)?;
    let (_, h, _) = header(tbs)?; // TBSCertificate
    let mut rest = tbs.get(h..)?;
    let (tag, h, len) = header(rest)?;
    if tag == 0xa0 {
        rest = rest.get(h + len..)?;
    }
    let (tag, h, len) = header(rest)?;
    if tag != 0x02 {
        return None;
    }
    Some(
        rest.get(h..h + len)?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// A ztunnel started the way Istio starts one in dedicated mode: inside the workload's own
/// network namespace, with no node agent, serving only that namespace.
pub struct DedicatedZtunnel {
    pub child: Option<Child>,
    pub netns: Netns,
    pub log: PathBuf,
}

impl DedicatedZtunnel {
    pub fn start(fx: &Fixture, pod: &Pod, workload_info: &str, extra: &[(&str, &str)]) -> Self {
        let log = fx.dir.0.join(format!("ztunnel-dedicated-{}.log", pod.name));
        let out = File::create(&log).unwrap();
        let mut cmd = pod.netns.command(fx.ztunnel.to_str().expect("utf-8 path"));
        cmd.envs([
            ("LOCAL_XDS_PATH", fx.config_path.to_str().unwrap()),
            ("AMBIT_CA_DIR", fx.ca_dir.to_str().unwrap()),
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", workload_info),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
            ("ZTUNNEL_WORKER_THREADS", "1"),
            ("AMBIT_CONFIG_POLL", "50ms"),
        ])
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        let child = cmd.spawn().expect("spawn dedicated ztunnel");
        let zt = DedicatedZtunnel {
            child: Some(child),
            netns: pod.netns.clone(),
            log,
        };
        // Loopback: a connection to the pod's own IP would itself be captured by the redirect
        // rules of the pod ztunnel now serves.
        wait_until(
            "dedicated ztunnel readiness",
            Duration::from_secs(20),
            || matches!(zt.get(15021, "/healthz/ready"), Ok((200, _))),
        );
        zt
    }

    fn get(&self, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        http_get(&self.netns, addr, path)
    }

    pub fn metrics(&self) -> String {
        self.get(15020, "/metrics").expect("metrics").1
    }

    pub fn config_dump(&self) -> serde_json::Value {
        serde_json::from_str(&self.get(15000, "/config_dump").expect("dump").1).expect("JSON")
    }
}

impl Drop for DedicatedZtunnel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- dedicated ztunnel log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}
