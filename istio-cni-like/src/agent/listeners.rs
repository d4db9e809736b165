//! Whether ztunnel's listeners exist inside a pod's network namespace, read from the kernel's
//! socket table (`/proc/net/tcp{,6}` as seen from inside that namespace).
//!
//! The parsing is pure; [`missing`] does the I/O through `nsenter`.

use std::collections::BTreeSet;
use std::path::Path;

use super::exec::{self, ExecError};

/// `st` value of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// Ports with a listening TCP socket in a `/proc/net/tcp` or `/proc/net/tcp6` dump. Malformed
/// lines are skipped (the kernel's format is stable; a bad line cannot make a port appear).
pub fn listening_ports(proc_net_tcp: &str) -> BTreeSet<u16> {
    proc_net_tcp
        .lines()
        .skip(1) // header
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != TCP_LISTEN {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// Of `wanted`, the ports nothing listens on inside `netns`.
pub async fn missing(netns: &Path, wanted: &[u16]) -> Result<Vec<u16>, ExecError> {
    let v4 = exec::run(Some(netns), &["cat", "/proc/net/tcp"], None).await?;
    // tcp6 is absent when IPv6 is disabled in the kernel: then only IPv4 listeners count.
    let v6 = exec::run(Some(netns), &["cat", "/proc/net/tcp6"], None)
        .await
        .unwrap_or_default();
    let mut ports = listening_ports(&v4);
    ports.extend(listening_ports(&v6));
    Ok(wanted
        .iter()
        .copied()
        .filter(|p| !ports.contains(p))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listeners_of_both_families() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
  0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
  1: 0100007F:3A98 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert_eq!(listening_ports(v4), BTreeSet::from([15001]));
        let v6 = "  sl  local_address                         remote_address                        st ...\n   \
  0: 00000000000000000000000000000000:3AA0 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1\n";
        assert_eq!(listening_ports(v6), BTreeSet::from([15008]));
    }

    #[test]
    fn garbage_yields_nothing() {
        assert!(listening_ports("").is_empty());
        assert!(listening_ports("header\n0: zz:zz 0:0 0A\nshort\n").is_empty());
    }
}
