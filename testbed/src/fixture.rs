//! A whole mesh on a test bed: nodes and pods, a generated CA, a local config file, real
//! ztunnel processes (shared mode) in the node namespaces, and the caller acting as the node
//! agent over real ZDS. Used by the end-to-end tests, the benchmarks and `ambit demo`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Netns, Node, Pod, TestBed};
use mesh::ca::CertificateAuthority;
use mesh::redirect::RedirectConfig;
use mesh::zds::{WorkloadInfo, ZdsAgentConn, ZdsServer};

pub const TRUST_DOMAIN: &str = "cluster.local";

/// Polls `cond` until it holds or `timeout` passes. Used only on observable readiness signals
/// (an HTTP endpoint answering, a counter moving), never as a blind sleep.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.0 GET made from inside `netns`; returns (status, body).
pub fn http_get(netns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = netns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The test's directory for files (CA, config, logs), removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ambit-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One mesh on a fresh test bed.
pub struct Fixture {
    pub bed: TestBed,
    /// The ztunnel binary to run.
    pub ztunnel: PathBuf,
    pub dir: TempDir,
    pub ca_dir: PathBuf,
    pub config_path: PathBuf,
    pub name: String,
}

impl Fixture {
    pub fn new(name: &str, ztunnel: impl Into<PathBuf>) -> Fixture {
        let bed = TestBed::new(name).expect("test bed");
        let dir = TempDir::new(name);
        let ca_dir = dir.0.join("cacerts");
        let ca = CertificateAuthority::generate(TRUST_DOMAIN).expect("generate CA");
        ca.write_cacerts_dir(&ca_dir).expect("write CA");
        let config_path = dir.0.join("config.yaml");
        Fixture {
            bed,
            ztunnel: ztunnel.into(),
            dir,
            ca_dir,
            config_path,
            name: name.to_string(),
        }
    }

    /// Writes the local config atomically (rename), as an operator's tooling would.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    pub fn add_node(&mut self, name: &str) -> Node {
        self.bed.add_node(name).expect("node")
    }

    /// A pod with the in-pod redirect rules installed (as the CNI agent would).
    pub fn add_captured_pod(&mut self, node: &Node, name: &str) -> Pod {
        let pod = self.bed.add_pod(node, name).expect("pod");
        pod.install_redirect_rules(&RedirectConfig::default())
            .expect("redirect rules");
        pod
    }

    pub fn add_plain_pod(&mut self, node: &Node, name: &str) -> Pod {
        self.bed.add_pod(node, name).expect("pod")
    }

    /// Starts a shared-mode ztunnel in `node`'s namespace with its own ZDS socket.
    pub fn start_ztunnel(&self, node: &Node, extra_env: &[(&str, &str)]) -> Ztunnel {
        Ztunnel::start(self, node, extra_env)
    }
}

/// A running ztunnel process plus the test's node-agent end of its ZDS socket.
pub struct Ztunnel {
    pub child: Option<Child>,
    pub node: Node,
    pub uds: PathBuf,
    pub log: PathBuf,
    pub agent: Agent,
    env: Vec<(String, String)>,
    binary: PathBuf,
}

/// The node agent the test plays: accepts ztunnel's ZDS connection and sends pods.
pub struct Agent {
    server: Arc<ZdsServer>,
    conn: Arc<Mutex<Option<ZdsAgentConn>>>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Agent {
    fn new(uds: &Path) -> Agent {
        let runtime = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        );
        let server = {
            let _guard = runtime.enter();
            Arc::new(ZdsServer::bind(uds).expect("bind ZDS socket"))
        };
        Agent {
            server,
            conn: Arc::new(Mutex::new(None)),
            runtime,
        }
    }

    /// Waits for ztunnel to connect (it retries until the socket accepts).
    pub fn accept(&self) {
        let conn = self
            .runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), self.server.accept()).await
            })
            .expect("ztunnel did not connect to ZDS in time")
            .expect("ZDS accept");
        *self.conn.lock().unwrap() = Some(conn);
    }

    /// Hands a pod to ztunnel; returns ztunnel's ack (Err = its error text).
    pub fn add_pod(&self, pod: &Pod, namespace: &str, service_account: &str) -> Result<(), String> {
        let netns: OwnedFd = File::open(pod.netns.path()).expect("open pod netns").into();
        let info = WorkloadInfo {
            name: pod.name.clone(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        let mut guard = self.conn.lock().unwrap();
        let conn = guard.as_mut().expect("agent not connected");
        self.runtime
            .block_on(conn.send_add(&pod.name, Some(info), std::os::fd::AsFd::as_fd(&netns)))
            .map_err(|e| e.to_string())
    }

    pub fn del_pod(&self, uid: &str) -> Result<(), String> {
        let mut guard = self.conn.lock().unwrap();
        let conn = guard.as_mut().expect("agent not connected");
        self.runtime
            .block_on(conn.send_del(uid))
            .map_err(|e| e.to_string())
    }

    pub fn snapshot_sent(&self) -> Result<(), String> {
        let mut guard = self.conn.lock().unwrap();
        let conn = guard.as_mut().expect("agent not connected");
        self.runtime
            .block_on(conn.send_snapshot_sent())
            .map_err(|e| e.to_string())
    }

    /// Drops the connection, as a restarting node agent would.
    pub fn disconnect(&self) {
        self.conn.lock().unwrap().take();
    }
}

impl Ztunnel {
    fn start(fx: &Fixture, node: &Node, extra_env: &[(&str, &str)]) -> Ztunnel {
        let uds = fx.dir.0.join(format!("zds-{}.sock", node.name));
        let log = fx.dir.0.join(format!("ztunnel-{}.log", node.name));
        let agent = Agent::new(&uds);
        let mut env: Vec<(String, String)> = vec![
            ("LOCAL_XDS_PATH", fx.config_path.to_str().unwrap()),
            ("AMBIT_CA_DIR", fx.ca_dir.to_str().unwrap()),
            ("INPOD_UDS", uds.to_str().unwrap()),
            ("PROXY_MODE", "shared"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
            ("ZTUNNEL_WORKER_THREADS", "1"),
            ("AMBIT_CONFIG_POLL", "50ms"),
            ("AMBIT_DRAIN_DEADLINE", "10s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut zt = Ztunnel {
            child: None,
            node: node.clone(),
            uds,
            log,
            agent,
            env,
            binary: fx.ztunnel.clone(),
        };
        zt.spawn();
        zt
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = self
            .node
            .netns
            .command(self.binary.to_str().expect("utf-8 path"));
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn ztunnel"));
        self.agent.accept();
    }

    /// Hands pods over and completes the snapshot; waits until ztunnel reports ready.
    pub fn serve(&self, pods: &[(&Pod, &str, &str)]) {
        for (pod, ns, sa) in pods {
            self.agent
                .add_pod(pod, ns, sa)
                .expect("ztunnel refused pod");
        }
        self.agent.snapshot_sent().expect("snapshot ack");
        self.wait_ready();
    }

    pub fn wait_ready(&self) {
        let addr = SocketAddr::new(IpAddr::V4(self.node.ip), 15021);
        wait_until("ztunnel readiness", Duration::from_secs(20), || {
            matches!(
                http_get(&self.node.netns, addr, "/healthz/ready"),
                Ok((200, _))
            )
        });
    }

    pub fn metrics(&self) -> String {
        let addr = SocketAddr::new(IpAddr::V4(self.node.ip), 15020);
        http_get(&self.node.netns, addr, "/metrics")
            .expect("metrics")
            .1
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let addr: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let body = http_get(&self.node.netns, addr, "/config_dump")
            .expect("config dump")
            .1;
        serde_json::from_str(&body).expect("config dump JSON")
    }

    pub fn config_version(&self) -> u64 {
        self.config_dump()["configStatus"]["version"]
            .as_u64()
            .unwrap_or(0)
    }

    /// The access-log records (JSON lines with an `access` target) written so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        let file = File::open(&self.log).unwrap();
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- ztunnel log ({}) ---\n{}",
                self.node.name,
                self.log_text()
            );
        }
    }
}

/// A TCP server in a pod: greets each connection with `<pod> saw <peer>\n`, then echoes.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl EchoServer {
    pub fn start(pod: &Pod, port: u16) -> EchoServer {
        let addr = SocketAddr::new(IpAddr::V4(pod.ip), port);
        let listener = pod
            .netns
            .run(|| TcpListener::bind(SocketAddr::new(IpAddr::V4([0, 0, 0, 0].into()), port)))
            .expect("bind echo server");
        let accepted = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let name = pod.name.clone();
        let (acc, prs) = (accepted.clone(), peers.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                acc.fetch_add(1, Ordering::SeqCst);
                let peer = conn.peer_addr().unwrap();
                prs.lock().unwrap().push(peer);
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = writeln!(conn, "{name} saw {peer}");
                    let mut buf = [0u8; 65536];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        EchoServer {
            addr,
            accepted,
            peers,
        }
    }
}

/// A client connection made from inside `pod`.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(pod: &Pod, dst: SocketAddr) -> std::io::Result<Client> {
        let stream = pod
            .netns
            .run(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { stream, reader })
    }

    /// The server's greeting line, or an error if the tunnel refused the connection.
    pub fn greeting(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before greeting",
            ));
        }
        Ok(line.trim_end().to_string())
    }

    /// Sends `msg` and reads the echo back.
    pub fn echo(&mut self, msg: &str) -> std::io::Result<String> {
        writeln!(self.stream, "{msg}")?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        Ok(line.trim_end().to_string())
    }
}

/// Sum of a metric's samples whose labels contain every `key="value"` pair given.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Workload entry of the local config (Istio's LocalConfig format).
pub fn workload_yaml(
    pod: &Pod,
    namespace: &str,
    sa: &str,
    node: &str,
    services: &[(&str, u16, u16)],
) -> String {
    let mut s = format!(
        "- uid: {name}\n  name: {name}\n  namespace: {namespace}\n  serviceAccount: {sa}\n  node: {node}\n  protocol: HBONE\n  workloadIps: [\"{ip}\"]\n",
        name = pod.name,
        ip = pod.ip,
    );
    if !services.is_empty() {
        s.push_str("  services:\n");
        let mut by_svc: HashMap<&str, Vec<(u16, u16)>> = HashMap::new();
        for (svc, port, target) in services {
            by_svc.entry(svc).or_default().push((*port, *target));
        }
        for (svc, ports) in by_svc {
            s.push_str(&format!("    \"{svc}\":\n"));
            for (p, t) in ports {
                s.push_str(&format!("      {p}: {t}\n"));
            }
        }
    }
    s
}

impl Fixture {
    /// Starts a shared-mode ztunnel whose config and certificate sources come only from `env`
    /// (e.g. XDS_ADDRESS + CA_ADDRESS of a control plane): unlike [`Fixture::start_ztunnel`],
    /// LOCAL_XDS_PATH and AMBIT_CA_DIR are not set, since ztunnel refuses both sources at once.
    pub fn start_ztunnel_with_env(&self, node: &Node, env: &[(&str, &str)]) -> Ztunnel {
        let uds = self.dir.0.join(format!("zds-{}.sock", node.name));
        let log = self.dir.0.join(format!("ztunnel-{}.log", node.name));
        let agent = Agent::new(&uds);
        let mut all: Vec<(String, String)> = [
            ("INPOD_UDS", uds.to_str().unwrap()),
            ("PROXY_MODE", "shared"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
            ("ZTUNNEL_WORKER_THREADS", "1"),
            ("AMBIT_DRAIN_DEADLINE", "10s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in env {
            all.retain(|(ek, _)| ek != k);
            all.push((k.to_string(), v.to_string()));
        }
        let mut zt = Ztunnel {
            child: None,
            node: node.clone(),
            uds,
            log,
            agent,
            env: all,
            binary: self.ztunnel.clone(),
        };
        zt.spawn();
        zt
    }
}

/// A Namespace manifest, labelled for ambient capture when `ambient`.
pub fn namespace_yaml(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        "{istio.io/dataplane-mode: ambient}"
    } else {
        "{}"
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {labels}\n")
}

/// A Kubernetes Pod manifest for a test-bed pod (uid = pod name), as the control plane reads it.
pub fn k8s_pod_yaml(pod: &Pod, namespace: &str, sa: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: {name}\n  labels: {{{labels}}}\nspec:\n  nodeName: {node}\n  serviceAccountName: {sa}\nstatus:\n  podIP: {ip}\n",
        name = pod.name,
        node = pod.node,
        ip = pod.ip,
        labels = labels.join(", "),
    )
}
