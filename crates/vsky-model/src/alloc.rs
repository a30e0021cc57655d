//! The allocation index: which disk takes the next leg.
//!
//! Rules (the one place they live):
//! 1. The legs of one mirrored disk sit on distinct servers, always.
//! 2. They sit in distinct failure domains when the pool allows; when it does
//!    not, the rule relaxes to distinct servers only. A server's domain is
//!    the value of its `Settings::failure_domain_label` label (default
//!    `rack`), or the server itself when it has no such label.
//! 3. Among the disks that qualify, the least loaded wins: fewest legs, then
//!    fewest legs on its server, then most free chunks, then a deterministic
//!    pseudo-random tie-break (so a disk's legs get many different partner
//!    disks, and a rebuild spreads over the pool).
//! 4. With a `near` hint (or the head of an attached volume, when it
//!    grows), the first leg goes to the head server itself, or else to its
//!    failure domain, when such a disk qualifies.
//! 5. A requested disk class restricts every leg to disks of that class.
//! 6. Among equally loaded candidates for a mirrored disk's second and later
//!    legs (the first 8 servers in load order, then the disks of the chosen
//!    server as loaded as its best one), the one that crowds the legs
//!    already placed least wins ([`Partners`]: mirrored disks a placed leg
//!    already shares with the candidate's server, the candidate with the
//!    placed leg's server, and the two disks with each other; the first
//!    with nothing shared at once). Each disk's partners then spread over
//!    the pool's disks and servers, so a failed disk's or server's resyncs
//!    read from many disks behind many links at once.
//! 7. A replacement leg (recovery) trades strict balance for rebuild speed:
//!    among qualifying disks (rules 1, 2, 5), the least busy wins: the
//!    fewest resyncs bound to the disk (as target, or as the source a
//!    queued resync must read), or if more, the resyncs its server already
//!    receives per half its disks (its link); then rule 6; then rule 3's
//!    order, walking at most 128 servers.
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
//!
//! Only serving disks (online, on an online server, not draining) with at
//! least one free chunk are in the index; a failed disk or server drops out
//! at once. Releasing chunks (freed, not yet wiped) count as neither free
//! nor used.
//!
//! What the rules buy, measured in `vsky-sim` (the reasons for rule 3's
//! tie-breaks are on `shuffle` and the server order below): with disk ids
//! as the last tie-break, the same disks kept being paired and a failed
//! disk's rebuild crawled through one partner disk, 50× slower. For a disk
//! loss on 100 servers × 10 disks, the rebuild took 27 s with plain load
//! order, 16 s with rule 6 on disk pairs only, and 10.7 s, the whole-chunk
//! lower bound, with rules 6 and 7 as they are. A pick costs about 1 µs
//! per leg on 10 000 disks (`docs/benchmarks.md`).

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

/// How many mirrored disks each pair of disks shares, and each disk with
/// each server: what rule 6 spreads. Kept by the cluster as legs come and
/// go ([`Partners::link`]); derived from the volumes, never stored.
///
/// A disk's partner count with another disk is how many resyncs must read
/// from that other disk when the first one dies (with 2 replicas the
/// surviving copy is the only source). Its count with a server is the same
/// for a whole server's loss, and also how many of those resyncs share
/// that server's network link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partners {
    /// Keyed (lower id, higher id).
    disks: HashMap<(DiskId, DiskId), u32, IdHash>,
    /// Keyed (disk, server of a partner leg).
    servers: HashMap<(DiskId, ServerId), u32, IdHash>,
}

/// The partner tables are the hot path of placement (several look-ups per
/// leg into tables of millions of entries on large pools). Their keys are
/// ids the cluster assigns, never input, so a multiply-rotate hash (as in
/// rustc's FxHash) is safe here and several times faster than SipHash.
type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Clone, Copy, Debug, Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Partners {
    /// Counts (or with `add` false, uncounts) every pair of the legs of one
    /// mirrored disk, given as (disk, its server).
    pub fn link(&mut self, legs: &[(DiskId, ServerId)], add: bool) {
        fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32, IdHash>, key: K, add: bool) {
            if add {
                *map.entry(key).or_insert(0) += 1;
            } else {
                let n = map.get_mut(&key).expect("counted pairs are uncounted once");
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        for (i, &(a, sa)) in legs.iter().enumerate() {
            for &(b, sb) in &legs[i + 1..] {
                bump(&mut self.disks, (a.min(b), a.max(b)), add);
                bump(&mut self.servers, (a, sb), add);
                bump(&mut self.servers, (b, sa), add);
            }
        }
    }

    /// Mirrored disks that disks `a` and `b` share.
    pub fn disks(&self, a: DiskId, b: DiskId) -> u32 {
        self.disks.get(&(a.min(b), a.max(b))).copied().unwrap_or(0)
    }

    /// Mirrored disks that disk `a` shares with disks of `server`.
    pub fn disk_server(&self, a: DiskId, server: ServerId) -> u32 {
        self.servers.get(&(a, server)).copied().unwrap_or(0)
    }

    /// How much a leg on `disk` (of `server`) would crowd the partners of
    /// the legs already `placed`: for each placed leg, the mirrored disks it
    /// already shares with `server`, those `disk` shares with the placed
    /// leg's server, and those `disk` shares with the placed leg itself.
    /// Zero means every pair is new. Gives up (returning `limit`) as soon
    /// as the sum reaches `limit`: the caller has a candidate that good.
    fn crowding(
        &self,
        placed: &[(DiskId, ServerId)],
        disk: DiskId,
        server: ServerId,
        limit: u32,
    ) -> u32 {
        let mut sum = 0;
        for &(p, ps) in placed {
            let to_server = self.disk_server(p, server);
            sum += to_server;
            if sum >= limit {
                return limit;
            }
            let from_server = self.disk_server(disk, ps);
            sum += from_server;
            if sum >= limit {
                return limit;
            }
            // Sharing with the disk implies sharing with its server both
            // ways, so a zero above spares the look-up.
            if to_server > 0 && from_server > 0 {
                sum += self.disks(p, disk);
            }
        }
        sum.min(limit)
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

    /// Picks `replicas` disks for one mirrored disk under the rules above,
    /// with `partners` for rule 6. Returns None when no placement exists.
    /// Does not change the index: the caller takes the chunks and updates
    /// the entries (and links the partners), so a pick for the next
    /// mirrored disk sees the new load.
    pub fn pick(
        &self,
        replicas: u8,
        class: Option<&str>,
        near: Option<&Near>,
        partners: &Partners,
    ) -> Option<Vec<DiskId>> {
        self.pick_more(&[], replicas, class, near, partners)
    }

    /// Picks `count` more disks for a mirrored disk whose other live legs
    /// sit on `taken` (server, failure domain, disk): the new legs avoid
    /// those servers always and those domains when possible. Every leg
    /// after a mirrored disk's first is placed this way.
    ///
    /// Rule 6: among the first few equally loaded candidate servers (so
    /// balance is untouched), a leg goes to the one whose best disk crowds
    /// the legs already placed the least ([`Partners`]), the first with
    /// nothing shared at once; then, on that server, to the equally loaded
    /// disk that crowds them least. That spreads each disk's partners over
    /// the pool's disks and servers: when a disk or a server dies, the
    /// surviving copies of its legs sit on many disks behind many links,
    /// so their resyncs run in parallel instead of queueing on the few
    /// disks a plain load order would pair it with.
    pub fn pick_more(
        &self,
        taken: &[(ServerId, String, DiskId)],
        count: u8,
        class: Option<&str>,
        near: Option<&Near>,
        partners: &Partners,
    ) -> Option<Vec<DiskId>> {
        /// Equally loaded candidates weighed for partner spread.
        const PARTNER_CANDIDATES: usize = 8;
        let bucket = self.bucket(class)?;
        let mut chosen: Vec<(ServerId, &str)> =
            taken.iter().map(|(s, d, _)| (*s, d.as_str())).collect();
        let mut placed: Vec<(DiskId, ServerId)> = taken.iter().map(|(s, _, d)| (*d, *s)).collect();
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
            let pick = pick.map(|k| (k.server, k.best_disk));
            let strict = || {
                let first = *bucket
                    .servers
                    .iter()
                    .find(|k| qualifies(k, true, &chosen))?;
                if placed.is_empty() {
                    return Some((first.server, first.best_disk));
                }
                let load = (first.best_legs, first.server_legs);
                // (crowding, rank in load order, server's best disk)
                let mut best: Option<(u32, usize, &ServerKey)> = None;
                for (rank, k) in bucket
                    .servers
                    .range(first..)
                    .filter(|k| qualifies(k, true, &chosen))
                    .take_while(|k| (k.best_legs, k.server_legs) == load)
                    .take(PARTNER_CANDIDATES)
                    .enumerate()
                {
                    let limit = best.map_or(u32::MAX, |(c, _, _)| c);
                    let crowding = partners.crowding(&placed, k.best_disk, k.server, limit);
                    if best.is_none_or(|(c, _, _)| crowding < c) {
                        best = Some((crowding, rank, k));
                    }
                    if crowding == 0 {
                        break;
                    }
                }
                let (crowding, _, k) = best?;
                Some((
                    k.server,
                    self.least_crowded_sibling(bucket, k, crowding, &placed, partners),
                ))
            };
            let (server, disk) = pick.or_else(strict).or_else(|| {
                bucket
                    .servers
                    .iter()
                    .find(|k| qualifies(k, false, &chosen))
                    .map(|k| (k.server, k.best_disk))
            })?;
            chosen.push((server, self.servers[&server].domain.as_str()));
            placed.push((disk, server));
            disks.push(disk);
        }
        Some(disks)
    }

    /// On the server of `k`, the disk as loaded as its best one that
    /// crowds `placed` the least (the best disk itself, crowding
    /// `crowding`, unless a sibling does better).
    fn least_crowded_sibling(
        &self,
        bucket: &Bucket,
        k: &ServerKey,
        crowding: u32,
        placed: &[(DiskId, ServerId)],
        partners: &Partners,
    ) -> DiskId {
        let mut best = (crowding, k.best_disk);
        if crowding == 0 {
            return k.best_disk;
        }
        for d in bucket.disks[&k.server]
            .iter()
            .skip(1)
            .take_while(|d| d.legs == k.best_legs)
        {
            let c = partners.crowding(placed, d.disk, k.server, best.0);
            if c < best.0 {
                best = (c, d.disk);
                if c == 0 {
                    break;
                }
            }
        }
        best.1
    }

    /// Picks the disk for one replacement leg of a mirrored disk whose
    /// other live legs sit on `taken` (rule 7): distinct servers always,
    /// distinct domains when possible; then the least busy: the fewest
    /// resyncs bound to the disk (`resyncs`, as target or source), or, if
    /// more, the resyncs its server receives (`receiving`) per half its
    /// disks, so the new resync neither queues behind others on its disk
    /// nor crowds its server's link; then the least crowding of the
    /// surviving legs' partners (rule 6); then least loaded.
    ///
    /// Servers are walked from the least loaded, and on each server its
    /// disks in load order until one with no resync. The walk stops once
    /// `PARTNER_CANDIDATES` servers offered an idle disk on an idle server,
    /// or after `SERVERS_WEIGHED` servers, so a pick stays cheap however
    /// large the pool and however many disks are busy.
    pub fn pick_replacement(
        &self,
        taken: &[(ServerId, String, DiskId)],
        class: Option<&str>,
        partners: &Partners,
        resyncs: &dyn Fn(DiskId) -> u32,
        receiving: &dyn Fn(ServerId) -> u32,
    ) -> Option<DiskId> {
        /// Idle candidates weighed for partner spread.
        const PARTNER_CANDIDATES: usize = 8;
        /// Servers visited at most when no idle disk turns up.
        const SERVERS_WEIGHED: usize = 128;
        let bucket = self.bucket(class)?;
        let placed: Vec<(DiskId, ServerId)> = taken.iter().map(|(s, _, d)| (*d, *s)).collect();
        for strict in [true, false] {
            let qualifies = |k: &&ServerKey| {
                let domain = self.servers[&k.server].domain.as_str();
                taken
                    .iter()
                    .all(|(s, d, _)| *s != k.server && (!strict || d != domain))
            };
            // (busiest of disk and link, disk's resyncs, crowding, rank in
            // the walk, disk): smallest wins.
            let mut best: Option<(u32, u32, u32, usize, DiskId)> = None;
            let mut idle = 0;
            for (rank, k) in bucket.servers.iter().filter(qualifies).enumerate() {
                if rank >= SERVERS_WEIGHED && best.is_some() {
                    break;
                }
                // The server's least busy disk, the least loaded among equals.
                let mut least: Option<(u32, DiskId)> = None;
                for d in &bucket.disks[&k.server] {
                    let n = resyncs(d.disk);
                    if least.is_none_or(|(m, _)| n < m) {
                        least = Some((n, d.disk));
                    }
                    if n == 0 {
                        break;
                    }
                }
                let Some((n, disk)) = least else { continue };
                let link_slots = (self.servers[&k.server].disks as u32).div_ceil(2).max(1);
                let busiest = n.max(receiving(k.server).div_ceil(link_slots));
                let crowding = partners.crowding(&placed, disk, k.server, u32::MAX);
                let candidate = (busiest, n, crowding, rank, disk);
                if best.is_none_or(|b| candidate < b) {
                    best = Some(candidate);
                }
                if busiest == 0 {
                    idle += 1;
                    if idle == PARTNER_CANDIDATES || crowding == 0 {
                        break;
                    }
                }
            }
            if let Some((.., disk)) = best {
                return Some(disk);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
