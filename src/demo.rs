//! `ambit demo`: a small local mesh on network namespaces.
//!
//! Two "nodes" and two pods (`sleep` in namespace `client`, `httpbin` in namespace `server`)
//! are built as network namespaces with the in-pod redirect rules; a real ztunnel runs on
//! each node in shared mode, with this command playing the node agent over ZDS. The client
//! connects to the server's service VIP; the connection crosses the nodes over HBONE (mTLS +
//! HTTP/2 CONNECT). The command then prints what each ztunnel logged and counted. Everything
//! it created is removed when it exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use testbed::fixture::{metric_sum, wait_until, workload_yaml, Client, EchoServer, Fixture};

const SERVICE_VIP: &str = "10.96.0.20";

pub fn run(ztunnel: Option<PathBuf>) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the demo builds network namespaces and iptables rules: run it as root");
    }
    let ztunnel = match ztunnel {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .join("ztunnel"),
    };
    if !ztunnel.exists() {
        bail!(
            "no ztunnel binary at {} (build it with `cargo build --release --workspace --bins`, or pass --ztunnel)",
            ztunnel.display()
        );
    }

    println!("== building two nodes and two pods as network namespaces");
    let mut fx = Fixture::new("demo", ztunnel);
    let node_a = fx.add_node("node-a");
    let node_b = fx.add_node("node-b");
    let sleep = fx.add_captured_pod(&node_a, "sleep");
    let httpbin = fx.add_captured_pod(&node_b, "httpbin");
    println!("   sleep   (ns client, sa sleep)   {} on node-a", sleep.ip);
    println!(
        "   httpbin (ns server, sa httpbin) {} on node-b",
        httpbin.ip
    );

    let svc = "server/httpbin.server.svc.cluster.local";
    let config = format!(
        "workloads:\n{}{}services:\n- name: httpbin\n  namespace: server\n  hostname: httpbin.server.svc.cluster.local\n  vips: [\"/{SERVICE_VIP}\"]\n  ports:\n    80: 8080\npolicies:\n- name: allow-client-namespace\n  namespace: server\n  scope: Namespace\n  action: Allow\n  rules:\n  - - - namespaces: [{{Exact: client}}]\n",
        workload_yaml(&sleep, "client", "sleep", "node-a", &[]),
        workload_yaml(&httpbin, "server", "httpbin", "node-b", &[(svc, 80, 8080)]),
    );
    fx.write_config(&config);
    println!(
        "\n== local config ({}):\n{config}",
        fx.config_path.display()
    );

    let app = EchoServer::start(&httpbin, 8080);
    println!("== starting ztunnel on each node (shared mode; this command is the node agent)");
    let zt_a = fx.start_ztunnel(&node_a, &[("LOG_FORMAT", "text")]);
    let zt_b = fx.start_ztunnel(&node_b, &[("LOG_FORMAT", "text")]);
    zt_a.serve(&[(&sleep, "client", "sleep")]);
    zt_b.serve(&[(&httpbin, "server", "httpbin")]);
    println!("   both ready (/healthz/ready = 200)");

    let vip: SocketAddr = format!("{SERVICE_VIP}:80").parse()?;
    println!("\n== sleep connects to the httpbin service VIP {vip}");
    let mut client = Client::connect(&sleep, vip).context("connecting through the mesh")?;
    println!("   app says: {}", client.greeting()?);
    println!("   echo:     {}", client.echo("hello over HBONE")?);
    drop(client);

    wait_until(
        "the destination ztunnel to count the connection",
        Duration::from_secs(10),
        || {
            metric_sum(
                &zt_b.metrics(),
                "istio_tcp_connections_closed_total",
                &[("reporter", "destination")],
            ) >= 1.0
        },
    );

    for (name, zt) in [("node-a (source)", &zt_a), ("node-b (destination)", &zt_b)] {
        println!("\n== access log of ztunnel on {name}");
        for line in zt.log_text().lines().filter(|l| l.contains("access")) {
            println!("   {line}");
        }
        println!("== metrics of ztunnel on {name} (istio_tcp_*)");
        for line in zt.metrics().lines().filter(|l| l.starts_with("istio_tcp_")) {
            println!("   {line}");
        }
    }
    let dump = zt_b.config_dump();
    println!("\n== certificates held by node-b's ztunnel (from /config_dump)");
    println!("{}", serde_json::to_string_pretty(&dump["certificates"])?);
    println!(
        "\nThe app accepted {} connection(s). Cleaning up namespaces and processes.",
        app.accepted.load(std::sync::atomic::Ordering::SeqCst)
    );
    Ok(())
}
