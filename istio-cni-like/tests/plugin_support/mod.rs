//! Helpers for the `plugin_*` integration tests: a stub cni-agent on a real unix socket, a bare
//! pod netns, and a libcni-like driver for a real CNI chain ending in `ambit-cni`.

#![allow(dead_code)] // Each test file uses its own subset.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context as _};
use istio_cni_like::cni::ask_agent;
use istio_cni_like::protocol::{Command as PodCommand, PodEvent, Reply};
use serde_json::{json, Value};
use testbed::{Netns, Node, TestBed};

const PLUGIN_DIR: &str = "/usr/lib/cni";
const NETWORK: &str = "ambit-test";
const PROBE_ID: &str = "__stub_probe__";

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ambit-cni-it-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the stub agent does with a request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    Reply(Reply),
    /// Read the request, never answer, keep the connection open.
    Hang,
}

#[derive(Default)]
struct StubState {
    behaviour: Option<Behaviour>,
    events: Vec<PodEvent>,
    held: Vec<UnixStream>,
    stop: bool,
}

/// A stand-in cni-agent: one thread handling connections one at a time, in accept order. That
/// order is what makes [`StubAgent::events`] exact: its probe connection queues behind every
/// connection a finished plugin made.
pub struct StubAgent {
    dir: TempDir,
    state: Arc<Mutex<StubState>>,
    thread: Option<JoinHandle<()>>,
}

impl StubAgent {
    pub fn start(behaviour: Behaviour) -> anyhow::Result<StubAgent> {
        let dir = TempDir::new("agent")?;
        let listener = UnixListener::bind(dir.path().join("agent.sock"))?;
        let state = Arc::new(Mutex::new(StubState {
            behaviour: Some(behaviour),
            ..StubState::default()
        }));
        let shared = state.clone();
        let thread = std::thread::spawn(move || serve(&listener, &shared));
        Ok(StubAgent {
            dir,
            state,
            thread: Some(thread),
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn set(&self, behaviour: Behaviour) {
        lock(&self.state).behaviour = Some(behaviour);
    }

    /// Every request received so far (probes excluded), after all earlier connections were served.
    pub fn events(&self) -> anyhow::Result<Vec<PodEvent>> {
        let probe = PodEvent {
            command: PodCommand::Check,
            container_id: PROBE_ID.to_owned(),
            netns: String::new(),
            pod_name: String::new(),
            pod_namespace: String::new(),
            pod_uid: String::new(),
            pod_ips: Vec::new(),
        };
        let reply = ask_agent(&self.socket(), &probe, Duration::from_secs(10))?;
        anyhow::ensure!(reply == Reply::Captured, "stub probe answered {reply:?}");
        Ok(lock(&self.state).events.clone())
    }
}

impl Drop for StubAgent {
    fn drop(&mut self) {
        lock(&self.state).stop = true;
        // Wake the accept; the loop sees `stop` and ends.
        let _ = UnixStream::connect(self.socket());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(state: &Mutex<StubState>) -> std::sync::MutexGuard<'_, StubState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve(listener: &UnixListener, state: &Mutex<StubState>) {
    for stream in listener.incoming() {
        if lock(state).stop {
            return;
        }
        let Ok(stream) = stream else { continue };
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let Ok(event) = serde_json::from_str::<PodEvent>(&line) else {
            continue;
        };
        let mut stream = reader.into_inner();
        let mut st = lock(state);
        let behaviour = if event.container_id == PROBE_ID {
            Behaviour::Reply(Reply::Captured)
        } else {
            st.events.push(event);
            st.behaviour.clone().unwrap_or(Behaviour::Hang)
        };
        match behaviour {
            Behaviour::Reply(reply) => {
                let mut out = serde_json::to_vec(&reply).unwrap_or_default();
                out.push(b'\n');
                let _ = stream.write_all(&out);
            }
            Behaviour::Hang => st.held.push(stream),
        }
    }
}

/// A bare netns for a pod sandbox, as a runtime creates it before calling CNI. Named with the
/// bed's prefix so the test bed's stale sweep finds it if we are killed.
pub struct PodNetns {
    pub name: String,
}

impl PodNetns {
    pub fn create(bed: &TestBed, tag: &str) -> anyhow::Result<PodNetns> {
        let name = format!("{}-{tag}", bed.prefix());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(PodNetns { name })
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<String> {
        Netns::from_name(&self.name).exec(argv)
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A plugin run: exit code and output.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// The CNI error result on stdout (the plugin must have failed).
    pub fn error_result(&self) -> anyhow::Result<Value> {
        anyhow::ensure!(self.code != Some(0), "expected a failure: {self:?}");
        serde_json::from_str(&self.stdout).with_context(|| format!("error result of {self:?}"))
    }
}

/// ADD through the chain: the result before ours and our own run.
pub struct AddOutcome {
    pub before_ours: Value,
    pub ours: Out,
}

/// The conflist `bridge (host-local) → loopback → ambit-cni`, run on one test-bed node.
pub struct Chain {
    node: Netns,
    ipam_dir: PathBuf,
    socket: PathBuf,
    timeout_ms: u64,
}

impl Chain {
    pub fn new(node: &Node, data: &TempDir, socket: &Path, timeout_ms: u64) -> Chain {
        Chain {
            node: node.netns.clone(),
            ipam_dir: data.path().to_owned(),
            socket: socket.to_owned(),
            timeout_ms,
        }
    }

    /// The plugins; node 1's CNI range is 10.1.0.128/25 (gateway .129), per the test-bed plan.
    fn plugins(&self) -> [Value; 3] {
        [
            json!({
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.1.0.128/25", "gateway": "10.1.0.129"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.ipam_dir,
                },
            }),
            json!({"type": "loopback"}),
            json!({
                "type": "ambit-cni",
                "agent_socket": self.socket,
                "timeout_ms": self.timeout_ms,
            }),
        ]
    }

    pub fn container_id(&self, pod: &PodNetns) -> String {
        format!("ctr-{}", pod.name)
    }

    fn env(&self, pod: &PodNetns, command: &str, name: &str, ns: &str) -> Vec<(String, String)> {
        [
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", self.container_id(pod)),
            ("CNI_NETNS", pod.path()),
            ("CNI_IFNAME", "eth0".to_owned()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};\
                     K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=uid-{name}",
                    self.container_id(pod)
                ),
            ),
            ("CNI_PATH", PLUGIN_DIR.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn netconf(plugin: &Value, prev: Option<&Value>) -> Vec<u8> {
        let mut conf = plugin.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(NETWORK);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf.to_string().into_bytes()
    }

    /// Runs ADD for every plugin in order, as libcni does; the primary plugins must succeed.
    pub fn add(
        &self,
        pod: &PodNetns,
        name: &str,
        ns: &str,
        uid: &str,
    ) -> anyhow::Result<AddOutcome> {
        let mut env = self.env(pod, "ADD", name, ns);
        if let Some(args) = env.iter_mut().find(|(k, _)| k == "CNI_ARGS") {
            args.1 = args.1.replace(&format!("uid-{name}"), uid);
        }
        let [bridge, loopback, ours] = self.plugins();
        let mut prev: Option<Value> = None;
        for plugin in [&bridge, &loopback] {
            let out = self.exec(
                plugin_path(plugin)?,
                &env,
                &Self::netconf(plugin, prev.as_ref()),
            )?;
            if out.code != Some(0) {
                bail!("{} ADD failed: {out:?}", plugin["type"]);
            }
            prev = Some(serde_json::from_str(&out.stdout).with_context(|| format!("{out:?}"))?);
        }
        let before_ours = prev.context("chain produced no result")?;
        let ours = self.exec(
            plugin_path(&ours)?,
            &env,
            &Self::netconf(&ours, Some(&before_ours)),
        )?;
        Ok(AddOutcome { before_ours, ours })
    }

    /// Runs only `ambit-cni` with `command`.
    pub fn run_ours(
        &self,
        pod: &PodNetns,
        command: &str,
        name: &str,
        ns: &str,
        prev: Option<&Value>,
    ) -> anyhow::Result<Out> {
        let [_, _, ours] = self.plugins();
        self.exec(
            plugin_path(&ours)?,
            &self.env(pod, command, name, ns),
            &Self::netconf(&ours, prev),
        )
    }

    /// Runs `ambit-cni` with an arbitrary environment and stdin (in the node's netns).
    pub fn exec_ours(&self, env: &[(String, String)], stdin: &[u8]) -> anyhow::Result<Out> {
        self.exec(env!("CARGO_BIN_EXE_ambit-cni").to_owned(), env, stdin)
    }

    /// DEL through the chain in reverse order, with the final result as prevResult.
    pub fn del(
        &self,
        pod: &PodNetns,
        name: &str,
        ns: &str,
        result: &Value,
    ) -> anyhow::Result<Vec<Out>> {
        let env = self.env(pod, "DEL", name, ns);
        let mut outs = Vec::new();
        for plugin in self.plugins().iter().rev() {
            outs.push(self.exec(
                plugin_path(plugin)?,
                &env,
                &Self::netconf(plugin, Some(result)),
            )?);
        }
        Ok(outs)
    }

    fn exec(&self, program: String, env: &[(String, String)], stdin: &[u8]) -> anyhow::Result<Out> {
        let mut cmd = self.node.command(&program);
        exec_with(&mut cmd, env, stdin)
    }
}

fn plugin_path(plugin: &Value) -> anyhow::Result<String> {
    match plugin["type"].as_str() {
        Some("ambit-cni") => Ok(env!("CARGO_BIN_EXE_ambit-cni").to_owned()),
        Some(t) => Ok(format!("{PLUGIN_DIR}/{t}")),
        None => bail!("plugin without type: {plugin}"),
    }
}

/// Runs the `ambit-cni` binary directly (not in a netns) with `env`, `args` and `stdin`.
pub fn run_binary(env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> anyhow::Result<Out> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambit-cni"));
    cmd.args(args);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    exec_with(&mut cmd, &env, stdin)
}

fn exec_with(cmd: &mut Command, env: &[(String, String)], stdin: &[u8]) -> anyhow::Result<Out> {
    // Only the variables of this call: a CNI_* left in the test's environment must not leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("CNI_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that fails before reading stdin closes it: that is its answer, not ours.
        let _ = input.write_all(stdin);
    }
    let output = child.wait_with_output()?;
    Ok(Out {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first IPv4 address of a CNI result.
pub fn first_ipv4(result: &Value) -> anyhow::Result<Ipv4Addr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .next()
        .with_context(|| format!("no IPv4 in {result}"))
}

/// Whether host-local still has `ip` allocated (it keeps one file per address).
pub fn ipam_holds(data: &TempDir, ip: Ipv4Addr) -> anyhow::Result<bool> {
    Ok(data.path().join(NETWORK).join(ip.to_string()).exists())
}
