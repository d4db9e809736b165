//! `ambit config problems` against a real control plane (in-process, folder mode, real
//! sockets) and `ambit config check <dir>` offline: a folder with one bad and one good policy.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use control_plane::problems::Report;
use control_plane::run::{self, ConfigSource, Options, Readiness};
use mesh::identity::Identity;

const WAIT: Duration = Duration::from_secs(20);

fn policy(name: &str, action: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: default}}\n\
         spec: {{action: {action}, rules: [{{from: [{{source: {{principals: [x]}}}}]}}]}}\n"
    )
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn ambit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(args)
        .output()
        .expect("running ambit")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config_folder() -> PathBuf {
    let dir = scratch("problems-config");
    std::fs::write(dir.join("good.yaml"), policy("good", "DENY")).unwrap();
    std::fs::write(dir.join("bad.yaml"), policy("bad", "PERMIT")).unwrap();
    dir
}

fn options(config: &Path, admin: SocketAddr) -> Options {
    let state = scratch("problems-state");
    let tokens = state.join("tokens");
    std::fs::write(
        &tokens,
        "n1 problems-test-bootstrap-token-0123456789abcdef\n",
    )
    .unwrap();
    Options {
        source: ConfigSource::LocalDir(config.to_path_buf()),
        cacerts: None,
        ca_store: Some(state.join("ca")),
        ca_root_secret: None,
        namespace: None,
        bootstrap_tokens: Some(tokens),
        listen: free_port(),
        readiness: free_port(),
        admin,
        trust_domain: "cluster.local".into(),
        identity: Identity::new("cluster.local", "istio-system", "ambit-control-plane").unwrap(),
        poll: Duration::from_millis(20),
        debounce: Duration::from_millis(20),
        serving_cert_lifetime: Duration::from_secs(3600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_a_running_control_planes_bad_policy_and_not_the_good_one() {
    let config = config_folder();
    let admin = free_port();
    let readiness = Readiness::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cp = tokio::spawn(run::run(
        options(&config, admin),
        readiness.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    // Ready is set after the admin listener is bound.
    let deadline = Instant::now() + WAIT;
    while !readiness.is_ready() {
        assert!(!cp.is_finished(), "control plane stopped: {:?}", cp.await);
        assert!(Instant::now() < deadline, "control plane not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://{admin}");

    let table = tokio::task::spawn_blocking({
        let url = url.clone();
        move || ambit(&["config", "problems", "--control-plane", &url])
    })
    .await
    .unwrap();
    let out = stdout(&table);
    assert_eq!(table.status.code(), Some(1), "errors must fail CI: {out}");
    assert!(out.contains("AuthorizationPolicy default/bad"), "{out}");
    assert!(out.contains("spec.action"), "{out}");
    assert!(!out.contains("default/good"), "{out}");
    assert!(out.contains("1 error(s), 0 warning(s)"), "{out}");

    let json = tokio::task::spawn_blocking({
        let url = url.clone();
        move || ambit(&["config", "problems", "--control-plane", &url, "-o", "json"])
    })
    .await
    .unwrap();
    let report: Report = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {}{}",
            stdout(&json),
            String::from_utf8_lossy(&json.stderr)
        )
    });
    assert_eq!(report.errors, 1);
    assert_eq!(report.problems[0].name, "bad");

    // Fixed in the folder: the next translation clears the listing and the exit code.
    std::fs::write(config.join("bad.yaml"), policy("bad", "ALLOW")).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let url = url.clone();
        let o = tokio::task::spawn_blocking(move || {
            ambit(&["config", "problems", "--control-plane", &url])
        })
        .await
        .unwrap();
        if o.status.success() {
            assert_eq!(stdout(&o), "no problems\n");
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {}", stdout(&o));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    cp.await.unwrap().unwrap();
}

#[test]
fn check_lists_a_folders_problems_offline() {
    let config = scratch("check-config");
    std::fs::write(config.join("good.yaml"), policy("good", "DENY")).unwrap();
    std::fs::write(config.join("bad.yaml"), policy("bad", "PERMIT")).unwrap();
    let dir = config.display().to_string();
    let o = ambit(&["config", "check", &dir]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    // The good policy is translated; the bad one is listed with its field.
    assert!(out.contains("0 workloads, 0 services, 1 policies"), "{out}");
    assert!(out.contains("AuthorizationPolicy default/bad"), "{out}");
    assert!(out.contains("spec.action"), "{out}");

    std::fs::remove_file(config.join("bad.yaml")).unwrap();
    let o = ambit(&["config", "check", &dir]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).ends_with("no problems\n"));
}
