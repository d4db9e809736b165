//! Named network namespaces (`/run/netns/<name>`) and running code inside them.
//!
//! Entering a netns is per thread (`setns(CLONE_NEWNET)` only switches the calling thread), so
//! code never enters one on a caller's thread: [`Netns::run`] and [`Netns::spawn`] each use a
//! fresh OS thread that enters the netns first and exits when done. Sockets keep the netns they
//! were created in for their whole life, so they may be handed back to other threads.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write as _};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{bail, Context as _};
use nix::sched::CloneFlags;
use tokio::sync::oneshot;

/// A handle to a named network namespace. Cheap to clone; does not own the namespace (the
/// [`crate::TestBed`] that created it deletes it).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    name: Arc<str>,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Netns({})", self.name)
    }
}

impl Netns {
    /// A handle to an existing named netns (no check that it exists).
    pub fn from_name(name: &str) -> Netns {
        Netns { name: name.into() }
    }

    /// The name under `/run/netns`, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&*self.name)
    }

    /// Opens the namespace file, e.g. to pass the netns fd to ztunnel over ZDS.
    pub fn open(&self) -> io::Result<File> {
        File::open(self.path())
    }

    /// Moves the *calling thread* into this netns. Private: only used on threads we spawn.
    fn enter(&self) -> io::Result<()> {
        let file = self.open()?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("setns into netns {}: {e}", self.name),
            )
        })
    }

    /// Runs `f` on a fresh OS thread inside this netns and returns its result; fails if the
    /// netns cannot be entered. A panic in `f` is propagated to the caller.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(thread_name(&self.name))
                .spawn_scoped(scope, || {
                    self.enter()?;
                    Ok(f())
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => panic::resume_unwind(panic),
            }
        })
    }

    /// Runs `f` on a fresh OS thread that has entered this netns (`setns(CLONE_NEWNET)`) and
    /// returns its result. Sockets created there live in the netns.
    ///
    /// # Panics
    /// If the netns cannot be entered (test-bed misuse), or if `f` panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("cannot run in netns {}: {e}", self.name),
        }
    }

    /// Spawns a thread in this netns running a current-thread tokio runtime that drives the
    /// future `make()` returns. The future is built on that thread, so it need not be `Send`.
    ///
    /// Dropping the returned [`NetnsTask`] cancels the future (servers stop with their test);
    /// call [`NetnsTask::detach`] to let it run on.
    pub fn spawn<Make, Fut>(&self, make: Make) -> NetnsTask<Fut::Output>
    where
        Make: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let (result_tx, result_rx) = oneshot::channel();
        let (abort_tx, abort_rx) = oneshot::channel::<Control>();
        let netns = self.clone();
        let spawned = std::thread::Builder::new()
            .name(thread_name(&self.name))
            .spawn(move || {
                let outcome = drive(&netns, make, abort_rx);
                // The receiver may be gone (task detached or dropped): nothing left to tell.
                let _ = result_tx.send(outcome);
            });
        if let Err(e) = spawned {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(NetnsTaskError::Enter(e)));
            return NetnsTask {
                result: rx,
                abort: None,
            };
        }
        NetnsTask {
            result: result_rx,
            abort: Some(abort_tx),
        }
    }

    /// `ip netns exec <name> <program>`: a command that runs inside this netns (iptables, curl,
    /// a ztunnel binary...). `ip netns exec` also mounts a matching `/sys` for the child.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `argv` inside this netns and returns its stdout; fails with the exit status and
    /// stderr when it does not succeed.
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<String> {
        self.exec_with_stdin(argv, None)
    }

    /// Like [`Netns::exec`], feeding `stdin` to the program (e.g. `iptables-restore` input).
    pub fn exec_with_stdin(&self, argv: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let Some((program, args)) = argv.split_first() else {
            bail!("exec in netns {}: empty argv", self.name);
        };
        let mut cmd = self.command(program);
        cmd.args(args);
        run_command(cmd, stdin)
            .with_context(|| format!("in netns {}: {}", self.name, argv.join(" ")))
    }
}

/// Runs a command to completion, returning stdout or an error carrying status and stderr.
pub(crate) fn run_command(mut cmd: Command, stdin: Option<&str>) -> anyhow::Result<String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).context("writing stdin")?;
        // `pipe` drops here, closing stdin so the program sees EOF.
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().context("waiting for command")?;
    if !status.success() {
        bail!("{status}: {}", String::from_utf8_lossy(&stderr).trim_end());
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Thread names are limited to 15 bytes by the kernel; keep the informative tail of the netns name.
fn thread_name(netns: &str) -> String {
    let start = netns.len().saturating_sub(15);
    let start = (start..=netns.len())
        .find(|i| netns.is_char_boundary(*i))
        .unwrap_or(netns.len());
    netns[start..].to_owned()
}

fn drive<Make, Fut>(
    netns: &Netns,
    make: Make,
    abort: oneshot::Receiver<Control>,
) -> Result<Fut::Output, NetnsTaskError>
where
    Make: FnOnce() -> Fut,
    Fut: Future,
{
    netns.enter().map_err(NetnsTaskError::Enter)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetnsTaskError::Runtime)?;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async move {
            let fut = make();
            tokio::pin!(fut);
            tokio::select! {
                out = &mut fut => Some(out),
                signal = abort => match signal {
                    // Detached: keep driving the future, now without a way to cancel it.
                    Ok(Control::Detach) => Some(fut.await),
                    // Explicit abort, or the handle was dropped (sender gone).
                    Ok(Control::Abort) | Err(_) => None,
                },
            }
        })
    }));
    // Dropping the runtime here cancels whatever the future spawned on it.
    drop(runtime);
    match outcome {
        Ok(Some(out)) => Ok(out),
        Ok(None) => Err(NetnsTaskError::Aborted),
        Err(panic) => Err(NetnsTaskError::Panicked(panic_message(&*panic))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Why a [`NetnsTask`] produced no output.
#[derive(Debug, thiserror::Error)]
pub enum NetnsTaskError {
    /// The thread could not be started or could not enter the netns.
    #[error("entering the netns: {0}")]
    Enter(#[source] io::Error),
    /// The tokio runtime could not be built.
    #[error("building the runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The future panicked; the payload's message.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The task was aborted (explicitly or by dropping its handle) before finishing.
    #[error("task aborted")]
    Aborted,
}

/// A future running on its own thread inside a netns. Await it (from any runtime) or call
/// [`NetnsTask::join`] from plain threads to get its output. Dropping it aborts the future.
#[must_use = "dropping a NetnsTask aborts it; use .detach() to let it run"]
pub struct NetnsTask<T> {
    result: oneshot::Receiver<Result<T, NetnsTaskError>>,
    /// Dropping this sender (with the task) is what cancels the future.
    abort: Option<oneshot::Sender<Control>>,
}

/// What the handle tells its task besides "I was dropped".
enum Control {
    Abort,
    Detach,
}

impl<T> NetnsTask<T> {
    /// Blocks the calling thread until the task finishes. Not for use inside an async runtime.
    pub fn join(self) -> Result<T, NetnsTaskError> {
        let NetnsTask { result, abort } = self;
        // Keep the abort sender alive while waiting, or the task would cancel itself.
        let out = result
            .blocking_recv()
            .unwrap_or(Err(NetnsTaskError::Aborted));
        drop(abort);
        out
    }

    /// Cancels the future; awaiting or joining afterwards yields [`NetnsTaskError::Aborted`]
    /// unless it had already finished.
    pub fn abort(&mut self) {
        if let Some(tx) = self.abort.take() {
            let _ = tx.send(Control::Abort);
        }
    }

    /// Lets the task run to completion on its own; its output is discarded.
    pub fn detach(mut self) {
        if let Some(tx) = self.abort.take() {
            let _ = tx.send(Control::Detach);
        }
    }
}

impl<T> Future for NetnsTask<T> {
    type Output = Result<T, NetnsTaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.result)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(NetnsTaskError::Aborted)))
    }
}
