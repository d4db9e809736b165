//! CPU time and memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.

use std::time::Duration;

/// utime + stime of `pid` (all its threads).
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // Field 2 (comm) may contain spaces; everything after its closing paren is space-separated,
    // starting with field 3 (state). utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat has comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM...), in KiB.
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

pub fn rss_mib(pid: i32) -> f64 {
    status_kib(pid, "VmRSS") as f64 / 1024.0
}

pub fn hwm_mib(pid: i32) -> f64 {
    status_kib(pid, "VmHWM") as f64 / 1024.0
}

/// The executable name, to check the pid really is ztunnel (not an `ip netns exec` wrapper).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// "anon X MiB + file Y MiB, N threads": what an RSS figure is made of.
pub fn rss_breakdown(pid: i32) -> String {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    format!(
        "anon {:.1} MiB + file {:.1} MiB, {threads} threads",
        status_kib(pid, "RssAnon") as f64 / 1024.0,
        status_kib(pid, "RssFile") as f64 / 1024.0,
    )
}

/// Busy and total jiffies of the whole machine (all CPUs), from `/proc/stat`.
pub fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let cpu = stat.lines().next().expect("cpu line");
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    (total - idle, total)
}

/// Machine-wide busy CPU-seconds between two `machine_jiffies` readings.
pub fn busy_secs(before: (u64, u64), after: (u64, u64)) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (after.0 - before.0) as f64 / hz
}
