//! Every invariant of the cluster state, checked from scratch.
//!
//! [`Cluster::check_invariants`] re-derives what `load` and the mutations
//! keep incrementally, and compares: the name and chunk-owner indexes, each
//! disk's chunk accounting (every chunk exactly one of free, used or
//! releasing), the pool's capacity (`free + used + releasing = capacity`,
//! and `capacity + unavailable` = every disk's chunks), the partner counts,
//! and the placement rules that must always hold (a mirrored disk has
//! `replicas` legs, plus one while a move runs, on distinct servers; no
//! resync or scrub runs on a releasing volume). Tests and the simulator
//! call it after every step; it is O(cluster), so nothing else does.

use std::collections::BTreeSet;

use super::{Cluster, LegAddr, recovery};
use crate::alloc::Partners;
use crate::ids::{DiskId, ServerId};

impl Cluster {
    /// Checks every invariant from scratch (tests and the simulator call
    /// this after each step; it is O(cluster)).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for v in self.volumes.values() {
            if self.volume_names.get(&v.name) != Some(&v.id) {
                return Err(format!("volume name index broken for {}", v.name));
            }
            // Nothing writes a releasing volume's chunks but its head.
            let releasing = self.writer_of(v.id).is_some_and(|a| a.is_releasing());
            if releasing
                && let Some(job) = self
                    .jobs
                    .values()
                    .find(|j| j.volume == v.id && j.state == recovery::JobState::Running)
            {
                return Err(format!("{} runs on releasing volume {}", job.id, v.name));
            }
            if releasing && self.scrubs.has_run_of(v.id) {
                return Err(format!("a scrub runs on releasing volume {}", v.name));
            }
            for (m, md) in v.mirrored_disks.iter().enumerate() {
                let moving = usize::from(self.move_of(v.id, m as u32).is_some());
                if md.legs.len() != usize::from(v.replicas) + moving {
                    return Err(format!(
                        "{} mirrored disk {m} has {} legs",
                        v.name,
                        md.legs.len()
                    ));
                }
                let mut servers = BTreeSet::new();
                // A move's new leg may share the moving leg's server (a
                // disk drained onto its server's other disks): the old leg
                // leaves when the move ends.
                let moving_from = self.move_of(v.id, m as u32).and_then(|j| match j.kind {
                    recovery::JobKind::Move { from, .. } => Some(from),
                    recovery::JobKind::Repair => None,
                });
                for (l, leg) in md.legs.iter().enumerate() {
                    if !seen.insert(leg.chunk) {
                        return Err(format!("chunk {:?} used twice", leg.chunk));
                    }
                    let disk = self
                        .disks
                        .get(&leg.chunk.disk)
                        .ok_or("leg on missing disk")?;
                    let leaving = moving_from.is_some_and(|from| usize::from(from) == l);
                    if !leaving && !servers.insert(disk.server) {
                        return Err(format!(
                            "{} mirrored disk {m} has two legs on one server",
                            v.name
                        ));
                    }
                    let rt = &self.runtime[&disk.id];
                    let want = LegAddr {
                        volume: v.id,
                        mirrored_disk: m as u32,
                        leg: l as u8,
                    };
                    if rt.used.get(&leg.chunk.index) != Some(&want)
                        || rt.free.contains(leg.chunk.index)
                    {
                        return Err(format!("chunk owner index broken for {:?}", leg.chunk));
                    }
                }
            }
        }
        for disk in self.disks.values() {
            let rt = &self.runtime[&disk.id];
            let total = rt.free.len() + rt.used.len() as u64 + disk.releasing.len() as u64;
            if total != u64::from(disk.chunk_count) {
                return Err(format!(
                    "{} chunk accounting: {total} != {}",
                    disk.id, disk.chunk_count
                ));
            }
            if disk
                .releasing
                .keys()
                .any(|i| rt.free.contains(*i) || rt.used.contains_key(i))
            {
                return Err(format!(
                    "{} has a releasing chunk that is also free or used",
                    disk.id
                ));
            }
            if let Some(i) =
                (rt.used.keys().chain(disk.releasing.keys())).find(|&&i| i >= disk.chunk_count)
            {
                return Err(format!("{} accounts for chunk {i} beyond its end", disk.id));
            }
            if let Some((i, r)) = disk.releasing.iter().find(|(_, r)| **r >= self.next_id) {
                return Err(format!(
                    "{} chunk {i} has release id {r}, not yet drawn",
                    disk.id
                ));
            }
        }
        // The pool's capacity adds up too, whatever has failed.
        let s = self.summary();
        if s.free_bytes + s.used_bytes + s.releasing_bytes != s.capacity_bytes {
            return Err(format!(
                "capacity {} != free {} + used {} + releasing {}",
                s.capacity_bytes, s.free_bytes, s.used_bytes, s.releasing_bytes
            ));
        }
        let chunk = self.settings.chunk_size_bytes;
        let raw: u64 = self
            .disks
            .values()
            .map(|d| u64::from(d.chunk_count) * chunk)
            .sum();
        if s.capacity_bytes + s.unavailable_bytes != raw {
            return Err(format!(
                "capacity {} + unavailable {} != all disks' chunks {raw}",
                s.capacity_bytes, s.unavailable_bytes
            ));
        }
        let mut partners = Partners::default();
        for md in self.volumes.values().flat_map(|v| &v.mirrored_disks) {
            let legs: Vec<(DiskId, ServerId)> = md
                .legs
                .iter()
                .map(|l| (l.chunk.disk, self.disks[&l.chunk.disk].server))
                .collect();
            partners.link(&legs, true);
        }
        if partners != self.partners {
            return Err("partner-pair counts differ from the volumes' legs".into());
        }
        self.check_chains()?;
        let used: usize = self.runtime.values().map(|r| r.used.len()).sum();
        if used != seen.len() {
            return Err(format!(
                "{used} chunks marked used but {} legs exist",
                seen.len()
            ));
        }
        Ok(())
    }
}
