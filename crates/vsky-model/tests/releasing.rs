//! Freed chunks: every release of a chunk is wiped before the chunk is
//! reused, whatever order, delay or repetition the agents' wipe reports
//! arrive in, and the capacity adds up at every step, also once disks fail.
//!
//! The property test plays the storage agents as the real one works
//! (`vsky-agent`, `wipe::Wipes`): each fetches its desired state, wipes
//! what it lists and has not wiped for that release yet, and reports
//! `(chunk, release)`. The network is hostile: any report ever sent may be
//! delivered again at any later time. The test keeps, beside the model,
//! what each chunk really holds (`dirty`: written since its last wipe) and
//! checks that a free chunk is always clean.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use vsky_model::agent_view::WipeSpec;
use vsky_model::*;
use vsky_testkit::pool::{CHUNK, MIB, PoolSpec};

mod common;

fn new_volume(name: &str, mirrored: u64, replicas: u8) -> NewVolume {
    NewVolume {
        name: name.to_string(),
        size_bytes: mirrored * (CHUNK - MIB),
        replicas: Some(replicas),
        ..Default::default()
    }
}

fn wiped(w: &WipeSpec) -> WipedChunk {
    WipedChunk {
        chunk: w.chunk,
        release: w.release,
    }
}

/// One storage agent as `vsky-agent` runs it.
#[derive(Default)]
struct Agent {
    /// Desired states fetched and not applied yet (applied in order).
    fetched: VecDeque<Vec<WipeSpec>>,
    /// Wipes done that the last applied state still listed.
    done: BTreeSet<WipedChunk>,
    /// Reports not yet sent in a heartbeat.
    queued: Vec<WipedChunk>,
}

/// The cluster, its agents, and what the disks really hold.
struct World {
    c: Cluster,
    secrets: CountingSecrets,
    agents: BTreeMap<ServerId, Agent>,
    /// Every report ever sent: the network may deliver any again.
    sent: Vec<(ServerId, WipedChunk)>,
    /// Chunks written since their last wipe.
    dirty: BTreeSet<ChunkRef>,
    names: u64,
}

impl World {
    fn new(servers: usize, disks: usize, chunks: u64) -> World {
        let c = PoolSpec::new(servers, disks).chunks(chunks).build();
        let agents = c.servers().map(|s| (s.id, Agent::default())).collect();
        World {
            c,
            secrets: CountingSecrets::default(),
            agents,
            sent: Vec::new(),
            dirty: BTreeSet::new(),
            names: 0,
        }
    }

    fn server(&self, i: usize) -> ServerId {
        *self.agents.keys().nth(i % self.agents.len()).unwrap()
    }

    fn used(&self) -> BTreeSet<ChunkRef> {
        self.c
            .volumes()
            .flat_map(|v| v.mirrored_disks.iter().flat_map(|m| &m.legs))
            .map(|l| l.chunk)
            .collect()
    }

    fn fetch(&mut self, server: ServerId) {
        let wipes = self.c.agent_view(server).wipes;
        self.agents
            .get_mut(&server)
            .unwrap()
            .fetched
            .push_back(wipes);
    }

    /// The agent applies its oldest fetched state: forgets wipes no longer
    /// listed, wipes the listed ones it has not done, queues the reports.
    fn apply(&mut self, server: ServerId) {
        let used = self.used();
        let agent = self.agents.get_mut(&server).unwrap();
        let Some(wipes) = agent.fetched.pop_front() else {
            return;
        };
        let listed: BTreeSet<WipedChunk> = wipes.iter().map(wiped).collect();
        agent.done.retain(|w| listed.contains(w));
        for w in &wipes {
            let report = wiped(w);
            if agent.done.insert(report) {
                assert!(
                    !used.contains(&w.chunk),
                    "agent wipes {:?}, which a volume uses",
                    w.chunk
                );
                self.dirty.remove(&w.chunk);
                agent.queued.push(report);
            }
        }
    }

    /// One heartbeat: the queued reports, in order, as the manager's
    /// handler passes them on (reports about disks gone are dropped).
    fn deliver(&mut self, server: ServerId, reports: Vec<WipedChunk>) {
        let reports: Vec<WipedChunk> = reports
            .into_iter()
            .filter(|w| self.c.disk(w.chunk.disk).is_ok_and(|d| d.server == server))
            .collect();
        self.c.chunks_wiped(server, &reports).unwrap();
    }

    fn heartbeat(&mut self, server: ServerId) {
        let reports = std::mem::take(&mut self.agents.get_mut(&server).unwrap().queued);
        self.sent.extend(reports.iter().map(|&w| (server, w)));
        self.deliver(server, reports);
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Create { mirrored, replicas } => {
                self.names += 1;
                let name = format!("v{}", self.names);
                let _ = self
                    .c
                    .create_volume(new_volume(&name, mirrored, replicas), &mut self.secrets);
            }
            Op::Delete(i) => {
                let names: Vec<String> = self.c.volumes().map(|v| v.name.clone()).collect();
                if !names.is_empty() {
                    self.c.delete_volume(&names[i % names.len()]).unwrap();
                }
            }
            Op::Fetch(s) => self.fetch(self.server(s)),
            Op::Apply(s) => self.apply(self.server(s)),
            Op::Heartbeat(s) => self.heartbeat(self.server(s)),
            Op::Redeliver(i) => {
                if !self.sent.is_empty() {
                    let (server, w) = self.sent[i % self.sent.len()];
                    self.deliver(server, vec![w]);
                }
            }
            Op::OldAgentReport(s, d, index) => {
                // An agent from before release ids reports a wipe without
                // one: it never frees a chunk released since.
                let server = self.server(s);
                let disks: Vec<DiskId> = self.c.disks_of(server).map(|d| d.id).collect();
                let chunk = ChunkRef {
                    disk: disks[d % disks.len()],
                    index,
                };
                self.deliver(
                    server,
                    vec![WipedChunk {
                        chunk,
                        release: UNNUMBERED_RELEASE,
                    }],
                );
            }
            Op::Restart(s) => {
                *self.agents.get_mut(&self.server(s)).unwrap() = Agent::default();
            }
            Op::FailDisk(d) => {
                // At most two disk failures per run: with two, a repair
                // must not place a leg on the server of another failed leg
                // of the same mirrored disk (`check_invariants` refuses
                // that); more would leave mirrored disks with no source.
                if self
                    .c
                    .disks()
                    .filter(|d| d.state != DiskState::Online)
                    .count()
                    < 2
                {
                    let disks: Vec<DiskId> = self.c.disks().map(|d| d.id).collect();
                    self.c.fail_disk(disks[d % disks.len()]).unwrap();
                }
            }
            Op::Repair => {
                let _ = self.c.plan_repairs(&mut self.secrets);
            }
            Op::Rebalance => {
                let _ = self.c.rebalance(2, &mut self.secrets);
            }
            Op::EndJobs { fail } => {
                let _ = self.c.start_jobs(1);
                let running: Vec<JobId> = self
                    .c
                    .jobs()
                    .filter(|j| j.state == JobState::Running)
                    .map(|j| j.id)
                    .collect();
                for id in running {
                    if fail {
                        self.c.fail_job(id, "test").unwrap();
                    } else {
                        self.c.finish_job(id).unwrap();
                    }
                }
            }
        }
    }

    /// What must hold after every step.
    fn check(&mut self) {
        self.c.check_invariants().unwrap();
        let used = self.used();
        for disk in self.c.disks() {
            for index in 0..disk.chunk_count {
                let chunk = ChunkRef {
                    disk: disk.id,
                    index,
                };
                let free = !used.contains(&chunk) && !disk.releasing.contains_key(&index);
                assert!(
                    !(free && self.dirty.contains(&chunk)),
                    "{chunk:?} is free but holds a deleted volume's data"
                );
            }
        }
        // Whatever a volume now uses gets written.
        self.dirty.extend(used);
    }

    /// Normal operation resumes: every agent fetches, applies and reports
    /// until nothing on a serving disk is left releasing.
    fn settle(&mut self) {
        let servers: Vec<ServerId> = self.agents.keys().copied().collect();
        for _ in 0..3 {
            for &s in &servers {
                while !self.agents[&s].fetched.is_empty() {
                    self.apply(s);
                }
                self.fetch(s);
                self.apply(s);
                self.heartbeat(s);
                self.check();
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create { mirrored: u64, replicas: u8 },
    Delete(usize),
    Fetch(usize),
    Apply(usize),
    Heartbeat(usize),
    Redeliver(usize),
    OldAgentReport(usize, usize, u32),
    Restart(usize),
    FailDisk(usize),
    Repair,
    Rebalance,
    EndJobs { fail: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..3, 2u8..4).prop_map(|(mirrored, replicas)| Op::Create { mirrored, replicas }),
        5 => (0usize..16).prop_map(Op::Delete),
        5 => (0usize..4).prop_map(Op::Fetch),
        5 => (0usize..4).prop_map(Op::Apply),
        4 => (0usize..4).prop_map(Op::Heartbeat),
        4 => (0usize..64).prop_map(Op::Redeliver),
        1 => (0usize..4, 0usize..2, 0u32..6).prop_map(|(s, d, i)| Op::OldAgentReport(s, d, i)),
        1 => (0usize..4).prop_map(Op::Restart),
        1 => (0usize..8).prop_map(Op::FailDisk),
        1 => Just(Op::Repair),
        1 => Just(Op::Rebalance),
        1 => any::<bool>().prop_map(|fail| Op::EndJobs { fail }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Safety: a free chunk never holds old data, and an agent never wipes
    /// a chunk in use. Accounting: `free + used + releasing = capacity` at
    /// every step. Liveness: once all volumes are gone and the agents run
    /// normally, every chunk of every serving disk is free again.
    #[test]
    fn every_release_is_wiped_before_reuse(ops in prop::collection::vec(op(), 1..120)) {
        let mut w = World::new(4, 2, 6);
        for op in &ops {
            w.run(op);
            w.check();
        }
        let names: Vec<String> = w.c.volumes().map(|v| v.name.clone()).collect();
        for name in names {
            w.c.delete_volume(&name).unwrap();
        }
        w.settle();
        let s = w.c.summary();
        prop_assert_eq!(s.releasing_bytes, 0);
        prop_assert_eq!(s.free_bytes, s.capacity_bytes);
        prop_assert_eq!(s.used_bytes, 0);
    }
}

/// The race behind stuck and unwiped chunks, step by step: a chunk freed,
/// wiped, reused and freed again gets a new release; the agent wipes it
/// again, and the late first report frees nothing.
#[test]
fn a_late_report_of_an_earlier_release_frees_nothing() {
    let mut w = World::new(2, 1, 1);
    let (s0, s1) = (w.server(0), w.server(1));
    w.c.create_volume(new_volume("a", 1, 2), &mut w.secrets)
        .unwrap();
    w.c.delete_volume("a").unwrap();
    for s in [s0, s1] {
        w.fetch(s);
        w.apply(s);
    }
    let first = w.agents[&s0].queued.clone();
    assert_eq!(first.len(), 1);
    w.heartbeat(s0);
    w.heartbeat(s1);
    let disk = first[0].chunk.disk;
    assert_eq!(w.c.disk_usage(disk).free_chunks, 1);

    // Reused and freed again before the agent fetched a state without it.
    w.c.create_volume(new_volume("b", 1, 2), &mut w.secrets)
        .unwrap();
    w.c.delete_volume("b").unwrap();
    let second = w.c.disk(disk).unwrap().releasing[&first[0].chunk.index];
    assert_ne!(second, first[0].release, "a new release, a new id");

    // The first report arrives again (a retried heartbeat): ignored.
    w.deliver(s0, first.clone());
    assert_eq!(w.c.disk_usage(disk).releasing_chunks, 1);
    // So is a report without a release id (an older agent).
    w.deliver(
        s0,
        vec![WipedChunk {
            chunk: first[0].chunk,
            release: UNNUMBERED_RELEASE,
        }],
    );
    assert_eq!(w.c.disk_usage(disk).releasing_chunks, 1);

    // The agent still holds the first wipe as done, yet wipes again for
    // the second release, and that report frees the chunk.
    w.fetch(s0);
    w.apply(s0);
    assert_eq!(w.agents[&s0].queued[0].release, second);
    w.heartbeat(s0);
    assert_eq!(w.c.disk_usage(disk).free_chunks, 1);
    w.check();
}

/// After a disk fails, its chunks (legs, releasing, free) leave the
/// capacity and count as unavailable; the rest still adds up.
#[test]
fn capacity_adds_up_after_a_disk_fails() {
    let mut w = World::new(4, 1, 4);
    w.c.create_volume(new_volume("a", 2, 2), &mut w.secrets)
        .unwrap();
    w.c.create_volume(new_volume("b", 1, 3), &mut w.secrets)
        .unwrap();
    w.c.delete_volume("b").unwrap();
    let before = w.c.summary();
    let victim = w.c.disks().next().unwrap().id;
    w.c.fail_disk(victim).unwrap();
    w.c.check_invariants().unwrap();
    let after = w.c.summary();
    assert_eq!(after.unavailable_bytes, 4 * CHUNK);
    assert_eq!(after.capacity_bytes, before.capacity_bytes - 4 * CHUNK);
    assert_eq!(
        after.free_bytes + after.used_bytes + after.releasing_bytes,
        after.capacity_bytes
    );
    // Repairs release the failed legs' chunks on the failed disk.
    let _ = w.c.plan_repairs(&mut w.secrets);
    w.c.check_invariants().unwrap();
    w.settle();
    let s = w.c.summary();
    assert_eq!(
        s.releasing_bytes, 0,
        "only the failed disk keeps releasing chunks"
    );
    assert_eq!(s.free_bytes + s.used_bytes, s.capacity_bytes);
}

/// A disk record as stores held it before release ids (`releasing` a list
/// of indexes) still loads; its chunks carry no release id, and the wipe
/// report of an agent of either age frees them.
#[test]
fn an_older_store_shape_loads() {
    let mut c = PoolSpec::new(2, 1).chunks(4).build();
    c.create_volume(new_volume("a", 1, 2), &mut CountingSecrets::default())
        .unwrap();
    c.delete_volume("a").unwrap();
    let mut records = c.records();
    let mut old = Vec::new();
    for disk in &records.disks {
        let mut json = serde_json::to_value(disk).unwrap();
        let indexes: Vec<u32> = disk.releasing.keys().copied().collect();
        json["releasing"] = serde_json::json!(indexes);
        old.push(serde_json::from_value::<Disk>(json).unwrap());
    }
    // And a record from before `releasing` existed at all.
    let mut json = serde_json::to_value(&records.disks[0]).unwrap();
    json.as_object_mut().unwrap().remove("releasing");
    assert!(
        serde_json::from_value::<Disk>(json)
            .unwrap()
            .releasing
            .is_empty()
    );
    records.disks = old;
    let mut c = Cluster::load(records).unwrap();
    c.check_invariants().unwrap();
    let servers: Vec<ServerId> = c.servers().map(|s| s.id).collect();
    for s in servers {
        let wipes = c.agent_view(s).wipes;
        assert_eq!(wipes.len(), 1);
        assert_eq!(wipes[0].release, UNNUMBERED_RELEASE);
        c.chunks_wiped(s, &wipes.iter().map(wiped).collect::<Vec<_>>())
            .unwrap();
    }
    assert_eq!(c.summary().free_bytes, c.summary().capacity_bytes);

    // The current shape goes through the store encoding unchanged.
    let disk = &c.records().disks[0];
    let back: Disk = serde_json::from_slice(&serde_json::to_vec(disk).unwrap()).unwrap();
    assert_eq!(&back, disk);
}

/// A stored release id the counter has not reached could be drawn again:
/// the load refuses it.
#[test]
fn a_release_id_beyond_next_id_is_corrupt() {
    let mut c = PoolSpec::new(2, 1).chunks(4).build();
    c.create_volume(new_volume("a", 1, 2), &mut CountingSecrets::default())
        .unwrap();
    c.delete_volume("a").unwrap();
    let mut records = c.records();
    let next = records.next_id;
    let disk = &mut records.disks[0];
    let index = *disk.releasing.keys().next().unwrap();
    disk.releasing.insert(index, next);
    assert!(matches!(
        Cluster::load(records),
        Err(ModelError::Corrupt(_))
    ));
}
