//! The allocation index: which disk takes the next leg.
//!
//! Rules (the one place they live):
//! 1. The legs of one mirrored disk sit on distinct servers, always.
//! 2. They sit in distinct failure domains when the pool allows; when it does
//!    not, the rule relaxes to distinct servers only.
//! 3. Among the disks that qualify, the least loaded wins: fewest legs, then
//!    fewest legs on its server, then most free chunks, then a deterministic
//!    pseudo-random tie-break (so a disk's legs get many different partner
//!    disks, and a rebuild spreads over the pool).
//! 4. With a `near` hint, the first leg goes to the head server itself, or
//!    else to its failure domain, when such a disk qualifies.
//! 5. A requested disk class restricts every leg to disks of that class.
//! 6. Among equally loaded candidates for a mirrored disk's second and later
//!    legs, the disk sharing the fewest mirrored disks with the legs already
//!    placed wins, so each disk's partners spread over the pool and a failed
//!    disk's resyncs read from many disks at once.
//!
//! The index has two levels. Each server keeps its eligible disks ordered by
//! load; the servers are ordered by the key of their best disk plus their
//! own load. That order is exactly the flat order of rule 3 (a server's load
//! is the same for all its disks), but a leg taken from a disk only moves
//! that disk within its server and that server within the server order:
//! O(log disks) per leg, however many disks a server has. A pick walks the
//! servers from the least loaded and stops at the first that qualifies, so it
//! skips only servers already chosen or in a chosen failure domain.
//!
//! Every class gets its own two-level index (plus one for all disks), so a
//! class-restricted pick never wades through disks of other classes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ids::{DiskId, ServerId};

/// Order of disks within one server: fewest legs, most free, lowest id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DiskKey {
    legs: u64,
    free_chunks: Reverse<u64>,
    shuffle: u64,
    disk: DiskId,
}

/// A deterministic pseudo-random tie-break that changes whenever a disk's
/// load does. Without it, equally loaded disks would always be visited in
/// id order, the same disks would keep being paired into mirrored disks,
/// and every leg of a failed disk would have its surviving copy on one
/// partner disk: the rebuild would then crawl through that single disk
/// instead of spreading across the pool. (SplitMix64 finaliser.)
fn shuffle(disk: DiskId, legs: u64) -> u64 {
    let mut z =
        disk.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ legs.wrapping_mul(0xd1b5_4a32_d192_ed03);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Order of servers: their best disk's load, then the server's own load
/// (legs on all its eligible disks), then the best disk's free chunks and
/// id. Breaking ties between equally loaded disks by their server's load is
/// what keeps a uniform pool within one leg per disk: otherwise the last
/// disks left at the minimum can all sit on one server, and a mirrored disk,
/// needing distinct servers, must then load an already fuller disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ServerKey {
    best_legs: u64,
    server_legs: u64,
    best_free_chunks: Reverse<u64>,
    best_shuffle: u64,
    best_disk: DiskId,
    server: ServerId,
}

/// What the index needs to know about one eligible disk (online disk on an
/// online server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskEntry {
    pub disk: DiskId,
    pub server: ServerId,
    pub domain: String,
    pub class: Option<String>,
    pub legs: u64,
    pub free_chunks: u64,
}

impl DiskEntry {
    fn key(&self) -> DiskKey {
        DiskKey {
            legs: self.legs,
            free_chunks: Reverse(self.free_chunks),
            shuffle: shuffle(self.disk, self.legs),
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

/// A two-level index over one set of disks (all, or one class), holding
/// only disks with a free chunk.
#[derive(Clone, Debug, Default)]
struct Bucket {
    servers: BTreeSet<ServerKey>,
    server_keys: HashMap<ServerId, ServerKey>,
    disks: HashMap<ServerId, BTreeSet<DiskKey>>,
    free_chunks: u64,
}

impl Bucket {
    fn insert(&mut self, e: &DiskEntry) {
        self.disks.entry(e.server).or_default().insert(e.key());
        self.free_chunks += e.free_chunks;
    }

    fn remove(&mut self, e: &DiskEntry) {
        if let Some(set) = self.disks.get_mut(&e.server) {
            set.remove(&e.key());
            if set.is_empty() {
                self.disks.remove(&e.server);
            }
        }
        self.free_chunks -= e.free_chunks;
    }

    /// Recomputes one server's place in the server order.
    fn refresh(&mut self, server: ServerId, server_legs: u64) {
        if let Some(old) = self.server_keys.remove(&server) {
            self.servers.remove(&old);
        }
        let Some(best) = self.disks.get(&server).and_then(|set| set.first()) else {
            return;
        };
        let key = ServerKey {
            best_legs: best.legs,
            server_legs,
            best_free_chunks: best.free_chunks,
            best_shuffle: best.shuffle,
            best_disk: best.disk,
            server,
        };
        self.servers.insert(key);
        self.server_keys.insert(server, key);
    }
}

/// Per-server facts the index keeps: its load and where it sits.
#[derive(Clone, Debug, Default)]
struct ServerInfo {
    /// Legs on the server's eligible disks.
    legs: u64,
    /// Eligible disks (full ones included).
    disks: usize,
    domain: String,
    /// Classes of its eligible disks, with disk counts.
    classes: BTreeMap<String, usize>,
}

/// The disks eligible for new legs, indexed for placement.
#[derive(Clone, Debug, Default)]
pub struct AllocIndex {
    /// Every eligible disk, full ones included (their legs count towards
    /// their server's load).
    entries: HashMap<DiskId, DiskEntry>,
    servers: HashMap<ServerId, ServerInfo>,
    servers_by_domain: BTreeMap<String, BTreeSet<ServerId>>,
    all: Bucket,
    by_class: BTreeMap<String, Bucket>,
}

impl AllocIndex {
    /// Inserts, updates or (with `None`) removes a disk's entry.
    pub fn set(&mut self, disk: DiskId, entry: Option<DiskEntry>) {
        let mut touched = None;
        if let Some(old) = self.entries.remove(&disk) {
            self.unlink(&old);
            touched = Some(old.server);
        }
        if let Some(entry) = entry {
            assert_eq!(entry.disk, disk);
            if let Some(t) = touched
                && t != entry.server
            {
                self.refresh(t);
            }
            self.link(&entry);
            touched = Some(entry.server);
            self.entries.insert(disk, entry);
        }
        if let Some(server) = touched {
            self.refresh(server);
        }
    }

    fn link(&mut self, e: &DiskEntry) {
        let info = self.servers.entry(e.server).or_default();
        info.legs += e.legs;
        info.disks += 1;
        if info.domain != e.domain {
            // New server, or its failure domain label changed.
            if let Some(set) = self.servers_by_domain.get_mut(&info.domain) {
                set.remove(&e.server);
            }
            info.domain = e.domain.clone();
            self.servers_by_domain
                .entry(e.domain.clone())
                .or_default()
                .insert(e.server);
        }
        if let Some(class) = &e.class {
            *info.classes.entry(class.clone()).or_default() += 1;
        }
        if e.free_chunks > 0 {
            self.all.insert(e);
            if let Some(class) = &e.class {
                self.by_class.entry(class.clone()).or_default().insert(e);
            }
        }
    }

    fn unlink(&mut self, e: &DiskEntry) {
        let info = self.servers.get_mut(&e.server).expect("linked server");
        info.legs -= e.legs;
        info.disks -= 1;
        if let Some(class) = &e.class {
            let n = info.classes.get_mut(class).expect("linked class");
            *n -= 1;
            if *n == 0 {
                info.classes.remove(class);
            }
        }
        if info.disks == 0 {
            let domain = std::mem::take(&mut info.domain);
            self.servers.remove(&e.server);
            if let Some(set) = self.servers_by_domain.get_mut(&domain) {
                set.remove(&e.server);
                if set.is_empty() {
                    self.servers_by_domain.remove(&domain);
                }
            }
        }
        if e.free_chunks > 0 {
            self.all.remove(e);
            if let Some(class) = &e.class {
                self.by_class
                    .get_mut(class)
                    .expect("linked class bucket")
                    .remove(e);
            }
        }
    }

    /// Re-sorts a server in every bucket it is (or just was) in.
    fn refresh(&mut self, server: ServerId) {
        let legs = self.servers.get(&server).map_or(0, |i| i.legs);
        self.all.refresh(server, legs);
        let classes: Vec<String> = self
            .servers
            .get(&server)
            .map(|i| i.classes.keys().cloned().collect())
            .unwrap_or_default();
        for class in &classes {
            if let Some(bucket) = self.by_class.get_mut(class) {
                bucket.refresh(server, legs);
            }
        }
        // A class bucket the server just left still holds its old key.
        if self.by_class.len() > classes.len() {
            for bucket in self.by_class.values_mut() {
                if bucket.server_keys.contains_key(&server) && !bucket.disks.contains_key(&server) {
                    bucket.refresh(server, legs);
                }
            }
        }
    }

    fn bucket(&self, class: Option<&str>) -> Option<&Bucket> {
        match class {
            None => Some(&self.all),
            Some(c) => self.by_class.get(c),
        }
    }

    /// Free chunks on eligible disks (of one class, if given).
    pub fn free_chunks(&self, class: Option<&str>) -> u64 {
        self.bucket(class).map_or(0, |b| b.free_chunks)
    }

    /// Servers with at least one eligible disk with a free chunk (of one
    /// class, if given).
    pub fn eligible_servers(&self, class: Option<&str>) -> usize {
        self.bucket(class).map_or(0, |b| b.server_keys.len())
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
        self.pick_more(&[], replicas, class, near, &|_, _| 0)
    }

    /// Picks `count` more disks for a mirrored disk whose other live legs
    /// sit on `taken` (server, failure domain, disk): the new legs avoid
    /// those servers always and those domains when possible. This is how a
    /// replacement leg is placed, and how every leg after a mirrored disk's
    /// first is placed.
    ///
    /// `shared(a, b)` counts the mirrored disks disks `a` and `b` already
    /// share. Among the first few equally loaded candidates (so balance is
    /// untouched), a leg goes to the disk sharing the fewest mirrored disks
    /// with the legs already placed. That spreads each disk's partners over
    /// the pool: when a disk dies, the surviving copies of its legs sit on
    /// many disks, so their resyncs run in parallel instead of queueing on
    /// the few disks a plain load order would pair it with.
    pub fn pick_more(
        &self,
        taken: &[(ServerId, String, DiskId)],
        count: u8,
        class: Option<&str>,
        near: Option<&Near>,
        shared: &dyn Fn(DiskId, DiskId) -> u32,
    ) -> Option<Vec<DiskId>> {
        /// Equally loaded candidates weighed for partner spread.
        const PARTNER_CANDIDATES: usize = 8;
        let bucket = self.bucket(class)?;
        let mut chosen: Vec<(ServerId, &str)> =
            taken.iter().map(|(s, d, _)| (*s, d.as_str())).collect();
        let mut placed: Vec<DiskId> = taken.iter().map(|(_, _, d)| *d).collect();
        let mut disks = Vec::with_capacity(usize::from(count));
        for leg in 0..count {
            let qualifies = |k: &ServerKey, strict: bool, chosen: &[(ServerId, &str)]| {
                let domain = self.servers[&k.server].domain.as_str();
                chosen
                    .iter()
                    .all(|(s, d)| *s != k.server && (!strict || *d != domain))
            };
            let mut pick = None;
            if leg == 0
                && taken.is_empty()
                && let Some(near) = near
            {
                pick = bucket.server_keys.get(&near.server).copied().or_else(|| {
                    let peers = self.servers_by_domain.get(&near.domain)?;
                    peers
                        .iter()
                        .filter_map(|s| bucket.server_keys.get(s))
                        .min()
                        .copied()
                });
            }
            let strict = || {
                let first = *bucket
                    .servers
                    .iter()
                    .find(|k| qualifies(k, true, &chosen))?;
                if placed.is_empty() {
                    return Some(first);
                }
                let load = (first.best_legs, first.server_legs);
                bucket
                    .servers
                    .range(first..)
                    .filter(|k| qualifies(k, true, &chosen))
                    .take_while(|k| (k.best_legs, k.server_legs) == load)
                    .take(PARTNER_CANDIDATES)
                    .enumerate()
                    .min_by_key(|(rank, k)| {
                        (
                            placed.iter().map(|p| shared(*p, k.best_disk)).sum::<u32>(),
                            *rank,
                        )
                    })
                    .map(|(_, k)| *k)
            };
            let pick = pick.or_else(strict).or_else(|| {
                bucket
                    .servers
                    .iter()
                    .find(|k| qualifies(k, false, &chosen))
                    .copied()
            })?;
            chosen.push((pick.server, self.servers[&pick.server].domain.as_str()));
            placed.push(pick.best_disk);
            disks.push(pick.best_disk);
        }
        Some(disks)
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
    fn least_loaded_first_then_most_free() {
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
            vec![entry(1, 1, "a", 0, 5), entry(2, 2, "b", 0, 6)],
            2,
            None,
            Some(vec![2, 1]),
        );
    }

    /// Equally loaded disks are visited in an order that changes with
    /// their load, so the same disks are not paired over and over.
    #[test]
    fn ties_are_broken_differently_as_load_changes() {
        let orders: BTreeSet<Vec<DiskId>> = (0..8)
            .map(|legs| {
                let idx = index(
                    (1..=6)
                        .map(|d| entry(d, d, &format!("r{d}"), legs, 5))
                        .collect(),
                );
                idx.pick(2, None, None).unwrap()
            })
            .collect();
        assert!(orders.len() > 1, "always {orders:?}");
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
                entry(2, 1, "a", 1, 5),
                entry(3, 2, "b", 9, 1),
            ],
            2,
            None,
            Some(vec![1, 3]),
        );
    }

    #[test]
    fn distinct_domains_when_possible_else_distinct_servers() {
        // Disk 2 is less loaded than disk 3 but shares rack a with disk 1.
        check(
            vec![
                entry(1, 1, "a", 0, 5),
                entry(2, 2, "a", 1, 5),
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
