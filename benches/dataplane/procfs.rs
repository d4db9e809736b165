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
