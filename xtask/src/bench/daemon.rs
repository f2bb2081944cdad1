//! `cargo xtask bench-daemon`: the daemon's footprint and reaction times.
use std::path::Path;

use anyhow::Result;

pub fn run(_agent: &Path) -> Result<()> {
    anyhow::bail!("not written yet")
}
