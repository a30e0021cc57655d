//! Chains of layers as a property over random histories
//! (`cluster/chains.rs`, `cluster/readers.rs`): create, write, snapshot,
//! clone, revert, delete, attach, fencing, head reports, reads of
//! snapshots and a failed server, in any order, keep every volume and
//! snapshot reading exactly what was written to it, tell every reader its
//! snapshot's frozen chain, and release exactly the layers nothing reads.

mod common;

use std::collections::BTreeMap;

use common::{thin, used_chunks};
use proptest::prelude::*;
use vsky_model::*;
use vsky_testkit::pool::{MIB, PoolSpec};

/// 256 MiB chunks, as in `chains.rs`.
const CHUNK: u64 = 256 * MIB;

// ---- The property: random histories keep every volume's data. ----

#[derive(Clone, Debug)]
enum Op {
    Create,
    Write(u8, u8),
    Snapshot(u8),
    Clone(u8),
    Revert(u8, u8),
    Delete(u8),
    Attach(u8, u8),
    ForceDetach(u8),
    HeadSwitched(u8),
    Read(u8, u8),
    EndRead(u8, u8),
    /// s2 is declared failed (its reads no longer keep a snapshot).
    FailServer,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Create),
        4 => (0u8..16, 0u8..8).prop_map(|(h, b)| Op::Write(h, b)),
        2 => (0u8..16).prop_map(Op::Snapshot),
        1 => (0u8..16).prop_map(Op::Clone),
        1 => (0u8..16, 0u8..16).prop_map(|(h, s)| Op::Revert(h, s)),
        2 => (0u8..16).prop_map(Op::Delete),
        1 => (0u8..16, 0u8..2).prop_map(|(h, s)| Op::Attach(h, s)),
        1 => (0u8..16).prop_map(Op::ForceDetach),
        2 => (0u8..16).prop_map(Op::HeadSwitched),
        1 => (0u8..16, 0u8..3).prop_map(|(h, s)| Op::Read(h, s)),
        1 => (0u8..16, 0u8..3).prop_map(|(h, s)| Op::EndRead(h, s)),
        1 => Just(Op::FailServer),
    ]
}

/// The world: the cluster, what each layer holds (block → version), and the
/// oracle: what each volume and snapshot must read.
struct World {
    c: Cluster,
    s: CountingSecrets,
    layers: BTreeMap<VolumeId, BTreeMap<u8, u32>>,
    expect: BTreeMap<String, BTreeMap<u8, u32>>,
    version: u32,
    names: u32,
}

impl World {
    fn pick(&self, i: u8) -> Option<String> {
        let names: Vec<&String> = self.expect.keys().collect();
        (!names.is_empty()).then(|| names[usize::from(i) % names.len()].clone())
    }

    fn fresh(&mut self) -> String {
        self.names += 1;
        format!("h{}", self.names)
    }

    fn read(&self, name: &str) -> BTreeMap<u8, u32> {
        let id = self.c.volume_by_name(name).unwrap().id;
        let chain = self.c.chain(id);
        let mut seen = BTreeMap::new();
        for layer in chain.iter().rev() {
            assert!(
                self.c.volume(*layer).is_some(),
                "{name} reads released {layer}"
            );
            seen.extend(self.layers.get(layer).into_iter().flatten());
        }
        seen
    }

    fn apply(&mut self, op: &Op) {
        let now = u64::from(self.version);
        match *op {
            Op::Create => {
                let name = self.fresh();
                thin(&mut self.c, &name, 64 * MIB, &mut self.s);
                self.expect.insert(name, BTreeMap::new());
            }
            Op::Write(h, block) => {
                let Some(name) = self.pick(h) else { return };
                let v = self.c.volume_by_name(&name).unwrap();
                let VolumeRole::Thin { top } = v.role else {
                    return;
                };
                // Only a head writes: a detached volume is attached first
                // (and stays attached), as a VM's start would.
                if v.attachment.is_none() && self.c.attach_volume(&name, "s0").is_err() {
                    return;
                }
                self.version += 1;
                self.layers
                    .entry(top)
                    .or_default()
                    .insert(block, self.version);
                self.expect
                    .get_mut(&name)
                    .unwrap()
                    .insert(block, self.version);
            }
            Op::Snapshot(h) => {
                let Some(name) = self.pick(h) else { return };
                let snap = self.fresh();
                if self
                    .c
                    .snapshot_volume(&name, &snap, now, &mut self.s)
                    .is_ok()
                {
                    let data = self.expect[&name].clone();
                    self.expect.insert(snap, data);
                }
            }
            Op::Clone(h) => {
                let Some(name) = self.pick(h) else { return };
                let clone = self.fresh();
                if self.c.clone_volume(&name, &clone, now, &mut self.s).is_ok() {
                    let data = self.expect[&name].clone();
                    self.expect.insert(clone, data);
                }
            }
            Op::Revert(h, snap) => {
                let (Some(name), Some(snap)) = (self.pick(h), self.pick(snap)) else {
                    return;
                };
                if self.c.revert_volume(&name, &snap, &mut self.s).is_ok() {
                    let data = self.expect[&snap].clone();
                    self.expect.insert(name, data);
                }
            }
            Op::Delete(h) => {
                let Some(name) = self.pick(h) else { return };
                let read_live = self
                    .c
                    .volume_by_name(&name)
                    .unwrap()
                    .readers
                    .iter()
                    .any(|s| self.c.server(*s).unwrap().state != ServerState::Failed);
                if self.c.delete_volume(&name).is_ok() {
                    assert!(!read_live, "{name} was deleted under its live readers");
                    self.expect.remove(&name);
                }
            }
            Op::Read(h, server) => {
                let Some(name) = self.pick(h) else { return };
                let _ = self.c.attach_reader(&name, &format!("s{server}"));
            }
            Op::EndRead(h, server) => {
                let Some(name) = self.pick(h) else { return };
                self.c.end_reader(&name, &format!("s{server}")).unwrap();
            }
            Op::FailServer => {
                self.c.fail_server("s2").unwrap();
            }
            Op::Attach(h, server) => {
                let Some(name) = self.pick(h) else { return };
                let _ = self.c.attach_volume(&name, &format!("s{server}"));
            }
            Op::ForceDetach(h) => {
                let Some(name) = self.pick(h) else { return };
                // Snapshots its head never confirmed are dropped with it.
                let pending: Vec<String> = self
                    .expect
                    .keys()
                    .filter(|n| {
                        let v = self.c.volume_by_name(n).unwrap();
                        matches!(&v.role, VolumeRole::Snapshot { snapshot_of, .. } if *snapshot_of == name)
                            && !self.c.snapshot_is_ready(v.id)
                    })
                    .cloned()
                    .collect();
                let (ended, _) = self.c.force_detach_volume(&name, &mut self.s).unwrap();
                for p in pending {
                    assert!(ended, "a pending snapshot needs an attached volume");
                    self.expect.remove(&p);
                }
            }
            Op::HeadSwitched(h) => {
                let Some(name) = self.pick(h) else { return };
                let head = self
                    .c
                    .volume_by_name(&name)
                    .unwrap()
                    .attachment
                    .as_ref()
                    .map(|a| a.head);
                if let Some(head) = head {
                    self.c.finish_freeze(head, &name).unwrap();
                }
            }
        }
        // Released layers' data is gone for good.
        self.layers.retain(|id, _| self.c.volume(*id).is_some());
    }

    fn check(&self) {
        self.c.check_invariants().unwrap();
        let handles = self
            .c
            .volumes()
            .filter(|v| v.role.layer().is_none())
            .count();
        assert_eq!(handles, self.expect.len(), "volumes and snapshots");
        for (name, want) in &self.expect {
            assert_eq!(
                &self.read(name),
                want,
                "{name} reads what was written to it"
            );
        }
        // Every reader is told its snapshot's whole chain, frozen.
        for v in self.c.volumes().filter(|v| !v.readers.is_empty()) {
            let chain: Vec<String> = self.c.chain(v.id).into_iter().map(layer_name).collect();
            for &reader in &v.readers {
                let view = self.c.agent_view(reader);
                let spec = view.volumes.iter().find(|s| s.name == v.name).unwrap();
                assert!(spec.read_only);
                let told: Vec<&String> = spec.chain.iter().map(|l| &l.name).collect();
                assert_eq!(told, chain.iter().collect::<Vec<_>>());
                assert!(
                    spec.chain
                        .iter()
                        .all(|l| l.form == agent_view::LayerForm::Base)
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn every_history_keeps_each_volumes_data_and_frees_what_nothing_reads(
        ops in prop::collection::vec(op(), 1..60),
        order in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut w = World {
            c: PoolSpec::new(3, 2).chunk_bytes(CHUNK).chunks(64).build(),
            s: CountingSecrets::default(),
            layers: BTreeMap::new(),
            expect: BTreeMap::new(),
            version: 0,
            names: 0,
        };
        for op in &ops {
            w.apply(op);
            w.check();
        }
        // Everything goes, in a random order: every chunk is released.
        let mut order = order.into_iter().cycle();
        while let Some(name) = w.pick(order.next().unwrap_or(0)) {
            w.c.force_detach_volume(&name, &mut w.s).unwrap();
            w.c.delete_volume(&name).unwrap();
            w.expect.remove(&name);
            // A pending snapshot of it went with its detach.
            w.expect.retain(|n, _| w.c.volume_by_name(n).is_ok());
            w.layers.retain(|id, _| w.c.volume(*id).is_some());
            w.check();
        }
        prop_assert_eq!(w.c.volumes().count(), 0);
        prop_assert_eq!(used_chunks(&w.c), 0);
    }
}
