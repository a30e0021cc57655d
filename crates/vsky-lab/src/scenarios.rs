//! The lab's scenarios, in one place: their names, whether `lab/run` runs
//! them by default, what each proves, and how it runs. `lab/run` reads the
//! names from `vsky-lab --list`; `vsky-lab --help` prints what each proves.

use anyhow::Result;

use crate::scenario;

/// How a scenario runs inside the VM.
pub enum Run {
    /// A test of `crates/vsky-kernel/tests/lab.rs` (the library level):
    /// run from the kernel test binary by its name.
    Kernel(&'static str),
    /// A cluster scenario of this crate: real manager, agents and CLI.
    /// Returns its `LAB-DETAIL` text.
    Cluster(fn() -> Result<String>),
}

pub struct Scenario {
    pub name: &'static str,
    /// Run by `lab/run` when no scenario is named.
    pub default: bool,
    /// What a pass proves.
    pub proves: &'static str,
    pub run: Run,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "kernel-mirror",
        default: true,
        proves: "raid1 over two NBD legs; kill a server mid-write (no I/O error, leg D); rebuild onto a third server (AA idle); kill the other original leg; data still intact; clean teardown.",
        run: Run::Kernel("kernel_mirror"),
    },
    Scenario {
        name: "kernel-reshape",
        default: true,
        proves: "a leg moves online: a third leg joins a running raid1 and syncs, the old leg leaves (the new one takes its slot), then the other original leg dies: data intact.",
        run: Run::Kernel("kernel_reshape"),
    },
    Scenario {
        name: "kernel-adopt",
        default: true,
        proves: "ensure_* twice and from a fresh process adopts the existing NBD and dm devices without duplicates; differing tables refused.",
        run: Run::Kernel("kernel_adopt"),
    },
    Scenario {
        name: "kernel-stripe",
        default: true,
        proves: "a dm-striped volume over two raid1 mirrors (4 NBD legs): adopted on re-ensure; stripe chunks land on the right disks.",
        run: Run::Kernel("kernel_stripe"),
    },
    Scenario {
        name: "kernel-thin",
        default: true,
        proves: "dm-thin over NBD legs (docs/design/snapshots.md §9 step 1): freeze a thin layer under an O_DIRECT writer (pause timed; every earlier write in the frozen layer, later ones only in the new top over it as external origin); a second host's base-form assembly (raid1 without metadata, nosync, read_only pool) over READ_ONLY imports reads it exactly and writes nothing; pool read_only ↔ rw live; origin re-pointed live; discard through an origin; a base-form leg killed (D, reads go on).",
        run: Run::Kernel("kernel_thin"),
    },
    Scenario {
        name: "nbd-reconnect",
        default: true,
        proves: "netlink RECONFIGURE swaps a dead socket in place after a server restart; in-flight I/O completes.",
        run: Run::Kernel("nbd_reconnect"),
    },
    Scenario {
        name: "cluster-attach",
        default: true,
        proves: "real manager + agents (storage agents each in a network namespace): volume create/attach, O_DIRECT pattern + ext4 files, detach (devices gone), reattach, data matches.",
        run: Run::Cluster(scenario::attach::run_scenario),
    },
    Scenario {
        name: "cluster-kill-server",
        default: true,
        proves: "kill -9 a storage agent during an O_DIRECT write: no I/O error, the manager shows its legs failed, data intact; then detach, delete, re-create under the same name and take a server's link down mid-write: same guarantees.",
        run: Run::Cluster(scenario::kill_server::run_scenario),
    },
    Scenario {
        name: "cluster-agent-restart",
        default: true,
        proves: "the head agent SIGTERMed / SIGKILLed and restarted during a write (also with a degraded volume): devices adopted unchanged, no duplicates, I/O continues.",
        run: Run::Cluster(scenario::agent_restart::run_scenario),
    },
    Scenario {
        name: "cluster-rebuild",
        default: true,
        proves: "kill -9 a storage agent under write load: after the grace period its legs are replaced from the pool and resynced online by the head, no disk in two resyncs; then the surviving original copy's server dies too: data intact.",
        run: Run::Cluster(scenario::rebuild::run_scenario),
    },
    Scenario {
        name: "cluster-disk-rebuild",
        default: true,
        proves: "a disk holding legs of several mirrored disks is declared failed under an attached volume: they rebuild in parallel, the job log (events) shows no disk in two resyncs at once, `vsky disk fail --wait` follows it.",
        run: Run::Cluster(scenario::disk_rebuild::run_scenario),
    },
    Scenario {
        name: "cluster-drain",
        default: true,
        proves: "a server drained under an O_DIRECT rewrite loop: attached legs move online (the mirror grows, then drops the old leg), detached ones are copied; no I/O error, the server ends empty and is removed; both volumes intact.",
        run: Run::Cluster(scenario::drain::run_scenario),
    },
    Scenario {
        name: "cluster-grow",
        default: true,
        proves: "attached volumes (a concatenation, and a stripe whose columns turn into concatenations) grow online under an O_DIRECT rewriter: `vsky volume resize` returns once the head serves the new size, no I/O error, the device has the new size, data past the old end and before it intact across detach/reattach.",
        run: Run::Cluster(scenario::grow::run_scenario),
    },
    Scenario {
        name: "cluster-return",
        default: true,
        proves: "a server's link down under write load, back within the grace period: its legs are held, then re-added in place and caught up from dm-raid's bitmap (bytes written to them measured), no rebuild; then the other copy dies: data intact.",
        run: Run::Cluster(scenario::return_in_time::run_scenario),
    },
    Scenario {
        name: "cluster-nbd-backend-file",
        default: true,
        proves: "the head keeping which NBD device imports which leg in its own file, as on kernels before 5.14 (XCP-ng's 4.19), forced on the lab's kernel so the kernel's own backends check it: attach, SIGTERM/SIGKILL restarts (also degraded) adopt through the file without duplicates, detach disconnects every import and empties it.",
        run: Run::Cluster(scenario::nbd_backend_file::run_scenario),
    },
    Scenario {
        name: "cluster-return-nbd-backend-file",
        default: false,
        proves: "cluster-return with the head keeping its NBD imports in its own file (as before Linux 5.14): the returned legs get their fresh sockets (RECONFIGURE) on the devices the file names.",
        run: Run::Cluster(scenario::return_in_time::run_with_backend_file),
    },
    Scenario {
        name: "cluster-thin",
        default: true,
        proves: "thin volumes assembled by the head (docs/design/snapshots.md steps 6-7): a thin volume written, detached (every layer device and import gone) and reattached exactly; a snapshot of it attached, under an O_DIRECT rewriter: the head switches it onto a new top in one pause (timed), no I/O error, its clone holds what was written before and nothing after; a snapshot cloned, the clone reading it through the frozen layer assembled read-only (raid1 nosync without metadata, read_only pool) and writing its own without changing it; the volume over the same base unaffected; revert exact; a clone of a never-written volume's snapshot (a base with no pool metadata) reads zeros and writes; deleting all returns every chunk.",
        run: Run::Cluster(scenario::thin::run_scenario),
    },
    Scenario {
        name: "cluster-thin-grow",
        default: true,
        proves: "a thin volume's pool grows as it is written (docs/design/snapshots.md step 11): one O_DIRECT writer writes far past the first mirrored disk, the manager adds mirrored disks on the head's reports and the head grows the pool's metadata and data devices by parts and reloads the pool under the writer, no I/O error, data exact; the grown pool reassembled from scratch exactly, and read through a clone of its snapshot in base form (sized from the pool's superblock); with the cluster full, writes past the pool are held (pool_exhausted event, pool out_of_data_space), not failed, and finish exactly once chunks are freed.",
        run: Run::Cluster(scenario::thin_grow::run_scenario),
    },
    Scenario {
        name: "cluster-backup",
        default: true,
        proves: "a backup's read of a snapshot (docs/design/snapshots.md step 8) through the head agent's local API as Datapath.activate_readonly calls it: a snapshot of a thin volume taken under an O_DIRECT rewriter and read on the same head while the writer and later writes go on reads exactly its moment; its device is read-only, its pools read_only, a write to it fails, the manager lists the reader and refuses to delete it; it keeps reading across its volume's detach and reattach; the read's end removes every device; read again from scratch it is in base form (raid1 nosync without metadata, read-only thin devices); a never-written volume's snapshot reads zeros (dm-zero); every chunk comes back.",
        run: Run::Cluster(scenario::backup::run_scenario),
    },
    Scenario {
        name: "cluster-backup-rebuild",
        default: true,
        proves: "a snapshot's frozen layer rebuilt under a reader (docs/design/snapshots.md §5.5.3, §5.8): the snapshot read in base form on the head, one leg's storage server killed, reads exact from the other leg; after the grace period the leg is replaced from the pool and copied by a storage agent (no head writes a frozen layer), and the reader's running mirror takes the new leg in (AA); the other original leg's server killed too: the snapshot reads back exactly from the rebuilt copy alone.",
        run: Run::Cluster(scenario::backup_rebuild::run_scenario),
    },
    Scenario {
        name: "cluster-backup-remote",
        default: true,
        proves: "a running thin volume's snapshot read on another head than the writer's (#13): base form over read-only imports, exact at its moment under the writer's O_DIRECT rewriter, read-only; a clone of it written on that head while the volume is written on the first: each exact, the shared layer unchanged; every chunk back.",
        run: Run::Cluster(scenario::backup_remote::run_scenario),
    },
    Scenario {
        name: "cluster-backup-drain",
        default: true,
        proves: "a snapshot's frozen layer scrubbed and drained under a reader (docs/design/snapshots.md §5.8, step 12): the snapshot read in base form on the head; the scrub patrol has a storage agent compare the frozen layer's legs (equal); the server of one of its legs is drained: a storage agent copies the leg, and the reader's running mirror is reloaded onto the moved leg (AA); the drained server is removed and the other original leg's server killed: the snapshot reads back exactly from the moved copy alone.",
        run: Run::Cluster(scenario::backup_drain::run_scenario),
    },
    Scenario {
        name: "cluster-scrub",
        default: true,
        proves: "the manager's scrub patrol has the head check an attached volume's mirror (dm-raid check): clean legs reported clean; one leg overwritten behind the mirror's back: the mismatch is reported (event and metric); a repair needing the mirror's disks interrupts the check.",
        run: Run::Cluster(scenario::scrub::run_scenario),
    },
    Scenario {
        name: "cluster-ha-rebuild",
        default: true,
        proves: "two managers on etcd: the leader is killed -9 while a rebuild runs; the standby takes over and the rebuild completes, exactly once per lost leg; data intact.",
        run: Run::Cluster(scenario::ha_rebuild::run_scenario),
    },
    Scenario {
        name: "cluster-xapi",
        default: true,
        proves: "the SMAPIv3 plugins as xapi drives them (xapi-tests datapath): SR/VDI create, VM start (open/attach/activate), data on /dev/mapper/vsky-<vdi>, VM shutdown (device gone), exclusivity against another host, restart with the data intact, Volume.resize of the running VM's disk (online: the device grows before the call returns); VDIs are thin (the SR's default): VM snapshot of the running VM's disk (Volume.snapshot + xapi's keys) holds what was written before and nothing after, its clone started as another VM reads it, Volume.revert with the VM halted takes the disk back to it; a backup of the running VM (snapshot, Datapath.attach + activate_readonly in dom0, read while the VM writes, Volume.destroy refused while read, deactivate/detach/close, destroy) reads exactly the snapshot's moment and cannot write it.",
        run: Run::Cluster(scenario::xapi::run_scenario),
    },
    Scenario {
        name: "cluster-busy-detach",
        default: true,
        proves: "the head agent's local detach (the datapath plugin's deactivate) in two phases: a device held open is refused (409 busy, manager unchanged); once closed, the answer comes after the devices are gone and the manager released the volume; no dm-raid superblock error.",
        run: Run::Cluster(scenario::busy_detach::run_scenario),
    },
    Scenario {
        name: "cluster-partition",
        default: true,
        proves: "never two writers (#14): a head cut off with a write queued keeps its volume within the head grace; after it another head takes the volume over (fenced) and writes there; when the link comes back the queued write fails with EIO instead of landing, later writes too, the old head tears the volume down, and both legs of every mirrored disk hold exactly the writes acknowledged before the cut and after the takeover (read from the disks). Two heads in one kernel (the second names its devices vskyp-).",
        run: Run::Cluster(scenario::partition::run_scenario),
    },
    Scenario {
        name: "cluster-migration",
        default: true,
        proves: "a live migration's storage handover between two heads in xenopsd's order through the local APIs (#14): writes on the source, deactivate there, activate on the destination (the downtime reported), writes there; nothing acknowledged lost, nothing written by the source after; its repeated deactivate and detach leave the destination alone; both legs exact (read from the disks).",
        run: Run::Cluster(scenario::migration::run_scenario),
    },
    Scenario {
        name: "cluster-bench",
        default: false,
        proves: "(a benchmark) a mirrored volume's sequential O_DIRECT throughput against one raw leg.",
        run: Run::Cluster(scenario::bench::run_scenario),
    },
    Scenario {
        name: "cluster-bench-thin",
        default: false,
        proves: "(a benchmark) what snapshots and chains cost (docs/design/snapshots.md §7): snapshot and clone time of thin volumes of 1, 10 and 100 chunks (detached, attached, and the head's pause), and O_DIRECT throughput through chains of depth 0, 1 and 4 against a thick volume (sequential and random 4 KiB, reads of the deepest layer's data, first writes, rewrites, copy-up writes), as ratios in one run.",
        run: Run::Cluster(scenario::bench_thin::run_scenario),
    },
    Scenario {
        name: "cluster-bench-impact",
        default: false,
        proves: "a benchmark (issue #17 item 3): an O_DIRECT writer's throughput on a volume untouched by a server loss, before and during the rebuild of another volume's legs onto the same disks, with the per-disk limit k = 1 and unscheduled (k = 64), rounds alternating in one run; figures in docs/benchmarks.md.",
        run: Run::Cluster(scenario::bench_impact::run_scenario),
    },
    Scenario {
        name: "cluster-activation",
        default: false,
        proves: "(a benchmark) a volume's handover cost against its size (1, 16, 64, 256 mirrored disks): activate (attach to device of the right size) and deactivate (detach until no dm device or NBD connection is left) times, median of a few cycles and ratios to 1 mirrored disk, where the activation's time goes (NBD imports, dm devices), and the NBD devices, dm devices and TCP connections each volume holds.",
        run: Run::Cluster(scenario::activation::run_scenario),
    },
    Scenario {
        name: "demo",
        default: false,
        proves: "(scripts/demo runs it) the README's main job with `demo:` progress lines.",
        run: Run::Cluster(scenario::demo::run_scenario),
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a scenario name appears twice");
    }
}
