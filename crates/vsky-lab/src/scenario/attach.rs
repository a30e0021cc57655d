//! cluster-attach: a volume assembled by the head survives detach and
//! reattach byte for byte, both raw data and an ext4 filesystem on it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::data::{self, MIB, device};
use crate::fixture::{Cluster, Config, MOUNT};
use crate::kernel;
use crate::out::say;
use crate::tool::run;

pub fn run_scenario() -> Result<String> {
    let v = "va";
    let dev = device(v);
    let c = Cluster::up(Config::default())?;
    c.api.create_volume(v, 48)?;
    c.attach_wait(v)?;
    // The node must be a real block device made by the agent: a write to
    // a missing /dev/mapper path would silently create a regular file.
    ensure!(
        kernel::is_block(&dev),
        "{} is not a block device",
        dev.display()
    );
    // Raw pattern in the last 16 MiB, ext4 in the first 32 MiB.
    let raw = data::random(16)?;
    let raw_at = (32 * MIB) as u64;
    data::write_direct(&dev, raw_at, &raw, MIB)?;
    data::expect_same(&dev, raw_at, &raw, "raw read-back right after the write")?;
    run("mkfs.ext4", &["-q", "-F", &dev.to_string_lossy(), "32M"])?;
    std::fs::create_dir_all(MOUNT)?;
    mount(&dev)?;
    let files = [
        ("random.bin", data::random(6)?),
        (
            "busybox.bin",
            std::fs::read("/bin/busybox").context("read /bin/busybox")?,
        ),
        (
            "numbers.txt",
            (1..=20000)
                .map(|n| format!("{n}\n"))
                .collect::<String>()
                .into_bytes(),
        ),
    ];
    for (name, bytes) in &files {
        std::fs::write(Path::new(MOUNT).join(name), bytes)
            .with_context(|| format!("write {MOUNT}/{name}"))?;
    }
    run("umount", &[MOUNT])?;
    say("wrote 16 MiB raw (O_DIRECT) + ext4 with 3 files; contents recorded");
    c.detach_wait(v)?;
    c.attach_wait(v)?;
    data::expect_same(&dev, raw_at, &raw, "raw data after reattach")?;
    mount(&dev)?;
    for (name, bytes) in &files {
        let got = std::fs::read(Path::new(MOUNT).join(name))
            .with_context(|| format!("read {MOUNT}/{name} after reattach"))?;
        if &got != bytes {
            let _ = run("umount", &[MOUNT]);
            bail!("file {name} differs after reattach");
        }
    }
    run("umount", &[MOUNT])?;
    c.detach_wait(v)?;
    c.finish();
    Ok("attach → O_DIRECT pattern + ext4 files → detach (devices and NBD gone) → reattach: raw data and 3 files match byte for byte".into())
}

fn mount(dev: &Path) -> Result<()> {
    let out = Command::new("mount")
        .args(["-t", "ext4"])
        .arg(dev)
        .arg(MOUNT)
        .output()
        .context("run mount")?;
    ensure!(
        out.status.success(),
        "mount of {} failed: {}",
        dev.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
