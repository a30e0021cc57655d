//! What the head's kernel holds: dm devices (read with `dmsetup status`,
//! the kernel's own format), NBD connections (sysfs) and `/dev/mapper`
//! nodes. The agents create everything; the scenarios only look.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One dm-raid raid1 mirror as `dmsetup status` shows it:
/// `<name>: <start> <len> raid raid1 <legs> <health> <ratio> <action> …`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub name: String,
    pub legs: usize,
    /// One character per leg: `A` alive and in sync, `a` alive and not in
    /// sync, `D` dead, `-` left out of the table.
    pub health: String,
    /// `idle`, `resync`, `recover`, `check`, …
    pub action: String,
}

impl Mirror {
    pub fn in_sync(&self) -> bool {
        self.action == "idle" && self.health.chars().all(|c| c == 'A')
    }
    /// A leg is out of service: dead, or left out of the table.
    pub fn leg_out(&self) -> bool {
        self.health.contains(['D', '-'])
    }
}

/// `dmsetup status` as text (also printed in diagnostics).
pub fn dmsetup_status() -> Result<String> {
    let out = Command::new("dmsetup")
        .arg("status")
        // No udev in the VM; dmsetup only reads here.
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .context("run dmsetup status")?;
    if !out.status.success() {
        bail!(
            "dmsetup status failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `dmsetup ls`: every dm device with its device number (shown to the
/// reader of the demo).
pub fn dmsetup_ls() -> Result<String> {
    let out = Command::new("dmsetup")
        .arg("ls")
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .context("run dmsetup ls")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every raid1 mirror in the kernel.
pub fn mirrors() -> Result<Vec<Mirror>> {
    Ok(dmsetup_status()?.lines().filter_map(parse_mirror).collect())
}

fn parse_mirror(line: &str) -> Option<Mirror> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 9 || f[3] != "raid" || f[4] != "raid1" {
        return None;
    }
    Some(Mirror {
        name: f[0].trim_end_matches(':').to_string(),
        legs: f[5].parse().ok()?,
        health: f[6].to_string(),
        action: f[8].to_string(),
    })
}

/// Every mirror in the kernel (a scenario assembles one volume at a time)
/// has every leg alive and in sync, and there is at least one.
pub fn mirrors_in_sync() -> Result<bool> {
    let m = mirrors()?;
    Ok(!m.is_empty() && m.iter().all(Mirror::in_sync))
}

/// Every mirror of the head whose devices are named `<prefix>-…` is in
/// sync, and there is one (two heads share the lab's kernel: `vsky` and
/// `vskyp`).
pub fn mirrors_in_sync_of(prefix: &str) -> Result<bool> {
    let ours = format!("{prefix}-");
    let m: Vec<Mirror> = mirrors()?
        .into_iter()
        .filter(|m| m.name.starts_with(&ours))
        .collect();
    Ok(!m.is_empty() && m.iter().all(Mirror::in_sync))
}

/// The dm devices and NBD imports of the head whose kernel objects are
/// named with `prefix` (`<prefix>-…`, `<prefix>:…`) still in the kernel.
pub fn objects_of(prefix: &str) -> Result<Vec<String>> {
    let dm = format!("{prefix}-");
    let nbd = format!("{prefix}:");
    let mut left: Vec<String> = mapper()?
        .into_iter()
        .filter(|n| n.starts_with(&dm))
        .collect();
    left.extend(
        nbd_backends()?
            .into_iter()
            .filter(|(_, b)| b.starts_with(&nbd))
            .map(|(d, b)| format!("{d} ({b})")),
    );
    Ok(left)
}

/// In sync, and every mirror has exactly `legs` legs.
pub fn mirrors_in_sync_with(legs: usize) -> Result<bool> {
    let m = mirrors()?;
    Ok(!m.is_empty() && m.iter().all(|m| m.in_sync() && m.legs == legs))
}

/// Device-mapper devices (`/sys/block/dm-*`).
pub fn dm_count() -> Result<usize> {
    Ok(sys_block()?.iter().filter(|n| n.starts_with("dm-")).count())
}

fn sys_block() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir("/sys/block").context("read /sys/block")? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Connected NBD devices and their backend identifiers
/// (`vsky:<volume>:<k>:[<slot>:]<disk>:<index>`), sorted by device. A
/// device has a backend identifier in sysfs only while connected.
pub fn nbd_backends() -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for name in sys_block()? {
        if !name.starts_with("nbd") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(format!("/sys/block/{name}/backend")) {
            out.push((name, b.trim().to_string()));
        }
    }
    out.sort();
    Ok(out)
}

pub fn nbd_connected() -> Result<usize> {
    Ok(nbd_backends()?.len())
}

/// Established TCP connections (IPv4 and IPv6) of this network namespace
/// to a remote `port`: the head's NBD imports hold one each, kept by the
/// kernel once handed over.
pub fn tcp_established_to(port: u16) -> Result<usize> {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            // No IPv6 in this kernel: no connections there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read {table}")),
        };
        n += text
            .lines()
            .skip(1)
            .filter(|l| established_to(l, port))
            .count();
    }
    Ok(n)
}

/// A `/proc/net/tcp` line: `sl local rem st …`, addresses as `HEX:PORT`,
/// state `01` established.
fn established_to(line: &str, port: u16) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    f.len() > 3
        && f[3] == "01"
        && f[2]
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
            == Some(port)
}

/// Nothing of any volume is assembled: no dm device, no NBD connection.
pub fn nothing_assembled() -> Result<bool> {
    Ok(dm_count()? == 0 && nbd_connected()? == 0)
}

/// The disk id in a backend identifier (its second-to-last field).
pub fn backend_disk(backend: &str) -> Option<u64> {
    backend.rsplit(':').nth(1)?.parse().ok()
}

/// The `/dev/nbdN` importing the leg of `volume` on disk `disk`.
pub fn leg_device(volume: &str, disk: u64) -> Result<Option<PathBuf>> {
    let prefix = format!("vsky:{volume}:");
    Ok(nbd_backends()?
        .into_iter()
        .find(|(_, b)| b.starts_with(&prefix) && backend_disk(b) == Some(disk))
        .map(|(dev, _)| PathBuf::from(format!("/dev/{dev}"))))
}

/// Sectors written so far to the NBD imports of `volume`'s legs on the
/// given disks (`/sys/block/nbdN/stat`, field 7).
pub fn sectors_written(volume: &str, disks: &[u64]) -> Result<u64> {
    let prefix = format!("vsky:{volume}:");
    let mut sectors = 0;
    for (dev, backend) in nbd_backends()? {
        if !backend.starts_with(&prefix)
            || !backend_disk(&backend).is_some_and(|d| disks.contains(&d))
        {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/sys/block/{dev}/stat"))
            .with_context(|| format!("read /sys/block/{dev}/stat"))?;
        sectors += stat
            .split_whitespace()
            .nth(6)
            .and_then(|s| s.parse::<u64>().ok())
            .with_context(|| format!("/sys/block/{dev}/stat has no sectors-written field"))?;
    }
    Ok(sectors)
}

/// The top devices in `/dev/mapper` (`vsky-<volume>`, sorted); internal
/// ones carry a `+`.
pub fn top_devices() -> Result<Vec<String>> {
    Ok(mapper()?.into_iter().filter(|n| !n.contains('+')).collect())
}

/// Every node of ours in `/dev/mapper` (`vsky-*`, and `vskyp-*` of a
/// second head), sorted.
pub fn mapper() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir("/dev/mapper").context("read /dev/mapper")? {
        let n = e?.file_name().to_string_lossy().into_owned();
        if n.starts_with("vsky-") || n.starts_with("vskyp-") {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// The kernel's uptime in seconds as its log stamps it now: a mark for
/// [`dmesg_count_since`].
pub fn dmesg_now() -> Result<f64> {
    let uptime = std::fs::read_to_string("/proc/uptime").context("read /proc/uptime")?;
    uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .context("parse /proc/uptime")
}

/// Kernel log lines containing `needle` stamped after `since` (seconds
/// of uptime). A count taken before and after is not enough: the ring
/// buffer drops its oldest lines once full (a long lab run fills it).
pub fn dmesg_count_since(needle: &str, since: f64) -> Result<usize> {
    let out = Command::new("dmesg").output().context("run dmesg")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .filter(|l| dmesg_stamp(l).is_none_or(|t| t > since))
        .count())
}

/// The `[ 1234.567890]` stamp of a kernel log line, in seconds.
fn dmesg_stamp(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    rest[..rest.find(']')?].trim().parse().ok()
}

/// The last `n` kernel log lines.
pub fn dmesg_tail(n: usize) -> String {
    let out = Command::new("dmesg")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `path` is a block device (a write to a missing `/dev/mapper`
/// path would silently create a regular file).
pub fn is_block(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// `dmsetup table <name>` as text.
pub fn dm_table(name: &str) -> Result<String> {
    dmsetup_text("table", name)
}

/// `dmsetup status <name>` as text.
pub fn dm_status(name: &str) -> Result<String> {
    dmsetup_text("status", name)
}

/// `dmsetup <verb> <name>` as text, an error if it fails.
fn dmsetup_text(verb: &str, name: &str) -> Result<String> {
    let out = Command::new("dmsetup")
        .args([verb, name])
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .with_context(|| format!("run dmsetup {verb}"))?;
    if !out.status.success() {
        bail!(
            "dmsetup {verb} {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether the dm device `name` is read-only (`/sys/block/dm-N/ro`).
pub fn dm_read_only(name: &str) -> Result<bool> {
    for dev in sys_block()?.iter().filter(|n| n.starts_with("dm-")) {
        let of = std::fs::read_to_string(format!("/sys/block/{dev}/dm/name")).unwrap_or_default();
        if of.trim() == name {
            let ro = std::fs::read_to_string(format!("/sys/block/{dev}/ro"))
                .with_context(|| format!("read /sys/block/{dev}/ro"))?;
            return Ok(ro.trim() == "1");
        }
    }
    bail!("no dm device named {name}")
}

/// The sectors a thin device has mapped in its pool (`dmsetup status`:
/// `0 <len> thin <mapped sectors> <highest mapped sector>`).
pub fn thin_mapped_sectors(name: &str) -> Result<u64> {
    let out = Command::new("dmsetup")
        .args(["status", name])
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .context("run dmsetup status")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<&str> = text.split_whitespace().collect();
    match f.as_slice() {
        [_, _, "thin", mapped, ..] => mapped
            .parse()
            .with_context(|| format!("thin status of {name}: {text:?}")),
        _ => bail!("{name} is not a thin device: {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_log_stamps_are_read_and_anything_else_is_none() {
        assert_eq!(
            dmesg_stamp("[  357.353026] block nbd38: x"),
            Some(357.353026)
        );
        assert_eq!(dmesg_stamp("[12.5] y"), Some(12.5));
        assert_eq!(dmesg_stamp("no stamp"), None);
        assert_eq!(dmesg_stamp("[ nope ] z"), None);
        assert_eq!(dmesg_stamp("["), None);
    }

    #[test]
    fn parses_raid1_status_lines_only() {
        let m = parse_mirror("vsky-va+0: 0 14336 raid raid1 2 AD 14336/14336 idle 0 0 -")
            .expect("a raid1 line");
        assert_eq!(m.name, "vsky-va+0");
        assert_eq!(
            (m.legs, m.health.as_str(), m.action.as_str()),
            (2, "AD", "idle")
        );
        assert!(!m.in_sync() && m.leg_out());
        assert_eq!(parse_mirror("vsky-va: 0 98304 linear "), None);
    }

    #[test]
    fn counts_established_connections_to_a_port_only() {
        let to = "   3: 0100000A:B2C4 0200000A:2A39 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1";
        assert!(established_to(to, 10809));
        assert!(!established_to(to, 8080));
        let listening = "   0: 0100007F:2A39 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        assert!(!established_to(listening, 10809));
        let closing = to.replace(" 01 ", " 06 ");
        assert!(!established_to(&closing, 10809));
    }

    #[test]
    fn reads_the_disk_of_a_backend_identifier() {
        assert_eq!(backend_disk("vsky:va:0:7:3"), Some(7));
        assert_eq!(backend_disk("vsky:va:0:2:7:3"), Some(7));
        assert_eq!(backend_disk("nonsense"), None);
    }
}
