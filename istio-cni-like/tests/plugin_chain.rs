//! `ambit-cni` in a real CNI chain: Debian's bridge + host-local + loopback plugins set up a pod
//! netns inside a test-bed node, then the real `ambit-cni` binary runs against a stub agent (a
//! real unix socket server answering as told). Needs root (network namespaces); fails, never
//! skips, without it.
//!
//! The chain is driven the way libcni drives a conflist: each plugin gets the list's
//! `cniVersion` and `name` plus the previous plugin's result as `prevResult`; DEL runs the
//! plugins in reverse with the final result.

mod plugin_support;

use std::time::{Duration, Instant};

use istio_cni_like::protocol::{Command, Reply};
use serde_json::{json, Value};

use plugin_support::{Behaviour, Chain, PodNetns, StubAgent, TempDir};

/// A plugin's environment: `(name, value)` pairs.
type Env = Vec<(String, String)>;

#[test]
fn add_captured_passes_the_chain_result_through_and_tells_the_agent_the_pod() -> anyhow::Result<()>
{
    let mut bed = testbed::TestBed::new("cni_chain_captured")?;
    let node = bed.add_node("node1")?;
    let pod = PodNetns::create(&bed, "web")?;
    let data = TempDir::new("ipam")?;
    let agent = StubAgent::start(Behaviour::Reply(Reply::Captured))?;
    let chain = Chain::new(&node, &data, &agent.socket(), 5_000);

    let add = chain.add(&pod, "web-0", "demo", "uid-web-0")?;
    let before_ours = add.before_ours.clone();
    assert_eq!(add.ours.code, Some(0), "ambit-cni ADD: {:?}", add.ours);
    // prevResult unchanged: exactly what loopback (the plugin before us) returned.
    let ours: Value = serde_json::from_str(&add.ours.stdout)?;
    assert_eq!(ours, before_ours, "prevResult must pass through unchanged");

    // The addresses are host-local's, really configured in the pod's netns.
    let ip = plugin_support::first_ipv4(&before_ours)?;
    assert!(
        ip.octets()[..3] == [10, 1, 0] && ip.octets()[3] > 129,
        "{ip}"
    );
    let addrs = pod.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(addrs.contains(&format!("{ip}/25")), "{addrs}");

    let events = agent.events()?;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.command, Command::Add);
    assert_eq!(event.container_id, chain.container_id(&pod));
    assert_eq!(event.netns, pod.path());
    assert_eq!(
        (
            event.pod_name.as_str(),
            event.pod_namespace.as_str(),
            event.pod_uid.as_str()
        ),
        ("web-0", "demo", "uid-web-0")
    );
    assert_eq!(event.pod_ips, vec![std::net::IpAddr::V4(ip)]);

    // CHECK: fine while the agent says captured, an error once it reports a broken capture.
    let check = chain.run_ours(&pod, "CHECK", "web-0", "demo", Some(&ours))?;
    assert_eq!(
        (check.code, check.stdout.as_str()),
        (Some(0), ""),
        "{check:?}"
    );
    agent.set(Behaviour::Reply(Reply::Failed {
        message: "inbound redirect rule missing".into(),
    }));
    let check = chain.run_ours(&pod, "CHECK", "web-0", "demo", Some(&ours))?;
    let err = check.error_result()?;
    assert_eq!(err["code"], 100, "{check:?}");
    assert!(err["details"]
        .as_str()
        .unwrap_or_default()
        .contains("inbound redirect rule missing"));

    // DEL with the agent gone: every plugin of the chain succeeds and host-local frees the IP.
    let socket = agent.socket();
    drop(agent);
    assert!(!socket.exists());
    for out in chain.del(&pod, "web-0", "demo", &ours)? {
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    assert!(
        !plugin_support::ipam_holds(&data, ip)?,
        "host-local still holds {ip} after DEL"
    );
    Ok(())
}

#[test]
fn not_enrolled_and_excluded_pods_pass_straight_through() -> anyhow::Result<()> {
    let mut bed = testbed::TestBed::new("cni_chain_passthrough")?;
    let node = bed.add_node("node1")?;
    let data = TempDir::new("ipam")?;
    let agent = StubAgent::start(Behaviour::Reply(Reply::NotEnrolled))?;
    let chain = Chain::new(&node, &data, &agent.socket(), 5_000);

    let plain = PodNetns::create(&bed, "plain")?;
    let add = chain.add(&plain, "plain-0", "default", "uid-plain")?;
    assert_eq!(add.ours.code, Some(0), "{:?}", add.ours);
    assert_eq!(
        serde_json::from_str::<Value>(&add.ours.stdout)?,
        add.before_ours
    );
    assert_eq!(
        agent.events()?.len(),
        1,
        "not-enrolled pods are still asked about"
    );

    // kube-system is excluded by default: the agent is not even asked (it could be the very pod
    // the agent needs to start).
    agent.set(Behaviour::Hang);
    let dns = PodNetns::create(&bed, "dns")?;
    let add = chain.add(&dns, "coredns-0", "kube-system", "uid-dns")?;
    assert_eq!(add.ours.code, Some(0), "{:?}", add.ours);
    assert_eq!(
        serde_json::from_str::<Value>(&add.ours.stdout)?,
        add.before_ours
    );
    assert_eq!(
        agent.events()?.len(),
        1,
        "the excluded pod reached the agent"
    );
    Ok(())
}

#[test]
fn failed_or_silent_agent_fails_the_add_closed() -> anyhow::Result<()> {
    let mut bed = testbed::TestBed::new("cni_chain_failclosed")?;
    let node = bed.add_node("node1")?;
    let data = TempDir::new("ipam")?;

    let agent = StubAgent::start(Behaviour::Reply(Reply::Failed {
        message: "ztunnel did not ack".into(),
    }))?;
    let chain = Chain::new(&node, &data, &agent.socket(), 5_000);
    let pod = PodNetns::create(&bed, "nacked")?;
    let add = chain.add(&pod, "app-0", "demo", "uid-app")?;
    assert_ne!(add.ours.code, Some(0));
    let err = add.ours.error_result()?;
    assert_eq!(err["code"], 11, "{:?}", add.ours);
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(err["details"]
        .as_str()
        .unwrap_or_default()
        .contains("ztunnel did not ack"));
    assert_eq!(agent.events()?.len(), 1);

    // An agent that accepts the request and never answers: bounded by timeout_ms.
    agent.set(Behaviour::Hang);
    let chain = Chain::new(&node, &data, &agent.socket(), 300);
    let pod = PodNetns::create(&bed, "silent")?;
    let started = Instant::now();
    let add = chain.add(&pod, "app-1", "demo", "uid-app-1")?;
    let took = started.elapsed();
    assert_eq!(add.ours.error_result()?["code"], 11, "{:?}", add.ours);
    assert!(add.ours.stdout.contains("300 ms"), "{:?}", add.ours);
    assert!(
        took < Duration::from_secs(20),
        "the ADD chain took {took:?}"
    );
    assert_eq!(agent.events()?.len(), 2, "the silent agent got the request");

    // No agent at all: unreachable is the same retryable error.
    let chain = Chain::new(&node, &data, &data.path().join("nobody.sock"), 5_000);
    let pod = PodNetns::create(&bed, "noagent")?;
    let add = chain.add(&pod, "app-2", "demo", "uid-app-2")?;
    assert_eq!(add.ours.error_result()?["code"], 11, "{:?}", add.ours);
    Ok(())
}

#[test]
fn bad_input_is_a_cni_error_and_never_reaches_the_agent() -> anyhow::Result<()> {
    let mut bed = testbed::TestBed::new("cni_chain_badinput")?;
    let node = bed.add_node("node1")?;
    let pod = PodNetns::create(&bed, "bad")?;
    let agent = StubAgent::start(Behaviour::Reply(Reply::Captured))?;
    let socket = agent.socket();
    let data = TempDir::new("ipam")?;
    let chain = Chain::new(&node, &data, &socket, 5_000);
    let good = json!({
        "cniVersion": "1.0.0", "name": "ambit-test", "type": "ambit-cni",
        "agent_socket": socket, "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.140/25"}]},
    });
    let netns = pod.path();
    let env = |netns: Option<&str>| {
        let mut env = vec![
            ("CNI_COMMAND".to_owned(), "ADD".to_owned()),
            ("CNI_CONTAINERID".to_owned(), "bad-input".to_owned()),
            ("CNI_IFNAME".to_owned(), "eth0".to_owned()),
            (
                "CNI_ARGS".to_owned(),
                "K8S_POD_NAME=p;K8S_POD_NAMESPACE=demo".to_owned(),
            ),
        ];
        if let Some(n) = netns {
            env.push(("CNI_NETNS".to_owned(), n.to_owned()));
        }
        env
    };
    let mut unknown_version = good.clone();
    unknown_version["cniVersion"] = json!("2.0.0");
    let mut no_prev = good.clone();
    no_prev.as_object_mut().map(|o| o.remove("prevResult"));
    let cases: Vec<(&str, Env, Vec<u8>, u64)> = vec![
        (
            "malformed stdin",
            env(Some(&netns)),
            b"{\"cniVersion\": ".to_vec(),
            6,
        ),
        (
            "missing CNI_NETNS",
            env(None),
            good.to_string().into_bytes(),
            7,
        ),
        (
            "nonexistent netns",
            env(Some("/run/netns/ambit-no-such-pod")),
            good.to_string().into_bytes(),
            7,
        ),
        (
            "unknown cniVersion",
            env(Some(&netns)),
            unknown_version.to_string().into_bytes(),
            1,
        ),
        (
            "missing prevResult",
            env(Some(&netns)),
            no_prev.to_string().into_bytes(),
            4,
        ),
    ];
    for (what, env, stdin, code) in cases {
        let out = chain.exec_ours(&env, &stdin)?;
        assert_ne!(out.code, Some(0), "{what}: {out:?}");
        let err = out.error_result()?;
        assert_eq!(err["code"], code, "{what}: {out:?}");
        assert!(
            err["msg"].is_string() && err["details"].is_string(),
            "{what}: {err}"
        );
    }
    // The agent saw none of it and still works.
    assert!(agent.events()?.is_empty());
    let rules = pod.exec(&["iptables-save"]).unwrap_or_default();
    assert!(
        !rules.contains("ISTIO") && !rules.contains("15001"),
        "{rules}"
    );
    Ok(())
}

#[test]
fn version_and_installer_subcommands_of_the_binary() -> anyhow::Result<()> {
    let out = plugin_support::run_binary(&[("CNI_COMMAND", "VERSION")], &[], &[])?;
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
    );

    let dir = TempDir::new("netd")?;
    let conflist = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}"#;
    std::fs::write(dir.path().join("10-k8s.conflist"), conflist)?;
    let d = dir.path().to_string_lossy().into_owned();
    let out = plugin_support::run_binary(
        &[],
        &[
            "install",
            "--cni-conf-dir",
            &d,
            "--agent-socket",
            "/run/a.sock",
        ],
        &[],
    )?;
    assert_eq!(out.code, Some(0), "{out:?}");
    let merged: Value = serde_json::from_str(&std::fs::read_to_string(
        dir.path().join("10-k8s.conflist"),
    )?)?;
    assert_eq!(merged["plugins"][1]["type"], "ambit-cni");
    assert_eq!(merged["plugins"][1]["agent_socket"], "/run/a.sock");
    let out = plugin_support::run_binary(&[], &["uninstall", "--cni-conf-dir", &d], &[])?;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("10-k8s.conflist"))?,
        conflist
    );

    let out = plugin_support::run_binary(&[], &["install"], &[])?;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--cni-conf-dir"), "{out:?}");
    Ok(())
}
