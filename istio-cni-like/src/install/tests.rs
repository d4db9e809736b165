use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::cni::tests::tempdir::Dir;

/// A primary CNI's conflist, formatted the way a human (or Calico) would, with an escaped key and
/// a number serde_json would print differently, so byte stability is actually tested.
const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "mtu": 1.50e3,
      "ipam": { "type": "calico-ipam" },
      "policy": {"type": "k8s"}, "k\u0065y": "v"
    },
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
"#;

const BRIDGE_CONF: &str = r#"{
    "cniVersion": "1.0.0",
    "name": "bridge-net",
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}
}
"#;

fn ours() -> Value {
    plugin_conf("/var/run/ambit/cni-plugin.sock", 30_000)
}

fn plugins_of(text: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(text).unwrap();
    v["plugins"].as_array().unwrap().clone()
}

#[test]
fn merge_appends_keeps_the_rest_byte_for_byte_and_is_idempotent() {
    let merged = merge(CALICO, &ours()).unwrap();
    let plugins = plugins_of(&merged);
    assert_eq!(plugins.len(), 3);
    assert_eq!(plugins[0]["type"], "calico");
    assert_eq!(plugins[1]["type"], "portmap");
    assert_eq!(plugins[2], ours());
    // Everything before our entry is untouched text.
    let before_ours = &merged[..merged.find(r#"{"agent_socket""#).unwrap()];
    let portmap_end = CALICO.find("true}}").unwrap() + "true}}".len();
    assert_eq!(&before_ours[..portmap_end], &CALICO[..portmap_end]);
    assert!(merged.contains(r#""mtu": 1.50e3"#));
    // Same indentation as the entry before it.
    assert!(merged.contains("},\n    {\"agent_socket\""), "{merged}");

    assert_eq!(
        merge(&merged, &ours()).unwrap(),
        merged,
        "second merge changes nothing"
    );
    assert_eq!(
        unmerge(&merged, PLUGIN_TYPE).unwrap(),
        CALICO,
        "unmerge restores the bytes"
    );
    assert_eq!(
        unmerge(CALICO, PLUGIN_TYPE).unwrap(),
        CALICO,
        "nothing to remove"
    );
}

#[test]
fn merge_updates_a_stale_entry_in_place_and_drops_duplicates() {
    let stale = plugin_conf("/old.sock", 10);
    let twice = merge(&merge(CALICO, &stale).unwrap(), &stale).unwrap();
    assert_eq!(
        plugins_of(&twice).len(),
        3,
        "merge of an identical entry does not duplicate"
    );
    // Hand-made duplicates (e.g. two installers raced): collapse to one, up to date.
    let dup = CALICO.replace(
        r#"{"type": "portmap""#,
        r#"{"type": "ambit-cni", "agent_socket": "/a"}, {"type": "portmap""#,
    );
    let dup = merge(&dup, &stale).unwrap();
    let fixed = merge(&dup, &ours()).unwrap();
    let plugins = plugins_of(&fixed);
    let types: Vec<&str> = plugins
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["calico", "ambit-cni", "portmap"]);
    assert_eq!(plugins[1], ours());
    assert_eq!(
        unmerge(&fixed, PLUGIN_TYPE)
            .unwrap()
            .matches("ambit-cni")
            .count(),
        0
    );
}

#[test]
fn merge_into_empty_and_single_plugin_lists() {
    let empty = r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#;
    let merged = merge(empty, &ours()).unwrap();
    assert_eq!(plugins_of(&merged), vec![ours()]);
    assert_eq!(unmerge(&merged, PLUGIN_TYPE).unwrap(), empty);

    let single = r#"{"cniVersion":"1.0.0","name":"n","plugins":[ {"type":"ptp"} ]}"#;
    let merged = merge(single, &ours()).unwrap();
    assert_eq!(
        merged,
        r#"{"cniVersion":"1.0.0","name":"n","plugins":[ {"type":"ptp"}, {"agent_socket":"/var/run/ambit/cni-plugin.sock","timeout_ms":30000,"type":"ambit-cni"} ]}"#
    );
    assert_eq!(unmerge(&merged, PLUGIN_TYPE).unwrap(), single);

    // Ours first: its trailing separator goes with it.
    let first = r#"{"plugins":[{"type":"ambit-cni"},  {"type":"ptp"}]}"#;
    assert_eq!(
        unmerge(first, PLUGIN_TYPE).unwrap(),
        r#"{"plugins":[{"type":"ptp"}]}"#
    );
}

#[test]
fn merge_rejects_what_is_not_a_conflist() {
    for bad in ["", "{", "[]", r#"{"type":"bridge"}"#, r#"{"plugins":{}}"#] {
        assert!(merge(bad, &ours()).is_err(), "{bad:?}");
        assert!(unmerge(bad, PLUGIN_TYPE).is_err(), "{bad:?}");
    }
    assert!(matches!(
        merge(CALICO, &json!({"agent_socket": "/x"})),
        Err(InstallError::PluginConf { .. })
    ));
}

#[test]
fn conf_converts_to_an_equivalent_conflist() {
    let list = conf_to_conflist(BRIDGE_CONF).unwrap();
    let v: Value = serde_json::from_str(&list).unwrap();
    let conf: Value = serde_json::from_str(BRIDGE_CONF).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["name"], "bridge-net");
    assert_eq!(v["plugins"], json!([conf]));
    assert!(
        conf_to_conflist(CALICO).is_err(),
        "a conflist is not a conf"
    );
    assert!(conf_to_conflist(r#"{"name":"x"}"#).is_err(), "no type");
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap()
}

#[test]
fn install_picks_the_first_valid_config_and_is_idempotent() {
    let dir = Dir::new("install");
    let d = dir.path();
    write(d, "05-broken.conflist", "{ not json");
    write(
        d,
        "07-only-ours.conflist",
        r#"{"plugins":[{"type":"ambit-cni"}]}"#,
    );
    write(d, "10-calico.conflist", CALICO);
    write(d, "20-other.conflist", CALICO);
    write(d, "README.txt", "not a config");
    fs::set_permissions(
        d.join("10-calico.conflist"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert!(!is_installed(d));

    let path = install(d, &ours()).unwrap();
    assert_eq!(path, d.join("10-calico.conflist"));
    assert!(is_installed(d));
    assert_eq!(plugins_of(&read(d, "10-calico.conflist"))[2], ours());
    assert_eq!(
        read(d, "20-other.conflist"),
        CALICO,
        "only the primary is touched"
    );
    assert_eq!(read(d, "05-broken.conflist"), "{ not json");
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode kept");

    // Idempotent: a second install does not even rewrite the file (same inode).
    install(d, &ours()).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().ino(), meta.ino());
    let leftovers: Vec<_> = fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
}

#[test]
fn install_again_after_the_primary_cni_rewrites_its_config() {
    let dir = Dir::new("rewrite");
    let d = dir.path();
    write(d, "10-calico.conflist", CALICO);
    install(d, &ours()).unwrap();
    // The primary CNI's own installer puts its pristine file back.
    write(d, "10-calico.conflist", CALICO);
    assert!(!is_installed(d));
    install(d, &ours()).unwrap();
    assert!(is_installed(d));
    assert_eq!(plugins_of(&read(d, "10-calico.conflist")).len(), 3);
}

#[test]
fn uninstall_restores_the_original_bytes() {
    let dir = Dir::new("uninstall");
    let d = dir.path();
    write(d, "10-calico.conflist", CALICO);
    write(d, "20-other.conflist", CALICO);
    install(d, &ours()).unwrap();
    // An older install into a file that is no longer primary is cleaned too.
    write(d, "20-other.conflist", &merge(CALICO, &ours()).unwrap());
    let changed = uninstall(d).unwrap();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(read(d, "10-calico.conflist"), CALICO);
    assert_eq!(read(d, "20-other.conflist"), CALICO);
    assert!(!is_installed(d));
    assert!(uninstall(d).unwrap().is_empty(), "idempotent");
}

#[test]
fn a_single_plugin_conf_is_converted_and_restored() {
    let dir = Dir::new("conf");
    let d = dir.path();
    write(d, "10-bridge.conf", BRIDGE_CONF);
    let path = install(d, &ours()).unwrap();
    assert_eq!(path, d.join("10-bridge.conflist"));
    assert!(
        !d.join("10-bridge.conf").exists(),
        "would shadow the conflist"
    );
    assert_eq!(read(d, "10-bridge.conf.ambit-orig"), BRIDGE_CONF);
    let plugins = plugins_of(&read(d, "10-bridge.conflist"));
    assert_eq!(plugins[0]["type"], "bridge");
    assert_eq!(plugins[1], ours());
    assert!(is_installed(d));
    install(d, &ours()).unwrap();
    assert_eq!(plugins_of(&read(d, "10-bridge.conflist")).len(), 2);

    // The primary CNI writes its .conf again: it becomes primary, and we convert again.
    write(d, "10-bridge.conf", BRIDGE_CONF);
    assert!(!is_installed(d));
    install(d, &ours()).unwrap();
    assert!(is_installed(d));

    uninstall(d).unwrap();
    assert_eq!(read(d, "10-bridge.conf"), BRIDGE_CONF);
    assert!(!d.join("10-bridge.conflist").exists());
    assert!(!d.join("10-bridge.conf.ambit-orig").exists());
}

#[test]
fn install_without_a_primary_cni_fails_and_writes_nothing() {
    let dir = Dir::new("empty");
    let d = dir.path();
    write(d, "01-junk.conf", "[]");
    match install(d, &ours()) {
        Err(InstallError::NoPrimaryConfig { skipped, .. }) => assert_eq!(skipped.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read_dir(d).unwrap().count(), 1);
    assert!(matches!(
        install(&d.join("missing"), &ours()),
        Err(InstallError::Io { .. })
    ));
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[test]
fn cli_parses_install_and_uninstall() {
    assert_eq!(
        parse_cli(&argv(&["install", "--cni-conf-dir", "/etc/cni/net.d"])).unwrap(),
        CliCommand::Install {
            conf_dir: "/etc/cni/net.d".into(),
            agent_socket: crate::protocol::DEFAULT_PLUGIN_SOCKET.into(),
            timeout_ms: crate::cni::DEFAULT_TIMEOUT_MS,
        }
    );
    assert_eq!(
        parse_cli(&argv(&[
            "install",
            "--agent-socket=/s",
            "--cni-conf-dir=/d",
            "--timeout-ms",
            "5"
        ]))
        .unwrap(),
        CliCommand::Install {
            conf_dir: "/d".into(),
            agent_socket: "/s".into(),
            timeout_ms: 5,
        }
    );
    assert_eq!(
        parse_cli(&argv(&["uninstall", "--cni-conf-dir", "/d"])).unwrap(),
        CliCommand::Uninstall {
            conf_dir: "/d".into()
        }
    );
    assert_eq!(parse_cli(&argv(&["--help"])).unwrap(), CliCommand::Help);
    for bad in [
        &[][..],
        &["frobnicate"],
        &["install"],
        &["install", "--cni-conf-dir"],
        &["install", "--cni-conf-dir", "/d", "--cni-conf-dir", "/e"],
        &["install", "--cni-conf-dir", "/d", "--timeout-ms", "0"],
        &["install", "--cni-conf-dir", "/d", "--timeout-ms", "soon"],
        &["install", "--cni-conf-dir="],
        &["uninstall", "--cni-conf-dir", "/d", "--agent-socket", "/s"],
        &["install", "--cni-conf-dir", "/d", "extra"],
    ] {
        assert!(
            matches!(parse_cli(&argv(bad)), Err(InstallError::Usage { .. })),
            "{bad:?}"
        );
    }
}

fn arb_plugin() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["bridge", "portmap", "calico", "tuning", "bandwidth"]),
        prop::collection::btree_map(
            "[a-z]{1,6}",
            prop_oneof![
                any::<i32>().prop_map(Value::from),
                "[a-z \\\\\"\\]\\[{}]{0,8}".prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
            ],
            0..4,
        ),
    )
        .prop_map(|(ty, extra)| {
            let mut obj: serde_json::Map<String, Value> = extra.into_iter().collect();
            obj.insert("type".into(), Value::from(ty));
            Value::Object(obj)
        })
}

proptest! {
    #[test]
    fn merge_then_unmerge_is_the_identity(
        plugins in prop::collection::vec(arb_plugin(), 0..5),
        pretty in any::<bool>(),
    ) {
        let doc = json!({"cniVersion": "1.0.0", "name": "net", "plugins": plugins});
        let text = if pretty { serde_json::to_string_pretty(&doc).unwrap() } else { doc.to_string() };
        let merged = merge(&text, &ours()).unwrap();
        prop_assert_eq!(merge(&merged, &ours()).unwrap(), merged.clone());
        let got = plugins_of(&merged);
        prop_assert_eq!(got.len(), plugins.len() + 1);
        prop_assert_eq!(&got[..plugins.len()], &plugins[..]);
        prop_assert_eq!(unmerge(&merged, PLUGIN_TYPE).unwrap(), text);
    }
}
