//! In-pod traffic redirection rules, rendered as text (Istio's in-pod rule set).
//!
//! This module only *renders*: `iptables-restore` input and `ip` argv lists. It runs nothing, so
//! the netns test bed and the CNI agent apply exactly the same rules and the rules themselves are
//! unit-testable.
//!
//! Invariants:
//! - We own the chains `ISTIO_PRERT`, `ISTIO_OUTPUT` (pod netns) and `ISTIO_POSTRT` (node netns)
//!   and nothing else. Builtin chains only ever receive one plain `-j <our chain>` jump each, so
//!   rules other software put in the builtins are never touched.
//! - Each render is a complete table-by-table `iptables-restore --noflush` transaction: our chains
//!   are declared (which flushes them under `--noflush`), flushed again explicitly, and refilled,
//!   so the kernel never sees a half-applied rule set.
//! - Re-applying is a no-op. Chain contents are idempotent by construction, but a jump in a builtin
//!   chain is not: `-A` always appends and `-D` fails when nothing matches, so no fixed text can
//!   converge to exactly one jump from both "absent" and "present". The `*_reconcile_input`
//!   functions therefore take the current `iptables-save` output and emit only the jump
//!   additions/deletions needed to end with exactly one jump per owned chain; the plain
//!   `*_input` functions are the same render against an empty netns.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

#[cfg(test)]
mod tests;

/// Our chain hooked from `PREROUTING` (mangle, nat and, with DNS capture, raw).
pub const CHAIN_PREROUTING: &str = "ISTIO_PRERT";
/// Our chain hooked from `OUTPUT` (mangle, nat and, with DNS capture, raw).
pub const CHAIN_OUTPUT: &str = "ISTIO_OUTPUT";
/// Our chain hooked from the node's nat `POSTROUTING` (probe SNAT).
pub const CHAIN_POSTROUTING: &str = "ISTIO_POSTRT";
/// Routing table holding the `local` default route for connmarked return traffic (Istio's value).
pub const ROUTE_TABLE: u32 = 100;
/// Priority of the fwmark policy rule; just before the kernel's `main` rule (32766), as Istio.
pub const RULE_PRIORITY: u32 = 32764;
/// conntrack zone separating ztunnel↔upstream DNS flows from app↔ztunnel ones (Istio issue 33469).
const DNS_CT_ZONE: u32 = 1;

/// Everything that parameterises the in-pod rules and the node's probe SNAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// Packet mark ztunnel sets (SO_MARK) on its own sockets so its traffic is not redirected
    /// back to itself. Must match ztunnel's in-pod mark (1337 = 0x539).
    pub ztunnel_mark: u32,
    /// Mask applied to both marks, leaving the upper bits to other software.
    pub mark_mask: u32,
    /// Connection mark for traffic ztunnel delivered into the pod, restored onto replies so they
    /// route back through the loopback table (original-source return path).
    pub connmark: u32,
    /// IPv4 address the node SNATs its kubelet probes to; the pod lets it bypass capture.
    pub probe_snat_v4: Ipv4Addr,
    /// IPv6 counterpart of `probe_snat_v4`.
    pub probe_snat_v6: Ipv6Addr,
    /// Redirect the pod's DNS (udp/tcp 53) to ztunnel's DNS proxy on `dns_port`.
    pub dns_capture: bool,
    /// Outbound TCP destination ports never redirected to ztunnel.
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound TCP destination ports never redirected to ztunnel.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations never redirected to ztunnel (each applies to its own family only).
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Node side only: pod destinations whose node-originated TCP gets SNATed to the probe
    /// address (Istio keeps the enrolled pod IPs in an ipset for this). Empty means every
    /// destination, which also SNATs the node's own connections to other machines, so set it
    /// wherever the node talks to anything but its pods.
    pub probe_snat_pod_cidrs: Vec<IpNet>,
    /// ztunnel's outbound capture port inside the pod.
    pub outbound_port: u16,
    /// ztunnel's inbound plaintext capture port inside the pod.
    pub inbound_plain_port: u16,
    /// ztunnel's inbound HBONE port; traffic to it is never redirected.
    pub hbone_port: u16,
    /// ztunnel's DNS proxy port inside the pod.
    pub dns_port: u16,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            ztunnel_mark: 0x539,
            mark_mask: 0xfff,
            connmark: 0x111,
            probe_snat_v4: Ipv4Addr::new(169, 254, 7, 127),
            probe_snat_v6: Ipv6Addr::new(
                0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
            ),
            dns_capture: true,
            exclude_outbound_ports: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            probe_snat_pod_cidrs: Vec::new(),
            outbound_port: 15001,
            inbound_plain_port: 15006,
            hbone_port: 15008,
            dns_port: 15053,
        }
    }
}

/// A configuration the rules cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectConfigError {
    /// A mask of 0 would make every mark match and every packet bypass or be captured.
    #[error("mark_mask is 0: marks could not be told apart")]
    ZeroMask,
    /// A mark with bits outside the mask would silently be truncated by the kernel.
    #[error("{field} {value:#x} has bits outside mark_mask {mask:#x}")]
    MarkOutsideMask {
        field: &'static str,
        value: u32,
        mask: u32,
    },
    /// A zero mark cannot be matched (every unmarked packet carries it).
    #[error("{field} is 0 under mark_mask")]
    ZeroMark { field: &'static str },
    /// The connmark must differ from ztunnel's mark, or return traffic would look like ztunnel's.
    #[error("connmark {connmark:#x} equals ztunnel_mark {ztunnel_mark:#x} under mark_mask")]
    MarksCollide { ztunnel_mark: u32, connmark: u32 },
    /// Port 0 is not a listening port.
    #[error("{field} is 0")]
    ZeroPort { field: &'static str },
    /// Two capture ports are the same, so two kinds of traffic would reach one listener.
    #[error("{a} and {b} are both {port}")]
    PortsCollide {
        a: &'static str,
        b: &'static str,
        port: u16,
    },
}

impl RedirectConfig {
    /// Checks the invariants the rendered rules rely on.
    pub fn validate(&self) -> Result<(), RedirectConfigError> {
        let mask = self.mark_mask;
        if mask == 0 {
            return Err(RedirectConfigError::ZeroMask);
        }
        for (field, value) in [
            ("ztunnel_mark", self.ztunnel_mark),
            ("connmark", self.connmark),
        ] {
            if value & !mask != 0 {
                return Err(RedirectConfigError::MarkOutsideMask { field, value, mask });
            }
            if value & mask == 0 {
                return Err(RedirectConfigError::ZeroMark { field });
            }
        }
        if self.ztunnel_mark & mask == self.connmark & mask {
            return Err(RedirectConfigError::MarksCollide {
                ztunnel_mark: self.ztunnel_mark,
                connmark: self.connmark,
            });
        }
        let ports = [
            ("outbound_port", self.outbound_port),
            ("inbound_plain_port", self.inbound_plain_port),
            ("hbone_port", self.hbone_port),
            ("dns_port", self.dns_port),
        ];
        for (i, &(a, pa)) in ports.iter().enumerate() {
            if pa == 0 {
                return Err(RedirectConfigError::ZeroPort { field: a });
            }
            if let Some(&(b, _)) = ports[i + 1..].iter().find(|(_, pb)| *pb == pa) {
                return Err(RedirectConfigError::PortsCollide { a, b, port: pa });
            }
        }
        for (field, list) in [
            ("exclude_outbound_ports", &self.exclude_outbound_ports),
            ("exclude_inbound_ports", &self.exclude_inbound_ports),
        ] {
            if list.contains(&0) {
                return Err(RedirectConfigError::ZeroPort { field });
            }
        }
        Ok(())
    }

    fn mark(&self) -> String {
        format!("{:#x}/{:#x}", self.ztunnel_mark, self.mark_mask)
    }

    fn conn_mark(&self) -> String {
        format!("{:#x}/{:#x}", self.connmark, self.mark_mask)
    }

    fn probe_snat(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.probe_snat_v4),
            Family::V6 => IpAddr::V6(self.probe_snat_v6),
        }
    }
}

/// IP family: selects `iptables` vs `ip6tables` input and `ip -4` vs `ip -6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family an address belongs to.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    fn default_route(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }

    fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    fn contains(self, net: &IpNet) -> bool {
        Family::of(net.addr()) == self
    }
}

/// A host address written the way `iptables-save` prints it (`a.b.c.d/32`, `x::y/128`).
fn host(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// One chain we own, the builtin chain that jumps to it, and its rules (argument strings
/// without the leading `-A <chain>`, in `iptables-save`'s canonical option order so the
/// rendered text can be compared with what the kernel reports).
struct OwnedChain {
    table: &'static str,
    hook: &'static str,
    name: &'static str,
    rules: Vec<String>,
}

/// (table, builtin hook, our chain) triples that may exist in a pod netns; used to clean up
/// chains a previous config created and the current one does not (DNS capture switched off).
const POD_CHAINS: [(&str, &str, &str); 6] = [
    ("mangle", "PREROUTING", CHAIN_PREROUTING),
    ("mangle", "OUTPUT", CHAIN_OUTPUT),
    ("nat", "PREROUTING", CHAIN_PREROUTING),
    ("nat", "OUTPUT", CHAIN_OUTPUT),
    ("raw", "PREROUTING", CHAIN_PREROUTING),
    ("raw", "OUTPUT", CHAIN_OUTPUT),
];

const NODE_CHAINS: [(&str, &str, &str); 1] = [("nat", "POSTROUTING", CHAIN_POSTROUTING)];

/// Tables in render order. Order between tables does not matter to the kernel; a fixed one keeps
/// the output stable for tests and diffs.
const TABLES: [&str; 3] = ["mangle", "nat", "raw"];

fn pod_chains(cfg: &RedirectConfig, family: Family) -> Vec<OwnedChain> {
    let mark = cfg.mark();
    let conn_mark = cfg.conn_mark();
    let lo = family.loopback();
    let probe = host(cfg.probe_snat(family));

    // Packets ztunnel sends into the pod carry its mark; remember that on the connection so the
    // pod's replies can be steered back to ztunnel (see mangle OUTPUT and `route_commands`).
    let mangle_prert = vec![format!(
        "-m mark --mark {mark} -j CONNMARK --set-xmark {conn_mark}"
    )];
    let mangle_output = vec![format!(
        "-m connmark --mark {conn_mark} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
    )];

    let mut nat_prert = vec![
        // Kubelet probes (SNATed on the node) go straight to the app, as without a mesh.
        format!("-s {probe} -p tcp -m tcp -j ACCEPT"),
    ];
    for port in &cfg.exclude_inbound_ports {
        nat_prert.push(format!("-p tcp -m tcp --dport {port} -j ACCEPT"));
    }
    // All other inbound TCP goes to ztunnel's plaintext port, except HBONE, which ztunnel
    // already terminates on its own port, and ztunnel's own marked traffic.
    nat_prert.push(format!(
        "! -d {lo} -p tcp -m tcp ! --dport {hbone} -m mark ! --mark {mark} -j REDIRECT --to-ports {inb}",
        hbone = cfg.hbone_port,
        inb = cfg.inbound_plain_port,
    ));

    let mut nat_output = vec![
        // Replies to probes must not be captured either.
        format!("-d {probe} -p tcp -m tcp -j ACCEPT"),
    ];
    if cfg.dns_capture {
        let dns = cfg.dns_port;
        nat_output.push(format!(
            "! -o lo -p udp -m mark ! --mark {mark} -m udp --dport 53 -j REDIRECT --to-ports {dns}"
        ));
        nat_output.push(format!(
            "! -d {lo} -p tcp -m tcp --dport 53 -m mark ! --mark {mark} -j REDIRECT --to-ports {dns}"
        ));
    }
    // Replies on connections ztunnel delivered inbound go back out untouched.
    nat_output.push(format!("-p tcp -m mark --mark {conn_mark} -j ACCEPT"));
    // The app talking to itself via its own pod IP stays local.
    nat_output.push(format!("! -d {lo} -o lo -j ACCEPT"));
    for net in cfg
        .exclude_outbound_cidrs
        .iter()
        .filter(|n| family.contains(n))
    {
        nat_output.push(format!("-d {net} -j ACCEPT"));
    }
    for port in &cfg.exclude_outbound_ports {
        nat_output.push(format!("-p tcp -m tcp --dport {port} -j ACCEPT"));
    }
    nat_output.push(format!(
        "! -d {lo} -p tcp -m mark ! --mark {mark} -j REDIRECT --to-ports {out}",
        out = cfg.outbound_port,
    ));

    let mut chains = vec![
        OwnedChain {
            table: "mangle",
            hook: "PREROUTING",
            name: CHAIN_PREROUTING,
            rules: mangle_prert,
        },
        OwnedChain {
            table: "mangle",
            hook: "OUTPUT",
            name: CHAIN_OUTPUT,
            rules: mangle_output,
        },
        OwnedChain {
            table: "nat",
            hook: "PREROUTING",
            name: CHAIN_PREROUTING,
            rules: nat_prert,
        },
        OwnedChain {
            table: "nat",
            hook: "OUTPUT",
            name: CHAIN_OUTPUT,
            rules: nat_output,
        },
    ];
    if cfg.dns_capture {
        chains.push(OwnedChain {
            table: "raw",
            hook: "PREROUTING",
            name: CHAIN_PREROUTING,
            rules: vec![format!(
                "-p udp -m mark ! --mark {mark} -m udp --sport 53 -j CT --zone {DNS_CT_ZONE}"
            )],
        });
        chains.push(OwnedChain {
            table: "raw",
            hook: "OUTPUT",
            name: CHAIN_OUTPUT,
            rules: vec![format!(
                "-p udp -m mark --mark {mark} -m udp --dport 53 -j CT --zone {DNS_CT_ZONE}"
            )],
        });
    }
    chains
}

fn node_chains(cfg: &RedirectConfig, family: Family) -> Vec<OwnedChain> {
    let to = cfg.probe_snat(family);
    // `--socket-exists` singles out connections opened by a process on the node (kubelet) from
    // traffic the node merely forwards (kube-proxy'd service traffic, which must be captured).
    let rule =
        |dst: String| format!("{dst}-p tcp -m owner --socket-exists -j SNAT --to-source {to}");
    let rules = if cfg.probe_snat_pod_cidrs.is_empty() {
        vec![rule(String::new())]
    } else {
        cfg.probe_snat_pod_cidrs
            .iter()
            .filter(|n| family.contains(n))
            .map(|n| rule(format!("-d {} ", n.trunc())))
            .collect()
    };
    vec![OwnedChain {
        table: "nat",
        hook: "POSTROUTING",
        name: CHAIN_POSTROUTING,
        rules,
    }]
}

/// What an `iptables-save` dump says about the chains we own: which exist and how many plain
/// jumps each builtin has to them. Anything else in the dump is ignored, so any text parses.
#[derive(Default)]
struct SavedState {
    /// (table, chain) → present.
    chains: BTreeMap<(String, String), ()>,
    /// (table, hook, target) → number of `-A hook -j target` lines.
    jumps: BTreeMap<(String, String, String), usize>,
}

impl SavedState {
    fn parse(save: &str) -> SavedState {
        let mut state = SavedState::default();
        let mut table: Option<&str> = None;
        for line in save.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                table = Some(name.trim());
            } else if line == "COMMIT" {
                table = None;
            } else if let Some(t) = table {
                if let Some(decl) = line.strip_prefix(':') {
                    if let Some(chain) = decl.split_whitespace().next() {
                        state.chains.insert((t.to_owned(), chain.to_owned()), ());
                    }
                } else if let ["-A", hook, "-j", target] =
                    line.split_whitespace().collect::<Vec<_>>()[..]
                {
                    *state
                        .jumps
                        .entry((t.to_owned(), hook.to_owned(), target.to_owned()))
                        .or_default() += 1;
                }
            }
        }
        state
    }

    fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.chains
            .contains_key(&(table.to_owned(), chain.to_owned()))
    }

    fn jumps(&self, table: &str, hook: &str, chain: &str) -> usize {
        self.jumps
            .get(&(table.to_owned(), hook.to_owned(), chain.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

/// Renders one `iptables-restore --noflush` transaction that leaves exactly `desired` in place
/// and removes every other chain of `universe` found in `current`.
fn render(
    heading: &str,
    desired: &[OwnedChain],
    universe: &[(&str, &str, &str)],
    current: &SavedState,
) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the helper keeps call sites free of unwraps.
    let mut line = |s: fmt::Arguments<'_>| {
        let _ = out.write_fmt(s);
        out.push('\n');
    };
    line(format_args!("# {heading}"));
    for table in TABLES {
        let wanted: Vec<&OwnedChain> = desired.iter().filter(|c| c.table == table).collect();
        let stale: Vec<(&str, &str)> = universe
            .iter()
            .filter(|(t, hook, name)| {
                *t == table
                    && !wanted.iter().any(|c| c.hook == *hook && c.name == *name)
                    && (current.has_chain(t, name) || current.jumps(t, hook, name) > 0)
            })
            .map(|(_, hook, name)| (*hook, *name))
            .collect();
        if wanted.is_empty() && stale.is_empty() {
            continue;
        }
        line(format_args!("*{table}"));
        for c in &wanted {
            line(format_args!(":{} - [0:0]", c.name));
        }
        for c in &wanted {
            // Declaring a chain flushes it under --noflush already; say so explicitly so the
            // result does not depend on that iptables-restore detail.
            line(format_args!("-F {}", c.name));
        }
        for c in &wanted {
            match current.jumps(table, c.hook, c.name) {
                0 => line(format_args!("-A {} -j {}", c.hook, c.name)),
                n => {
                    for _ in 1..n {
                        line(format_args!("-D {} -j {}", c.hook, c.name));
                    }
                }
            }
        }
        for c in &wanted {
            for rule in &c.rules {
                line(format_args!("-A {} {rule}", c.name));
            }
        }
        for (hook, name) in stale {
            for _ in 0..current.jumps(table, hook, name) {
                line(format_args!("-D {hook} -j {name}"));
            }
            if current.has_chain(table, name) {
                line(format_args!("-F {name}"));
                line(format_args!("-X {name}"));
            }
        }
        line(format_args!("COMMIT"));
    }
    out
}

/// Complete `iptables-restore --noflush` input (for `ip6tables-restore` with [`Family::V6`])
/// installing the in-pod rules into a netns that has none of our chains yet. To re-apply over
/// existing rules use [`iptables_reconcile_input`], which this equals for an empty netns.
pub fn iptables_restore_input(cfg: &RedirectConfig, family: Family) -> String {
    iptables_reconcile_input(cfg, family, "")
}

/// Like [`iptables_restore_input`], but given the netns' current `iptables-save` output: adds
/// only the missing builtin jumps, deletes duplicates, and removes owned chains the config no
/// longer wants, so applying the result any number of times yields the same ruleset.
pub fn iptables_reconcile_input(
    cfg: &RedirectConfig,
    family: Family,
    current_save: &str,
) -> String {
    render(
        "ambit in-pod redirect rules",
        &pod_chains(cfg, family),
        &POD_CHAINS,
        &SavedState::parse(current_save),
    )
}

/// `iptables-restore --noflush` input removing every in-pod chain and jump found in
/// `current_save`. Empty tables are skipped, so a clean netns yields only a comment line.
pub fn iptables_remove_input(current_save: &str) -> String {
    render(
        "ambit in-pod redirect rules: removal",
        &[],
        &POD_CHAINS,
        &SavedState::parse(current_save),
    )
}

fn rule_args(cfg: &RedirectConfig, family: Family, op: &str) -> Vec<String> {
    [
        family.ip_flag(),
        "rule",
        op,
        "fwmark",
        &cfg.conn_mark(),
        "pref",
        &RULE_PRIORITY.to_string(),
        "lookup",
        &ROUTE_TABLE.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn route_args(family: Family, op: &str) -> Vec<String> {
    [
        family.ip_flag(),
        "route",
        op,
        "local",
        family.default_route(),
        "dev",
        "lo",
        "table",
        &ROUTE_TABLE.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `ip` argv lists for the original-source return path: packets carrying the connmark (restored
/// into the packet mark in mangle OUTPUT) look up a table whose only route delivers everything
/// locally, so replies to connections ztunnel spoofed the source of go back to ztunnel.
///
/// The route uses `replace` and is idempotent; `ip rule add` reports "File exists" (EEXIST) when
/// the rule is present, which appliers should treat as success (Istio does the same).
pub fn route_commands(cfg: &RedirectConfig, family: Family) -> Vec<Vec<String>> {
    vec![rule_args(cfg, family, "add"), route_args(family, "replace")]
}

/// `ip` argv lists undoing [`route_commands`]; each fails with "No such file or directory"
/// (ENOENT) / "No such process" (ESRCH) when already absent.
pub fn route_remove_commands(cfg: &RedirectConfig, family: Family) -> Vec<Vec<String>> {
    vec![rule_args(cfg, family, "del"), route_args(family, "del")]
}

/// Node side: nat POSTROUTING rules SNATing TCP the node itself opens towards its pods to the
/// probe address, so the pod rules can tell kubelet probes from traffic to be captured. Limited
/// to `probe_snat_pod_cidrs` of this family when that list is non-empty.
pub fn node_probe_snat_input(cfg: &RedirectConfig, family: Family) -> String {
    node_probe_snat_reconcile_input(cfg, family, "")
}

/// [`node_probe_snat_input`] against the node's current `iptables-save` output (see
/// [`iptables_reconcile_input`] for why).
pub fn node_probe_snat_reconcile_input(
    cfg: &RedirectConfig,
    family: Family,
    current_save: &str,
) -> String {
    render(
        "ambit node probe SNAT",
        &node_chains(cfg, family),
        &NODE_CHAINS,
        &SavedState::parse(current_save),
    )
}

/// Removal input for the node's probe SNAT chain and jump found in `current_save`.
pub fn node_probe_snat_remove_input(current_save: &str) -> String {
    render(
        "ambit node probe SNAT: removal",
        &[],
        &NODE_CHAINS,
        &SavedState::parse(current_save),
    )
}
