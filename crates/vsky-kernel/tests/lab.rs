//! Privileged tests of the real kernel path: NBD over netlink, dm-raid raid1,
//! leg failure, rebuild and adoption. They need root, the nbd, dm-mod, dm-raid
//! and raid1 modules and the `lab-nbd-server` example, so they only run when
//! `VSKY_LAB=1` (the VM lab, `lab/run`, sets it); elsewhere each test prints
//! why it skipped and passes.
//!
//! Environment (set by the lab's init):
//! - `VSKY_LAB_DIR`: a directory for the servers' backing files.
//! - `VSKY_LAB_SERVER`: the `lab-nbd-server` binary.
//!
//! Every scenario prints `LAB-DETAIL <text>` as its last line on success; the
//! lab turns that into its `LAB PASS` line. Devices are named `vsky-lab…` and
//! removed at the end, so a failed run leaves a VM that is powered off anyway.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vsky_kernel::dm::{
    Datapath, DevName, DmError, LegHealth, LegLayout, Raid1Table, Sectors, SyncAction, Target,
    TargetLine, VolumeLayout, VolumeName,
};
use vsky_kernel::nbd::{self, ConnectRequest, NbdEvent, NbdEvents, NbdIndex, NbdNetlink};

const MIB: u64 = 1 << 20;
/// Each server's backing file, and where in it the exported chunk starts.
const DISK_BYTES: u64 = 80 * MIB;
const CHUNK_OFFSET: u64 = 8 * MIB;
/// A chunk: 4 MiB metadata + 64 MiB data.
const CHUNK_BYTES: u64 = 68 * MIB;
const DATA_BYTES: u64 = 64 * MIB;

struct Lab {
    dir: PathBuf,
    server_bin: PathBuf,
}

fn lab() -> Option<Lab> {
    if std::env::var("VSKY_LAB").as_deref() != Ok("1") {
        eprintln!(
            "skipped: needs root, nbd and dm-raid; runs in the VM lab (lab/run), which sets VSKY_LAB=1"
        );
        return None;
    }
    let dir = PathBuf::from(std::env::var("VSKY_LAB_DIR").unwrap_or_else(|_| "/tmp".into()));
    let server_bin = std::env::var("VSKY_LAB_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .join("examples/lab-nbd-server")
        });
    Some(Lab { dir, server_bin })
}

fn step(t0: Instant, msg: &str) {
    println!("[{:6.2}s] {msg}", t0.elapsed().as_secs_f64());
}

/// A storage server process exporting one chunk of its own backing file.
struct Server {
    name: &'static str,
    addr: String,
    disk: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(lab: &Lab, name: &'static str, port: u16) -> Server {
        let disk = lab.dir.join(format!("disk-{name}.img"));
        if !disk.exists() {
            let f = File::create(&disk).expect("create backing file");
            f.set_len(DISK_BYTES).expect("size backing file");
        }
        let mut s = Server {
            name,
            addr: format!("127.0.0.1:{port}"),
            disk,
            child: None,
        };
        s.spawn(lab);
        s
    }

    fn spawn(&mut self, lab: &Lab) {
        let export = format!(
            "{}={}:{CHUNK_OFFSET}:{CHUNK_BYTES}",
            self.name,
            self.disk.display()
        );
        let child = Command::new(&lab.server_bin)
            .args([&self.addr, &export])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", lab.server_bin.display()));
        self.child = Some(child);
        // Ready when it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "server {} never listened on {}",
                self.name,
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, like a crashed node.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Handshakes with a server and returns the socket ready for the kernel.
fn handshake(addr: &str, export: &str) -> (std::net::TcpStream, u64, u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to server");
        s.set_nodelay(true).expect("nodelay");
        let info = vsky_nbd::client::handshake(&mut s, export)
            .await
            .expect("NBD handshake");
        let std = s.into_std().expect("into std");
        (std, info.size_bytes, info.transmission_flags)
    })
}

/// Imports `server`'s chunk as a kernel NBD device with lab timeouts: 5 s per
/// request and 1 s for a reconnect, so a dead leg becomes EIO within seconds.
fn import(nl: &mut NbdNetlink, server: &Server, backend: &str, dead_conn: Duration) -> NbdIndex {
    let (sock, size, flags) = handshake(&server.addr, server.name);
    assert_eq!(size, CHUNK_BYTES, "export size");
    let mut req = ConnectRequest::new(size, flags, backend);
    req.timeout = Duration::from_secs(5);
    req.dead_conn_timeout = dead_conn;
    let idx = nl
        .connect(&req, &[sock.as_fd()])
        .expect("NBD connect over netlink");
    // The kernel holds its own reference; our copy can go.
    drop(sock);
    idx
}

/// 4 KiB-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: non-zero size, checked for null.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        Aligned { ptr, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: we own len initialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn as_ref(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in new().
        unsafe {
            std::alloc::dealloc(
                self.ptr,
                std::alloc::Layout::from_size_align(self.len, 4096).unwrap(),
            )
        }
    }
}

// SAFETY: plain owned heap memory.
unsafe impl Send for Aligned {}

/// The expected content of MiB number `mib`: xorshift bytes seeded by it.
fn pattern(mib: u64, buf: &mut [u8]) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (mib + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn open_direct(path: &Path, write: bool) -> File {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", path.display()))
}

/// Writes MiB `from..to` of the pattern with O_DIRECT, counting progress.
fn write_pattern(path: &Path, from: u64, to: u64, progress: &AtomicU64) -> std::io::Result<()> {
    let f = open_direct(path, true);
    let mut buf = Aligned::new(MIB as usize);
    for mib in from..to {
        pattern(mib, buf.as_mut());
        f.write_all_at(buf.as_ref(), mib * MIB)?;
        progress.store(mib + 1, Ordering::SeqCst);
    }
    Ok(())
}

/// Reads `mibs` MiB with O_DIRECT (from `base` bytes into `path`) and returns
/// the first MiB that differs from the pattern, if any.
fn verify(path: &Path, base: u64, mibs: u64) -> Result<(), String> {
    let f = open_direct(path, false);
    let mut buf = Aligned::new(MIB as usize);
    let mut want = vec![0u8; MIB as usize];
    for mib in 0..mibs {
        f.read_exact_at(buf.as_mut(), base + mib * MIB)
            .map_err(|e| format!("read MiB {mib}: {e}"))?;
        pattern(mib, &mut want);
        if buf.as_ref() != want.as_slice() {
            return Err(format!("MiB {mib} differs from what was written"));
        }
    }
    Ok(())
}

/// Buffered read of the backing file (it may live on tmpfs, without O_DIRECT).
fn verify_file(path: &Path, base: u64, mibs: u64) -> Result<(), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    f.seek(SeekFrom::Start(base)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MIB as usize];
    let mut want = vec![0u8; MIB as usize];
    for mib in 0..mibs {
        f.read_exact(&mut buf)
            .map_err(|e| format!("read MiB {mib}: {e}"))?;
        pattern(mib, &mut want);
        if buf != want {
            return Err(format!("MiB {mib} of {} differs", path.display()));
        }
    }
    Ok(())
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn chunk_layout() -> LegLayout {
    LegLayout::for_chunk(Sectors(CHUNK_BYTES / 512)).expect("layout")
}

/// Everything we created is gone: no vsky devices, no connected NBD devices
/// of ours.
fn assert_clean(dp: &Datapath, nl: &mut NbdNetlink, ours: &[NbdIndex]) {
    let left = dp.list().expect("list dm devices");
    assert!(left.is_empty(), "dm devices left after teardown: {left:?}");
    let connected = nl.connected().expect("nbd status");
    for i in ours {
        assert!(!connected.contains(i), "{i} still connected after teardown");
    }
    for i in ours {
        let p = PathBuf::from(format!("/sys/block/{i}/backend"));
        assert!(!p.exists(), "{} still exists", p.display());
    }
}

/// A mirror survives losing a leg during writes, rebuilds onto a third
/// server, then survives losing the other original leg with the data intact,
/// and tears down completely.
#[test]
#[ignore = "needs root, nbd and dm-raid: runs in the VM lab (lab/run sets VSKY_LAB=1)"]
fn kernel_mirror() {
    let Some(lab) = lab() else { return };
    let t0 = Instant::now();
    let dp = Datapath::new().expect("open device-mapper");
    let mut nl = NbdNetlink::open().expect("open nbd netlink");
    let vol = VolumeName::new("lab0").unwrap();
    let (raid, top) = (vol.raid(0), vol.top());

    let mut a = Server::start(&lab, "a", 10801);
    let mut b = Server::start(&lab, "b", 10802);
    let mut c = Server::start(&lab, "c", 10803);
    let dead = Duration::from_secs(1);
    let ia = import(&mut nl, &a, "lab/a", dead);
    let ib = import(&mut nl, &b, "lab/b", dead);
    step(t0, &format!("imported a={ia} b={ib} over netlink"));
    assert_eq!(nbd::find_by_backend("lab/b").unwrap(), Some(ib));

    let layout = chunk_layout();
    let leg_a = dp
        .ensure_leg(
            &vol.leg(0, "a").unwrap(),
            ia.device().unwrap(),
            layout,
            true,
        )
        .expect("leg a");
    let leg_b = dp
        .ensure_leg(
            &vol.leg(0, "b").unwrap(),
            ib.device().unwrap(),
            layout,
            true,
        )
        .expect("leg b");
    let len = layout.data_size;
    let table = Raid1Table::new(
        vec![Some(leg_a.devices()), Some(leg_b.devices())],
        Sectors(1024),
    );
    let r = dp.ensure_raid1(&raid, len, &table).expect("raid1");
    let s = dp
        .wait_raid1_in_sync(&raid, Duration::from_secs(120))
        .expect("initial resync");
    step(t0, &format!("raid1 {} created and in sync: {s}", r.device));
    let v = dp
        .ensure_volume(&top, &VolumeLayout::Linear(vec![(r.device, len)]))
        .expect("volume");
    assert!(v.path.exists());

    // First half of the pattern on a healthy mirror.
    let progress = Arc::new(AtomicU64::new(0));
    write_pattern(&v.path, 0, 32, &progress).expect("write on healthy mirror");
    step(t0, "wrote 32 MiB");

    // Second half while server b dies.
    let writer = {
        let (path, progress) = (v.path.clone(), progress.clone());
        std::thread::spawn(move || write_pattern(&path, 32, DATA_BYTES / MIB, &progress))
    };
    wait_for("writer progress", Duration::from_secs(60), || {
        (progress.load(Ordering::SeqCst) >= 36).then_some(())
    });
    let killed_at = Instant::now();
    b.kill();
    step(t0, "killed server b (kill -9) during the write");
    writer
        .join()
        .expect("writer thread")
        .expect("writer saw an I/O error while a leg died");
    let stall = killed_at.elapsed();
    let s = wait_for("leg 1 marked dead", Duration::from_secs(30), || {
        let s = dp.raid1_status(&raid).expect("status");
        (s.legs == [LegHealth::InSync, LegHealth::Dead]).then_some(s)
    });
    step(
        t0,
        &format!(
            "writer finished without error {:.1}s after the kill; status {s}",
            stall.as_secs_f64()
        ),
    );
    verify(&v.path, 0, DATA_BYTES / MIB).expect("data after losing leg b");
    step(t0, "64 MiB verified on the degraded mirror");

    // Replace the dead leg with server c's chunk and rebuild.
    let ic = import(&mut nl, &c, "lab/c", dead);
    let leg_c = dp
        .ensure_leg(
            &vol.leg(0, "c").unwrap(),
            ic.device().unwrap(),
            layout,
            true,
        )
        .expect("leg c");
    let rebuild_start = Instant::now();
    assert!(
        dp.replace_raid1_leg(&raid, 1, leg_c.devices())
            .expect("replace leg")
    );
    assert!(
        !dp.replace_raid1_leg(&raid, 1, leg_c.devices())
            .expect("replace again"),
        "second replace is a no-op"
    );
    let s = dp.raid1_status(&raid).expect("status");
    step(t0, &format!("replaced leg 1 with c ({ic}): {s}"));
    assert_ne!(s.legs[1], LegHealth::Dead, "the new leg is alive");
    let s = dp
        .wait_raid1_in_sync(&raid, Duration::from_secs(180))
        .expect("rebuild");
    let rebuild = rebuild_start.elapsed();
    assert_eq!(s.sync_action, SyncAction::Idle);
    step(
        t0,
        &format!("rebuilt in {:.1}s: {s}", rebuild.as_secs_f64()),
    );
    // ensure_raid1 with the new legs adopts the device (its kernel table still
    // says `rebuild 1`, which must not count as a difference).
    let t2 = Raid1Table::new(
        vec![Some(leg_a.devices()), Some(leg_c.devices())],
        Sectors(1024),
    );
    assert!(
        !dp.ensure_raid1(&raid, len, &t2)
            .expect("adopt after rebuild")
            .created
    );
    // The dead leg's devices are unused now.
    dp.remove(&leg_b.meta.name).expect("remove old meta");
    dp.remove(&leg_b.data.name).expect("remove old data");
    nl.disconnect(ib).expect("disconnect dead nbd");

    // Lose the other original leg: reads must come from the rebuilt one.
    a.kill();
    step(t0, "killed server a (original leg 0)");
    verify(&v.path, 0, DATA_BYTES / MIB).expect("data served by the rebuilt leg alone");
    let s = wait_for("leg 0 marked dead", Duration::from_secs(30), || {
        let s = dp.raid1_status(&raid).expect("status");
        (s.legs == [LegHealth::Dead, LegHealth::InSync]).then_some(s)
    });
    step(
        t0,
        &format!("64 MiB verified from the rebuilt leg; status {s}"),
    );
    verify_file(&c.disk, CHUNK_OFFSET + 4 * MIB, 64)
        .expect("rebuilt chunk holds the data on server c's disk");

    let removed = dp.teardown_volume(&vol).expect("teardown");
    step(t0, &format!("removed {} dm devices", removed.len()));
    for i in [ia, ic] {
        nl.disconnect(i).expect("disconnect");
    }
    c.kill();
    assert_clean(&dp, &mut nl, &[ia, ib, ic]);
    println!(
        "LAB-DETAIL leg killed mid-write: no I/O error (writer done {:.1}s after the kill), status AD; \
         rebuilt onto a 3rd server in {:.1}s (AA idle); 64 MiB intact after losing both original legs; teardown clean; total {:.1}s",
        stall.as_secs_f64(),
        rebuild.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// ensure_* is idempotent, and a fresh process (no in-memory state) adopts
/// the NBD and dm devices the kernel already has instead of duplicating them;
/// a differing table is refused.
/// A leg moves without the mirror ever having fewer in-sync copies (the
/// primitive for draining a disk): a third leg joins the running mirror and
/// syncs, then the leg being moved away leaves, the new one taking its
/// slot. The moved-to leg then serves the data alone.
#[test]
#[ignore = "needs root, nbd and dm-raid: runs in the VM lab (lab/run sets VSKY_LAB=1)"]
fn kernel_reshape() {
    let Some(lab) = lab() else { return };
    let t0 = Instant::now();
    let dp = Datapath::new().expect("open device-mapper");
    let mut nl = NbdNetlink::open().expect("open nbd netlink");
    let vol = VolumeName::new("labmv").unwrap();
    let (raid, top) = (vol.raid(0), vol.top());
    let a = Server::start(&lab, "ma", 10811);
    let mut b = Server::start(&lab, "mb", 10812);
    let mut c = Server::start(&lab, "mc", 10813);
    let dead = Duration::from_secs(1);
    let layout = chunk_layout();
    let leg = |nl: &mut NbdNetlink, s: &Server, tag: &str| {
        let i = import(nl, s, &format!("lab/{tag}"), dead);
        let l = dp
            .ensure_leg(&vol.leg(0, tag).unwrap(), i.device().unwrap(), layout, true)
            .expect("leg");
        (i, l)
    };
    let (ia, leg_a) = leg(&mut nl, &a, "ma");
    let (ib, leg_b) = leg(&mut nl, &b, "mb");
    let len = layout.data_size;
    let table = Raid1Table::new(
        vec![Some(leg_a.devices()), Some(leg_b.devices())],
        Sectors(1024),
    );
    let r = dp.ensure_raid1(&raid, len, &table).expect("raid1");
    dp.wait_raid1_in_sync(&raid, Duration::from_secs(120))
        .expect("initial resync");
    let v = dp
        .ensure_volume(&top, &VolumeLayout::Linear(vec![(r.device, len)]))
        .expect("volume");
    let progress = AtomicU64::new(0);
    write_pattern(&v.path, 0, DATA_BYTES / MIB, &progress).expect("write");
    step(t0, "2-leg mirror a+b in sync, 64 MiB written");

    // Grow: c joins as slot 2 and is rebuilt while the mirror serves.
    let (ic, leg_c) = leg(&mut nl, &c, "mc");
    dp.reshape_raid1(
        &raid,
        vec![
            Some(leg_a.devices()),
            Some(leg_b.devices()),
            Some(leg_c.devices()),
        ],
        vec![2],
    )
    .expect("add leg c");
    let s = dp
        .wait_raid1_in_sync(&raid, Duration::from_secs(180))
        .expect("leg c in sync");
    assert_eq!(s.legs.len(), 3, "three legs: {s}");
    step(t0, &format!("leg c added and synced: {s}"));
    verify(&v.path, 0, DATA_BYTES / MIB).expect("data with three legs");

    // Shrink: a leaves, c takes its slot (a position change).
    dp.reshape_raid1(
        &raid,
        vec![Some(leg_c.devices()), Some(leg_b.devices())],
        vec![],
    )
    .expect("drop leg a, c into slot 0");
    let s = dp
        .wait_raid1_in_sync(&raid, Duration::from_secs(60))
        .expect("two legs in sync");
    assert_eq!(s.legs.len(), 2, "two legs: {s}");
    let (_, t) = dp.raid1_table(&raid).expect("table");
    assert_eq!(t.legs, vec![Some(leg_c.devices()), Some(leg_b.devices())]);
    step(t0, &format!("leg a dropped, c in slot 0: {s}"));
    dp.remove(&leg_a.meta.name).expect("remove a's meta");
    dp.remove(&leg_a.data.name).expect("remove a's data");
    nl.disconnect(ia).expect("disconnect a");
    drop(a);

    // The moved-to leg alone carries the data: b dies, a write (the same
    // pattern again) makes md fail it, and every read then comes from c.
    b.kill();
    write_pattern(&v.path, 0, 1, &progress).expect("write after b died");
    let s = wait_for("leg b marked dead", Duration::from_secs(30), || {
        let s = dp.raid1_status(&raid).expect("status");
        (s.legs == [LegHealth::InSync, LegHealth::Dead]).then_some(s)
    });
    verify(&v.path, 0, DATA_BYTES / MIB).expect("data served by leg c alone");
    step(t0, &format!("b killed: 64 MiB verified from c alone; {s}"));
    dp.teardown_volume(&vol).expect("teardown");
    for i in [ib, ic] {
        nl.disconnect(i).expect("disconnect");
    }
    c.kill();
    assert_clean(&dp, &mut nl, &[ia, ib, ic]);
    println!(
        "LAB-DETAIL raid1 leg moved online: a third leg added and synced under a running mirror, the old leg dropped with the new one taking its slot (dm-raid position change), then the other original leg killed: 64 MiB intact from the moved-to leg; {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "needs root, nbd and dm-raid: runs in the VM lab (lab/run sets VSKY_LAB=1)"]
fn kernel_adopt() {
    let Some(lab) = lab() else { return };
    let t0 = Instant::now();
    let vol = VolumeName::new("lab1").unwrap();
    let a = Server::start(&lab, "a1", 10811);
    let b = Server::start(&lab, "b1", 10812);
    let layout = chunk_layout();
    let len = layout.data_size;

    // One "agent run": find-or-connect each leg, then ensure the stack.
    let run = |first: bool| -> (Vec<NbdIndex>, Vec<bool>, Mapped) {
        let dp = Datapath::new().expect("dm");
        let mut nl = NbdNetlink::open().expect("nbd netlink");
        let mut idx = Vec::new();
        for (s, id) in [(&a, "adopt/a"), (&b, "adopt/b")] {
            let found = nbd::find_by_backend(id).expect("sysfs");
            assert_eq!(
                found.is_some(),
                !first,
                "{id} found={found:?} on first={first}"
            );
            idx.push(found.unwrap_or_else(|| import(&mut nl, s, id, Duration::from_secs(1))));
        }
        let la = dp
            .ensure_leg(
                &vol.leg(0, "a").unwrap(),
                idx[0].device().unwrap(),
                layout,
                true,
            )
            .expect("leg a");
        let lb = dp
            .ensure_leg(
                &vol.leg(0, "b").unwrap(),
                idx[1].device().unwrap(),
                layout,
                true,
            )
            .expect("leg b");
        let mut table =
            Raid1Table::new(vec![Some(la.devices()), Some(lb.devices())], Sectors(2048));
        // Fresh zeroed chunks: skip the initial resync on creation.
        table.nosync = first;
        let r = dp.ensure_raid1(&vol.raid(0), len, &table).expect("raid1");
        let v = dp
            .ensure_volume(&vol.top(), &VolumeLayout::Linear(vec![(r.device, len)]))
            .expect("volume");
        let created = vec![
            la.meta.created,
            la.data.created,
            lb.meta.created,
            lb.data.created,
            r.created,
            v.created,
        ];
        (
            idx,
            created,
            Mapped {
                path: v.path,
                raid_dev: r.device,
            },
        )
    };

    let (idx1, created1, m1) = run(true);
    assert!(
        created1.iter().all(|c| *c),
        "first run creates everything: {created1:?}"
    );
    let progress = AtomicU64::new(0);
    write_pattern(&m1.path, 0, 8, &progress).expect("write");
    step(
        t0,
        "first run created 6 dm devices over 2 NBD imports; wrote 8 MiB",
    );

    // Second run in a fresh context: same devices, nothing created.
    let (idx2, created2, m2) = run(false);
    assert_eq!(idx1, idx2, "NBD devices adopted by backend identifier");
    assert!(
        created2.iter().all(|c| !*c),
        "second run adopts: {created2:?}"
    );
    assert_eq!(m1.raid_dev, m2.raid_dev);
    let dp = Datapath::new().expect("dm");
    let names: Vec<DevName> = dp
        .list()
        .expect("list")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names.len(), 6, "no duplicates: {names:?}");
    let mut nl = NbdNetlink::open().expect("nbd");
    let ours: Vec<_> = nl
        .connected()
        .unwrap()
        .into_iter()
        .filter(|i| idx1.contains(i))
        .collect();
    assert_eq!(ours.len(), 2);
    step(
        t0,
        "second run (fresh state) adopted all devices, no duplicates",
    );

    // A differing table is refused with a clear error, and changes nothing.
    let other = [TargetLine {
        start: Sectors(0),
        len: Sectors(*len / 2),
        target: Target::Linear {
            dev: m1.raid_dev,
            offset: Sectors(0),
        },
    }];
    match dp.ensure_device(&vol.top(), &other) {
        Err(DmError::TableMismatch { name, .. }) => assert_eq!(name, vol.top().as_str()),
        other => panic!("expected TableMismatch, got {other:?}"),
    }
    // A wrong raid layout too (legs swapped).
    let (_, t) = dp.raid1_table(&vol.raid(0)).expect("raid table");
    let swapped = Raid1Table::new(vec![t.legs[1], t.legs[0]], t.region_size);
    assert!(matches!(
        dp.ensure_raid1(&vol.raid(0), len, &swapped),
        Err(DmError::TableMismatch { .. })
    ));
    verify(&m1.path, 0, 8).expect("data intact after adoption");
    step(t0, "differing tables refused (TableMismatch); data intact");

    dp.teardown_volume(&vol).expect("teardown");
    for i in &idx1 {
        nl.disconnect(*i).expect("disconnect");
    }
    // Teardown is idempotent too.
    assert!(dp.teardown_volume(&vol).expect("teardown again").is_empty());
    assert_clean(&dp, &mut nl, &idx1);
    println!(
        "LAB-DETAIL ensure_* twice and after dropping all state adopted 2 NBD + 6 dm devices (0 created, 0 duplicates); \
         differing tables refused; teardown clean; {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

/// A dead socket is announced by LINK_DEAD, and RECONFIGURE replaces it in
/// place: after the server restarts, the same /dev/nbdN serves the I/O that
/// was waiting, without being disconnected.
#[test]
#[ignore = "needs root, nbd and dm-raid: runs in the VM lab (lab/run sets VSKY_LAB=1)"]
fn nbd_reconnect() {
    let Some(lab) = lab() else { return };
    let t0 = Instant::now();
    let mut nl = NbdNetlink::open().expect("nbd netlink");
    let mut s = Server::start(&lab, "r", 10821);
    // A long dead-connection timeout: I/O waits for the reconnect.
    let idx = import(&mut nl, &s, "reconnect/r", Duration::from_secs(60));
    let dev = idx.dev_path();
    let progress = AtomicU64::new(0);
    write_pattern(&dev, 0, 4, &progress).expect("write before");
    let mut events = NbdEvents::subscribe().expect("join nbd_mc_group");
    s.kill();
    step(t0, &format!("server of {idx} killed"));
    // The kernel multicasts LINK_DEAD as soon as its receive worker sees the
    // connection drop.
    let event = events
        .next_event(Duration::from_secs(20))
        .expect("event socket");
    assert_eq!(event, Some(NbdEvent::LinkDead(idx)), "LINK_DEAD for {idx}");
    step(t0, &format!("got LINK_DEAD for {idx}"));
    // I/O now waits (dead_conn_timeout) for a new socket.
    let reader = {
        let dev = dev.clone();
        std::thread::spawn(move || verify(&dev, 0, 4))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !reader.is_finished(),
        "read waits for the reconnect instead of failing"
    );
    s.spawn(&lab);
    let (sock, _, _) = handshake(&s.addr, s.name);
    nl.reconfigure(idx, "reconnect/r", &[sock.as_fd()])
        .expect("reconfigure");
    wait_for("read across the reconnect", Duration::from_secs(30), || {
        reader.is_finished().then_some(())
    });
    reader
        .join()
        .expect("reader")
        .expect("read across the reconnect returns the data");
    step(t0, "read completed on the new socket");
    assert_eq!(nbd::find_by_backend("reconnect/r").unwrap(), Some(idx));
    // A wrong backend identifier is refused by the kernel.
    let (sock2, _, _) = handshake(&s.addr, s.name);
    assert!(
        nl.reconfigure(idx, "reconnect/other", &[sock2.as_fd()])
            .is_err()
    );
    let mut f = OpenOptions::new().write(true).open(&dev).expect("open nbd");
    f.write_all(b"after").expect("write after reconnect");
    f.sync_all().expect("flush after reconnect");
    // An open file holds the device's configuration: STATUS still says
    // connected after DISCONNECT until the last opener closes.
    nl.disconnect(idx).expect("disconnect");
    assert!(
        nl.connected().unwrap().contains(&idx),
        "an open {idx} stays configured after DISCONNECT"
    );
    drop(f);
    wait_for("nbd disconnected", Duration::from_secs(10), || {
        (!nl.connected().unwrap().contains(&idx)).then_some(())
    });
    println!(
        "LAB-DETAIL {idx}: LINK_DEAD multicast on server death; pending read completed after a netlink RECONFIGURE with a new socket; wrong backend id refused; {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

/// Two mirrors striped with a 64 KiB chunk: the stripe table is accepted,
/// adopted on a second ensure, and data lands on the legs in stripe order.
#[test]
#[ignore = "needs root, nbd and dm-raid: runs in the VM lab (lab/run sets VSKY_LAB=1)"]
fn kernel_stripe() {
    let Some(lab) = lab() else { return };
    let t0 = Instant::now();
    let dp = Datapath::new().expect("dm");
    let mut nl = NbdNetlink::open().expect("nbd netlink");
    let vol = VolumeName::new("lab2").unwrap();
    let layout = chunk_layout();
    let len = layout.data_size;
    let servers = [
        Server::start(&lab, "s1", 10831),
        Server::start(&lab, "s2", 10832),
        Server::start(&lab, "s3", 10833),
        Server::start(&lab, "s4", 10834),
    ];
    let mut idx = Vec::new();
    let mut members = Vec::new();
    for (k, pair) in servers.chunks(2).enumerate() {
        let mut legs = Vec::new();
        for s in pair {
            let i = import(
                &mut nl,
                s,
                &format!("stripe/{}", s.name),
                Duration::from_secs(1),
            );
            idx.push(i);
            let leg = dp
                .ensure_leg(
                    &vol.leg(k as u32, s.name).unwrap(),
                    i.device().unwrap(),
                    layout,
                    true,
                )
                .expect("leg");
            legs.push(Some(leg.devices()));
        }
        let mut table = Raid1Table::new(legs, Sectors(1024));
        // Fresh, zero-filled chunks: identical already, no resync needed.
        table.nosync = true;
        let r = dp
            .ensure_raid1(&vol.raid(k as u32), len, &table)
            .expect("raid1");
        members.push((r.device, len));
    }
    let chunk = Sectors(128);
    let striped = VolumeLayout::Striped { chunk, members };
    let v = dp
        .ensure_volume(&vol.top(), &striped)
        .expect("striped volume");
    assert!(v.created);
    assert!(
        !dp.ensure_volume(&vol.top(), &striped)
            .expect("adopt")
            .created,
        "kernel stripe table matches ours"
    );
    let progress = AtomicU64::new(0);
    write_pattern(&v.path, 0, 16, &progress).expect("write striped");
    verify(&v.path, 0, 16).expect("read back striped");
    for k in 0..2 {
        let s = dp.raid1_status(&vol.raid(k)).expect("status");
        assert!(s.is_in_sync(), "mirror {k}: {s}");
    }
    // Stripe order on disk: chunk 0 on mirror 0 (servers s1, s2), chunk 1
    // on mirror 1 (s3, s4), chunk 2 on mirror 0 again.
    let chunk_bytes = (*chunk * 512) as usize;
    let mut want = vec![0u8; MIB as usize];
    pattern(0, &mut want);
    for (s, expect) in [
        (0, &want[..chunk_bytes]),
        (1, &want[..chunk_bytes]),
        (2, &want[chunk_bytes..2 * chunk_bytes]),
        (3, &want[chunk_bytes..2 * chunk_bytes]),
    ] {
        let f = File::open(&servers[s].disk).expect("open backing");
        let mut got = vec![0u8; chunk_bytes];
        f.read_exact_at(&mut got, CHUNK_OFFSET + 4 * MIB)
            .expect("read backing");
        assert!(
            got == expect,
            "server {} holds the wrong stripe chunk",
            servers[s].name
        );
    }
    let f = File::open(&servers[0].disk).expect("open backing");
    let mut got = vec![0u8; chunk_bytes];
    f.read_exact_at(&mut got, CHUNK_OFFSET + 4 * MIB + chunk_bytes as u64)
        .expect("read backing");
    assert!(
        got == want[2 * chunk_bytes..3 * chunk_bytes],
        "third chunk is back on mirror 0"
    );
    step(
        t0,
        "16 MiB striped over 2 mirrors, stripe order verified on the servers' disks",
    );
    let removed = dp.teardown_volume(&vol).expect("teardown");
    assert_eq!(
        removed.len(),
        11,
        "1 top + 2 mirrors + 4 legs x 2: {removed:?}"
    );
    for i in &idx {
        nl.disconnect(*i).expect("disconnect");
    }
    assert_clean(&dp, &mut nl, &idx);
    println!(
        "LAB-DETAIL striped volume over 2 raid1 mirrors (4 NBD legs, nosync): adopted on re-ensure, 16 MiB verified, \
         stripe chunks found on the right servers' disks; teardown of 11 devices clean; {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

/// What one adoption run returns about the top of the stack.
struct Mapped {
    path: PathBuf,
    raid_dev: vsky_kernel::dm::Device,
}
