//! The one bounded wait of the lab. Every wait has a limit, so a hung
//! datapath fails its scenario instead of hanging the VM (lab/run's hard
//! timeout is only the last resort).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(200);

/// Polls `ready` until it returns `Ok(true)`; fails after `timeout`. An
/// error from `ready` counts as "not yet" (a manager in failover, a device
/// being created), and the last one is named if the wait times out.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > timeout {
            match last_error {
                Some(e) => bail!(
                    "timed out after {}s waiting for: {what} (last error: {e:#})",
                    timeout.as_secs()
                ),
                None => bail!("timed out after {}s waiting for: {what}", timeout.as_secs()),
            }
        }
        std::thread::sleep(POLL);
    }
}

/// `n` seconds.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
