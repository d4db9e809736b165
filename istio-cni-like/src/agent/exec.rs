//! Running the node's networking tools (`iptables-*`, `ip`, `cat`), optionally inside another
//! network namespace through `nsenter --net=<path>`.
//!
//! Why a child process rather than `setns` in the agent: the namespace switch then lives and dies
//! with the child, so no agent thread can ever be left in a pod's namespace, and a path given by
//! the runtime (`/proc/<pid>/ns/net` or a bind mount) works as is. Every run has a deadline and
//! the child is killed when it passes, so one wedged tool cannot stall the agent.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

/// How long one tool may run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// A tool that did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("`{command}`: cannot start: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
}

impl ExecError {
    /// The tool's stderr, when it ran and failed.
    pub fn stderr(&self) -> &str {
        match self {
            ExecError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

/// Runs `argv` (in `netns` when given) and returns its stdout.
pub async fn run(
    netns: Option<&Path>,
    argv: &[&str],
    stdin: Option<&str>,
) -> Result<String, ExecError> {
    let mut full: Vec<String> = Vec::with_capacity(argv.len() + 3);
    if let Some(ns) = netns {
        full.push("nsenter".to_owned());
        full.push(format!("--net={}", ns.display()));
        full.push("--".to_owned());
    }
    full.extend(argv.iter().map(|s| s.to_string()));
    let command = full.join(" ");
    let Some((program, args)) = full.split_first() else {
        return Err(ExecError::Spawn {
            command,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"),
        });
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawn_error = |source| ExecError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let work = async {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
            // Dropping the pipe closes it, so the tool sees end of input.
        }
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(TOOL_TIMEOUT, work).await {
        Err(_) => {
            return Err(ExecError::Timeout {
                command,
                timeout: TOOL_TIMEOUT,
            })
        }
        Ok(result) => result.map_err(spawn_error)?,
    };
    if !output.status.success() {
        return Err(ExecError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
