use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::IpAddr;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::protocol::{PodEvent, Reply, DEFAULT_PLUGIN_SOCKET};

/// A netns path that exists on every Linux test machine.
const NETNS: &str = "/proc/self/ns/net";

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |key| map.get(key).cloned()
}

fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;\
             K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=1234-abcd",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn with(
    env: &[(&'static str, &'static str)],
    key: &'static str,
    value: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut env: Vec<_> = env.iter().filter(|(k, _)| *k != key).copied().collect();
    env.push((key, value));
    env
}

fn without(env: &[(&'static str, &'static str)], key: &str) -> Vec<(&'static str, &'static str)> {
    env.iter().filter(|(k, _)| *k != key).copied().collect()
}

fn prev_result() -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": NETNS}],
        "ips": [
            {"address": "10.1.0.130/25", "gateway": "10.1.0.129", "interface": 0},
            {"address": "fd00:10:1::82/64", "interface": 0}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn netconf(extra: serde_json::Value) -> Vec<u8> {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambit-cni",
        "prevResult": prev_result(),
    });
    if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            conf.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&conf).unwrap()
}

fn parse(env: &[(&str, &str)], stdin: &[u8]) -> Result<CniRequest, CniError> {
    parse_request(&env_of(env), stdin)
}

fn parse_pod(env: &[(&str, &str)], stdin: &[u8]) -> PodRequest {
    match parse(env, stdin) {
        Ok(CniRequest::Pod(p)) => *p,
        other => panic!("expected a pod request, got {other:?}"),
    }
}

fn code_of(env: &[(&str, &str)], stdin: &[u8]) -> u32 {
    match parse(env, stdin) {
        Err(e) => e.code(),
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

#[test]
fn add_parses_everything_the_agent_needs() {
    let req = parse_pod(&add_env(), &netconf(json!({})));
    assert_eq!(req.command, Command::Add);
    assert_eq!(req.container_id, "c0ffee");
    assert_eq!(req.netns, NETNS);
    assert_eq!(req.ifname, "eth0");
    assert_eq!(
        req.pod,
        PodArgs {
            name: "web-1".into(),
            namespace: "demo".into(),
            uid: "1234-abcd".into()
        }
    );
    assert_eq!(req.config.cni_version, "1.0.0");
    assert_eq!(req.config.name, "k8s-pod-network");
    let ips: Vec<IpAddr> = vec![
        "10.1.0.130".parse().unwrap(),
        "fd00:10:1::82".parse().unwrap(),
    ];
    assert_eq!(req.config.pod_ips, ips);
    assert_eq!(
        req.config.options,
        PluginOptions {
            agent_socket: DEFAULT_PLUGIN_SOCKET.into(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            exclude_namespaces: vec!["kube-system".into()],
        }
    );
    assert_eq!(
        req.to_event(),
        PodEvent {
            command: Command::Add,
            container_id: "c0ffee".into(),
            netns: NETNS.into(),
            pod_name: "web-1".into(),
            pod_namespace: "demo".into(),
            pod_uid: "1234-abcd".into(),
            pod_ips: ips,
        }
    );
}

#[test]
fn plugin_options_are_read_from_the_netconf() {
    let req = parse_pod(
        &add_env(),
        &netconf(json!({
            "agent_socket": "/tmp/agent.sock",
            "timeout_ms": 250,
            "exclude_namespaces": ["demo", "other"],
            "runtimeConfig": {"portMappings": []},
        })),
    );
    assert_eq!(
        req.config.options.agent_socket,
        PathBuf::from("/tmp/agent.sock")
    );
    assert_eq!(req.config.options.timeout, Duration::from_millis(250));
    assert!(req.is_excluded());
}

#[test]
fn every_supported_version_parses_and_is_echoed_in_the_result() {
    for version in SUPPORTED_VERSIONS {
        let req = parse_pod(&add_env(), &netconf(json!({"cniVersion": version})));
        assert_eq!(req.config.cni_version, *version);
        let out: serde_json::Value = serde_json::from_str(&req.passthrough_result()).unwrap();
        let mut expected = prev_result();
        expected["cniVersion"] = json!(version);
        assert_eq!(out, expected, "prevResult must pass through unchanged");
    }
}

#[test]
fn version_needs_nothing_else() {
    assert_eq!(
        parse(&[("CNI_COMMAND", "VERSION")], b""),
        Ok(CniRequest::Version)
    );
    let v: serde_json::Value = serde_json::from_str(&version_result()).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
    );
}

#[test]
fn malformed_stdin_is_a_decoding_error() {
    for stdin in [
        &b""[..],
        b"  \n",
        b"{",
        b"{\"cniVersion\": 1.0.0}",
        b"\xff\xfe",
        b"[1,2",
    ] {
        assert_eq!(
            code_of(&add_env(), stdin),
            6,
            "{:?}",
            String::from_utf8_lossy(stdin)
        );
    }
}

#[test]
fn unknown_or_missing_cni_version() {
    assert_eq!(
        code_of(&add_env(), &netconf(json!({"cniVersion": "2.0.0"}))),
        1
    );
    assert_eq!(
        code_of(&add_env(), &netconf(json!({"cniVersion": "0.2.0"}))),
        1
    );
    assert_eq!(code_of(&add_env(), &netconf(json!({"cniVersion": 1}))), 4);
    let no_version = br#"{"name":"n","type":"ambit-cni","prevResult":{}}"#;
    assert_eq!(code_of(&add_env(), no_version), 4);
    // CHECK did not exist before 0.4.0.
    let check = with(&add_env(), "CNI_COMMAND", "CHECK");
    assert_eq!(code_of(&check, &netconf(json!({"cniVersion": "0.3.1"}))), 1);
}

#[test]
fn invalid_config_fields_are_code_4() {
    for extra in [
        json!({"prevResult": null}),
        json!({"prevResult": "x"}),
        json!({"prevResult": {"ips": {}}}),
        json!({"prevResult": {"ips": [{"address": "10.1.0.1"}]}}),
        json!({"prevResult": {"ips": [{"address": "10.1.0.1/33"}]}}),
        json!({"prevResult": {"ips": [{"address": "nope/24"}]}}),
        json!({"prevResult": {"ips": [{"gateway": "10.0.0.1"}]}}),
        json!({"timeout_ms": 0}),
        json!({"timeout_ms": -5}),
        json!({"timeout_ms": "fast"}),
        json!({"timeout_ms": MAX_TIMEOUT_MS + 1}),
        json!({"agent_socket": ""}),
        json!({"agent_socket": 7}),
        json!({"exclude_namespaces": "kube-system"}),
        json!({"name": ""}),
        json!({"type": null}),
    ] {
        assert_eq!(code_of(&add_env(), &netconf(extra.clone())), 4, "{extra}");
    }
    assert_eq!(code_of(&add_env(), b"[]"), 4);
}

#[test]
fn add_without_prev_result_is_rejected_but_del_and_check_tolerate_it() {
    let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"ambit-cni"}"#;
    match parse(&add_env(), conf) {
        Err(CniError::InvalidConfig {
            field: "prevResult",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    for cmd in ["DEL", "CHECK"] {
        let req = parse_pod(&with(&add_env(), "CNI_COMMAND", cmd), conf);
        assert!(req.config.pod_ips.is_empty());
    }
}

#[test]
fn missing_or_bad_environment_is_code_7() {
    assert_eq!(code_of(&without(&add_env(), "CNI_COMMAND"), b"{}"), 7);
    assert_eq!(
        code_of(&with(&add_env(), "CNI_COMMAND", "UPDATE"), b"{}"),
        7
    );
    let conf = netconf(json!({}));
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        match parse(&without(&add_env(), var), &conf) {
            Err(CniError::InvalidEnv { var: v, .. }) if v == var => {}
            other => panic!("without {var}: {other:?}"),
        }
        assert_eq!(code_of(&with(&add_env(), var, ""), &conf), 7, "empty {var}");
    }
}

#[test]
fn a_netns_that_does_not_exist_is_rejected_for_add_and_check_only() {
    let gone = "/run/netns/ambit-test-no-such-netns";
    let conf = netconf(json!({}));
    for cmd in ["ADD", "CHECK"] {
        let env = with(&with(&add_env(), "CNI_NETNS", gone), "CNI_COMMAND", cmd);
        match parse(&env, &conf) {
            Err(CniError::InvalidEnv {
                var: "CNI_NETNS",
                reason,
            }) => {
                assert!(reason.contains(gone), "{reason}")
            }
            other => panic!("{cmd}: {other:?}"),
        }
    }
    // DEL of a sandbox whose netns is gone (or was never given) must still work.
    let del = with(&with(&add_env(), "CNI_NETNS", gone), "CNI_COMMAND", "DEL");
    assert_eq!(parse_pod(&del, &conf).netns, gone);
    let del = without(&without(&del, "CNI_NETNS"), "CNI_IFNAME");
    assert_eq!(parse_pod(&del, &conf).netns, "");
}

#[test]
fn garbage_cni_args_are_rejected() {
    let conf = netconf(json!({}));
    for args in [
        "K8S_POD_NAME",
        "=x;K8S_POD_NAME=a;K8S_POD_NAMESPACE=b",
        "K8S_POD_NAME=a;K8S_POD_NAME=b;K8S_POD_NAMESPACE=c",
        "K8S_POD_NAME=a\nb;K8S_POD_NAMESPACE=c",
        "FOO=1;K8S_POD_NAME=a;K8S_POD_NAMESPACE=b",
        "IgnoreUnknown=maybe;K8S_POD_NAME=a;K8S_POD_NAMESPACE=b",
        "IgnoreUnknown=0;FOO=1;K8S_POD_NAME=a;K8S_POD_NAMESPACE=b",
        // Pod identity is required for ADD: passing an anonymous pod would bypass capture.
        "IgnoreUnknown=1",
        "K8S_POD_NAME=a",
        "K8S_POD_NAMESPACE=b",
    ] {
        match parse(&with(&add_env(), "CNI_ARGS", args), &conf) {
            Err(CniError::InvalidEnv {
                var: "CNI_ARGS", ..
            }) => {}
            other => panic!("CNI_ARGS={args:?}: {other:?}"),
        }
    }
    let long = format!("K8S_POD_NAME={};K8S_POD_NAMESPACE=b", "x".repeat(300));
    assert_eq!(args::parse(&long).map_err(|e| e.code()), Err(7));
}

#[test]
fn tolerated_cni_args_forms() {
    let pod =
        args::parse("IgnoreUnknown=true;K8S_POD_NAME=a;;K8S_POD_NAMESPACE=b;FOO=bar;").unwrap();
    assert_eq!(
        (pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str()),
        ("a", "b", "")
    );
    // DEL needs no pod identity.
    let del = with(&without(&add_env(), "CNI_ARGS"), "CNI_COMMAND", "DEL");
    assert_eq!(parse_pod(&del, &netconf(json!({}))).pod, PodArgs::default());
}

#[test]
fn error_results_carry_code_msg_and_details() {
    let err = parse(&add_env(), &netconf(json!({"cniVersion": "9.9.9"}))).unwrap_err();
    let v: serde_json::Value = serde_json::from_str(&err.to_result_json("1.0.0")).unwrap();
    assert_eq!(v["code"], 1);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["msg"], "incompatible CNI version");
    assert!(v["details"].as_str().unwrap().contains("9.9.9"));
    // The request's version is echoed when it is one we speak.
    assert_eq!(
        result_version(&netconf(json!({"cniVersion": "0.4.0"}))),
        "0.4.0"
    );
    assert_eq!(
        result_version(&netconf(json!({"cniVersion": "7"}))),
        "1.0.0"
    );
    assert_eq!(result_version(b"garbage"), "1.0.0");
}

/// A one-shot agent on a real unix socket: records the request, answers `reply` (or nothing).
fn one_shot_agent(
    reply: Option<&'static str>,
) -> (tempdir::Dir, std::thread::JoinHandle<PodEvent>) {
    let dir = tempdir::Dir::new("agent");
    let listener = UnixListener::bind(dir.path().join("agent.sock")).unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let event: PodEvent = serde_json::from_str(&line).unwrap();
        let mut stream = reader.into_inner();
        match reply {
            Some(r) => stream.write_all(r.as_bytes()).unwrap(),
            // Keep the connection open until the plugin gave up: it closes its end.
            None => {
                let mut rest = String::new();
                let _ = BufReader::new(stream).read_line(&mut rest);
            }
        }
        event
    });
    (dir, handle)
}

fn run_add(dir: &tempdir::Dir, timeout_ms: u64) -> Outcome {
    let sock = dir.path().join("agent.sock");
    let conf = netconf(json!({"agent_socket": sock.to_str().unwrap(), "timeout_ms": timeout_ms}));
    run(&env_of(&add_env()), &conf)
}

#[test]
fn run_add_passes_prev_result_through_when_captured() {
    for reply in [
        "{\"outcome\":\"captured\"}\n",
        "{\"outcome\":\"not_enrolled\"}",
    ] {
        let (dir, agent) = one_shot_agent(Some(reply));
        let out = run_add(&dir, 5_000);
        assert_eq!(out.exit_code, 0, "{out:?}");
        let result: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(result, prev_result());
        let event = agent.join().unwrap();
        assert_eq!(event.pod_name, "web-1");
        assert_eq!(event.command, Command::Add);
    }
}

#[test]
fn run_add_fails_closed() {
    let cases = [
        Some("{\"outcome\":\"failed\",\"message\":\"ztunnel nacked\"}\n"),
        Some("{\"outcome\":\"released\"}\n"),
        Some("not json\n"),
        Some(""),
        None,
    ];
    for reply in cases {
        let (dir, agent) = one_shot_agent(reply);
        let out = run_add(&dir, if reply.is_none() { 200 } else { 5_000 });
        assert_eq!(out.exit_code, 1, "{reply:?}: {out:?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 11, "{reply:?}: {out:?}");
        if let Some(r) = reply.filter(|r| r.contains("nacked")) {
            assert!(
                v["details"].as_str().unwrap().contains("ztunnel nacked"),
                "{r}"
            );
        }
        agent.join().unwrap();
    }
    // Nobody listening at all.
    let dir = tempdir::Dir::new("noagent");
    let out = run_add(&dir, 5_000);
    assert_eq!(
        (out.exit_code, out.stdout.contains("\"code\":11")),
        (1, true),
        "{out:?}"
    );
}

#[test]
fn run_del_succeeds_without_an_agent_and_check_does_not() {
    let dir = tempdir::Dir::new("noagent");
    let sock = dir.path().join("agent.sock");
    let conf = netconf(json!({"agent_socket": sock.to_str().unwrap()}));
    let out = run(&env_of(&with(&add_env(), "CNI_COMMAND", "DEL")), &conf);
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, ""));
    assert!(out.stderr.contains("ignored"), "{out:?}");
    let out = run(&env_of(&with(&add_env(), "CNI_COMMAND", "CHECK")), &conf);
    assert_eq!(out.exit_code, 1);
}

#[test]
fn excluded_namespaces_never_reach_the_agent() {
    // The socket does not exist: any attempt to ask the agent would fail the ADD.
    let env = with(
        &add_env(),
        "CNI_ARGS",
        "K8S_POD_NAME=coredns;K8S_POD_NAMESPACE=kube-system",
    );
    let conf = netconf(json!({"agent_socket": "/nonexistent/agent.sock"}));
    let out = run(&env_of(&env), &conf);
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap(),
        prev_result()
    );
}

#[test]
fn ask_agent_rejects_oversized_replies() {
    let dir = tempdir::Dir::new("big");
    let listener = UnixListener::bind(dir.path().join("agent.sock")).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        reader.read_line(&mut String::new()).unwrap();
        // No newline, ever: the plugin must stop reading at its limit (and then hang up, which
        // fails this write).
        let _ = reader.into_inner().write_all(&vec![b'x'; 200 * 1024]);
    });
    let event = parse_pod(&add_env(), &netconf(json!({}))).to_event();
    let err = ask_agent(
        &dir.path().join("agent.sock"),
        &event,
        Duration::from_secs(5),
    )
    .unwrap_err();
    assert!(matches!(err, AgentError::BadReply { .. }), "{err:?}");
    server.join().unwrap();
}

#[test]
fn reply_protocol_round_trips() {
    for reply in [
        Reply::Captured,
        Reply::NotEnrolled,
        Reply::Released,
        Reply::Failed {
            message: "x".into(),
        },
    ] {
        let line = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), reply);
    }
}

proptest! {
    #[test]
    fn fuzz_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_parse(&bytes);
    }

    #[test]
    fn fuzz_parse_never_panics_on_near_valid_input(
        cmd in prop::sample::select(vec!["ADD", "DEL", "CHECK", "VERSION", "X"]),
        args in "[A-Za-z0-9_=;.-]{0,60}",
        conf in prop::sample::select(vec![
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{"ips":[{"address":"10.0.0.1/8"}]}}"#,
            r#"{"cniVersion":"0.3.1","name":"n","type":"t","prevResult":{"ips":"x"}}"#,
            r#"{"cniVersion":"1.0.0","timeout_ms":1e99}"#,
        ]),
        cut in 0usize..200,
    ) {
        let conf = &conf.as_bytes()[..cut.min(conf.len())];
        let mut input = format!("CNI_COMMAND={cmd}\nCNI_CONTAINERID=c\nCNI_NETNS={NETNS}\nCNI_IFNAME=eth0\nCNI_ARGS={args}\n").into_bytes();
        input.push(0);
        input.extend_from_slice(conf);
        fuzz_parse(&input);
    }

    #[test]
    fn cni_args_round_trip(
        name in "[a-z0-9][a-z0-9.-]{0,40}",
        namespace in "[a-z0-9][a-z0-9-]{0,40}",
        uid in "[a-f0-9-]{0,36}",
        order in 0usize..6,
    ) {
        let mut pairs = [
            format!("K8S_POD_NAME={name}"),
            format!("K8S_POD_NAMESPACE={namespace}"),
            format!("K8S_POD_UID={uid}"),
            "IgnoreUnknown=1".to_owned(),
        ];
        let n = pairs.len();
        pairs.rotate_left(order % n);
        let pod = args::parse(&pairs.join(";")).unwrap();
        prop_assert_eq!(pod, PodArgs { name, namespace, uid });
    }
}

/// A temporary directory removed on drop (std has none; a dependency is not worth it here).
pub(crate) mod tempdir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("ambit-cni-{}-{tag}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
