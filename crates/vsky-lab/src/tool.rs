//! The VM's command-line tools (busybox, mkfs.ext4), run for their effect.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs `tool`; fails with its stderr if it fails.
pub fn run(tool: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
