//! A head's part of the scrub patrol: the dm-raid `check`s the manager asks
//! of the mirrors this head assembles (`ScrubSpec`s of method
//! `raid_check`). The manager schedules every scrub, attached or detached,
//! so they share the per-disk limit with the resyncs, which go first (the
//! model's `cluster::scrub`); detached volumes are compared by a storage
//! agent instead (`compare.rs`).
//!
//! A check is dm-raid's own `check` action: md reads every leg of the mirror
//! and counts the sectors whose copies differ (the mismatch count), at no
//! more than the mirror's recovery rate limit. The verdict goes to the
//! manager with the scrub's id, with every heartbeat until the manager
//! stops listing the scrub; the manager records it as events and metrics.
//! A leg that fails to read during the check is failed by md, and the
//! health loop reports it like any dead leg, so it is replaced.
//!
//! A check the manager stops listing (a rebuild needs its disks, the
//! volume's legs changed, the volume is being detached) is interrupted
//! with dm-raid's `idle`. A check that cannot start (the mirror is not in
//! sync, or not assembled here) is reported as failed, and the manager
//! tries again later.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use vsky_api::types::{ScrubReport, ScrubSpec};
use vsky_sync::LockExt;

use crate::head::{Head, HeadError};
use crate::shared::Shared;

/// What the patrol needs of the kernel: [`Head`] in the agent, a fake in
/// unit tests (the real path runs in the VM lab's `cluster-scrub`).
pub trait MirrorCheck {
    /// Starts checking mirror `k` of `volume` if it is in sync; whether it
    /// started.
    fn start_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError>;
    /// `None` while the check runs, then the mismatched sectors.
    fn scrub_result(&self, volume: &str, k: u32) -> Result<Option<u64>, HeadError>;
    /// Interrupts a running check (nothing else md may be doing); whether
    /// one ran.
    fn stop_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError>;
}

impl MirrorCheck for Head {
    fn start_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
        Head::start_scrub(self, volume, k)
    }
    fn scrub_result(&self, volume: &str, k: u32) -> Result<Option<u64>, HeadError> {
        Head::scrub_result(self, volume, k)
    }
    fn stop_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
        Head::stop_scrub(self, volume, k)
    }
}

/// How often the patrol looks at the listed checks and the running ones.
const POLL: Duration = Duration::from_secs(2);

/// The checks this head runs for the manager, by scrub id.
#[derive(Default)]
pub struct Checks {
    /// Checks md runs now: (volume, mirrored disk).
    running: BTreeMap<u64, (String, u32)>,
    /// Verdicts (or failures), kept until the manager stops listing them so
    /// they are resent if a heartbeat is lost, and never run twice.
    reports: BTreeMap<u64, ScrubReport>,
}

impl Checks {
    /// One step: interrupt the checks no longer listed in `wanted`, collect
    /// the verdicts md has, and start the listed checks not started yet
    /// (`assembled`: the mirrors this head holds). Returns whether a new
    /// report is ready for the heartbeat.
    pub fn step(
        &mut self,
        head: &dyn MirrorCheck,
        wanted: &[ScrubSpec],
        assembled: &[(String, u32)],
    ) -> bool {
        let listed: BTreeSet<u64> = wanted.iter().map(|s| s.scrub).collect();
        let unlisted: Vec<u64> = self
            .running
            .keys()
            .filter(|id| !listed.contains(id))
            .copied()
            .collect();
        for id in unlisted {
            let (volume, k) = self.running.remove(&id).expect("listed");
            if !assembled.contains(&(volume.clone(), k)) {
                continue; // detached meanwhile: the check went with the mirror
            }
            match head.stop_scrub(&volume, k) {
                Ok(true) => {
                    tracing::info!(
                        scrub = id,
                        volume,
                        mirrored_disk = k,
                        "scrub interrupted (dm-raid idle)"
                    )
                }
                Ok(false) => tracing::info!(
                    scrub = id,
                    volume,
                    mirrored_disk = k,
                    "scrub no longer running"
                ),
                Err(e) => {
                    tracing::warn!(scrub = id, volume, mirrored_disk = k, error = %e, "cannot stop a scrub")
                }
            }
        }
        self.reports.retain(|id, _| listed.contains(id));

        let mut new = false;
        let running: Vec<(u64, (String, u32))> = self
            .running
            .iter()
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        for (id, (volume, k)) in running {
            let outcome = match head.scrub_result(&volume, k) {
                Ok(None) => continue,
                Ok(Some(mismatched_sectors)) => Ok(mismatched_sectors),
                Err(e) => Err(format!("cannot read the check's result: {e}")),
            };
            self.running.remove(&id);
            self.reports.insert(id, report(id, &volume, k, outcome));
            new = true;
        }

        for spec in wanted {
            let id = spec.scrub;
            if self.running.contains_key(&id) || self.reports.contains_key(&id) {
                continue;
            }
            let (volume, k) = (spec.volume.clone(), spec.mirrored_disk);
            let failure = if !assembled.contains(&(volume.clone(), k)) {
                format!("volume {volume} is not assembled on this head")
            } else {
                match head.start_scrub(&volume, k) {
                    Ok(true) => {
                        tracing::info!(
                            scrub = id,
                            volume,
                            mirrored_disk = k,
                            "scrub started (dm-raid check)"
                        );
                        self.running.insert(id, (volume, k));
                        continue;
                    }
                    Ok(false) => "the mirror is not in sync (rebuilding or degraded)".to_string(),
                    Err(e) => format!("cannot start dm-raid's check: {e}"),
                }
            };
            tracing::warn!(scrub = id, volume, mirrored_disk = k, error = %failure, "scrub not done");
            self.reports
                .insert(id, report(id, &volume, k, Err(failure)));
            new = true;
        }
        new
    }

    /// The reports to send with the next heartbeat.
    pub fn reports(&self) -> Vec<ScrubReport> {
        self.reports.values().cloned().collect()
    }
}

/// The report of check `id`: its mismatch count, or why it was not done.
fn report(id: u64, volume: &str, k: u32, outcome: Result<u64, String>) -> ScrubReport {
    match &outcome {
        Ok(0) => tracing::info!(scrub = id, volume, mirrored_disk = k, "scrub clean"),
        Ok(n) => tracing::warn!(
            scrub = id,
            volume,
            mirrored_disk = k,
            mismatched_sectors = n,
            "scrub found differing copies"
        ),
        Err(_) => {}
    }
    let (mismatched_sectors, error) = match outcome {
        Ok(n) => (n, None),
        Err(e) => (0, Some(e)),
    };
    ScrubReport {
        volume: volume.to_string(),
        mirrored_disk: k,
        mismatched_sectors,
        scrub: Some(id),
        unreadable_legs: Vec::new(),
        error,
    }
}

/// Runs the patrol until `stop` turns true.
pub(crate) async fn patrol_loop(
    head: Arc<Mutex<Head>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let checks = Arc::new(Mutex::new(Checks::default()));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        let (head, shared, checks) = (head.clone(), shared.clone(), checks.clone());
        vsky_sync::blocking(move || {
            let wanted = shared.head_checks();
            let assembled = shared.assembled_mirrors();
            let mut checks = checks.lock_unpoisoned();
            let new = {
                let head = head.lock_unpoisoned();
                checks.step(&*head, &wanted, &assembled)
            };
            shared.set_check_reports(checks.reports(), new);
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use vsky_api::types::ScrubMethod;

    use super::*;

    /// A fake kernel: mirrors in sync unless listed, checks that take
    /// `polls` result queries each, and the mismatches each finds.
    #[derive(Default)]
    struct Fake {
        out_of_sync: Vec<(String, u32)>,
        started: RefCell<Vec<(String, u32)>>,
        stopped: RefCell<Vec<(String, u32)>>,
        polls: RefCell<BTreeMap<(String, u32), u32>>,
        mismatches: u64,
        unreadable_result: bool,
    }

    impl MirrorCheck for Fake {
        fn start_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
            let m = (volume.to_string(), k);
            if self.out_of_sync.contains(&m) {
                return Ok(false);
            }
            self.started.borrow_mut().push(m.clone());
            self.polls.borrow_mut().insert(m, 2);
            Ok(true)
        }
        fn scrub_result(&self, volume: &str, k: u32) -> Result<Option<u64>, HeadError> {
            if self.unreadable_result {
                return Err(HeadError::NoLeg {
                    volume: volume.to_string(),
                    mirrored_disk: k as usize,
                });
            }
            let mut polls = self.polls.borrow_mut();
            let left = polls.get_mut(&(volume.to_string(), k)).expect("started");
            if *left > 0 {
                *left -= 1;
                return Ok(None);
            }
            Ok(Some(self.mismatches))
        }
        fn stop_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
            self.stopped.borrow_mut().push((volume.to_string(), k));
            Ok(true)
        }
    }

    fn spec(scrub: u64, k: u32) -> ScrubSpec {
        ScrubSpec {
            scrub,
            method: ScrubMethod::RaidCheck,
            volume: "v".to_string(),
            mirrored_disk: k,
            legs: Vec::new(),
            leg_meta_bytes: 0,
            chunk_size_bytes: 0,
        }
    }

    fn mirrors(n: u32) -> Vec<(String, u32)> {
        (0..n).map(|k| ("v".to_string(), k)).collect()
    }

    #[test]
    fn listed_checks_run_at_once_and_report_until_the_manager_stops_listing_them() {
        let fake = Fake {
            mismatches: 8,
            ..Default::default()
        };
        let mut checks = Checks::default();
        // Nothing listed: nothing runs (the manager decides when).
        assert!(!checks.step(&fake, &[], &mirrors(2)));
        assert!(fake.started.borrow().is_empty());
        // Two listed (the manager found their disks free): both start.
        let wanted = [spec(7, 0), spec(9, 1)];
        assert!(!checks.step(&fake, &wanted, &mirrors(2)));
        assert_eq!(*fake.started.borrow(), mirrors(2));
        assert!(!checks.step(&fake, &wanted, &mirrors(2)));
        assert!(!checks.step(&fake, &wanted, &mirrors(2)));
        assert!(
            checks.step(&fake, &wanted, &mirrors(2)),
            "both verdicts are in"
        );
        let reports = checks.reports();
        assert_eq!(reports.len(), 2);
        assert!(
            reports
                .iter()
                .all(|r| r.mismatched_sectors == 8 && r.error.is_none())
        );
        assert_eq!(
            reports.iter().map(|r| r.scrub).collect::<Vec<_>>(),
            vec![Some(7), Some(9)]
        );
        // Still listed (the heartbeat may have been lost): sent again, not
        // run again.
        assert!(!checks.step(&fake, &wanted, &mirrors(2)));
        assert_eq!(checks.reports().len(), 2);
        assert_eq!(fake.started.borrow().len(), 2);
        // The manager took the verdicts: forgotten.
        checks.step(&fake, &[], &mirrors(2));
        assert!(checks.reports().is_empty());
        assert!(fake.stopped.borrow().is_empty(), "nothing ran to stop");
    }

    #[test]
    fn a_check_the_manager_stops_listing_is_interrupted() {
        let fake = Fake::default();
        let mut checks = Checks::default();
        checks.step(&fake, &[spec(1, 0), spec(2, 1)], &mirrors(2));
        // A rebuild needs the disks of mirror 0: its check is ended.
        checks.step(&fake, &[spec(2, 1)], &mirrors(2));
        assert_eq!(*fake.stopped.borrow(), vec![("v".to_string(), 0)]);
        assert!(checks.reports().is_empty(), "no verdict for it");
        // The volume is detached while mirror 1 is checked: nothing to
        // stop, the check went with the mirror.
        checks.step(&fake, &[], &[]);
        assert_eq!(fake.stopped.borrow().len(), 1);
        assert!(checks.running.is_empty());
    }

    #[test]
    fn a_check_that_cannot_run_is_reported_failed() {
        let fake = Fake {
            out_of_sync: vec![("v".to_string(), 0)],
            ..Default::default()
        };
        let mut checks = Checks::default();
        // Rebuilding in the kernel, and not assembled here: both fail, so
        // the manager tries again later instead of holding the disks.
        assert!(checks.step(&fake, &[spec(1, 0), spec(2, 5)], &mirrors(2)));
        let reports = checks.reports();
        assert!(reports[0].error.as_deref().unwrap().contains("not in sync"));
        assert!(
            reports[1]
                .error
                .as_deref()
                .unwrap()
                .contains("not assembled")
        );
        assert!(fake.started.borrow().is_empty());
        // A result md cannot give fails the check too.
        let fake = Fake {
            unreadable_result: true,
            ..Default::default()
        };
        let mut checks = Checks::default();
        checks.step(&fake, &[spec(3, 1)], &mirrors(2));
        assert!(checks.step(&fake, &[spec(3, 1)], &mirrors(2)));
        assert!(checks.reports()[0].error.is_some());
    }
}
