//! cni-agent keeps `ambit-cni` chained in the node's CNI config list.

mod agent_common;

use std::time::Duration;

use agent_common::*;
use istio_cni_like::cni::PLUGIN_TYPE;

const PRIMARY: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.128/25"}]]}}
  ]
}
"#;

fn chained(path: &std::path::Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    let last = doc["plugins"].as_array()?.last()?.clone();
    (last["type"] == PLUGIN_TYPE).then_some(last)
}

#[test]
fn agent_rechains_the_plugin_when_the_primary_cni_rewrites_its_config() {
    let mut bed = testbed::TestBed::new("cni_install").unwrap();
    let node = bed.add_node("n1").unwrap();
    let dir = TempDir::new("cni_install");
    let conf_dir = dir.0.join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let primary = conf_dir.join("10-pods.conflist");
    write_atomic(&primary, PRIMARY);
    let agent = AgentProc::start_with(
        &node,
        &dir.0,
        "1h",
        "10s",
        &[
            "--cni-conf-dir",
            conf_dir.to_str().unwrap(),
            "--cni-install-interval",
            "100ms",
        ],
    );
    wait_until("plugin chained", Duration::from_secs(10), || {
        chained(&primary).is_some()
    });
    let ours = chained(&primary).unwrap();
    assert_eq!(
        ours["agent_socket"],
        agent.plugin_socket.display().to_string()
    );
    // The plugin waits longer than the agent's own 10 s ADD timeout.
    assert_eq!(ours["timeout_ms"], 15000);

    // The primary CNI rewrites its file without us: the agent puts the plugin back.
    write_atomic(&primary, PRIMARY);
    assert!(chained(&primary).is_none());
    wait_until("plugin re-chained", Duration::from_secs(10), || {
        chained(&primary).is_some()
    });
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&primary).unwrap()).unwrap();
    assert_eq!(doc["plugins"].as_array().unwrap().len(), 2, "{doc}");
}
