//! Shared helpers for the cni-agent tests: a real `cni-agent` process and a real `ztunnel`
//! process in a test-bed node's netns, manifests in a local folder, and plugin requests sent
//! straight to the agent's socket as the CNI plugin would.
//!
//! The ztunnel binary comes from the same target dir (`target/<profile>/ztunnel`).
//! `cargo test --workspace` builds it (it is a binary of a workspace member with tests); with
//! `cargo test -p istio-cni-like` alone, run `cargo build -p ztunnel` first.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use istio_cni_like::protocol::{Command, PodEvent, Reply};
pub use testbed::fixture::*;
use testbed::{Netns, Node, Pod};

/// Ports the agent uses in tests: ztunnel shares the node netns and owns 15000/15020/15021.
pub const AGENT_METRICS: u16 = 25020;
pub const AGENT_READY: u16 = 25021;
pub const AGENT_ADMIN: u16 = 25000;

pub const ID_PREFIX: &str = "spiffe://cluster.local/ns/";

/// `target/<profile>/ztunnel`, next to this test binary's `deps` dir.
pub fn ztunnel_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("ztunnel");
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build -p ztunnel` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

pub fn fixture(name: &str) -> Fixture {
    Fixture::new(name, ztunnel_binary())
}

/// A Namespace manifest, labelled ambient when `ambient`.
pub fn namespace_yaml(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        "{istio.io/dataplane-mode: ambient}"
    } else {
        "{}"
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {labels}\n")
}

/// A Pod manifest for a test-bed pod.
pub fn pod_yaml(
    pod: &Pod,
    namespace: &str,
    sa: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> String {
    let map = |kv: &[(&str, &str)]| {
        let items: Vec<String> = kv.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
        format!("{{{}}}", items.join(", "))
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: {name}\n  labels: {labels}\n  annotations: {annotations}\nspec:\n  nodeName: {node}\n  serviceAccountName: {sa}\nstatus:\n  podIP: {ip}\n",
        name = pod.name,
        node = pod.node,
        ip = pod.ip,
        labels = map(labels),
        annotations = map(annotations),
    )
}

/// The plugin's request for `pod` (uid = pod name, as in the manifests).
pub fn event(command: Command, pod: &Pod, namespace: &str) -> PodEvent {
    PodEvent {
        command,
        container_id: format!("ctr-{}", pod.name),
        netns: pod.netns.path().display().to_string(),
        pod_name: pod.name.clone(),
        pod_namespace: namespace.to_owned(),
        pod_uid: pod.name.clone(),
        pod_ips: pod.ips(),
    }
}

/// Writes a file atomically (rename), as an operator's tooling would.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A cni-agent process in a node's netns.
pub struct AgentProc {
    pub child: Option<Child>,
    pub node: Node,
    pub dir: PathBuf,
    pub manifests: PathBuf,
    pub plugin_socket: PathBuf,
    pub zds_socket: PathBuf,
    pub log: PathBuf,
    health_interval: String,
    add_timeout: String,
    extra_args: Vec<String>,
}

impl AgentProc {
    /// Starts the agent with its files under `dir` and waits until it is ready.
    pub fn start(node: &Node, dir: &Path, health_interval: &str, add_timeout: &str) -> AgentProc {
        Self::start_with(node, dir, health_interval, add_timeout, &[])
    }

    /// [`AgentProc::start`] with extra command-line flags.
    pub fn start_with(
        node: &Node,
        dir: &Path,
        health_interval: &str,
        add_timeout: &str,
        extra_args: &[&str],
    ) -> AgentProc {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let mut agent = AgentProc {
            child: None,
            node: node.clone(),
            dir: dir.to_owned(),
            manifests,
            plugin_socket: dir.join("plugin.sock"),
            zds_socket: dir.join("zds.sock"),
            log: dir.join("cni-agent.log"),
            health_interval: health_interval.to_owned(),
            add_timeout: add_timeout.to_owned(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        agent.spawn();
        agent
    }

    pub fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let cidrs: Vec<String> = self
            .node
            .pod_cidrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut cmd = self.node.netns.command(env!("CARGO_BIN_EXE_cni-agent"));
        cmd.arg("--local-dir")
            .arg(&self.manifests)
            .args(["--local-poll", "50ms", "--node-name", &self.node.name])
            .arg("--plugin-socket")
            .arg(&self.plugin_socket)
            .arg("--zds-socket")
            .arg(&self.zds_socket)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(["--health-interval", &self.health_interval])
            .args(["--add-timeout", &self.add_timeout])
            .args(["--metrics-addr", &format!("0.0.0.0:{AGENT_METRICS}")])
            .args(["--readiness-addr", &format!("0.0.0.0:{AGENT_READY}")])
            .args(["--admin-addr", &format!("127.0.0.1:{AGENT_ADMIN}")])
            .args(["--pod-cidr", &cidrs.join(",")])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn cni-agent"));
        let addr = SocketAddr::new(IpAddr::V4(self.node.ip), AGENT_READY);
        let log_path = self.log.clone();
        wait_until("cni-agent readiness", Duration::from_secs(20), || {
            matches!(
                http_get(&self.node.netns, addr, "/healthz/ready"),
                Ok((200, _))
            ) || panic_if_exited(self.child.as_mut().unwrap(), &log_path)
        });
    }

    /// Sends one plugin request and returns the agent's reply.
    pub fn send(&self, event: &PodEvent) -> Reply {
        let line = serde_json::to_string(event).unwrap();
        let reply = self.send_raw(&line);
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
    }

    /// Sends a raw request line; returns the raw reply line.
    pub fn send_raw(&self, line: &str) -> String {
        let mut s = UnixStream::connect(&self.plugin_socket).expect("connect to plugin socket");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        reply
    }

    pub fn metrics(&self) -> String {
        let addr = SocketAddr::new(IpAddr::V4(self.node.ip), AGENT_METRICS);
        http_get(&self.node.netns, addr, "/metrics")
            .expect("agent metrics")
            .1
    }

    pub fn pods(&self) -> serde_json::Value {
        let addr: SocketAddr = ([127, 0, 0, 1], AGENT_ADMIN).into();
        let body = http_get(&self.node.netns, addr, "/pods")
            .expect("agent /pods")
            .1;
        serde_json::from_str(&body).expect("/pods JSON")
    }

    /// The state the agent reports for pod `uid`.
    pub fn pod_state(&self, uid: &str) -> Option<String> {
        self.pods()
            .as_array()?
            .iter()
            .find(|p| p["uid"] == uid)
            .and_then(|p| p["state"].as_str().map(str::to_owned))
    }

    /// SIGKILL: no clean-up at all, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn panic_if_exited(child: &mut Child, log: &Path) -> bool {
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "process exited early ({status}); log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    false
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- cni-agent log ({}) ---\n{}",
                self.node.name,
                self.log_text()
            );
        }
    }
}

/// A ztunnel process in a node's netns connected to the agent's ZDS socket.
pub struct ZtunnelProc {
    pub child: Option<Child>,
    pub node: Node,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl ZtunnelProc {
    pub fn start(fx: &Fixture, node: &Node, zds_socket: &Path) -> ZtunnelProc {
        let log = fx.dir.0.join(format!("ztunnel-{}.log", node.name));
        let env = [
            ("LOCAL_XDS_PATH", fx.config_path.to_str().unwrap()),
            ("AMBIT_CA_DIR", fx.ca_dir.to_str().unwrap()),
            ("INPOD_UDS", zds_socket.to_str().unwrap()),
            ("PROXY_MODE", "shared"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
            ("ZTUNNEL_WORKER_THREADS", "1"),
            ("AMBIT_CONFIG_POLL", "50ms"),
            ("AMBIT_DRAIN_DEADLINE", "2s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut z = ZtunnelProc {
            child: None,
            node: node.clone(),
            log,
            env,
        };
        z.spawn();
        z
    }

    pub fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = self.node.netns.command(ztunnel_binary().to_str().unwrap());
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn ztunnel"));
        // Ready means: connected to the agent and the agent's snapshot replayed.
        let addr = SocketAddr::new(IpAddr::V4(self.node.ip), 15021);
        let log_path = self.log.clone();
        wait_until("ztunnel readiness", Duration::from_secs(20), || {
            matches!(
                http_get(&self.node.netns, addr, "/healthz/ready"),
                Ok((200, _))
            ) || panic_if_exited(self.child.as_mut().unwrap(), &log_path)
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn metrics(&self) -> String {
        let addr = SocketAddr::new(IpAddr::V4(self.node.ip), 15020);
        http_get(&self.node.netns, addr, "/metrics")
            .expect("metrics")
            .1
    }

    /// uids of the pods ztunnel serves now.
    pub fn served(&self) -> Vec<String> {
        let addr: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let body = http_get(&self.node.netns, addr, "/config_dump")
            .expect("config dump")
            .1;
        let dump: serde_json::Value = serde_json::from_str(&body).expect("config dump JSON");
        find_served(&dump)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// uids under any `served`-like array of objects with a `netnsInode` (the dump's layout is
/// ztunnel's business; this only relies on the served entries' fields).
fn find_served(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    match v {
        serde_json::Value::Object(map) => {
            if map.contains_key("netnsInode") {
                if let Some(uid) = map.get("uid").and_then(|u| u.as_str()) {
                    out.push(uid.to_owned());
                }
            }
            for child in map.values() {
                out.extend(find_served(child));
            }
        }
        serde_json::Value::Array(items) => {
            for child in items {
                out.extend(find_served(child));
            }
        }
        _ => {}
    }
    out
}

impl Drop for ZtunnelProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- ztunnel log ({}) ---\n{}",
                self.node.name,
                self.log_text()
            );
        }
    }
}

/// Connects from `netns` to `addr` and returns the echo server's greeting line.
pub fn greeting_from(netns: &Netns, addr: SocketAddr) -> std::io::Result<String> {
    let stream = netns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    let n = BufReader::new(stream).read_line(&mut line)?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before greeting",
        ));
    }
    Ok(line.trim_end().to_owned())
}

/// An echo server (greets `<name> saw <peer>`) in any netns with an address.
pub fn echo_in(netns: &Netns, name: &str, ip: std::net::Ipv4Addr, port: u16) -> EchoServer {
    let pod = Pod {
        name: name.to_owned(),
        netns: netns.clone(),
        ip,
        ip6: None,
        node: String::new(),
    };
    EchoServer::start(&pod, port)
}

/// The pod's iptables-save (v4) as the test bed's backend sees it.
pub fn pod_rules(pod: &Pod) -> String {
    let ipt = testbed::Iptables::get().unwrap();
    ipt.save(&pod.netns, mesh::redirect::Family::V4).unwrap()
}
