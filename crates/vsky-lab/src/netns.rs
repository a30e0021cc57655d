//! The storage servers' network namespaces. Server `sN` gets its own
//! namespace, held open by a `sleep` started under `unshare -n` (busybox has
//! no `ip netns`), joined to the root namespace by a veth pair `vhN` on a
//! /30 of 10.99.0.0/24: root side 10.99.0.(4N+1), server side
//! 10.99.0.(4N+2), whose default route is the root side. The root namespace
//! forwards between servers, as a switch would: a detached volume's new leg
//! is copied server to server. Agents join a namespace with `nsenter -n`,
//! so an agent can die and restart without the link going away.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use crate::tool::run;
use crate::wait::{self, wait_for};

/// The root namespace's address on server `i`'s link.
pub fn root_side(i: usize) -> String {
    format!("10.99.0.{}", 4 * i + 1)
}

/// Server `i`'s address.
pub fn server_side(i: usize) -> String {
    format!("10.99.0.{}", 4 * i + 2)
}

/// The root end of server `i`'s veth pair.
fn link(i: usize) -> String {
    format!("vh{i}")
}

/// A process in a new network namespace; the namespace lives as long as
/// it does.
pub fn spawn_holder() -> Result<Child> {
    let holder = Command::new("unshare")
        .args(["-n", "sleep", "100000"])
        .stdin(Stdio::null())
        .spawn()
        .context("unshare -n sleep")?;
    let pid = holder.id();
    // unshare(2) happens after fork: wait until the process really has its
    // own namespace, or the link would be "moved" into the root one.
    wait_for("a new network namespace", wait::secs(5), || {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
        Ok(theirs != std::fs::read_link("/proc/self/ns/net")?)
    })?;
    Ok(holder)
}

/// Links the namespace of process `pid` to the root namespace as server
/// `i`: a veth pair, addresses, routes.
pub fn link_up(i: usize, pid: u32) -> Result<()> {
    let (host, srv, vh) = (root_side(i), server_side(i), link(i));
    // A pair left by an earlier scenario would make the add fail.
    if Path::new(&format!("/sys/class/net/{vh}")).exists() {
        run("ip", &["link", "del", &vh])?;
    }
    let vp = format!("vp{i}");
    run(
        "ip",
        &["link", "add", &vh, "type", "veth", "peer", "name", &vp],
    )?;
    // busybox ignores the peer name: find the peer by the ifindex the root
    // end links to.
    let idx = std::fs::read_to_string(format!("/sys/class/net/{vh}/iflink"))?;
    let mut peer = None;
    for e in std::fs::read_dir("/sys/class/net")? {
        let e = e?;
        if std::fs::read_to_string(e.path().join("ifindex"))?.trim() == idx.trim() {
            peer = Some(e.file_name().to_string_lossy().into_owned());
        }
    }
    let peer = peer.with_context(|| format!("cannot find the veth peer of {vh}"))?;
    let pid = pid.to_string();
    run("ip", &["link", "set", &peer, "netns", &pid])?;
    run("ip", &["addr", "add", &format!("{host}/30"), "dev", &vh])?;
    run("ip", &["link", "set", &vh, "up"])?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n").context("enable forwarding")?;
    let script = format!(
        "ip link set lo up && ip link set {peer} name eth0 && ip addr add {srv}/30 dev eth0 \
         && ip link set eth0 up && ip route add default via {host}"
    );
    run("nsenter", &["-t", &pid, "-n", "sh", "-c", &script])
        .with_context(|| format!("configure the network of s{i}"))
}

/// Takes server `i`'s link down (silence, not a reset) or back up.
pub fn set_link(i: usize, up: bool) -> Result<()> {
    run(
        "ip",
        &["link", "set", &link(i), if up { "up" } else { "down" }],
    )
}

/// Deletes every pair's root end. A dead namespace's veth pairs are
/// destroyed asynchronously (in a kernel workqueue): deleting them now lets
/// the next scenario create `vhN` again at once.
pub fn delete_links() {
    let Ok(d) = std::fs::read_dir("/sys/class/net") else {
        return;
    };
    for e in d.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("vh") {
            let _ = Command::new("ip").args(["link", "del", &name]).output();
        }
    }
}
