//! Planning how a running mirror gets the manager's layout: pure, from the
//! running table, the kernel's health of each slot and the wanted slots, so
//! every rule is unit-tested here without a kernel. [`Head`](super::Head)
//! carries the plan out.

use vsky_api::types::LegSpec;
use vsky_kernel::dm::{LegDevices, LegHealth};

use super::naming::leg_tag;

/// What [`Head::mirror`](super::Head::mirror) does to a running mirror so that it holds the
/// legs the manager wants.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum MirrorChange {
    /// The table already holds every wanted leg in its slot. A slot the
    /// manager lists failed or waiting may still hold its old device or
    /// none, and wanted slots past the table's end are all empty (a move
    /// that waits for its turn).
    Keep,
    /// Same slots: these new members take the places of the legs in their
    /// slots (replacements of failed legs), one `replace_raid1_leg` each.
    Replace(Vec<(usize, LegDevices)>),
    /// Other slots (a leg added, dropped or moved): one reload with these
    /// legs, rebuilding `rebuild`.
    Reshape {
        legs: Vec<Option<LegDevices>>,
        rebuild: Vec<usize>,
    },
}

/// Why a running mirror cannot take the wanted legs now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The active leg of wanted slot `slot`, in the running table's slot
    /// `running_slot`, is not in sync, and the change drops or moves legs.
    NotInSync {
        slot: usize,
        running_slot: usize,
        health: Option<LegHealth>,
    },
    /// The change drops or moves legs, and no leg that stays is in sync.
    NoInSyncLeg,
    /// dm-raid takes 2 to 64 legs.
    LegCount(usize),
    /// No wanted slot holds a leg.
    NoLeg,
}

impl Refusal {
    /// The reason, with chunks named from the manager's slots `legs`.
    pub(super) fn describe(&self, legs: &[LegSpec]) -> String {
        match self {
            Refusal::NotInSync {
                slot,
                running_slot,
                health,
            } => format!(
                "waiting for leg {slot} ({}, slot {running_slot} of the running mirror, now {}) to be in sync before legs leave the mirror or change slots",
                legs.get(*slot)
                    .map_or_else(|| "?".to_string(), |l| leg_tag(l.chunk)),
                health.map_or('?', LegHealth::as_char),
            ),
            Refusal::NoInSyncLeg => "waiting for a leg that stays in the mirror to be in sync before legs leave the mirror or change slots".into(),
            Refusal::LegCount(n) => format!("{n} legs wanted; dm-raid takes 2 to 64"),
            Refusal::NoLeg => "no leg to build the mirror from".into(),
        }
    }
}

/// Whether a running table with `running` legs already holds `wanted`:
/// every wanted leg in its slot, and nothing wanted past the table's end.
/// A slot the head does not fill (`None`: failed, unreachable, waiting)
/// may hold anything, such as a failed leg dm-raid already marked dead.
pub(super) fn holds_wanted(running: &[Option<LegDevices>], wanted: &[Option<LegDevices>]) -> bool {
    wanted.len() >= running.len()
        && running
            .iter()
            .zip(wanted)
            .all(|(have, want)| want.is_none() || want == have)
        && wanted[running.len()..].iter().all(Option::is_none)
}

/// Plans how a running mirror gets the manager's layout, from its table
/// (`running`), the kernel's health of each of its slots (`running_health`)
/// and the wanted slots: `wanted` (the devices the head imported, `None`
/// for failed, unreachable and waiting slots), which of them the manager
/// lists active (`wanted_active`), and the new members among them
/// (`new_members`, syncing legs whose job runs here).
///
/// Rules, in order:
/// 1. The table holds the wanted legs ([`holds_wanted`]): keep it. This
///    covers a queued move (one more slot, empty) and failed legs still in
///    the table.
/// 2. Same number of slots, and every slot that differs gets a new member
///    that is not in the table yet: replace those slots' legs.
/// 3. Otherwise reshape. The new table is the wanted slots, without the
///    empty slots at the end (down to dm-raid's 2), so an emptied extra slot
///    leaves the table. Legs keep their devices across slots (dm-raid raid1
///    legs may change positions), and only legs new to the table are
///    rebuilt: a syncing leg that moves resumes its recovery rather than
///    starting again. When the reshape drops or moves a leg that is in
///    the table, every active leg that stays must be in sync now, and at
///    least one leg that stays must be: otherwise it waits, because a drop
///    could take the only in-sync copy, and an active leg that is not in
///    sync is a copy the manager counts but the mirror does not have yet.
///    A reshape that only adds legs (a move's target joining) never waits.
pub(super) fn plan_mirror_change(
    running: &[Option<LegDevices>],
    running_health: &[LegHealth],
    wanted: &[Option<LegDevices>],
    wanted_active: &[bool],
    new_members: &[usize],
) -> Result<MirrorChange, Refusal> {
    if holds_wanted(running, wanted) {
        return Ok(MirrorChange::Keep);
    }
    let running_slot = |d: &LegDevices| running.iter().position(|r| r.as_ref() == Some(d));
    if running.len() == wanted.len() {
        let differing: Vec<(usize, LegDevices)> = wanted
            .iter()
            .zip(running)
            .enumerate()
            .filter_map(|(i, (want, have))| want.filter(|w| Some(*w) != *have).map(|w| (i, w)))
            .collect();
        if differing
            .iter()
            .all(|(i, w)| new_members.contains(i) && running_slot(w).is_none())
        {
            return Ok(MirrorChange::Replace(differing));
        }
    }
    let mut legs = wanted.to_vec();
    while legs.len() > 2 && legs.last() == Some(&None) {
        legs.pop();
    }
    if !(2..=64).contains(&legs.len()) {
        return Err(Refusal::LegCount(legs.len()));
    }
    if legs.iter().all(Option::is_none) {
        return Err(Refusal::NoLeg);
    }
    let rebuild: Vec<usize> = legs
        .iter()
        .enumerate()
        .filter(|(_, leg)| leg.is_some_and(|d| running_slot(&d).is_none()))
        .map(|(i, _)| i)
        .collect();
    let disturbs = running
        .iter()
        .enumerate()
        .any(|(p, have)| have.is_some_and(|d| legs.iter().position(|l| *l == Some(d)) != Some(p)));
    if disturbs {
        let mut any_in_sync = false;
        for (i, leg) in legs.iter().enumerate() {
            let Some(p) = leg.and_then(|d| running_slot(&d)) else {
                continue; // new to the table
            };
            let health = running_health.get(p).copied();
            if health == Some(LegHealth::InSync) {
                any_in_sync = true;
            } else if wanted_active.get(i).copied().unwrap_or(false) {
                return Err(Refusal::NotInSync {
                    slot: i,
                    running_slot: p,
                    health,
                });
            }
        }
        if !any_in_sync {
            return Err(Refusal::NoInSyncLeg);
        }
    }
    Ok(MirrorChange::Reshape { legs, rebuild })
}

#[cfg(test)]
mod tests {
    use super::*;
    use LegHealth::{Dead, InSync, Missing, Syncing};
    use vsky_api::types::{ChunkId, LegState};
    use vsky_kernel::dm::Device;

    /// The devices of a leg named by a small number.
    fn dev(n: u32) -> LegDevices {
        LegDevices {
            meta: Device {
                major: 253,
                minor: 2 * n,
            },
            data: Device {
                major: 253,
                minor: 2 * n + 1,
            },
        }
    }

    fn chunk(disk_id: u64, index: u32) -> ChunkId {
        ChunkId { disk_id, index }
    }

    /// Plans, checks that a reshape's table is one dm-raid takes, and that
    /// the mirror after the change needs no further one (idempotence across
    /// reconciles and agent restarts).
    fn plan(
        running: &[Option<LegDevices>],
        health: &[LegHealth],
        wanted: &[Option<LegDevices>],
        active: &[bool],
        new_members: &[usize],
    ) -> Result<MirrorChange, Refusal> {
        let change = plan_mirror_change(running, health, wanted, active, new_members)?;
        let after = match &change {
            MirrorChange::Keep => running.to_vec(),
            MirrorChange::Replace(new) => {
                let mut after = running.to_vec();
                for (i, d) in new {
                    after[*i] = Some(*d);
                }
                after
            }
            MirrorChange::Reshape { legs, rebuild } => {
                assert!(
                    (2..=64).contains(&legs.len()) && legs.iter().any(Option::is_some),
                    "invalid table {legs:?}"
                );
                assert!(
                    rebuild
                        .iter()
                        .all(|i| legs.get(*i).is_some_and(Option::is_some)),
                    "rebuild {rebuild:?} of {legs:?}"
                );
                legs.clone()
            }
        };
        assert!(
            holds_wanted(&after, wanted),
            "{after:?} does not hold {wanted:?}"
        );
        Ok(change)
    }

    fn reshape(legs: Vec<Option<LegDevices>>, rebuild: Vec<usize>) -> MirrorChange {
        MirrorChange::Reshape { legs, rebuild }
    }

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;
    const D: u32 = 4;

    #[test]
    fn plan_keeps_the_running_mirror() {
        let legs = [Some(dev(A)), Some(dev(B))];
        assert_eq!(
            plan(&legs, &[InSync, InSync], &legs, &[true, true], &[]),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_keeps_the_mirror_while_a_move_is_queued() {
        // Step 2: one more slot, empty until the move's turn comes.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[InSync, InSync],
                &[Some(dev(A)), Some(dev(B)), None],
                &[true, true, false],
                &[],
            ),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_keeps_a_failed_leg_in_its_slot() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[Dead, InSync],
                &[None, Some(dev(B))],
                &[false, true],
                &[],
            ),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_replaces_a_failed_leg_in_place() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[Dead, InSync],
                &[Some(dev(D)), Some(dev(B))],
                &[false, true],
                &[0],
            ),
            Ok(MirrorChange::Replace(vec![(0, dev(D))]))
        );
    }

    #[test]
    fn plan_grows_the_mirror_when_the_move_runs() {
        // Step 3: the target joins as slot 2 and is rebuilt. Adding a leg
        // waits for nothing, not even a leg that is catching up.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[InSync, Syncing],
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[true, true, false],
                &[2],
            ),
            Ok(reshape(
                vec![Some(dev(A)), Some(dev(B)), Some(dev(C))],
                vec![2]
            ))
        );
    }

    #[test]
    fn plan_keeps_a_running_move_after_a_restart() {
        // Steps 3 again (a reconcile or a restarted agent): the target is
        // syncing in the kernel and must not start over.
        let legs = [Some(dev(A)), Some(dev(B)), Some(dev(C))];
        assert_eq!(
            plan(
                &legs,
                &[InSync, InSync, Syncing],
                &legs,
                &[true, true, false],
                &[2]
            ),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_grows_the_mirror_when_the_moved_leg_failed_first() {
        // The leg to move failed before its target's turn: the dead leg
        // leaves the table (its slot stays, empty) as the target joins.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B))],
                &[Dead, InSync],
                &[None, Some(dev(B)), Some(dev(C))],
                &[false, true, false],
                &[2],
            ),
            Ok(reshape(vec![None, Some(dev(B)), Some(dev(C))], vec![2]))
        );
    }

    #[test]
    fn plan_finishes_a_move() {
        // Step 4: the target takes the moved leg's slot, the extra slot
        // goes; nothing is rebuilt.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, InSync, InSync],
                &[Some(dev(C)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Ok(reshape(vec![Some(dev(C)), Some(dev(B))], vec![]))
        );
    }

    #[test]
    fn plan_finishes_a_move_whose_moved_leg_failed() {
        for running in [
            [Some(dev(A)), Some(dev(B)), Some(dev(C))],
            [None, Some(dev(B)), Some(dev(C))],
        ] {
            let health = if running[0].is_some() { Dead } else { Missing };
            assert_eq!(
                plan(
                    &running,
                    &[health, InSync, InSync],
                    &[Some(dev(C)), Some(dev(B))],
                    &[true, true],
                    &[],
                ),
                Ok(reshape(vec![Some(dev(C)), Some(dev(B))], vec![]))
            );
        }
    }

    #[test]
    fn plan_waits_to_finish_a_move_until_the_target_is_in_sync() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, InSync, Syncing],
                &[Some(dev(C)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Err(Refusal::NotInSync {
                slot: 0,
                running_slot: 2,
                health: Some(Syncing)
            })
        );
    }

    #[test]
    fn plan_waits_to_finish_a_move_until_the_other_legs_are_in_sync() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, Dead, InSync],
                &[Some(dev(C)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Err(Refusal::NotInSync {
                slot: 1,
                running_slot: 1,
                health: Some(Dead)
            })
        );
        // Once the manager lists the dead leg failed, the move finishes.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, Dead, InSync],
                &[Some(dev(C)), None],
                &[true, false],
                &[],
            ),
            Ok(reshape(vec![Some(dev(C)), None], vec![]))
        );
    }

    #[test]
    fn plan_abandons_a_move() {
        // Step 5: the target leaves, syncing or dead.
        for target in [Syncing, Dead, InSync] {
            assert_eq!(
                plan(
                    &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                    &[InSync, InSync, target],
                    &[Some(dev(A)), Some(dev(B))],
                    &[true, true],
                    &[],
                ),
                Ok(reshape(vec![Some(dev(A)), Some(dev(B))], vec![]))
            );
        }
    }

    #[test]
    fn plan_waits_to_abandon_a_move_while_an_active_leg_catches_up() {
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[Syncing, InSync, InSync],
                &[Some(dev(A)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Err(Refusal::NotInSync {
                slot: 0,
                running_slot: 0,
                health: Some(Syncing)
            })
        );
    }

    #[test]
    fn plan_moves_a_syncing_leg_without_restarting_it() {
        // The moved-away leg failed during the move and the manager put the
        // still syncing target into its slot: it moves, keeps its
        // recovery, and is not rebuilt from zero.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[Dead, InSync, Syncing],
                &[Some(dev(C)), Some(dev(B))],
                &[false, true],
                &[0],
            ),
            Ok(reshape(vec![Some(dev(C)), Some(dev(B))], vec![]))
        );
    }

    #[test]
    fn plan_never_drops_the_last_in_sync_leg() {
        // Only a is in sync; the layout wants the syncing c in its place.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, Dead, Syncing],
                &[Some(dev(C)), None],
                &[false, false],
                &[0],
            ),
            Err(Refusal::NoInSyncLeg)
        );
    }

    #[test]
    fn plan_replaces_an_abandoned_target_with_a_new_one() {
        // A move's target died, and the next one is already due in the
        // same extra slot: a plain replacement.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, InSync, Dead],
                &[Some(dev(A)), Some(dev(B)), Some(dev(D))],
                &[true, true, false],
                &[2],
            ),
            Ok(MirrorChange::Replace(vec![(2, dev(D))]))
        );
    }

    #[test]
    fn plan_drops_an_empty_extra_slot_without_waiting() {
        // A mirror created while a move was queued has an empty third slot.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), None],
                &[Syncing, Syncing, Missing],
                &[Some(dev(A)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Ok(reshape(vec![Some(dev(A)), Some(dev(B))], vec![]))
        );
    }

    #[test]
    fn plan_fills_an_empty_extra_slot() {
        // ... and the move's turn comes: a plain replacement of slot 2.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), None],
                &[InSync, InSync, Missing],
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[true, true, false],
                &[2],
            ),
            Ok(MirrorChange::Replace(vec![(2, dev(C))]))
        );
    }

    #[test]
    fn plan_rebuilds_an_active_leg_the_mirror_lacks() {
        // A leg unreachable when the mirror was made is back: it joins, and
        // since the mirror never synced it, in full.
        assert_eq!(
            plan(
                &[None, Some(dev(B))],
                &[Missing, InSync],
                &[Some(dev(A)), Some(dev(B))],
                &[true, true],
                &[],
            ),
            Ok(reshape(vec![Some(dev(A)), Some(dev(B))], vec![0]))
        );
    }

    #[test]
    fn plan_keeps_two_slots_at_least() {
        // Empty slots at the end leave the table, down to dm-raid's two.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C)), Some(dev(D))],
                &[InSync, Dead, Dead, Dead],
                &[Some(dev(A)), None, None],
                &[true, false, false],
                &[],
            ),
            Ok(reshape(vec![Some(dev(A)), None], vec![]))
        );
        // Failed legs the table still holds within the wanted slots stay.
        assert_eq!(
            plan(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C))],
                &[InSync, Dead, Dead],
                &[Some(dev(A)), None, None],
                &[true, false, false],
                &[],
            ),
            Ok(MirrorChange::Keep)
        );
    }

    #[test]
    fn plan_refuses_tables_dm_raid_cannot_take() {
        let running = [Some(dev(A)), Some(dev(B))];
        let mut wanted: Vec<Option<LegDevices>> = (1..=65).map(|n| Some(dev(n))).collect();
        let active = vec![true; wanted.len()];
        assert_eq!(
            plan_mirror_change(&running, &[InSync, InSync], &wanted, &active, &[]),
            Err(Refusal::LegCount(65))
        );
        wanted = vec![None, None, None];
        assert_eq!(
            plan_mirror_change(
                &[Some(dev(A)), Some(dev(B)), Some(dev(C)), Some(dev(D))],
                &[InSync; 4],
                &wanted,
                &[false; 3],
                &[]
            ),
            Err(Refusal::NoLeg)
        );
    }

    #[test]
    fn refusals_name_the_leg_they_wait_for() {
        let leg = LegSpec {
            chunk: chunk(7, 42),
            server: "s1".into(),
            server_address: "127.0.0.1:10809".into(),
            export_name: "x".into(),
            local_disk_path: None,
            offset_bytes: 0,
            state: LegState::Active,
            resync_job: None,
        };
        let text = Refusal::NotInSync {
            slot: 0,
            running_slot: 2,
            health: Some(Syncing),
        }
        .describe(&[leg]);
        assert!(text.contains("d7c42") && text.contains("slot 2"), "{text}");
    }
}
