//! Control-plane scale benchmark: 10,000 pods / 1,000 services / 500 authorization policies.
//! Run: `cargo bench --bench control_plane` (root for the ztunnel part; without root that
//! part is skipped and said so). About a minute.
//!
//! Measured, in this order, in one process:
//! 1. Translation: the cluster's YAML parsed once, then `translate()` (median of 5 runs),
//!    `State` construction and snapshot encoding.
//! 2. The xDS server in-process over real TLS on 127.0.0.1 with the production debounce; 50
//!    delta-ADS subscribers (tonic, client certificates, wildcard on all three types) started
//!    at once: time until all 50 hold the full initial push.
//! 3. One pod moves to a new IP: time from the object change (re-translation included, as the
//!    control plane re-translates on every change) until all 50 have received exactly that one
//!    workload, three times.
//! 4. RSS of this bench process (VmRSS) at each step. It is the bench process, so it includes
//!    the parsed objects, the generator's text and, after the push, the 50 in-process clients.
//! 5. ztunnel RSS holding the state: the translated state written as a local config file for
//!    0, 1,000 and 10,000 workloads and loaded by the release ztunnel (see
//!    `control_plane/ztunnel_rss.rs`). Target: under 300 bytes per workload beyond a fixed base.
//!
//! Environment: `BENCH_QUICK=1` (settle 3 s instead of 12 s before the ztunnel RSS reading),
//! `AMBIT_ZTUNNEL=<path>` (another ztunnel binary), `BENCH_SKIP_ZTUNNEL=1`,
//! `BENCH_ONLY_ZTUNNEL=1` (translation and the ztunnel part only: no xDS push or pod changes).

#[path = "control_plane/gen.rs"]
mod gen;
#[path = "control_plane/heap.rs"]
mod heap;
// Shared with the data-plane bench; this bench uses only the RSS readers.
#[allow(dead_code)]
#[path = "dataplane/procfs.rs"]
mod procfs;
#[path = "control_plane/xds_client.rs"]
mod xds_client;
#[path = "control_plane/ztunnel_rss.rs"]
mod ztunnel_rss;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::xds::{Snapshot, DEFAULT_DEBOUNCE};
use control_plane::{parse_documents, translate, Object, Severity, TranslateConfig, Translation};
use mesh::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, PEER_AUTHENTICATION_TYPE_URL};
use tokio::sync::mpsc;

use xds_client::Event;

const SUBSCRIBERS: usize = 50;
const TRANSLATE_RUNS: usize = 5;
/// The pods moved by the change scenario (one per round).
const MOVED_PODS: [usize; 3] = [4242, 17, 9999];
/// Target for ztunnel: bytes of RSS per workload beyond a fixed base.
const ZTUNNEL_BYTES_PER_WORKLOAD: f64 = 300.0;

fn main() {
    // `cargo test --all-targets` runs bench binaries without --bench; this has no place there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("control_plane: benchmark only; run it with `cargo bench --bench control_plane`");
        return;
    }
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let only_ztunnel = std::env::var("BENCH_ONLY_ZTUNNEL").is_ok_and(|v| v == "1");
    let started = Instant::now();
    let mut out = Report::default();
    let rss = || procfs::status_kib(std::process::id() as i32, "VmRSS");
    let rss_start = rss();

    // 1. Objects and translation.
    let t = Instant::now();
    let yaml = gen::cluster_yaml();
    let gen_time = t.elapsed();
    let t = Instant::now();
    let mut objects: Vec<Object> = parse_documents(&yaml)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("generated YAML must parse: {e}")))
        .collect();
    let parse_time = t.elapsed();
    let yaml_bytes = yaml.len();
    drop(yaml);
    let rss_objects = rss();
    let cfg = TranslateConfig::default();
    let mut times = Vec::new();
    let mut translation = Translation::default();
    for _ in 0..TRANSLATE_RUNS {
        let t = Instant::now();
        translation = translate(&objects, &cfg);
        times.push(t.elapsed());
    }
    let errors: Vec<_> = translation
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "translation errors: {errors:#?}");
    let warnings = translation.problems.len();
    let inputs = translation.state_inputs.clone();
    assert_eq!(inputs.workloads.len(), gen::PODS);
    assert_eq!(inputs.services.len(), gen::SERVICES);
    assert_eq!(inputs.policies.len(), gen::POLICIES);
    let t = Instant::now();
    let state = Arc::new(translation.into_state().expect("state"));
    let state_time = t.elapsed();
    let mut encode = Vec::new();
    let mut snapshot_bytes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let snap = Snapshot::from_state(1, &state);
        encode.push(t.elapsed());
        snapshot_bytes = encoded_bytes(&snap);
    }
    let rss_state = rss();
    out.line(format!(
        "objects: {} documents, {:.1} MB of YAML ({} namespaces, {} services, {} pods, {} policies); generated in {} ms, parsed in {} ms",
        objects.len(),
        yaml_bytes as f64 / 1e6,
        gen::NAMESPACES,
        gen::SERVICES,
        gen::PODS,
        gen::POLICIES,
        gen_time.as_millis(),
        parse_time.as_millis()
    ));
    out.line(format!(
        "translation: {} warnings; {} workloads, {} services, {} policies, {} peer authentications",
        warnings,
        inputs.workloads.len(),
        inputs.services.len(),
        inputs.policies.len(),
        inputs.peer_authentications.len()
    ));
    out.row("translate() median of 5 (ms)", ms(median(&mut times)));
    out.row("State::new (ms)", ms(state_time));
    out.row("snapshot encode, median of 3 (ms)", ms(median(&mut encode)));
    out.row(
        "snapshot size, all resources (MB)",
        format!("{:.2}", snapshot_bytes as f64 / 1e6),
    );

    // 2.–3. need the 50 in-process subscribers (most of the run time and 500 MiB);
    // `BENCH_ONLY_ZTUNNEL=1` skips them when only ztunnel's memory is being worked on.
    if only_ztunnel {
        out.line("xDS push and one-pod change: skipped (BENCH_ONLY_ZTUNNEL=1)".into());
    } else {
        let rss = BenchRss {
            start: rss_start,
            objects: rss_objects,
            state: rss_state,
        };
        xds_part(&mut out, &state, &inputs, &mut objects, &cfg, rss);
    }

    // 5. ztunnel.
    if std::env::var("BENCH_SKIP_ZTUNNEL").is_ok_and(|v| v == "1") {
        out.line("ztunnel RSS: skipped (BENCH_SKIP_ZTUNNEL=1)".into());
    } else if !nix::unistd::geteuid().is_root() {
        out.line("ztunnel RSS: skipped (needs root for the netns test bed)".into());
    } else {
        ztunnel_part(&mut out, &inputs, if quick { 3 } else { 12 });
    }
    out.line(format!(
        "total bench time {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    out.print_and_write(&target_dir().join("bench-control-plane.md"));
}

/// Parts 2 and 3: the in-process xDS server, the first push to the subscribers and the
/// one-pod changes, with the bench process RSS along the way.
fn xds_part(
    out: &mut Report,
    state: &Arc<mesh::model::State>,
    inputs: &control_plane::StateInputs,
    objects: &mut [Object],
    cfg: &TranslateConfig,
    rss: BenchRss,
) {
    let BenchRss {
        start: rss_start,
        objects: rss_objects,
        state: rss_state,
    } = rss;
    let rss = || procfs::status_kib(std::process::id() as i32, "VmRSS");
    // 2. Server and 50 subscribers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (rss_server, push) = rt.block_on(async {
        let server = xds_client::start(state.clone()).await;
        let rss_server = rss();
        let tls = server.client_tls();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for id in 0..SUBSCRIBERS {
            let fut = xds_client::subscriber(id, server.addr, tls.clone(), events_tx.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = fut.await {
                    panic!("{e}");
                }
            }));
        }
        drop(events_tx);
        let expected: BTreeMap<String, usize> = [
            (
                ADDRESS_TYPE_URL,
                inputs.workloads.len() + inputs.services.len(),
            ),
            (AUTHORIZATION_TYPE_URL, inputs.policies.len()),
            (
                PEER_AUTHENTICATION_TYPE_URL,
                inputs.peer_authentications.len(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut done = Vec::new();
        while done.len() < SUBSCRIBERS {
            match next_event(&mut events).await {
                (id, Event::Initial { at, counts }) => {
                    assert_eq!(counts, expected, "subscriber {id}: initial push");
                    done.push(at - t0);
                }
                (id, other) => panic!("subscriber {id}: {other:?} before the initial push"),
            }
        }
        let full_push = *done.iter().max().expect("subscribers");
        let first = *done.iter().min().expect("subscribers");
        let rss_pushed = rss();

        // 3. One pod moves.
        let mut rounds = Vec::new();
        for (round, &p) in MOVED_PODS.iter().enumerate() {
            let new_ip = format!("10.2.0.{}", round + 1);
            let index = pod_index(objects, p);
            let mut doc = parse_documents(&gen::pod_yaml(p, &new_ip));
            objects[index] = doc.remove(0).expect("pod YAML");
            let t0 = Instant::now();
            let next = translate(objects, cfg);
            let moved = next
                .state_inputs
                .workloads
                .iter()
                .find(|w| w.workload_ips.iter().any(|ip| ip.to_string() == new_ip))
                .expect("moved pod translated")
                .uid
                .clone();
            let next = Arc::new(next.into_state().expect("state"));
            let translated = t0.elapsed();
            server.states.send(next).expect("server running");
            let sent = Instant::now();
            let mut got = Vec::new();
            while got.len() < SUBSCRIBERS {
                match next_event(&mut events).await {
                    (
                        id,
                        Event::Update {
                            at,
                            type_url,
                            names,
                            removed,
                        },
                    ) => {
                        assert_eq!(type_url, ADDRESS_TYPE_URL, "subscriber {id}");
                        assert_eq!(
                            names,
                            std::slice::from_ref(&moved),
                            "subscriber {id}: exactly the pod"
                        );
                        assert!(removed.is_empty(), "subscriber {id}: removed {removed:?}");
                        got.push(at);
                    }
                    (id, other) => panic!("subscriber {id}: unexpected {other:?}"),
                }
            }
            let last = *got.iter().max().expect("subscribers");
            rounds.push((translated, last - sent, last - t0));
        }
        drop(tasks);
        (
            rss_server,
            Push {
                first,
                full_push,
                rss_pushed,
                rounds,
            },
        )
    });
    out.row(
        format!("first full push to {SUBSCRIBERS} subscribers, all done (ms)"),
        ms(push.full_push),
    );
    out.row("  of which the first subscriber done (ms)", ms(push.first));
    for (i, (translated, after_send, total)) in push.rounds.iter().enumerate() {
        out.row(
            format!("one-pod change {}: translate + State (ms)", i + 1),
            ms(*translated),
        );
        out.row(
            format!(
                "one-pod change {}: state sent → all {SUBSCRIBERS} have it (ms, incl. {} ms debounce)",
                i + 1,
                DEFAULT_DEBOUNCE.as_millis()
            ),
            ms(*after_send),
        );
        out.row(
            format!("one-pod change {}: object change → all have it (ms)", i + 1),
            ms(*total),
        );
    }
    let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    out.row("bench process RSS at start (MiB)", mib(rss_start));
    out.row("  + parsed objects (MiB)", mib(rss_objects));
    out.row("  + translation, State, 3 snapshots (MiB)", mib(rss_state));
    out.row("  + xDS server, current snapshot (MiB)", mib(rss_server));
    out.row(
        format!("  + {SUBSCRIBERS} subscribers after the push (MiB)"),
        mib(push.rss_pushed),
    );
    out.line(format!(
        "bench process RSS: state + server beyond parsed objects {} MiB; these are the bench process's figures (objects, generator, clients all in it), not a deployed control plane's",
        mib(rss_server.saturating_sub(rss_objects))
    ));
    drop(rt);
}

/// The bench process's VmRSS (KiB) before the xDS part.
struct BenchRss {
    start: u64,
    objects: u64,
    state: u64,
}

struct Push {
    first: Duration,
    full_push: Duration,
    rss_pushed: u64,
    rounds: Vec<(Duration, Duration, Duration)>,
}

fn ztunnel_part(out: &mut Report, inputs: &control_plane::StateInputs, settle_secs: u64) {
    let bin = ztunnel_binary();
    let mut fx = testbed::fixture::Fixture::new("cpscale", &bin);
    let dir = fx.dir.0.clone();
    let cases = [
        ztunnel_rss::write_case(&dir, "empty", inputs, 0, false),
        ztunnel_rss::write_case(&dir, "svc+pol", inputs, 0, true),
        ztunnel_rss::write_case(&dir, "1k", inputs, 1_000, true),
        ztunnel_rss::write_case(&dir, "10k", inputs, 10_000, true),
    ];
    for c in &cases {
        out.row(
            format!(
                "State heap as ztunnel builds it from the file, {} (KiB)",
                c.label
            ),
            format!("{:.0}", c.state_heap as f64 / 1024.0),
        );
    }
    let heap_of = |label: &str| {
        cases
            .iter()
            .find(|c| c.label == label)
            .map(|c| c.state_heap as f64)
            .expect("case")
    };
    out.row(
        "State heap bytes/workload, (heap(10k) − heap(svc+pol)) / 10k",
        format!("{:.0}", (heap_of("10k") - heap_of("svc+pol")) / 10_000.0),
    );
    let readings = ztunnel_rss::measure(&mut fx, &cases, Duration::from_secs(settle_secs));
    for r in &readings {
        out.row(
            format!(
                "ztunnel RSS, {} ({} workloads, {:.1} MB file): ready / {settle_secs}s later (MiB)",
                r.label,
                r.workloads,
                r.file_bytes as f64 / 1e6
            ),
            format!(
                "{:.2} / {:.2} (anon {:.2}, peak {:.2})",
                r.rss_ready_kib as f64 / 1024.0,
                r.rss_settled_kib as f64 / 1024.0,
                r.anon_settled_kib as f64 / 1024.0,
                r.hwm_kib as f64 / 1024.0
            ),
        );
    }
    let by = |label: &str| {
        readings
            .iter()
            .find(|r| r.label == label)
            .map(|r| r.rss_settled_kib as f64 * 1024.0)
            .expect("reading")
    };
    let per_workload = (by("10k") - by("empty")) / 10_000.0;
    let marginal = (by("10k") - by("1k")) / 9_000.0;
    let verdict = |v: f64| {
        if v <= ZTUNNEL_BYTES_PER_WORKLOAD {
            "pass"
        } else {
            "MISS"
        }
    };
    out.row(
        "ztunnel bytes/workload, (RSS(10k) − RSS(empty)) / 10k, target ≤ 300",
        format!("{per_workload:.0} ({})", verdict(per_workload)),
    );
    out.row(
        "ztunnel bytes/workload, marginal (RSS(10k) − RSS(1k)) / 9k",
        format!("{marginal:.0} ({})", verdict(marginal)),
    );
    out.row(
        "ztunnel services + policies alone, beyond empty (KiB)",
        format!("{:.0}", (by("svc+pol") - by("empty")) / 1024.0),
    );
}

/// Where pod `p` sits in `objects` (found by name: the generator's order is not relied on).
fn pod_index(objects: &[Object], p: usize) -> usize {
    let (ns, name) = gen::pod_ref(p);
    objects
        .iter()
        .position(|o| {
            matches!(o, Object::Pod(_)) && o.metadata().namespace == ns && o.metadata().name == name
        })
        .expect("pod present")
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<(usize, Event)>) -> (usize, Event) {
    tokio::time::timeout(xds_client::WAIT, events.recv())
        .await
        .expect("a subscriber event in time")
        .expect("subscribers running")
}

fn encoded_bytes(s: &Snapshot) -> usize {
    control_plane::xds::TYPE_URLS
        .iter()
        .filter_map(|t| s.resources(t))
        .flat_map(|m| m.values())
        .map(|e| e.resource.value.len())
        .sum()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// A two-column table plus notes, printed and written as Markdown.
#[derive(Default)]
struct Report {
    rows: Vec<(String, String)>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, what: impl Into<String>, value: String) {
        let what = what.into();
        println!("{what:<90} {value}");
        self.rows.push((what, value));
    }
    fn line(&mut self, s: String) {
        println!("{s}");
        self.notes.push(s);
    }
    fn print_and_write(&self, path: &std::path::Path) {
        let mut md = String::from("| metric | value |\n|---|---:|\n");
        for (k, v) in &self.rows {
            md.push_str(&format!("| {} | {v} |\n", k.trim()));
        }
        md.push('\n');
        for n in &self.notes {
            md.push_str(&format!("- {n}\n"));
        }
        println!("\n{md}");
        match std::fs::write(path, &md) {
            Ok(()) => println!("written to {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
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

/// `$AMBIT_ZTUNNEL`, or the release ztunnel next to this bench, built first if needed (cargo
/// builds only ztunnel's library for a root-package bench).
fn ztunnel_binary() -> PathBuf {
    if let Ok(p) = std::env::var("AMBIT_ZTUNNEL") {
        return PathBuf::from(p);
    }
    let target = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
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
