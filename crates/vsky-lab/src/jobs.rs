//! What the manager's resync jobs did: sampled while they run, or replayed
//! from the event log. Both check the per-disk limit (k=1): no disk takes
//! part in two running resyncs at once, as source or target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Result, bail};
use vsky_api::types::{Rebuild, RebuildState};

use crate::api::Api;

/// The disks of a job: its target and, once chosen, its source.
fn disks(r: &Rebuild) -> Vec<u64> {
    let mut d = vec![r.target.disk_id];
    d.extend(r.source.as_ref().map(|s| s.disk_id));
    d
}

/// Samples the running rebuilds twice a second in the background.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Vec<Rebuild>>>,
}

impl Sampler {
    pub fn start(api: &Api) -> Result<Sampler> {
        let api = api.another()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop_seen.load(Ordering::SeqCst) {
                // A failed sample (a manager busy) is just skipped.
                if let Ok(list) = api.rebuilds(false) {
                    samples.push(
                        list.into_iter()
                            .filter(|r| r.state == RebuildState::Running)
                            .collect(),
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        });
        Ok(Sampler { stop, handle })
    }

    /// Stops sampling; fails if a sample shows a disk in two running
    /// rebuilds. Returns the most rebuilds seen running at once.
    pub fn finish(self) -> Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        let Ok(samples) = self.handle.join() else {
            bail!("the rebuild sampler panicked")
        };
        for (i, running) in samples.iter().enumerate() {
            let mut seen = BTreeMap::new();
            for r in running {
                for d in disks(r) {
                    if let Some(other) = seen.insert(d, r.id) {
                        bail!(
                            "sample {}: disk {d} in rebuilds {other} and {} at once",
                            i + 1,
                            r.id
                        );
                    }
                }
            }
        }
        Ok(samples.iter().map(Vec::len).max().unwrap_or(0))
    }
}

/// Replays the event log (`rebuild_started`, then `rebuild_done` or
/// `rebuild_failed` per job) with each job's disks from the job list, and
/// fails if a disk ever took part in two running resyncs. Returns the jobs
/// started and the most running at once.
pub fn replay(api: &Api) -> Result<(usize, usize)> {
    let jobs: BTreeMap<u64, Rebuild> = api.rebuilds(true)?.into_iter().map(|r| (r.id, r)).collect();
    let mut busy: BTreeMap<u64, u64> = BTreeMap::new();
    let mut running: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let (mut started, mut peak) = (0, 0);
    for e in api.events()? {
        let Some(id) = e.rebuild else { continue };
        match e.kind.as_str() {
            "rebuild_started" => {
                let Some(job) = jobs.get(&id) else {
                    bail!("the job list no longer holds rebuild {id} of the event log")
                };
                release(&mut busy, &mut running, id);
                let d = disks(job);
                for disk in &d {
                    if let Some(other) = busy.insert(*disk, id) {
                        bail!("disk {disk} in rebuilds {other} and {id} at once");
                    }
                }
                running.insert(id, d);
                started += 1;
                peak = peak.max(running.len());
            }
            "rebuild_done" | "rebuild_failed" => release(&mut busy, &mut running, id),
            _ => {}
        }
    }
    Ok((started, peak))
}

fn release(busy: &mut BTreeMap<u64, u64>, running: &mut BTreeMap<u64, Vec<u64>>, id: u64) {
    for d in running.remove(&id).unwrap_or_default() {
        busy.remove(&d);
    }
}
