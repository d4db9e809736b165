//! Network-namespace test bed: nodes, pods and plain hosts as network namespaces joined by veths,
//! with real routes and real redirect rules, for end-to-end tests and system benchmarks.
//!
//! Topology of one [`TestBed`] (every name below is prefixed with the bed's prefix):
//!
//! ```text
//!   wire netns: bridge br0 ── m<k> veths ── eth0 of each node/host k   172.16.0.k/24, fd00:16::k/64
//!   node k:  p<j>-<pod> veth ── eth0 of pod j                          10.k.0.j/32,  fd00:10:k::j/128
//! ```
//!
//! - Each bed has its own wire netns, so address plans repeat across beds without clashing and
//!   beds in parallel test threads never see each other. Interfaces are created directly inside
//!   the namespaces (`ip -n`), so nothing ever appears in the host netns.
//! - Node k owns pod CIDRs 10.k.0.0/24 and fd00:10:k::/64. Pods reach everything through a
//!   default route to their node (IPv4: the node's wire address `onlink`, which the node answers
//!   ARP for since it is a local address; IPv6: `fe80::1`, set on every node-side pod veth).
//!   Each node and host routes every other node's pod CIDRs via that node's wire address.
//! - Names derive from the test name, pid and a per-process counter
//!   (`tb-<pid>-<n>-<test>-<member>`), so a leftover netns says which test made it; beds left by
//!   processes that no longer exist are removed when the next process creates its first bed.
//! - Dropping the bed deletes every netns it created (and with them every veth), also when the
//!   test panicked.

pub mod fixture;
mod iptables;
pub mod kube_replay;
mod netns;
mod rules;

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

use anyhow::{bail, ensure, Context as _};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use crate::iptables::{Flavour, Iptables, FLAVOUR_ENV};
pub use crate::netns::{Netns, NetnsTask, NetnsTaskError};

/// Prefix of every netns a test bed creates; also what stale-bed cleanup looks for.
const PREFIX: &str = "tb-";
/// Longest sanitized test-name part of a netns name (keeps `ip netns list` readable).
const MAX_TEST_NAME: usize = 24;
/// Longest node/pod/host name.
const MAX_MEMBER_NAME: usize = 24;
/// Node/host indexes are the last octet of the wire address and the second of the pod CIDR.
const MAX_MACHINES: usize = 250;
/// Pod indexes run from 2 to 254 within a node's /24.
const FIRST_POD: u8 = 2;
const LAST_POD: u8 = 254;
/// Address of the node side of every pod veth: the pods' IPv6 default gateway.
const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

static BED_COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add/del` remount `/run/netns` on first use; concurrent first calls from parallel
/// test threads can race on that, so namespace creation and deletion are serialised.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A set of network namespaces forming a small cluster. See the crate docs for the topology.
pub struct TestBed {
    prefix: String,
    ipv6: bool,
    wire: Netns,
    machines: Vec<Machine>,
    pod_names: HashSet<String>,
    /// Every netns we created, in creation order; deleted in reverse.
    created: Vec<Netns>,
}

/// A node or host attached to the wire.
struct Machine {
    name: String,
    netns: Netns,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    /// Pod CIDRs (nodes only).
    pod_cidrs: Option<(Ipv4Net, Option<Ipv6Net>)>,
    next_pod: u8,
}

/// A mesh node (or a plain host, from [`TestBed::add_host`]) on the wire.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub netns: Netns,
    /// Address on the wire.
    pub ip: Ipv4Addr,
    /// IPv6 address on the wire, when the bed has IPv6.
    pub ip6: Option<Ipv6Addr>,
    pod_cidrs: Vec<IpNet>,
}

/// A pod: its own netns behind a veth to its node.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub netns: Netns,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    /// Name of the node the pod runs on.
    pub node: String,
}

impl TestBed {
    /// Creates an empty bed (just the wire) named after `test_name`.
    ///
    /// Fails, rather than skipping, when not root: the data-path tests are meaningless without
    /// real namespaces.
    pub fn new(test_name: &str) -> anyhow::Result<TestBed> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "the netns test bed needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN); run the tests as root"
        );
        static GC: Once = Once::new();
        GC.call_once(remove_stale_namespaces);

        let mut test: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(MAX_TEST_NAME)
            .collect();
        if test.is_empty() {
            test.push_str("test");
        }
        let n = BED_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}-{n}-{test}", std::process::id());
        let mut bed = TestBed {
            wire: Netns::from_name(&format!("{prefix}-wire")),
            prefix,
            ipv6: true,
            machines: Vec::new(),
            pod_names: HashSet::new(),
            created: Vec::new(),
        };
        let wire = bed.wire.clone();
        bed.create_netns(&wire)?;
        ip(&wire, &["link", "add", "br0", "type", "bridge"])?;
        // No STP (ports forward at once) and no multicast snooping (without an MLD querier it
        // can stop forwarding the solicited-node multicast IPv6 neighbour discovery needs).
        ip(
            &wire,
            &[
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        ip(&wire, &["link", "set", "br0", "up"])?;
        Ok(bed)
    }

    /// The name prefix shared by every netns of this bed (`tb-<pid>-<n>-<test>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Names of every netns this bed created (wire, nodes, hosts, pods).
    pub fn namespaces(&self) -> Vec<String> {
        self.created.iter().map(|n| n.name().to_owned()).collect()
    }

    /// The wire netns holding the bridge all nodes and hosts hang off.
    pub fn wire(&self) -> &Netns {
        &self.wire
    }

    /// Turns IPv6 on (the default) or off for the whole bed. Only before adding any node or host,
    /// since addresses and routes are set up as members are added.
    pub fn set_ipv6(&mut self, enabled: bool) -> anyhow::Result<()> {
        ensure!(
            self.machines.is_empty() || enabled == self.ipv6,
            "set_ipv6({enabled}) after nodes were added to bed {}",
            self.prefix
        );
        self.ipv6 = enabled;
        Ok(())
    }

    /// Whether members get IPv6 addresses and routes.
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    /// Adds a mesh node: a netns on the wire that forwards for its pods.
    pub fn add_node(&mut self, name: &str) -> anyhow::Result<Node> {
        self.add_machine(name, true)
    }

    /// Adds a plain, non-mesh host on the wire (for passthrough tests); it routes to every
    /// node's pods but never has pods itself.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<Node> {
        self.add_machine(name, false)
    }

    fn add_machine(&mut self, name: &str, is_node: bool) -> anyhow::Result<Node> {
        self.check_member_name(name)?;
        ensure!(
            self.machines.len() < MAX_MACHINES,
            "bed {}: at most {MAX_MACHINES} nodes and hosts",
            self.prefix
        );
        let index = u8::try_from(self.machines.len() + 1).context("machine index")?;
        let netns = Netns::from_name(&format!("{}-{name}", self.prefix));
        self.create_netns(&netns)?;
        configure_sysctls(&netns, is_node)?;

        let bridge_port = format!("m{index}");
        ip(
            &self.wire,
            &[
                "link",
                "add",
                &bridge_port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns.name(),
            ],
        )?;
        ip(
            &self.wire,
            &["link", "set", &bridge_port, "master", "br0", "up"],
        )?;

        let ip4 = Ipv4Addr::new(172, 16, 0, index);
        ip(
            &netns,
            &["addr", "add", &format!("{ip4}/24"), "dev", "eth0"],
        )?;
        let ip6 = self
            .ipv6
            .then(|| Ipv6Addr::new(0xfd00, 0x16, 0, 0, 0, 0, 0, index.into()));
        if let Some(ip6) = ip6 {
            ip(
                &netns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
        }
        ip(&netns, &["link", "set", "eth0", "up"])?;

        let pod_cidrs = is_node.then(|| {
            (
                Ipv4Net::new(Ipv4Addr::new(10, index, 0, 0), 24).expect("/24 is a valid prefix"),
                ip6.map(|_| {
                    Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, index.into(), 0, 0, 0, 0, 0), 64)
                        .expect("/64 is a valid prefix")
                }),
            )
        });
        let machine = Machine {
            name: name.to_owned(),
            netns,
            ip: ip4,
            ip6,
            pod_cidrs,
            next_pod: FIRST_POD,
        };
        // The newcomer learns every existing node's pods; existing members learn the newcomer's.
        for other in &self.machines {
            route_pods_via(&machine, other)?;
            route_pods_via(other, &machine)?;
        }
        let node = machine.to_node();
        self.machines.push(machine);
        Ok(node)
    }

    /// Adds a pod on `node`: a netns with a veth to the node, the next free pod addresses of the
    /// node's CIDRs, a default route via the node and a host route on the node.
    pub fn add_pod(&mut self, node: &Node, name: &str) -> anyhow::Result<Pod> {
        self.check_member_name(name)?;
        let prefix = self.prefix.clone();
        let Some(machine) = self.machines.iter_mut().find(|m| m.netns == node.netns) else {
            bail!("node {} is not part of bed {prefix}", node.name);
        };
        let Some((cidr4, cidr6)) = machine.pod_cidrs else {
            bail!(
                "{} is a plain host, not a node: pods need a node",
                node.name
            );
        };
        ensure!(
            machine.next_pod <= LAST_POD,
            "node {}: no pod addresses left",
            node.name
        );
        let j = machine.next_pod;
        let pod_ip = Ipv4Addr::from(u32::from(cidr4.network()) + u32::from(j));
        let pod_ip6 = cidr6.map(|c| Ipv6Addr::from(u128::from(c.network()) + u128::from(j)));
        let node_ns = machine.netns.clone();
        let gateway = machine.ip;

        let netns = Netns::from_name(&format!("{prefix}-{name}"));
        self.create_netns(&netns)?;
        configure_sysctls(&netns, false)?;
        // The node side is named after the pod for readable `ip link` output; the index keeps
        // names unique even when long pod names are cut at the 15-byte interface name limit.
        let veth: String = format!("p{j}-{name}").chars().take(15).collect();
        ip(
            &node_ns,
            &[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns.name(),
            ],
        )?;
        ip(&node_ns, &["link", "set", &veth, "up"])?;
        ip(
            &node_ns,
            &["route", "add", &format!("{pod_ip}/32"), "dev", &veth],
        )?;

        ip(
            &netns,
            &["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"],
        )?;
        ip(&netns, &["link", "set", "eth0", "up"])?;
        ip(
            &netns,
            &[
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
                "dev",
                "eth0",
                "onlink",
            ],
        )?;
        if let Some(pod_ip6) = pod_ip6 {
            ip(
                &node_ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{POD_GATEWAY6}/64"),
                    "dev",
                    &veth,
                    "nodad",
                ],
            )?;
            ip(
                &node_ns,
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{pod_ip6}/128"),
                    "dev",
                    &veth,
                ],
            )?;
            ip(
                &netns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{pod_ip6}/128"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
            ip(
                &netns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &POD_GATEWAY6.to_string(),
                    "dev",
                    "eth0",
                ],
            )?;
        }

        if let Some(m) = self.machines.iter_mut().find(|m| m.netns == node_ns) {
            m.next_pod += 1;
        }
        self.pod_names.insert(name.to_owned());
        Ok(Pod {
            name: name.to_owned(),
            netns,
            ip: pod_ip,
            ip6: pod_ip6,
            node: node.name.clone(),
        })
    }

    fn check_member_name(&self, name: &str) -> anyhow::Result<()> {
        ensure!(
            !name.is_empty()
                && name.len() <= MAX_MEMBER_NAME
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && name != "wire",
            "bad member name {name:?}: 1-{MAX_MEMBER_NAME} of [A-Za-z0-9_-], not \"wire\""
        );
        ensure!(
            !self.pod_names.contains(name) && !self.machines.iter().any(|m| m.name == name),
            "bed {} already has a member named {name:?}",
            self.prefix
        );
        Ok(())
    }

    fn create_netns(&mut self, netns: &Netns) -> anyhow::Result<()> {
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "add", netns.name()]);
            netns::run_command(cmd, None)
                .with_context(|| format!("ip netns add {}", netns.name()))?;
        }
        self.created.push(netns.clone());
        ip(netns, &["link", "set", "lo", "up"])?;
        Ok(())
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        for netns in self.created.drain(..).rev() {
            if let Err(e) = delete_netns(netns.name()) {
                // Drop cannot fail; the stale-bed sweep of a later run removes what is left.
                eprintln!("testbed: {e:#}");
            }
        }
    }
}

fn delete_netns(name: &str) -> anyhow::Result<()> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "del", name]);
    netns::run_command(cmd, None).with_context(|| format!("ip netns del {name}"))?;
    Ok(())
}

/// Deletes namespaces of beds whose process is gone (killed test runs never ran `Drop`).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(e) = delete_netns(&name) {
                eprintln!("testbed: removing stale netns: {e:#}");
            }
        }
    }
}

/// Sysctls must be set before interfaces are created: new interfaces copy `conf/default`.
fn configure_sysctls(netns: &Netns, forwarding: bool) -> anyhow::Result<()> {
    let mut settings = vec![
        // Pods answer from /32s behind an `onlink` gateway; strict reverse-path checks would
        // drop legitimate asymmetric-looking traffic (the kernel uses max(all, iface)).
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
    ];
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        // No duplicate address detection: addresses are usable at once, no waiting in tests.
        settings.push(("net/ipv6/conf/all/accept_dad", "0"));
        settings.push(("net/ipv6/conf/default/accept_dad", "0"));
        if forwarding {
            settings.push(("net/ipv6/conf/all/forwarding", "1"));
        }
    }
    if forwarding {
        settings.push(("net/ipv4/ip_forward", "1"));
    }
    netns
        .try_run(|| {
            settings.iter().try_for_each(|(key, value)| {
                // /proc/sys/net resolves against the netns of the thread opening the file.
                std::fs::write(format!("/proc/sys/{key}"), value)
                    .with_context(|| format!("sysctl {key}={value}"))
            })
        })
        .with_context(|| format!("entering {}", netns.name()))?
        .with_context(|| format!("sysctls in {}", netns.name()))
}

/// Runs `ip -n <netns> <args>`.
pub(crate) fn ip(netns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", netns.name()]).args(args);
    netns::run_command(cmd, None)
        .with_context(|| format!("ip -n {} {}", netns.name(), args.join(" ")))
}

/// Routes `via`'s pod CIDRs (if it is a node) on `on` through `via`'s wire addresses.
fn route_pods_via(on: &Machine, via: &Machine) -> anyhow::Result<()> {
    let Some((cidr4, cidr6)) = via.pod_cidrs else {
        return Ok(());
    };
    ip(
        &on.netns,
        &[
            "route",
            "add",
            &cidr4.to_string(),
            "via",
            &via.ip.to_string(),
        ],
    )?;
    if let (Some(cidr6), Some(gw6), Some(_)) = (cidr6, via.ip6, on.ip6) {
        ip(
            &on.netns,
            &[
                "-6",
                "route",
                "add",
                &cidr6.to_string(),
                "via",
                &gw6.to_string(),
            ],
        )?;
    }
    Ok(())
}

impl Machine {
    fn to_node(&self) -> Node {
        let pod_cidrs = self
            .pod_cidrs
            .map(|(v4, v6)| {
                std::iter::once(IpNet::V4(v4))
                    .chain(v6.map(IpNet::V6))
                    .collect()
            })
            .unwrap_or_default();
        Node {
            name: self.name.clone(),
            netns: self.netns.clone(),
            ip: self.ip,
            ip6: self.ip6,
            pod_cidrs,
        }
    }
}
