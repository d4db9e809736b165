//! Shared set-up of the control-plane end-to-end tests: a control-plane process on a host of
//! a test bed, serving a folder of YAML, and shared-mode ztunnels that get config and
//! certificates from it.

#![allow(dead_code)] // each test file uses its own subset

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use mesh::caclient::{CaClient, CaClientConfig, CaClientError, TokenSource};
use mesh::identity::Identity;

pub use testbed::fixture::*;
pub use testbed::{Node, Pod};

pub const TOKEN_N1: &str = "bootstrap-token-node-n1-0123456789";
pub const TOKEN_N2: &str = "bootstrap-token-node-n2-0123456789";
pub const ID_PREFIX: &str = "spiffe://cluster.local/ns/";

/// Located next to this test binary's directory (target/<profile>/ztunnel); `cargo test
/// --workspace` builds it.
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

/// Writes a file atomically (rename), as an operator's tooling would.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The folder the control plane watches (created on first use).
pub fn config_dir(fx: &Fixture) -> PathBuf {
    let dir = fx.dir.0.join("mesh-config");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The control-plane process, in `host`'s netns.
pub struct ControlPlane {
    pub child: Option<Child>,
    pub host: Node,
    /// The watched config folder.
    pub config: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
}

impl ControlPlane {
    pub fn start(fx: &Fixture, host: &Node) -> ControlPlane {
        let config = config_dir(fx);
        let tokens = fx.dir.0.join("bootstrap-tokens");
        std::fs::write(&tokens, format!("n1 {TOKEN_N1}\nn2 {TOKEN_N2}\n")).unwrap();
        let args = vec![
            "--local-dir".to_string(),
            config.display().to_string(),
            "--cacerts".to_string(),
            fx.ca_dir.display().to_string(),
            "--bootstrap-tokens".to_string(),
            tokens.display().to_string(),
            "--listen".to_string(),
            "0.0.0.0:15012".to_string(),
            "--readiness-addr".to_string(),
            "0.0.0.0:15021".to_string(),
        ];
        let mut cp = ControlPlane {
            child: None,
            host: host.clone(),
            config,
            log: fx.dir.0.join("control-plane.log"),
            args,
        };
        cp.spawn();
        cp
    }

    /// A control plane with exactly `args` (besides `--listen`/`--readiness-addr`), e.g.
    /// `--kube --kube-api URL` with no bootstrap tokens.
    pub fn start_with_args(fx: &Fixture, host: &Node, args: &[&str]) -> ControlPlane {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(
            [
                "--listen",
                "0.0.0.0:15012",
                "--readiness-addr",
                "0.0.0.0:15021",
            ]
            .map(String::from),
        );
        let mut cp = ControlPlane {
            child: None,
            host: host.clone(),
            config: config_dir(fx),
            log: fx.dir.0.join("control-plane.log"),
            args,
        };
        cp.spawn();
        cp
    }

    /// (Re)starts the process and waits for its readiness endpoint.
    pub fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = self.host.netns.command(env!("CARGO_BIN_EXE_control-plane"));
        cmd.args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn control-plane"));
        let addr = SocketAddr::new(IpAddr::V4(self.host.ip), 15021);
        let netns = self.host.netns.clone();
        let child = self.child.as_mut().unwrap();
        wait_until("control-plane readiness", Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("control-plane exited early: {status}");
            }
            matches!(http_get(&netns, addr, "/healthz/ready"), Ok((200, _)))
        });
    }

    pub fn address(&self) -> String {
        format!("{}:15012", self.host.ip)
    }

    /// SIGTERM and the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }

    pub fn write(&self, file: &str, yaml: &str) {
        write_atomic(&self.config.join(file), yaml);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- control-plane log ---\n{}", self.log_text());
        }
    }
}

/// Starts node `node`'s ztunnel against the control plane, with that node's bootstrap token.
pub fn start_ztunnel(fx: &Fixture, cp: &ControlPlane, node: &Node, token: &str) -> Ztunnel {
    let token_file = fx.dir.0.join(format!("token-{}", node.name));
    std::fs::write(&token_file, token).unwrap();
    let root = fx.ca_dir.join("root-cert.pem");
    let (address, ip) = (cp.address(), node.ip.to_string());
    let pod_name = format!("ztunnel-{}", node.name);
    fx.start_ztunnel_with_env(
        node,
        &[
            ("XDS_ADDRESS", &address),
            ("CA_ADDRESS", &address),
            ("XDS_ROOT_CA", root.to_str().unwrap()),
            ("AMBIT_XDS_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AMBIT_CA_TOKEN_FILE", token_file.to_str().unwrap()),
            ("POD_NAME", &pod_name),
            ("POD_NAMESPACE", "istio-system"),
            ("INSTANCE_IP", &ip),
            ("NODE_NAME", &node.name),
        ],
    )
}

pub const SERVER_LABELS: &[(&str, &str)] = &[("app", "server")];

/// DENY for the client's identity on the server.
pub fn deny_client_policy() -> String {
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-client\n  namespace: default\nspec:\n  selector:\n    matchLabels: {app: server}\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/client-sa\"]\n".to_string()
}

/// A two-node mesh served by a control plane: client pod on n1, echo server pod on n2.
pub struct Mesh {
    // Field order is drop order: processes before the bed they run in.
    pub z1: Ztunnel,
    pub z2: Ztunnel,
    pub cp: ControlPlane,
    pub client: Pod,
    pub server: Pod,
    pub echo: EchoServer,
    pub n1: Node,
    pub n2: Node,
    pub fx: Fixture,
}

/// Builds the mesh; when `server_in_config` is false the server pod's file is left out (the
/// pod exists and its ztunnel serves it, but the control plane does not know it yet).
pub fn mesh(name: &str, server_in_config: bool) -> Mesh {
    let mut fx = Fixture::new(name, ztunnel_binary());
    let host = fx.bed.add_host("cp").expect("host");
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let client = fx.add_captured_pod(&n1, "client");
    let server = fx.add_captured_pod(&n2, "server");
    let echo = EchoServer::start(&server, 8080);

    // The folder is complete before the control plane starts: its first push is the mesh.
    let config = config_dir(&fx);
    write_atomic(
        &config.join("namespace.yaml"),
        &namespace_yaml("default", true),
    );
    write_atomic(
        &config.join("client.yaml"),
        &k8s_pod_yaml(&client, "default", "client-sa", &[]),
    );
    if server_in_config {
        write_atomic(
            &config.join("server.yaml"),
            &k8s_pod_yaml(&server, "default", "server-sa", SERVER_LABELS),
        );
    }
    let cp = ControlPlane::start(&fx, &host);
    let z1 = start_ztunnel(&fx, &cp, &n1, TOKEN_N1);
    let z2 = start_ztunnel(&fx, &cp, &n2, TOKEN_N2);
    z1.serve(&[(&client, "default", "client-sa")]);
    z2.serve(&[(&server, "default", "server-sa")]);
    Mesh {
        z1,
        z2,
        cp,
        client,
        server,
        echo,
        n1,
        n2,
        fx,
    }
}

/// Connects and reads the greeting; `Err` when the mesh refused or closed the connection.
pub fn try_greeting(from: &Pod, to: SocketAddr) -> std::io::Result<(Client, String)> {
    let mut c = Client::connect(from, to)?;
    c.stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let g = c.greeting()?;
    Ok((c, g))
}

pub type Fetched = Result<mesh::cert::WorkloadCertificate, CaClientError>;

/// From `node`'s network, as its ztunnel would ask, with `token`: certificates for
/// `default/client-sa` and `default/server-sa` (what the CA may grant depends on which of those
/// identities run on `node`).
pub fn fetch_certificates(
    fx: &Fixture,
    cp: &ControlPlane,
    node: &Node,
    token: &str,
) -> (Fetched, Fetched) {
    let roots = mesh::ca::CertificateAuthority::from_cacerts_dir(&fx.ca_dir)
        .unwrap()
        .roots()
        .to_vec();
    let address = cp.address();
    let token = token.to_string();
    node.netns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ca = CaClient::new(CaClientConfig {
                address,
                roots,
                server_identity: Identity::new(
                    "cluster.local",
                    "istio-system",
                    "ambit-control-plane",
                )
                .unwrap(),
                token: TokenSource::Static(token),
                lifetime: Duration::from_secs(600),
                cluster_id: None,
            })
            .unwrap();
            let client = Identity::new("cluster.local", "default", "client-sa").unwrap();
            let server = Identity::new("cluster.local", "default", "server-sa").unwrap();
            (
                ca.fetch_certificate(&client).await,
                ca.fetch_certificate(&server).await,
            )
        })
    })
}
