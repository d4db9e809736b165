use super::*;

fn ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
    Pod {
        name: "web-0".to_owned(),
        namespace: "shop".to_owned(),
        service_account: "default".to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Pod::default()
    }
}

fn ambient() -> Namespace {
    ns("shop", &[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT)])
}

fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap()
}

#[test]
fn ambient_namespace_enrolls_with_base_config() {
    assert_eq!(
        decide(Some(&ambient()), &pod(&[], &[])),
        Enrollment::Enrolled(RedirectConfig::default())
    );
}

#[test]
fn plain_namespace_does_not_enroll() {
    assert_eq!(
        decide(Some(&ns("shop", &[])), &pod(&[], &[])),
        Enrollment::NotEnrolled(NotEnrolledReason::NotAmbient)
    );
    assert_eq!(
        decide(
            Some(&ns("shop", &[(DATAPLANE_MODE_LABEL, "sidecar")])),
            &pod(&[], &[])
        ),
        Enrollment::NotEnrolled(NotEnrolledReason::NotAmbient)
    );
}

#[test]
fn pod_opt_out_wins_over_namespace() {
    assert_eq!(
        decide(
            Some(&ambient()),
            &pod(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE)], &[])
        ),
        Enrollment::NotEnrolled(NotEnrolledReason::PodOptedOut)
    );
}

#[test]
fn pod_label_ambient_enrolls_even_in_plain_or_unknown_namespace() {
    let p = pod(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT)], &[]);
    assert!(matches!(
        decide(Some(&ns("shop", &[])), &p),
        Enrollment::Enrolled(_)
    ));
    assert!(matches!(decide(None, &p), Enrollment::Enrolled(_)));
}

#[test]
fn host_network_pods_are_never_enrolled() {
    let mut p = pod(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT)], &[]);
    p.host_network = true;
    assert_eq!(
        decide(Some(&ambient()), &p),
        Enrollment::NotEnrolled(NotEnrolledReason::HostNetwork)
    );
}

#[test]
fn unknown_namespace_is_unknown_not_unenrolled() {
    match decide(None, &pod(&[], &[])) {
        Enrollment::Unknown(msg) => assert!(msg.contains("\"shop\""), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exclusion_annotations_become_config_fields() {
    let p = pod(
        &[],
        &[
            (EXCLUDE_OUTBOUND_PORTS, "9000, 9001,,9000"),
            (EXCLUDE_INBOUND_PORTS, "8081"),
            (
                EXCLUDE_OUTBOUND_IP_RANGES,
                "10.96.1.2/12,192.168.1.1, fd00:96::/64",
            ),
        ],
    );
    let Enrollment::Enrolled(cfg) = decide(Some(&ambient()), &p) else {
        panic!("not enrolled");
    };
    assert_eq!(cfg.exclude_outbound_ports, vec![9000, 9001]);
    assert_eq!(cfg.exclude_inbound_ports, vec![8081]);
    let cidrs: Vec<String> = cfg
        .exclude_outbound_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    // Truncated to the prefix, as iptables-save reports them.
    assert_eq!(cidrs, ["10.96.0.0/12", "192.168.1.1/32", "fd00:96::/64"]);
}

#[test]
fn invalid_annotations_are_named_never_ignored() {
    for (name, value, needle) in [
        (EXCLUDE_OUTBOUND_PORTS, "80,http", "\"http\""),
        (EXCLUDE_OUTBOUND_PORTS, "0", "\"0\""),
        (EXCLUDE_INBOUND_PORTS, "70000", "\"70000\""),
        (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33", "10.0.0.0/33"),
        (EXCLUDE_OUTBOUND_IP_RANGES, "*", "\"*\""),
    ] {
        match decide(Some(&ambient()), &pod(&[], &[(name, value)])) {
            Enrollment::Invalid(e) => {
                let msg = e.to_string();
                assert!(msg.contains(name) && msg.contains(needle), "{msg}");
            }
            other => panic!("{name}={value}: {other:?}"),
        }
    }
}

#[test]
fn pod_parses_from_kubernetes_shape() {
    let obj = Object::from_yaml(yaml(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  uid: 1234-abcd
  labels: {app: web}
  annotations:
    traffic.sidecar.istio.io/excludeInboundPorts: "8081"
spec:
  nodeName: node-1
  serviceAccountName: web-sa
  containers: [{name: web, image: nginx}]
status:
  podIP: 10.1.0.5
  podIPs: [{ip: 10.1.0.5}, {ip: "fd00:10:1::5"}]
"#,
    ))
    .unwrap();
    let Some(Object::Pod(p)) = obj else {
        panic!("{obj:?}")
    };
    assert_eq!(p.name, "web-0");
    assert_eq!(p.namespace, "shop");
    assert_eq!(p.uid.as_deref(), Some("1234-abcd"));
    assert_eq!(p.node_name.as_deref(), Some("node-1"));
    assert_eq!(p.service_account, "web-sa");
    assert_eq!(p.labels["app"], "web");
    assert!(!p.host_network);
    assert_eq!(
        p.pod_ips,
        vec![
            "10.1.0.5".parse::<IpAddr>().unwrap(),
            "fd00:10:1::5".parse().unwrap()
        ]
    );
}

#[test]
fn pod_defaults_and_single_pod_ip() {
    let Some(Object::Pod(p)) = Object::from_yaml(yaml(
        "kind: Pod\nmetadata: {name: a, labels: null}\nspec: {hostNetwork: true}\nstatus: {podIP: 10.0.0.1}",
    ))
    .unwrap() else {
        panic!()
    };
    assert_eq!(p.namespace, "default");
    assert_eq!(p.service_account, "default");
    assert!(p.host_network);
    assert_eq!(p.pod_ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
}

#[test]
fn namespace_parses_and_other_kinds_are_skipped() {
    let Some(Object::Namespace(n)) = Object::from_yaml(yaml(
        "kind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\nspec: {finalizers: [kubernetes]}",
    ))
    .unwrap() else {
        panic!()
    };
    assert_eq!(n, ambient());
    assert_eq!(
        Object::from_yaml(yaml("kind: Service\nmetadata: {name: x}")).unwrap(),
        None
    );
}

#[test]
fn malformed_objects_are_typed_errors() {
    assert_eq!(
        Object::from_yaml(yaml("metadata: {name: x}")),
        Err(ObjectError::MissingKind)
    );
    assert_eq!(
        Object::from_yaml(yaml("kind: Pod\nmetadata: {}")),
        Err(ObjectError::MissingName { kind: "Pod" })
    );
    let err = Object::from_yaml(yaml(
        "kind: Pod\nmetadata: {name: a}\nstatus: {podIP: banana}",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("status.podIP"), "{err}");
    assert!(matches!(
        Object::from_yaml(yaml("kind: Pod\nmetadata: {name: a, labels: [x]}")),
        Err(ObjectError::Shape(_))
    ));
    assert!(matches!(
        Object::from_yaml(yaml("- 1\n- 2")),
        Err(ObjectError::Shape(_))
    ));
}

proptest::proptest! {
    /// Any annotation text yields a decision or a typed error, never a panic, and an accepted
    /// list only holds valid ports.
    #[test]
    fn annotation_parsing_never_panics(value in ".{0,64}") {
        if let Ok(ports) = parse_ports(EXCLUDE_OUTBOUND_PORTS, &value) {
            proptest::prop_assert!(ports.iter().all(|p| *p != 0));
        }
        let _ = parse_cidrs(EXCLUDE_OUTBOUND_IP_RANGES, &value);
        let p = pod(&[], &[(EXCLUDE_OUTBOUND_PORTS, &value), (EXCLUDE_OUTBOUND_IP_RANGES, &value)]);
        let _ = decide(Some(&ambient()), &p);
    }

    /// Any YAML document (including non-objects) parses or fails with a typed error.
    #[test]
    fn object_parsing_never_panics(text in "(kind: (Pod|Namespace|List)\n)?(metadata: \\{name: [a-z]{0,3}\\}\n)?.{0,40}") {
        if let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&text) {
            let _ = Object::from_yaml(value);
        }
    }
}
