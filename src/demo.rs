//! `ambit demo`: a small local mesh on network namespaces.

use std::path::PathBuf;

pub fn run(_ztunnel: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not available yet")
}
