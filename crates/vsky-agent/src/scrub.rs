//! The scrub patrol of a head: every mirror it assembles is checked once
//! per `--scrub-interval`, one mirror at a time, like the original
//! VastSky's disk patroller and Ceph's scrub.
//!
//! A check is dm-raid's own `check` action: md reads every leg of the mirror
//! and counts the sectors whose copies differ (the mismatch count), at no
//! more than the mirror's recovery rate limit. Mismatches are reported to
//! the manager, which records them as events and metrics; a leg that fails
//! to read during the check is failed by md, and the health loop reports it
//! like any dead leg, so it is replaced.
//!
//! Only one mirror per head is checked at a time, and only mirrors that are
//! in sync: a check never competes with a rebuild on the same mirror.
//! Detached volumes have no head: the manager schedules their scrubs, and
//! a storage agent compares their legs (`compare.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use vsky_api::types::ScrubReport;

use crate::head::{Head, HeadError};
use crate::reconcile::{Shared, lock_shared as lock};

/// What the patrol needs of the kernel: [`Head`] in the agent, a fake in
/// unit tests (the real path runs in the VM lab's `cluster-scrub`).
pub trait MirrorCheck {
    /// Starts checking mirror `k` of `volume` if it is in sync; whether it
    /// started.
    fn start_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError>;
    /// `None` while the check runs, then the mismatched sectors.
    fn scrub_result(&self, volume: &str, k: u32) -> Result<Option<u64>, HeadError>;
}

impl MirrorCheck for Head {
    fn start_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
        Head::start_scrub(self, volume, k)
    }
    fn scrub_result(&self, volume: &str, k: u32) -> Result<Option<u64>, HeadError> {
        Head::scrub_result(self, volume, k)
    }
}

/// How often the patrol looks at its mirrors and the running check.
const POLL: Duration = Duration::from_secs(2);

/// The patrol's memory: when each mirror was last checked, and the check
/// running now.
#[derive(Default)]
pub struct Patrol {
    last: BTreeMap<(String, u32), Instant>,
    running: Option<(String, u32)>,
}

impl Patrol {
    /// One step: finish the running check if md is done with it, else
    /// start the next due one. Mirrors seen for the first time count as
    /// checked now, so an agent restart does not scrub everything at once.
    /// Returns a finished scrub to report.
    pub fn step(
        &mut self,
        head: &dyn MirrorCheck,
        mirrors: &[(String, u32)],
        interval: Duration,
        now: Instant,
    ) -> Option<ScrubReport> {
        self.last.retain(|m, _| mirrors.contains(m));
        for m in mirrors {
            self.last.entry(m.clone()).or_insert(now);
        }
        if let Some((volume, k)) = self.running.clone() {
            if !mirrors.contains(&(volume.clone(), k)) {
                self.running = None; // detached meanwhile
                return None;
            }
            return match head.scrub_result(&volume, k) {
                Ok(None) => None,
                Ok(Some(mismatched_sectors)) => {
                    self.running = None;
                    self.last.insert((volume.clone(), k), now);
                    Some(ScrubReport {
                        volume,
                        mirrored_disk: k,
                        mismatched_sectors,
                        scrub: None,
                        unreadable_legs: Vec::new(),
                        error: None,
                    })
                }
                Err(e) => {
                    tracing::warn!(volume, mirrored_disk = k, error = %e, "cannot read the scrub's result");
                    self.running = None;
                    None
                }
            };
        }
        let due = self
            .last
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= interval)
            .min_by_key(|(_, t)| **t)
            .map(|(m, _)| m.clone());
        if let Some((volume, k)) = due {
            match head.start_scrub(&volume, k) {
                Ok(true) => {
                    tracing::info!(volume, mirrored_disk = k, "scrub started");
                    self.running = Some((volume, k));
                }
                // Not in sync (rebuilding, degraded): try again later.
                Ok(false) => {
                    self.last.insert((volume, k), now);
                }
                Err(e) => {
                    tracing::warn!(volume, mirrored_disk = k, error = %e, "cannot start a scrub");
                    self.last.insert((volume, k), now);
                }
            }
        }
        None
    }
}

/// Runs the patrol until `stop` turns true.
pub(crate) async fn patrol_loop(
    head: Arc<Mutex<Head>>,
    shared: Arc<Shared>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let patrol = Arc::new(Mutex::new(Patrol::default()));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        let (head, shared, patrol) = (head.clone(), shared.clone(), patrol.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let mirrors = shared.assembled_mirrors();
            let report = {
                let head = lock(&head);
                lock(&patrol).step(&*head, &mirrors, interval, Instant::now())
            };
            if let Some(report) = report {
                if report.mismatched_sectors > 0 {
                    tracing::warn!(volume = %report.volume, mirrored_disk = report.mirrored_disk,
                        mismatched_sectors = report.mismatched_sectors, "scrub found differing copies");
                } else {
                    tracing::info!(volume = %report.volume, mirrored_disk = report.mirrored_disk, "scrub clean");
                }
                shared.scrub_done(report);
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A fake kernel: mirrors in sync unless listed, checks that take
    /// `polls` result queries, and the mismatches each finds.
    #[derive(Default)]
    struct Fake {
        out_of_sync: Vec<(String, u32)>,
        started: RefCell<Vec<(String, u32)>>,
        polls: RefCell<u32>,
        mismatches: u64,
    }

    impl MirrorCheck for Fake {
        fn start_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
            let m = (volume.to_string(), k);
            if self.out_of_sync.contains(&m) {
                return Ok(false);
            }
            self.started.borrow_mut().push(m);
            *self.polls.borrow_mut() = 2;
            Ok(true)
        }
        fn scrub_result(&self, _: &str, _: u32) -> Result<Option<u64>, HeadError> {
            let mut polls = self.polls.borrow_mut();
            if *polls > 0 {
                *polls -= 1;
                return Ok(None);
            }
            Ok(Some(self.mismatches))
        }
    }

    fn mirrors(n: u32) -> Vec<(String, u32)> {
        (0..n).map(|k| ("v".to_string(), k)).collect()
    }

    #[test]
    fn mirrors_are_checked_one_at_a_time_once_per_interval() {
        let fake = Fake {
            mismatches: 8,
            ..Default::default()
        };
        let mut p = Patrol::default();
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        // First sight: nothing is due yet (no scrub storm after a restart).
        assert!(p.step(&fake, &mirrors(2), hour, t0).is_none());
        assert!(fake.started.borrow().is_empty());
        // An interval later both are due: one starts, the other waits.
        let t1 = t0 + hour;
        assert!(p.step(&fake, &mirrors(2), hour, t1).is_none());
        assert_eq!(fake.started.borrow().len(), 1);
        assert!(p.step(&fake, &mirrors(2), hour, t1).is_none());
        assert!(p.step(&fake, &mirrors(2), hour, t1).is_none());
        let report = p.step(&fake, &mirrors(2), hour, t1).expect("finished");
        assert_eq!(report.mismatched_sectors, 8);
        assert_eq!(fake.started.borrow().len(), 1, "one at a time");
        // Then the other one; the first is not due again.
        p.step(&fake, &mirrors(2), hour, t1);
        assert_eq!(
            *fake.started.borrow(),
            vec![("v".to_string(), 0), ("v".to_string(), 1)]
        );
    }

    #[test]
    fn an_out_of_sync_or_detached_mirror_is_skipped() {
        let fake = Fake {
            out_of_sync: vec![("v".to_string(), 0)],
            ..Default::default()
        };
        let mut p = Patrol::default();
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        p.step(&fake, &mirrors(1), hour, t0);
        // Rebuilding: not started, retried an interval later.
        assert!(p.step(&fake, &mirrors(1), hour, t0 + hour).is_none());
        assert!(fake.started.borrow().is_empty());
        // A check whose volume is detached meanwhile is dropped quietly.
        let fake = Fake::default();
        let mut p = Patrol::default();
        p.step(&fake, &mirrors(1), hour, t0);
        p.step(&fake, &mirrors(1), hour, t0 + hour);
        assert_eq!(fake.started.borrow().len(), 1);
        assert!(p.step(&fake, &[], hour, t0 + hour).is_none());
        assert!(p.running.is_none());
    }
}
