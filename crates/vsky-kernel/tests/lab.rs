//! Privileged tests of the real kernel path: NBD over netlink, dm-raid raid1,
//! leg failure, rebuild and adoption, dm-thin layers. They need root, the
//! nbd, dm-mod, dm-raid, raid1 and dm-thin-pool modules and the
//! `lab-nbd-server` example, so they only run when `VSKY_LAB=1` (the VM
//! lab, `lab/run`, sets it); elsewhere each test prints why it skipped and
//! passes.
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
    Datapath, DevName, DmError, LegHealth, LegLayout, Raid1BaseTable, Raid1Table, Sectors,
    SyncAction, TableMode, Target, TargetLine, ThinPoolTable, ThinStatus, ThinTable, VolumeLayout,
    VolumeName,
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

/// A storage server process exporting one chunk of its own backing file
/// (or the exports it was started with).
struct Server {
    name: &'static str,
    addr: String,
    disk: PathBuf,
    /// `lab-nbd-server` export arguments.
    exports: Vec<String>,
    child: Option<Child>,
}

impl Server {
    fn start(lab: &Lab, name: &'static str, port: u16) -> Server {
        let disk = lab.dir.join(format!("disk-{name}.img"));
        if !disk.exists() {
            let f = File::create(&disk).expect("create backing file");
            f.set_len(DISK_BYTES).expect("size backing file");
        }
        let export = format!("{name}={}:{CHUNK_OFFSET}:{CHUNK_BYTES}", disk.display());
        Server::start_exports(lab, name, port, disk, vec![export])
    }

    /// A server with its own export list over `disk` (which must exist).
    fn start_exports(
        lab: &Lab,
        name: &'static str,
        port: u16,
        disk: PathBuf,
        exports: Vec<String>,
    ) -> Server {
        let mut s = Server {
            name,
            addr: format!("127.0.0.1:{port}"),
            disk,
            exports,
            child: None,
        };
        s.spawn(lab);
        s
    }

    fn spawn(&mut self, lab: &Lab) {
        let child = Command::new(&lab.server_bin)
            .arg(&self.addr)
            .args(&self.exports)
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
    import_export(nl, server, server.name, CHUNK_BYTES, backend, dead_conn).0
}

/// [`import`] of the export `export` of `size` bytes; also returns the
/// export's transmission flags.
fn import_export(
    nl: &mut NbdNetlink,
    server: &Server,
    export: &str,
    size: u64,
    backend: &str,
    dead_conn: Duration,
) -> (NbdIndex, u16) {
    let (sock, got, flags) = handshake(&server.addr, export);
    assert_eq!(got, size, "size of export {export}");
    let mut req = ConnectRequest::new(size, flags, backend);
    req.timeout = Duration::from_secs(5);
    req.dead_conn_timeout = dead_conn;
    let idx = nl
        .connect(&req, &[sock.as_fd()])
        .expect("NBD connect over netlink");
    // The kernel holds its own reference; our copy can go.
    drop(sock);
    (idx, flags)
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

    let removed = dp.teardown_volume(&vol, 4).expect("teardown");
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
    dp.teardown_volume(&vol, 4).expect("teardown");
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

    dp.teardown_volume(&vol, 4).expect("teardown");
    for i in &idx1 {
        nl.disconnect(*i).expect("disconnect");
    }
    // Teardown is idempotent too.
    assert!(
        dp.teardown_volume(&vol, 4)
            .expect("teardown again")
            .is_empty()
    );
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
    let removed = dp.teardown_volume(&vol, 4).expect("teardown");
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

// ---------------------------------------------------------------------------
// kernel_thin: the dm-thin mechanisms of docs/design/snapshots.md over real
// NBD imports.

/// Each server's backing file holds one chunk per layer: T (the layer that
/// is frozen) and N (the new top). A chunk is 4 MiB of raid1 metadata and
/// 32 MiB of data. On each mirror, the pool keeps its metadata in the first
/// 4 MiB of the data (tmeta) and its data blocks in the rest (tdata: 28 MiB,
/// 448 blocks of 64 KiB).
const THIN_DISK_BYTES: u64 = 80 * MIB;
const THIN_CHUNK_BYTES: u64 = 36 * MIB;
const LAYER_T_AT: u64 = 4 * MIB;
const LAYER_N_AT: u64 = 40 * MIB;
const POOL_META: Sectors = Sectors(8192);
const POOL_BLOCK: Sectors = Sectors(128);
const POOL_LOW_WATER: u64 = 16;
/// The thin devices' size, written whole in step a.
const THIN_MIBS: u64 = 24;
/// The writer's region from step b on; the rest of the volume is only
/// ever read through the origin.
const HOT_MIBS: u64 = 12;
/// `BLKDISCARD` (`_IO(0x12, 119)`): discard a byte range of a block device.
const BLKDISCARD: libc::c_ulong = 0x1277;
/// The READ_ONLY transmission flag.
const NBD_FLAG_READ_ONLY: u16 = 1 << 1;

/// The MiB that write number `k` goes to: writes 0..THIN_MIBS fill the
/// volume (step a); later ones cycle over the first HOT_MIBS MiB.
fn mib_of(k: u64) -> u64 {
    if k < THIN_MIBS {
        k
    } else {
        (k - THIN_MIBS) % HOT_MIBS
    }
}

/// The write that MiB `m` holds once writes `0..done` completed; `None`
/// if none wrote it (the MiB reads zeros).
fn last_write(m: u64, done: u64) -> Option<u64> {
    if m >= THIN_MIBS {
        return None;
    }
    let first_lap = (m < done).then_some(m);
    if m >= HOT_MIBS || done <= THIN_MIBS + m {
        return first_lap;
    }
    Some(THIN_MIBS + m + (done - 1 - THIN_MIBS - m) / HOT_MIBS * HOT_MIBS)
}

/// Reads MiB `m` of `path` (O_DIRECT).
fn read_mib(path: &Path, m: u64) -> Result<Vec<u8>, String> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = Aligned::new(MIB as usize);
    f.read_exact_at(buf.as_mut(), m * MIB)
        .map_err(|e| format!("read MiB {m} of {}: {e}", path.display()))?;
    Ok(buf.as_ref().to_vec())
}

/// The content of write `k` (zeros for `None`).
fn content(k: Option<u64>) -> Vec<u8> {
    let mut want = vec![0u8; MIB as usize];
    if let Some(k) = k {
        pattern(k, &mut want);
    }
    want
}

/// Checks that each MiB `m` of `path` in `mibs` holds one of the writes
/// `want(m)` lists, and returns the write found per MiB.
fn verify_writes(
    path: &Path,
    mibs: std::ops::Range<u64>,
    want: impl Fn(u64) -> Vec<Option<u64>>,
) -> Result<Vec<Option<u64>>, String> {
    let mut found = Vec::new();
    for m in mibs {
        let got = read_mib(path, m)?;
        let candidates = want(m);
        match candidates.iter().find(|k| content(**k) == got) {
            Some(k) => found.push(*k),
            None => {
                return Err(format!(
                    "MiB {m} of {} holds none of the writes {candidates:?}",
                    path.display()
                ));
            }
        }
    }
    Ok(found)
}

/// Checks that `path` holds what the volume held once writes `0..done`
/// completed, for any `done` in `dones` (each MiB may match a different
/// one: the write in flight at a suspend may fall either side).
fn verify_as_of(path: &Path, dones: &[u64]) -> Result<Vec<Option<u64>>, String> {
    verify_writes(path, 0..THIN_MIBS, |m| {
        dones.iter().map(|d| last_write(m, *d)).collect()
    })
}

/// An O_DIRECT writer of 1 MiB writes numbered from THIN_MIBS on (see
/// [`mib_of`]), until stopped. `done` counts the completed writes.
struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    done: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Writer {
    fn start(path: PathBuf) -> Writer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(THIN_MIBS));
        let handle = {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let f = open_direct(&path, true);
                let mut buf = Aligned::new(MIB as usize);
                while !stop.load(Ordering::SeqCst) {
                    let k = done.load(Ordering::SeqCst);
                    pattern(k, buf.as_mut());
                    f.write_all_at(buf.as_ref(), mib_of(k) * MIB)
                        .map_err(|e| format!("write {k}: {e}"))?;
                    done.store(k + 1, Ordering::SeqCst);
                }
                Ok(())
            })
        };
        Writer {
            stop,
            done,
            handle: Some(handle),
        }
    }
    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }
    fn wait_until(&self, done: u64) {
        wait_for(
            &format!("writer at write {done}"),
            Duration::from_secs(300),
            || {
                assert!(
                    !self.handle.as_ref().is_some_and(|h| h.is_finished()),
                    "the writer stopped early (at {})",
                    self.done()
                );
                (self.done() >= done).then_some(())
            },
        );
    }
    /// Stops after the write in progress and returns how many completed.
    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join()
                .expect("writer thread")
                .unwrap_or_else(|e| panic!("the writer saw an I/O error: {e}"));
        }
        self.done()
    }
}

fn dev_name(name: String) -> DevName {
    DevName::new(name).expect("lab device name")
}

fn one_line(len: Sectors, target: Target) -> [TargetLine; 1] {
    [TargetLine {
        start: Sectors(0),
        len,
        target,
    }]
}

fn linear_over(dev: vsky_kernel::dm::Device, offset: Sectors, len: Sectors) -> [TargetLine; 1] {
    one_line(len, Target::Linear { dev, offset })
}

/// The devices of one layer on this host: a raid1 mirror, the pool's
/// metadata and data linears over it, the pool, and thin device 0.
struct LayerNames {
    raid: DevName,
    tmeta: DevName,
    tdata: DevName,
    pool: DevName,
    thin: DevName,
}

impl LayerNames {
    fn new(tag: &str) -> LayerNames {
        LayerNames {
            raid: dev_name(format!("vsky-labth{tag}+m0")),
            tmeta: dev_name(format!("vsky-labth{tag}+tmeta")),
            tdata: dev_name(format!("vsky-labth{tag}+tdata")),
            pool: dev_name(format!("vsky-labth{tag}+pool")),
            thin: dev_name(format!("vsky-labth{tag}+thin")),
        }
    }
    /// Top first, so nothing is removed while another device maps it.
    fn remove(&self, dp: &Datapath) {
        for n in [&self.thin, &self.pool, &self.tdata, &self.tmeta, &self.raid] {
            dp.remove(n).unwrap_or_else(|e| panic!("remove {n}: {e}"));
        }
    }
}

/// The pool table of a layer whose mirror is `raid_len` long.
fn pool_lines(
    dp: &Datapath,
    names: &LayerNames,
    raid_len: Sectors,
    read_only: bool,
) -> [TargetLine; 1] {
    let meta = dp.lookup(&names.tmeta).unwrap().expect("tmeta exists");
    let data = dp.lookup(&names.tdata).unwrap().expect("tdata exists");
    let mut t = ThinPoolTable::new(meta, data, POOL_BLOCK, POOL_LOW_WATER);
    t.read_only = read_only;
    one_line(Sectors(*raid_len - *POOL_META), Target::ThinPool(t))
}

fn thin_lines(
    pool: vsky_kernel::dm::Device,
    origin: Option<vsky_kernel::dm::Device>,
) -> [TargetLine; 1] {
    one_line(
        Sectors(THIN_MIBS * MIB / 512),
        Target::Thin(ThinTable {
            pool,
            dev_id: 0,
            external_origin: origin,
        }),
    )
}

/// The pool's metadata and data linears over the mirror `raid`.
fn carve_pool_areas(
    dp: &Datapath,
    names: &LayerNames,
    raid: vsky_kernel::dm::Device,
    raid_len: Sectors,
) -> Result<(), DmError> {
    dp.ensure_device(&names.tmeta, &linear_over(raid, Sectors(0), POOL_META))?;
    dp.ensure_device(
        &names.tdata,
        &linear_over(raid, POOL_META, Sectors(*raid_len - *POOL_META)),
    )?;
    Ok(())
}

/// Assembles a layer top-form over two imported chunks (as its meta owner
/// does): raid1 with metadata devices, `nosync` (fresh zeroed chunks), a
/// read-write pool with thin device 0 created in it, and (with
/// `thin_device`) the thin device without an origin. Returns the mirror's
/// length.
fn top_layer(
    dp: &Datapath,
    tag: &str,
    names: &LayerNames,
    imports: [NbdIndex; 2],
    thin_device: bool,
) -> Sectors {
    let vol = VolumeName::new(format!("labth{tag}")).unwrap();
    let layout = LegLayout::for_chunk(Sectors(THIN_CHUNK_BYTES / 512)).expect("layout");
    let legs: Vec<_> = imports
        .iter()
        .zip(["a", "b"])
        .map(|(i, leg)| {
            Some(
                dp.ensure_leg(&vol.leg(0, leg).unwrap(), i.device().unwrap(), layout, true)
                    .expect("leg")
                    .devices(),
            )
        })
        .collect();
    let mut table = Raid1Table::new(legs, Sectors(1024));
    table.nosync = true;
    let len = layout.data_size;
    let raid = dp.ensure_raid1(&names.raid, len, &table).expect("raid1");
    carve_pool_areas(dp, names, raid.device, len).expect("tmeta, tdata");
    let pool = pool_lines(dp, names, len, false);
    let p = dp.ensure_device(&names.pool, &pool).expect("thin-pool");
    // The kernel prints the table back as we format it: adopted, not created.
    assert!(
        !dp.ensure_device(&names.pool, &pool)
            .expect("adopt pool")
            .created,
        "our thin-pool line reads back equal"
    );
    assert!(dp.create_thin(&names.pool, 0).expect("create_thin 0"));
    assert!(
        !dp.create_thin(&names.pool, 0).expect("create_thin 0 again"),
        "a second create_thin 0 is EEXIST, reported as done"
    );
    if thin_device {
        let t = dp
            .ensure_device(&names.thin, &thin_lines(p.device, None))
            .expect("thin 0");
        assert!(t.created);
    }
    len
}

/// `len` bytes of a backing file at `at` (buffered: it may be on tmpfs).
fn read_backing(path: &Path, at: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, at))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    buf
}

/// `/sys/block/nbdN/stat`: the number of write requests the device has
/// completed (successfully or not).
fn nbd_writes(i: NbdIndex) -> u64 {
    let stat = std::fs::read_to_string(format!("/sys/block/{i}/stat")).expect("nbd stat");
    stat.split_whitespace()
        .nth(4)
        .and_then(|w| w.parse().ok())
        .expect("write I/Os in stat")
}

/// The kernel's last device-mapper and md lines, to record why a table
/// was refused.
fn kernel_log_tail() -> String {
    let out = Command::new("dmesg")
        .output()
        .or_else(|_| Command::new("busybox").arg("dmesg").output());
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    ["device-mapper", "md/", "md:", "nbd", "thin", "raid"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .collect();
            lines[lines.len().saturating_sub(4)..].join(" | ")
        }
        Err(e) => format!("(no dmesg: {e})"),
    }
}

/// Which tables of a base-form assembly are loaded read-only.
#[derive(Debug, Clone, Copy)]
struct BaseModes {
    legs: TableMode,
    raid: TableMode,
    tmeta: TableMode,
    tdata: TableMode,
}

impl std::fmt::Display for BaseModes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = |t: TableMode| match t {
            TableMode::ReadOnly => "ro",
            TableMode::ReadWrite => "rw",
        };
        write!(
            f,
            "tables: data legs {}, raid1 {}, tmeta {}, tdata {}",
            m(self.legs),
            m(self.raid),
            m(self.tmeta),
            m(self.tdata)
        )
    }
}

/// Assembles a frozen layer base-form over two read-only imports of its
/// chunks, with the tables in `modes`: raid1 over the data areas only
/// (`- <data>`, `nosync`), the pool `read_only`, thin 0 without origin.
/// On failure everything created here is removed and the kernel's reason
/// returned.
fn base_layer(
    dp: &Datapath,
    names: &LayerNames,
    leg_names: &[DevName; 2],
    imports: [NbdIndex; 2],
    modes: BaseModes,
) -> Result<(), String> {
    let layout = LegLayout::for_chunk(Sectors(THIN_CHUNK_BYTES / 512)).expect("layout");
    let attempt = || -> Result<(), String> {
        let mut data = Vec::new();
        for (name, i) in leg_names.iter().zip(imports) {
            let d = dp
                .ensure_device_mode(
                    name,
                    &linear_over(i.device().unwrap(), layout.meta_size, layout.data_size),
                    modes.legs,
                )
                .map_err(|e| format!("data leg {name}: {e}"))?;
            data.push(Some(d.device));
        }
        let len = layout.data_size;
        let base = Raid1BaseTable {
            data,
            region_size: Sectors(1024),
        };
        let raid = one_line(len, Target::Raid1Base(base));
        let r = dp
            .ensure_device_mode(&names.raid, &raid, modes.raid)
            .map_err(|e| format!("base raid1: {e}"))?;
        assert!(
            !dp.ensure_device_mode(&names.raid, &raid, modes.raid)
                .expect("adopt base raid1")
                .created,
            "the base-form raid1 line reads back equal"
        );
        dp.ensure_device_mode(
            &names.tmeta,
            &linear_over(r.device, Sectors(0), POOL_META),
            modes.tmeta,
        )
        .map_err(|e| format!("tmeta: {e}"))?;
        dp.ensure_device_mode(
            &names.tdata,
            &linear_over(r.device, POOL_META, Sectors(*len - *POOL_META)),
            modes.tdata,
        )
        .map_err(|e| format!("tdata: {e}"))?;
        let pool = pool_lines(dp, names, len, true);
        let p = dp
            .ensure_device(&names.pool, &pool)
            .map_err(|e| format!("read_only pool: {e}"))?;
        assert!(
            !dp.ensure_device(&names.pool, &pool)
                .expect("adopt read_only pool")
                .created,
            "the read_only pool line reads back equal"
        );
        // A reader's thin device needs no write access at all.
        let thin = thin_lines(p.device, None);
        let mut mode = TableMode::ReadOnly;
        if let Err(e) = dp.ensure_device_mode(&names.thin, &thin, mode) {
            println!("note: thin device in a read-only table refused ({e}); loading it read-write");
            mode = TableMode::ReadWrite;
            dp.ensure_device(&names.thin, &thin)
                .map_err(|e| format!("thin: {e}"))?;
        }
        // Adoption compares the table and its mode: the same ensure finds
        // the device, the other mode is a mismatch.
        assert!(
            !dp.ensure_device_mode(&names.thin, &thin, mode)
                .expect("adopt thin")
                .created
        );
        let other = match mode {
            TableMode::ReadOnly => TableMode::ReadWrite,
            TableMode::ReadWrite => TableMode::ReadOnly,
        };
        assert!(matches!(
            dp.ensure_device_mode(&names.thin, &thin, other),
            Err(DmError::TableMismatch { .. })
        ));
        Ok(())
    };
    attempt().map_err(|e| {
        let why = format!("{e}; kernel: {}", kernel_log_tail());
        names.remove(dp);
        for n in leg_names {
            let _ = dp.remove(n);
        }
        why
    })
}

/// The freeze of docs/design/snapshots.md §5.5.2, a base-form reader, pool
/// mode reloads, an origin re-pointed, discard through an origin and a leg
/// failure under base-form, over NBD imports from real server processes.
#[test]
#[ignore = "needs root, nbd, dm-raid and dm-thin: runs in the VM lab (lab/run sets VSKY_LAB=1)"]
fn kernel_thin() {
    let Some(lab) = lab() else { return };
    let t0 = Instant::now();
    let dp = Datapath::new().expect("open device-mapper");
    let mut nl = NbdNetlink::open().expect("open nbd netlink");
    let dead = Duration::from_secs(1);
    let (t, n, b) = (
        LayerNames::new("T"),
        LayerNames::new("N"),
        LayerNames::new("B"),
    );
    let vol = dev_name("vsky-labthin-vol".into());
    let b_legs = [
        dev_name("vsky-labthB+m0+a+data".into()),
        dev_name("vsky-labthB+m0+b+data".into()),
    ];

    // Two storage servers, each with one chunk per layer; and, over the
    // same backing files, two servers exporting T's chunks read-only (the
    // base-form reader's connections: another host would have its own).
    let disk = |name: &str| {
        let p = lab.dir.join(format!("thin-{name}.img"));
        let f = File::create(&p).expect("create backing file");
        f.set_len(THIN_DISK_BYTES).expect("size backing file");
        p
    };
    let (disk_a, disk_b) = (disk("a"), disk("b"));
    let rw_exports = |d: &Path| {
        vec![
            format!("t={}:{LAYER_T_AT}:{THIN_CHUNK_BYTES}", d.display()),
            format!("n={}:{LAYER_N_AT}:{THIN_CHUNK_BYTES}", d.display()),
        ]
    };
    let ro_exports = |d: &Path| {
        vec![format!(
            "t={}:{LAYER_T_AT}:{THIN_CHUNK_BYTES}:ro",
            d.display()
        )]
    };
    let sa = Server::start_exports(&lab, "ta", 10841, disk_a.clone(), rw_exports(&disk_a));
    let sb = Server::start_exports(&lab, "tb", 10842, disk_b.clone(), rw_exports(&disk_b));
    let mut ra = Server::start_exports(&lab, "ra", 10843, disk_a.clone(), ro_exports(&disk_a));
    let rb = Server::start_exports(&lab, "rb", 10844, disk_b.clone(), ro_exports(&disk_b));
    let mut imp = |s: &Server, export: &str, backend: &str| {
        import_export(&mut nl, s, export, THIN_CHUNK_BYTES, backend, dead)
    };
    let (ia_t, _) = imp(&sa, "t", "thin/a/t");
    let (ib_t, _) = imp(&sb, "t", "thin/b/t");
    let (ia_n, _) = imp(&sa, "n", "thin/a/n");
    let (ib_n, _) = imp(&sb, "n", "thin/b/n");

    // a. Layer T top-form: raid1 → tmeta/tdata → pool → create_thin 0 →
    // thin; the volume device over it; the whole volume written.
    let raid_len = top_layer(&dp, "T", &t, [ia_t, ib_t], true);
    let t_thin = dp.lookup(&t.thin).unwrap().expect("T thin");
    let vol_len = Sectors(THIN_MIBS * MIB / 512);
    let v = dp
        .ensure_device(&vol, &linear_over(t_thin, Sectors(0), vol_len))
        .expect("volume over T");
    let progress = AtomicU64::new(0);
    write_pattern(&v.path, 0, THIN_MIBS, &progress).expect("write the volume");
    verify_as_of(&t.thin.node_path(), &[THIN_MIBS]).expect("T after step a");
    let s = dp.thin_pool_status(&t.pool).expect("T pool status");
    let u = s.usage().expect("T pool active").clone();
    assert_eq!(u.mode, vsky_kernel::dm::PoolMode::ReadWrite, "{s}");
    assert_eq!(
        u.used_data_blocks,
        THIN_MIBS * 16,
        "24 MiB = 384 blocks: {s}"
    );
    assert_eq!(u.total_data_blocks, (*raid_len - *POOL_META) / *POOL_BLOCK);
    step(
        t0,
        &format!("a. layer T over NBD, {THIN_MIBS} MiB written; pool: {s}"),
    );

    // b. The freeze under an O_DIRECT writer. N is assembled first, with no
    // pause; then the pause: suspend vol, thin, pool; pool read_only;
    // resume pool, thin; N's thin over T's; vol over N's thin; resume.
    // N's thin device is created inside the pause, over T's.
    top_layer(&dp, "N", &n, [ia_n, ib_n], false);
    let n_pool = dp.lookup(&n.pool).unwrap().expect("N pool");
    let mut writer = Writer::start(v.path.clone());
    writer.wait_until(THIN_MIBS + 4);
    // Everything the pause needs is computed before it.
    let frozen_pool = pool_lines(&dp, &t, raid_len, true);
    let paused = Instant::now();
    let mut laps = Vec::new();
    let mut lap = |what: &'static str| laps.push((what, paused.elapsed()));
    dp.suspend(&vol).expect("suspend vol");
    // Every write counted here completed before the switch.
    let p = writer.done();
    lap("suspend vol");
    dp.suspend(&t.thin).expect("suspend T thin");
    dp.suspend(&t.pool).expect("suspend T pool");
    lap("suspend T thin+pool");
    dp.load_table(&t.pool, &frozen_pool, TableMode::ReadWrite)
        .expect("load T pool read_only");
    dp.resume(&t.pool).expect("resume T pool");
    dp.resume(&t.thin).expect("resume T thin");
    lap("T pool read_only, resume T");
    let n_thin = dp
        .ensure_device(&n.thin, &thin_lines(n_pool, Some(t_thin)))
        .expect("N thin over T");
    lap("create N thin");
    dp.load_table(
        &vol,
        &linear_over(n_thin.device, Sectors(0), vol_len),
        TableMode::ReadWrite,
    )
    .expect("load vol over N");
    dp.resume(&vol).expect("resume vol");
    let pause = paused.elapsed();
    lap("vol over N, resume");
    // Each step's share of the pause, in ms.
    let mut at = Duration::ZERO;
    let breakdown: Vec<String> = laps
        .iter()
        .map(|(what, t)| {
            let d = *t - at;
            at = *t;
            format!("{what} {:.1}", d.as_secs_f64() * 1000.0)
        })
        .collect();
    let breakdown = breakdown.join(", ");
    assert_eq!(dp.suspended(&vol).unwrap(), Some(false));
    let s = dp.thin_pool_status(&t.pool).expect("T pool status");
    assert_eq!(
        s.usage().map(|u| u.mode),
        Some(vsky_kernel::dm::PoolMode::ReadOnly),
        "T pool frozen: {s}"
    );
    assert!(
        !dp.ensure_device(&n.thin, &thin_lines(n_pool, Some(t_thin)))
            .expect("adopt N thin")
            .created,
        "the thin line with an origin reads back equal"
    );
    // T holds every write done before the suspend, and no later one but
    // possibly the one in flight.
    verify_as_of(&t.thin.node_path(), &[p, p + 1]).expect("T right after the freeze");
    writer.wait_until(p + 1 + 2 * HOT_MIBS);
    let frozen = verify_as_of(&t.thin.node_path(), &[p, p + 1]).expect("T two laps later");
    let in_t = |m: u64| frozen[m as usize];
    let n_mapped = dp.thin_status(&n.thin).expect("N thin status");
    assert_eq!(
        n_mapped,
        ThinStatus::Active {
            mapped: Sectors(HOT_MIBS * MIB / 512),
            highest: Some(Sectors(HOT_MIBS * MIB / 512 - 1)),
        },
        "N maps exactly the MiB written after the switch"
    );
    step(
        t0,
        &format!(
            "b. froze T under the writer at write {p}: pause {:.1} ms ({breakdown}); T unchanged two laps later; \
             N maps {n_mapped}; T pool {s}",
            pause.as_secs_f64() * 1000.0
        ),
    );

    // c. A reader assembles T base-form over read-only imports of the same
    // chunks while the writer goes on. Most read-only first; what the
    // kernel refuses is recorded, and the next assembly tried.
    let (ira, flags_a) = imp(&ra, "t", "thin/ra/t");
    let (irb, flags_b) = imp(&rb, "t", "thin/rb/t");
    assert!(
        flags_a & flags_b & NBD_FLAG_READ_ONLY != 0,
        "READ_ONLY exports"
    );
    for i in [ira, irb] {
        let ro = std::fs::read_to_string(format!("/sys/block/{i}/ro")).expect("ro flag");
        assert_eq!(ro.trim(), "1", "{i} is a read-only disk");
    }
    let (ro, rw) = (TableMode::ReadOnly, TableMode::ReadWrite);
    let attempts = [
        BaseModes {
            legs: ro,
            raid: ro,
            tmeta: ro,
            tdata: ro,
        },
        BaseModes {
            legs: ro,
            raid: ro,
            tmeta: ro,
            tdata: rw,
        },
        BaseModes {
            legs: ro,
            raid: rw,
            tmeta: rw,
            tdata: rw,
        },
        BaseModes {
            legs: rw,
            raid: rw,
            tmeta: rw,
            tdata: rw,
        },
    ];
    let mut refused = Vec::new();
    let mut used = None;
    for modes in attempts {
        match base_layer(&dp, &b, &b_legs, [ira, irb], modes) {
            Ok(()) => {
                used = Some(modes);
                break;
            }
            Err(e) => {
                println!("base form ({modes}) refused: {e}");
                refused.push(format!("{modes}: {e}"));
            }
        }
    }
    let used = used.unwrap_or_else(|| panic!("no base-form assembly worked: {refused:?}"));
    let b_thin = dp.lookup(&b.thin).unwrap().expect("B thin");
    // Whether the reader's thin device itself is a read-only disk.
    let b_ro = std::fs::read_to_string(format!(
        "/sys/dev/block/{}:{}/ro",
        b_thin.major, b_thin.minor
    ))
    .is_ok_and(|s| s.trim() == "1");
    let read_b = verify_as_of(&b.thin.node_path(), &[p, p + 1]).expect("base form reads T");
    assert_eq!(read_b, frozen, "the base form reads exactly what T holds");
    let bs = dp.raid1_status(&b.raid).expect("base raid status");
    assert_eq!(bs.legs, [LegHealth::InSync, LegHealth::InSync], "{bs}");
    let bp = dp.thin_pool_status(&b.pool).expect("B pool status");
    assert_eq!(
        bp.usage().map(|u| (u.mode, u.used_data_blocks)),
        Some((vsky_kernel::dm::PoolMode::ReadOnly, THIN_MIBS * 16)),
        "{bp}"
    );
    let writes_c = [nbd_writes(ira), nbd_writes(irb)];
    // A write straight to a READ_ONLY import is refused, and the chunk's
    // bytes stay as they were.
    let before = read_backing(&disk_b, LAYER_T_AT, MIB);
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(irb.dev_path())
        .and_then(|f| {
            let mut buf = Aligned::new(MIB as usize);
            pattern(999, buf.as_mut());
            f.write_all_at(buf.as_ref(), 0)
        });
    let ro_write = match &direct {
        Ok(()) => panic!("a write to the READ_ONLY import {irb} succeeded"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        read_backing(&disk_b, LAYER_T_AT, MIB),
        before,
        "the refused write changed nothing"
    );
    assert_eq!(
        writes_c,
        [0, 0],
        "the base-form assembly wrote nothing to its imports"
    );
    step(
        t0,
        &format!(
            "c. base form over READ_ONLY imports ({used}; thin read-only: {b_ro}): reads T exactly \
             while the writer runs; raid {bs}; pool {bp}; writes to the imports {writes_c:?}; \
             a direct write to a READ_ONLY import: {ro_write}"
        ),
    );

    // d. T's live pool (its thin open as N's origin) reloaded read-write
    // and back to read_only; then N's origin re-pointed from T to the base
    // form, which holds the same data, under the writer.
    dp.reload(&t.pool, &pool_lines(&dp, &t, raid_len, false))
        .expect("T pool read-write");
    let rw_status = dp.thin_pool_status(&t.pool).expect("status");
    assert_eq!(
        rw_status.usage().map(|u| u.mode),
        Some(vsky_kernel::dm::PoolMode::ReadWrite),
        "{rw_status}"
    );
    dp.reload(&t.pool, &pool_lines(&dp, &t, raid_len, true))
        .expect("T pool read_only again");
    let ro_status = dp.thin_pool_status(&t.pool).expect("status");
    assert_eq!(
        ro_status.usage().map(|u| u.mode),
        Some(vsky_kernel::dm::PoolMode::ReadOnly),
        "{ro_status}"
    );
    assert_eq!(
        verify_as_of(&t.thin.node_path(), &[p, p + 1]).expect("T after the mode reloads"),
        frozen
    );
    let before = writer.done();
    dp.reload(&n.thin, &thin_lines(n_pool, Some(b_thin)))
        .expect("re-point N's origin to the base form");
    assert!(
        !dp.ensure_device(&n.thin, &thin_lines(n_pool, Some(b_thin)))
            .expect("adopt re-pointed N thin")
            .created
    );
    writer.wait_until(before + HOT_MIBS);
    let q = writer.stop();
    let vol_found = verify_as_of(&v.path, &[q]).expect("volume after the re-point");
    for m in HOT_MIBS..THIN_MIBS {
        assert_eq!(
            vol_found[m as usize],
            in_t(m),
            "MiB {m} comes from the origin"
        );
    }
    step(
        t0,
        &format!(
            "d. T pool reloaded rw ({rw_status}) and ro ({ro_status}) live; N re-pointed to the base form \
             under the writer; writer stopped at {q}; volume exact, MiB {HOT_MIBS}..{THIN_MIBS} via the origin"
        ),
    );

    // e. Discard through a thin device with an origin: unmap MiB 0..4 of
    // the top and see what reads return.
    let discard_mibs = 4;
    let mapped_before = dp.thin_status(&n.thin).expect("N status");
    {
        let f = OpenOptions::new()
            .write(true)
            .open(&v.path)
            .expect("open vol");
        let range: [u64; 2] = [0, discard_mibs * MIB];
        // SAFETY: BLKDISCARD reads two u64 from the pointer.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                BLKDISCARD as _,
                range.as_ptr(),
            )
        };
        assert_eq!(rc, 0, "BLKDISCARD: {}", std::io::Error::last_os_error());
    }
    let mapped_after = dp.thin_status(&n.thin).expect("N status");
    let mut seen = Vec::new();
    for m in 0..discard_mibs {
        let got = read_mib(&v.path, m).expect("read discarded MiB");
        seen.push(if got == content(in_t(m)) {
            "origin"
        } else if got == content(None) {
            "zeros"
        } else if got == content(last_write(m, q)) {
            "top (unchanged)"
        } else {
            "other"
        });
    }
    assert!(
        seen.iter().all(|s| *s == "origin"),
        "discarded MiB of a thin device with an origin read {seen:?}; thin {mapped_before} -> {mapped_after}"
    );
    assert_eq!(
        mapped_after,
        ThinStatus::Active {
            mapped: Sectors((HOT_MIBS - discard_mibs) * MIB / 512),
            highest: Some(Sectors(HOT_MIBS * MIB / 512 - 1)),
        },
        "the discard unmapped exactly its blocks"
    );
    step(
        t0,
        &format!(
            "e. discard of MiB 0..{discard_mibs} of the top: thin {mapped_before} -> {mapped_after}; reads return {seen:?}"
        ),
    );

    // f. A base-form leg dies: the reader's import of leg a (slot 0).
    ra.kill();
    let died = Instant::now();
    let status = wait_for("base-form leg a marked D", Duration::from_secs(60), || {
        let ok = verify_as_of(&b.thin.node_path(), &[p, p + 1]);
        assert_eq!(
            ok.as_ref(),
            Ok(&frozen),
            "base-form reads after the leg died"
        );
        let s = dp.raid1_status(&b.raid).expect("base raid status");
        (s.legs[0] == LegHealth::Dead).then_some(s)
    });
    let noticed = died.elapsed();
    assert_eq!(status.legs[1], LegHealth::InSync, "{status}");
    let vol_after = verify_writes(&v.path, 0..THIN_MIBS, |m| {
        vec![if m < discard_mibs {
            in_t(m)
        } else {
            last_write(m, q)
        }]
    });
    vol_after.expect("the volume reads through the degraded base form");
    let writes_f = [nbd_writes(ira), nbd_writes(irb)];
    step(
        t0,
        &format!(
            "f. base-form leg a killed: reads exact from leg b; status {status} after {:.1}s; \
             write requests at the read-only imports (md's corrective writes) {writes_f:?}; kernel: {}",
            noticed.as_secs_f64(),
            kernel_log_tail()
        ),
    );

    // Teardown, top first.
    dp.remove(&vol).expect("remove vol");
    n.remove(&dp);
    b.remove(&dp);
    for l in &b_legs {
        dp.remove(l).expect("remove base leg");
    }
    t.remove(&dp);
    for tag in ["T", "N"] {
        let vol = VolumeName::new(format!("labth{tag}")).unwrap();
        for leg in ["a", "b"] {
            let l = vol.leg(0, leg).unwrap();
            dp.remove(&l.meta).expect("remove leg meta");
            dp.remove(&l.data).expect("remove leg data");
        }
    }
    let all = [ia_t, ib_t, ia_n, ib_n, ira, irb];
    for i in all {
        nl.disconnect(i).expect("disconnect");
    }
    drop((sa, sb, ra, rb));
    assert_clean(&dp, &mut nl, &all);
    let _ = std::fs::remove_file(&disk_a);
    let _ = std::fs::remove_file(&disk_b);
    println!(
        "LAB-DETAIL thin over NBD: freeze pause {:.1} ms ({breakdown}) under an O_DIRECT writer (T exact as of write {p}, later writes only in N); \
         base form ({used}) over READ_ONLY imports read T exactly, 0 writes{} (direct write refused: {ro_write}); \
         pool ro->rw->ro live; origin re-pointed live; discard with an origin reads {}; base leg killed -> {status}, \
         reads exact, md's corrective writes at the reader's imports {writes_f:?}; {:.1}s",
        pause.as_secs_f64() * 1000.0,
        if refused.is_empty() {
            String::new()
        } else {
            format!(" (refused first: {})", refused.join("; "))
        },
        seen[0],
        t0.elapsed().as_secs_f64()
    );
}
