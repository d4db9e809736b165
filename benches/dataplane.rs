//! Data-plane benchmarks, mesh vs no mesh on the netns test bed. Run as root: `cargo bench --bench dataplane` (`BENCH_QUICK=1` waits 5 s instead of 60 s for the after-load RSS).
//!
//! One test bed, two nodes, two pairs of pods with the same topology (client pod on node 1,
//! server pod on node 2): the *meshed* pair is captured and served by one shared-mode ztunnel
//! per node (release build, `ZTUNNEL_WORKER_THREADS=1`, `RUST_LOG=warn` so the INFO access log
//! is off); the *plain* pair is neither. Every scenario runs on the plain pair, then on the
//! meshed pair, in the same process, and is reported as a ratio (or an added latency) against
//! the plain path. See docs/benchmarks.md for targets and results.
//!
//! The ztunnel binary: `$AMBIT_ZTUNNEL` if set, else `<target>/release/ztunnel`, which this
//! bench first (re)builds with `cargo build --release -p ztunnel` (a no-op when fresh), because
//! `cargo bench` on the root package builds ztunnel only as a library.
//!
//! Environment: `BENCH_QUICK=1` (5 s instead of 60 s after the load before the last RSS
//! reading), `BENCH_SECS=<n>` (seconds per measured run, default 5), `BENCH_MALLOC_NOTE=<text>`
//! (names the allocator in the report, for comparing builds).

// A bench root resolves modules beside itself; ours live in benches/dataplane/.
#[path = "dataplane/load.rs"]
mod load;
#[path = "dataplane/procfs.rs"]
mod procfs;
#[path = "dataplane/report.rs"]
mod report;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::fixture::{workload_yaml, Fixture};
use testbed::Pod;

use report::{Report, Row, Target};

const SINK_PORT: u16 = 5001;
const HTTP_PORT: u16 = 8080;
const HTTP_CONNS: usize = 16;
const PACED_RATE: u32 = 2000;
const CONN_RATE_WORKERS: usize = 8;

/// A client and a server pod on different nodes.
struct Pair {
    client: Pod,
    server: Pod,
}

impl Pair {
    fn dst(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.server.ip), port)
    }

    /// Runs `f`'s future to completion on a runtime inside the client pod.
    fn client_run<T, Fut>(&self, f: impl FnOnce() -> Fut + Send + 'static) -> T
    where
        Fut: std::future::Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.client
            .netns
            .spawn(f)
            .join()
            .unwrap_or_else(|e| panic!("client task in {}: {e}", self.client.name))
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench binaries without it,
    // and a multi-minute root-only run has no place there.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "dataplane: benchmark only; run it with `cargo bench --bench dataplane` (as root)"
        );
        return;
    }
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let run = Duration::from_secs(secs);
    let settle = Duration::from_secs(if quick { 5 } else { 60 });
    let started = Instant::now();

    let ztunnel_bin = ztunnel_binary();
    println!("dataplane: ztunnel binary {}", ztunnel_bin.display());

    let mut fx = Fixture::new("bench", &ztunnel_bin);
    let n1 = fx.add_node("n1");
    let n2 = fx.add_node("n2");
    let mesh = Pair {
        client: fx.add_captured_pod(&n1, "mclient"),
        server: fx.add_captured_pod(&n2, "mserver"),
    };
    let plain = Pair {
        client: fx.add_plain_pod(&n1, "pclient"),
        server: fx.add_plain_pod(&n2, "pserver"),
    };
    for pod in [&mesh.client, &mesh.server, &plain.client, &plain.server] {
        tune_pod(pod);
    }
    fx.write_config(&format!(
        "workloads:\n{}{}",
        workload_yaml(&mesh.client, "default", "client-sa", "n1", &[]),
        workload_yaml(&mesh.server, "default", "server-sa", "n2", &[]),
    ));

    // Servers stay up for the whole run; dropping the handles at the end stops them.
    let mut servers = Vec::new();
    for pair in [&mesh, &plain] {
        servers.push(pair.server.netns.spawn(|| load::sink_server(SINK_PORT)));
        servers.push(pair.server.netns.spawn(|| load::http_server(HTTP_PORT)));
    }

    // The production config poll interval (the fixture's 50 ms is for test speed).
    let env = [("RUST_LOG", "warn"), ("AMBIT_CONFIG_POLL", "250ms")];
    let z1 = fx.start_ztunnel(&n1, &env);
    let z2 = fx.start_ztunnel(&n2, &env);
    z1.serve(&[(&mesh.client, "default", "client-sa")]);
    z2.serve(&[(&mesh.server, "default", "server-sa")]);
    let zts = [&z1, &z2];
    let pids = [z1.pid(), z2.pid()];
    for z in zts {
        // `ip netns exec` execs the program in place; were it to fork, we would be measuring
        // the wrapper.
        assert_ne!(
            procfs::comm(z.pid()),
            "ip",
            "pid {} is the ip wrapper",
            z.pid()
        );
    }

    // Warm-up: one request each way proves both paths work and opens the HBONE connection.
    for pair in [&plain, &mesh] {
        let dst = pair.dst(HTTP_PORT);
        let n = pair
            .client_run(move || load::one_request(dst))
            .expect("warm-up request");
        assert_eq!(n, load::RESPONSE_BYTES);
    }
    let idle: Vec<f64> = zts.iter().map(|z| procfs::rss_mib(z.pid())).collect();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (z, node) in zts.iter().zip(["n1", "n2"]) {
        let line = format!(
            "ztunnel {node} idle RSS: {}",
            procfs::rss_breakdown(z.pid())
        );
        println!("{line}");
        notes.push(line);
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    notes.push(format!(
        "load average before the runs: {} (other work on the machine skews every figure)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // Throughput, and the proxies' CPU for the bytes the meshed runs moved.
    let mut mesh_bytes = 0u64;
    let mut mesh_cpu = Duration::ZERO;
    let mut cpu_split = [Duration::ZERO; 2];
    for (streams, target) in [(1, Some(0.70)), (4, None)] {
        let [base, meshed] = [&plain, &mesh].map(|pair| {
            let dst = pair.dst(SINK_PORT);
            let _profile = (std::ptr::eq(pair, &mesh))
                .then(|| Profile::start(&format!("throughput{streams}"), &pids));
            let before: Vec<Duration> = zts.iter().map(|z| procfs::cpu_time(z.pid())).collect();
            let machine_before = procfs::machine_jiffies();
            let r = pair.client_run(move || load::bulk_send(dst, streams, run));
            let machine = procfs::busy_secs(machine_before, procfs::machine_jiffies());
            let after: Vec<Duration> = zts.iter().map(|z| procfs::cpu_time(z.pid())).collect();
            (r, [after[0] - before[0], after[1] - before[1]], machine)
        });
        let line = format!(
            "throughput x{streams}: whole machine busy {:.2} CPU-s/GB without mesh ({:.0}% of {} CPUs), {:.2} CPU-s/GB with ({:.0}%)",
            base.2 / (base.0.bytes as f64 / 1e9),
            100.0 * base.2 / base.0.elapsed.as_secs_f64() / ncpu as f64,
            ncpu,
            meshed.2 / (meshed.0.bytes as f64 / 1e9),
            100.0 * meshed.2 / meshed.0.elapsed.as_secs_f64() / ncpu as f64,
        );
        println!("{line}");
        notes.push(line);
        mesh_bytes += meshed.0.bytes;
        mesh_cpu += meshed.1[0] + meshed.1[1];
        cpu_split[0] += meshed.1[0];
        cpu_split[1] += meshed.1[1];
        println!(
            "throughput x{streams}: no-mesh {:.2} Gbit/s, mesh {:.2} Gbit/s (ztunnel CPU n1 {:.2}s n2 {:.2}s)",
            base.0.gbit_per_s(),
            meshed.0.gbit_per_s(),
            meshed.1[0].as_secs_f64(),
            meshed.1[1].as_secs_f64()
        );
        rows.push(Row::ratio(
            format!(
                "throughput, {streams} stream{} (Gbit/s)",
                if streams > 1 { "s" } else { "" }
            ),
            meshed.0.gbit_per_s(),
            base.0.gbit_per_s(),
            target.map(Target::RatioAtLeast),
        ));
    }
    notes.push(format!(
        "proxy CPU over the meshed throughput runs: n1 (client side) {:.2} s, n2 (server side) {:.2} s, for {:.2} GB",
        cpu_split[0].as_secs_f64(),
        cpu_split[1].as_secs_f64(),
        mesh_bytes as f64 / 1e9
    ));
    let cpu_per_gb = mesh_cpu.as_secs_f64() / (mesh_bytes as f64 / 1e9);
    rows.push(Row::absolute(
        "proxy CPU, both ztunnels (CPU-s/GB)".into(),
        cpu_per_gb,
        Target::AtMost(2.0),
    ));

    // Closed-loop requests/s over kept-alive connections.
    let [base, meshed] = [&plain, &mesh].map(|pair| {
        let dst = pair.dst(HTTP_PORT);
        let _profile = std::ptr::eq(pair, &mesh).then(|| Profile::start("closed_loop", &pids));
        cpu_of(&pids, || {
            pair.client_run(move || load::closed_loop(dst, HTTP_CONNS, run))
        })
    });
    notes.push(per_op_line("closed loop", "request", &base, &meshed, run));
    let (base, meshed) = (base.0, meshed.0);
    println!("closed loop: no-mesh {base:.0} req/s, mesh {meshed:.0} req/s");
    rows.push(Row::ratio(
        format!("HTTP/1.1 closed loop, {HTTP_CONNS} conns (req/s)"),
        meshed,
        base,
        Some(Target::RatioAtLeast(0.45)),
    ));

    // Paced latency.
    let [base, meshed] = [&plain, &mesh].map(|pair| {
        let dst = pair.dst(HTTP_PORT);
        pair.client_run(move || load::paced(dst, HTTP_CONNS, PACED_RATE, run))
    });
    for (name, p) in [("no-mesh", &base), ("mesh", &meshed)] {
        let line = format!(
            "paced {PACED_RATE} req/s, {name}: achieved {:.0} req/s, p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            p.achieved_rps,
            p.quantile_us(0.50),
            p.quantile_us(0.90),
            p.quantile_us(0.99),
            p.quantile_us(1.0)
        );
        println!("{line}");
        notes.push(line);
    }
    for (q, limit) in [(0.50, 150.0), (0.99, 400.0)] {
        rows.push(Row::added(
            format!("latency p{} at {PACED_RATE} req/s (µs)", (q * 100.0) as u32),
            meshed.quantile_us(q),
            base.quantile_us(q),
            Target::AddedAtMost(limit),
        ));
    }

    // New connections per second.
    let [base, meshed] = [&plain, &mesh].map(|pair| {
        let dst = pair.dst(HTTP_PORT);
        let _profile = std::ptr::eq(pair, &mesh).then(|| Profile::start("conn_rate", &pids));
        let ((rate, failed), machine, proxies) = cpu_of(&pids, || {
            pair.client_run(move || load::conn_rate(dst, CONN_RATE_WORKERS, run))
        });
        ((rate, failed), (rate, machine, proxies))
    });
    notes.push(per_op_line(
        "connection rate",
        "connection",
        &base.1,
        &meshed.1,
        run,
    ));
    let (base, meshed) = (base.0, meshed.0);
    let line = format!(
        "connection rate: no-mesh {:.0}/s ({} failed), mesh {:.0}/s ({} failed)",
        base.0, base.1, meshed.0, meshed.1
    );
    println!("{line}");
    notes.push(line);
    rows.push(Row::ratio(
        format!("new connections, {CONN_RATE_WORKERS} workers (conn/s)"),
        meshed.0,
        base.0,
        Some(Target::RatioAtLeast(0.35)),
    ));

    // Memory: peak over the whole load, then after it has been idle for `settle`.
    let peak: Vec<f64> = zts.iter().map(|z| procfs::hwm_mib(z.pid())).collect();
    println!(
        "waiting {}s after the load{}",
        settle.as_secs(),
        if quick {
            " (BENCH_QUICK=1; the target is for 60 s)"
        } else {
            ""
        }
    );
    std::thread::sleep(settle);
    let after: Vec<f64> = zts.iter().map(|z| procfs::rss_mib(z.pid())).collect();
    for (z, node) in zts.iter().zip(["n1", "n2"]) {
        notes.push(format!(
            "ztunnel {node} RSS after the wait: {}",
            procfs::rss_breakdown(z.pid())
        ));
    }
    for (i, node) in ["n1", "n2"].iter().enumerate() {
        rows.push(Row::absolute(
            format!("ztunnel {node} RSS idle (MiB)"),
            idle[i],
            Target::AtMost(8.0),
        ));
        rows.push(Row::absolute(
            format!("ztunnel {node} RSS peak under load (MiB)"),
            peak[i],
            Target::AtMost(32.0),
        ));
        rows.push(Row::absolute(
            format!("ztunnel {node} RSS {}s after load (MiB)", settle.as_secs()),
            after[i],
            Target::AtMost(1.5 * idle[i]),
        ));
    }

    let report = Report {
        rows,
        notes,
        quick,
        secs,
        malloc: std::env::var("BENCH_MALLOC_NOTE").unwrap_or_else(|_| "default (glibc)".into()),
        elapsed: started.elapsed(),
    };
    drop(servers);
    report.print_and_write(&target_dir().join("bench-dataplane.md"));
}

/// `perf record` of the ztunnels during one meshed scenario, when `BENCH_PROFILE=<dir>` is set
/// (cpu-clock samples with frame-pointer stacks, which are complete for the kernel part: this
/// VM exposes no hardware counters). Profiling costs CPU, so
/// figures from a profiled run are not the ones to report.
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(name: &str, pids: &[i32]) -> Profile {
        let Ok(dir) = std::env::var("BENCH_PROFILE") else {
            return Profile(None);
        };
        let _ = std::fs::create_dir_all(&dir);
        let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let out = PathBuf::from(dir).join(format!("{name}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-q", "-g", "-F", "2000", "-e", "cpu-clock", "-o"])
            .arg(&out)
            .args(["-p", &pids.join(",")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("perf record not started: {e}"))
            .ok();
        Profile(child)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SIGINT makes perf flush and close its data file.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = child.wait();
        }
    }
}

/// Runs `f`, returning its result, the machine's busy CPU-seconds and both ztunnels' CPU-seconds
/// meanwhile.
fn cpu_of<T>(pids: &[i32], f: impl FnOnce() -> T) -> (T, f64, f64) {
    let zt = || -> f64 {
        pids.iter()
            .map(|p| procfs::cpu_time(*p).as_secs_f64())
            .sum()
    };
    let (m0, z0) = (procfs::machine_jiffies(), zt());
    let out = f();
    let (z1, m1) = (zt(), procfs::machine_jiffies());
    (out, procfs::busy_secs(m0, m1), z1 - z0)
}

/// "<what>: machine CPU per <op> X µs without mesh, Y µs with (ztunnels Z µs)", from
/// (ops per second, machine CPU-s, proxy CPU-s) of a run of length `run`.
fn per_op_line(
    what: &str,
    op: &str,
    base: &(f64, f64, f64),
    meshed: &(f64, f64, f64),
    run: Duration,
) -> String {
    let per_op = |r: &(f64, f64, f64), cpu: f64| cpu / (r.0 * run.as_secs_f64()) * 1e6;
    let line = format!(
        "{what}: machine CPU per {op} {:.1} µs without mesh, {:.1} µs with (of which both ztunnels {:.1} µs)",
        per_op(base, base.1),
        per_op(meshed, meshed.1),
        per_op(meshed, meshed.2),
    );
    println!("{line}");
    line
}

/// Per-pod tuning applied to both pairs alike: the connection-rate run opens tens of
/// thousands of connections in seconds, more than the default ephemeral range allows while
/// closed ones sit in TIME_WAIT.
fn tune_pod(pod: &Pod) {
    for kv in [
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        pod.netns
            .exec(&["sysctl", "-q", "-w", kv])
            .unwrap_or_else(|e| panic!("sysctl {kv} in {}: {e:#}", pod.name));
    }
}

/// The cargo target directory this bench was built into (`<target>/release/deps/<bench>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// `$AMBIT_ZTUNNEL`, or the release ztunnel next to this bench, built first if needed.
fn ztunnel_binary() -> PathBuf {
    if let Ok(p) = std::env::var("AMBIT_ZTUNNEL") {
        return PathBuf::from(p);
    }
    let target = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Cargo releases its build lock before running the bench, so this nested build does not
    // wait on the outer one; when the binary is fresh it only checks timestamps.
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "ztunnel", "--bin", "ztunnel"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build for ztunnel");
    assert!(status.success(), "cargo build --release -p ztunnel failed");
    let bin = target.join("release").join("ztunnel");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}
