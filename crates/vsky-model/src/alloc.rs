//! The allocation index: which disk takes the next leg.
//!
//! Rules (the one place they live):
//! 1. The legs of one mirrored disk sit on distinct servers, always.
//! 2. They sit in distinct failure domains when the pool allows; when it does
//!    not, the rule relaxes to distinct servers only.
//! 3. Among the disks that qualify, the least loaded wins: fewest legs, then
//!    fewest legs on its server, then most free chunks, then the lowest disk
//!    id (deterministic tie-break).
//! 4. With a `near` hint, the first leg goes to the head server itself, or
//!    else to its failure domain, when such a disk qualifies.
//! 5. A requested disk class restricts every leg to disks of that class.
//!
//! Disks are kept in ordered sets keyed by load, so a pick walks from the
//! least loaded disk and stops at the first that qualifies: O(log disks) per
//! leg plus the disks skipped because their server or domain is taken, which
//! is bounded by the disks of the R−1 servers already chosen in the common
//! case.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ids::{DiskId, ServerId};

/// Ordering key of an eligible disk: least loaded first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LoadKey {
    legs: u64,
    server_legs: u64,
    free_chunks: Reverse<u64>,
    disk: DiskId,
}

/// What the index needs to know about one eligible disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskEntry {
    pub disk: DiskId,
    pub server: ServerId,
    pub domain: String,
    pub class: Option<String>,
    pub legs: u64,
    /// Legs on all disks of the disk's server. Breaking ties between equally
    /// loaded disks by their server's load is what keeps a uniform pool
    /// within one leg per disk: otherwise the last disks left at the minimum
    /// can all sit on one server, and a mirrored disk, needing distinct
    /// servers, must then load an already fuller disk.
    pub server_legs: u64,
    pub free_chunks: u64,
}

impl DiskEntry {
    fn key(&self) -> LoadKey {
        LoadKey {
            legs: self.legs,
            server_legs: self.server_legs,
            free_chunks: Reverse(self.free_chunks),
            disk: self.disk,
        }
    }
}

/// Placement hint: the head server and its failure domain.
#[derive(Clone, Debug)]
pub struct Near {
    pub server: ServerId,
    pub domain: String,
}

/// The disks eligible for new legs (online disk on an online server with at
/// least one free chunk), indexed by load, class, domain and server.
#[derive(Clone, Debug, Default)]
pub struct AllocIndex {
    entries: HashMap<DiskId, DiskEntry>,
    all: BTreeSet<LoadKey>,
    by_class: BTreeMap<String, BTreeSet<LoadKey>>,
    by_domain: BTreeMap<String, BTreeSet<LoadKey>>,
    by_server: BTreeMap<ServerId, BTreeSet<LoadKey>>,
    free_chunks_all: u64,
    free_chunks_by_class: BTreeMap<String, u64>,
}

impl AllocIndex {
    /// Inserts, updates or (with `None`) removes a disk's entry.
    pub fn set(&mut self, disk: DiskId, entry: Option<DiskEntry>) {
        if let Some(old) = self.entries.remove(&disk) {
            let key = old.key();
            self.all.remove(&key);
            self.free_chunks_all -= old.free_chunks;
            if let Some(class) = &old.class {
                shrink(&mut self.by_class, class, &key);
                let free = self
                    .free_chunks_by_class
                    .get_mut(class)
                    .expect("class counted");
                *free -= old.free_chunks;
            }
            shrink(&mut self.by_domain, &old.domain, &key);
            shrink(&mut self.by_server, &old.server, &key);
        }
        let Some(entry) = entry else { return };
        assert_eq!(entry.disk, disk);
        if entry.free_chunks == 0 {
            return; // a full disk cannot take a leg
        }
        let key = entry.key();
        self.all.insert(key);
        self.free_chunks_all += entry.free_chunks;
        if let Some(class) = &entry.class {
            self.by_class.entry(class.clone()).or_default().insert(key);
            *self.free_chunks_by_class.entry(class.clone()).or_default() += entry.free_chunks;
        }
        self.by_domain
            .entry(entry.domain.clone())
            .or_default()
            .insert(key);
        self.by_server.entry(entry.server).or_default().insert(key);
        self.entries.insert(disk, entry);
    }

    /// Free chunks on eligible disks (of one class, if given).
    pub fn free_chunks(&self, class: Option<&str>) -> u64 {
        match class {
            None => self.free_chunks_all,
            Some(c) => self.free_chunks_by_class.get(c).copied().unwrap_or(0),
        }
    }

    /// Servers with at least one eligible disk (of one class, if given).
    /// O(disks); only used to explain a failed allocation.
    pub fn eligible_servers(&self, class: Option<&str>) -> usize {
        self.entries
            .values()
            .filter(|e| class.is_none() || e.class.as_deref() == class)
            .map(|e| e.server)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Picks `replicas` disks for one mirrored disk under the rules above.
    /// Returns None when no placement exists. Does not change the index:
    /// the caller takes the chunks and updates the entries, so a pick for
    /// the next mirrored disk sees the new load.
    pub fn pick(
        &self,
        replicas: u8,
        class: Option<&str>,
        near: Option<&Near>,
    ) -> Option<Vec<DiskId>> {
        let candidates = match class {
            None => &self.all,
            Some(c) => self.by_class.get(c)?,
        };
        let mut chosen: Vec<&DiskEntry> = Vec::with_capacity(usize::from(replicas));
        for leg in 0..replicas {
            let server_free =
                |e: &DiskEntry, chosen: &[&DiskEntry]| chosen.iter().all(|c| c.server != e.server);
            let domain_free =
                |e: &DiskEntry, chosen: &[&DiskEntry]| chosen.iter().all(|c| c.domain != e.domain);
            let class_ok = |e: &DiskEntry| class.is_none() || e.class.as_deref() == class;
            let first = |set: &BTreeSet<LoadKey>, strict: bool, chosen: &[&DiskEntry]| {
                set.iter().map(|k| &self.entries[&k.disk]).find(|e| {
                    class_ok(e) && server_free(e, chosen) && (!strict || domain_free(e, chosen))
                })
            };
            let mut pick = None;
            if leg == 0
                && let Some(near) = near
            {
                pick = self
                    .by_server
                    .get(&near.server)
                    .and_then(|set| first(set, true, &chosen))
                    .or_else(|| {
                        self.by_domain
                            .get(&near.domain)
                            .and_then(|set| first(set, true, &chosen))
                    });
            }
            let pick = pick
                .or_else(|| first(candidates, true, &chosen))
                .or_else(|| first(candidates, false, &chosen))?;
            chosen.push(pick);
        }
        Some(chosen.iter().map(|e| e.disk).collect())
    }
}

/// Removes `key` from the set under `at`, dropping the set once empty so
/// iteration never meets empty sets.
fn shrink<K: Ord + Clone>(map: &mut BTreeMap<K, BTreeSet<LoadKey>>, at: &K, key: &LoadKey) {
    if let Some(set) = map.get_mut(at) {
        set.remove(key);
        if set.is_empty() {
            map.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(disk: u64, server: u64, domain: &str, legs: u64, free: u64) -> DiskEntry {
        DiskEntry {
            disk: DiskId(disk),
            server: ServerId(server),
            domain: domain.to_string(),
            class: None,
            legs,
            server_legs: 0,
            free_chunks: free,
        }
    }

    fn index(entries: Vec<DiskEntry>) -> AllocIndex {
        let mut idx = AllocIndex::default();
        for e in entries {
            idx.set(e.disk, Some(e));
        }
        idx
    }

    /// The pick rules, one case per rule, checked through one helper.
    fn check(
        entries: Vec<DiskEntry>,
        replicas: u8,
        near: Option<Near>,
        expected: Option<Vec<u64>>,
    ) {
        let idx = index(entries);
        let got = idx.pick(replicas, None, near.as_ref());
        assert_eq!(got, expected.map(|v| v.into_iter().map(DiskId).collect()));
    }

    #[test]
    fn least_loaded_first_then_most_free_then_lowest_id() {
        check(
            vec![
                entry(1, 1, "a", 3, 9),
                entry(2, 2, "b", 1, 9),
                entry(3, 3, "c", 1, 10),
            ],
            2,
            None,
            Some(vec![3, 2]),
        );
        check(
            vec![entry(1, 1, "a", 0, 5), entry(2, 2, "b", 0, 5)],
            2,
            None,
            Some(vec![1, 2]),
        );
    }

    #[test]
    fn never_two_legs_on_one_server() {
        check(
            vec![entry(1, 1, "a", 0, 5), entry(2, 1, "a", 0, 5)],
            2,
            None,
            None,
        );
        check(
            vec![
                entry(1, 1, "a", 0, 5),
                entry(2, 1, "a", 0, 5),
                entry(3, 2, "b", 9, 1),
            ],
            2,
            None,
            Some(vec![1, 3]),
        );
    }

    #[test]
    fn distinct_domains_when_possible_else_distinct_servers() {
        // Disk 2 is less loaded but shares rack a with disk 1.
        check(
            vec![
                entry(1, 1, "a", 0, 5),
                entry(2, 2, "a", 0, 5),
                entry(3, 3, "b", 5, 5),
            ],
            2,
            None,
            Some(vec![1, 3]),
        );
        // Only one rack: fall back to distinct servers.
        check(
            vec![entry(1, 1, "a", 0, 5), entry(2, 2, "a", 1, 5)],
            2,
            None,
            Some(vec![1, 2]),
        );
    }

    #[test]
    fn near_hint_prefers_the_head_then_its_domain() {
        let pool = || {
            vec![
                entry(1, 1, "a", 0, 5),
                entry(2, 2, "b", 3, 5),
                entry(3, 3, "c", 4, 5),
            ]
        };
        let near = |s: u64, d: &str| {
            Some(Near {
                server: ServerId(s),
                domain: d.to_string(),
            })
        };
        check(pool(), 2, near(3, "c"), Some(vec![3, 1]));
        check(pool(), 2, near(9, "b"), Some(vec![2, 1]));
        check(pool(), 2, near(9, "zz"), Some(vec![1, 2]));
    }

    #[test]
    fn class_restricts_every_leg() {
        let mut ssd = entry(3, 3, "c", 9, 5);
        ssd.class = Some("ssd".into());
        let mut ssd2 = entry(4, 4, "d", 9, 5);
        ssd2.class = Some("ssd".into());
        let idx = index(vec![
            entry(1, 1, "a", 0, 5),
            entry(2, 2, "b", 0, 5),
            ssd,
            ssd2,
        ]);
        assert_eq!(
            idx.pick(2, Some("ssd"), None),
            Some(vec![DiskId(3), DiskId(4)])
        );
        assert_eq!(idx.pick(2, Some("nvme"), None), None);
        assert_eq!(idx.free_chunks(Some("ssd")), 10);
        assert_eq!(idx.free_chunks(None), 20);
    }

    #[test]
    fn removing_and_full_disks_leave_the_index() {
        let mut idx = index(vec![entry(1, 1, "a", 0, 5), entry(2, 2, "b", 0, 5)]);
        idx.set(DiskId(2), Some(entry(2, 2, "b", 5, 0)));
        assert_eq!(idx.pick(2, None, None), None);
        assert_eq!(idx.free_chunks(None), 5);
        idx.set(DiskId(1), None);
        assert_eq!(idx.free_chunks(None), 0);
        assert_eq!(idx.eligible_servers(None), 0);
    }
}
