//! The VastSky SMAPIv3 datapath plugin (folder and URI scheme `vsky`):
//! turns a volume URI `vsky://<group>/<volume>` into the dom0 block device
//! `/dev/mapper/vsky-<volume>` by asking the local `vsky-agent`.
//!
//! Semantics, chosen for how xapi really sequences the calls:
//!
//! - `open` / `close`: `open` only checks its arguments (persistent disks
//!   only: we do not declare NONPERSISTENT, so xapi calls `open` only for
//!   persistent ones, if at all). `close` names no domain: it releases the
//!   volume only if no domain on this host still holds an activation
//!   (`{"if_unused": true}` to the agent), so that no device is left behind
//!   and none is pulled from under another domain.
//! - `attach` claims nothing: it answers the deterministic device path as
//!   `XenDisk` (blkback, backend_type `vbd`) followed by `BlockDevice`.
//!   During a live migration xapi attaches on the destination while the
//!   source still runs the VM, so attach must not touch the volume.
//! - `activate` assembles the volume here through the agent, which attaches
//!   it in the manager first, and records the activation under its
//!   `domain`. The manager allows one head per volume, so a volume active
//!   on another host fails with `Activated_on_another_host`; a migration
//!   deactivates on the source before activating here. Several domains of
//!   this host (a VM and a dom0 reader) share the one device.
//! - `activate_readonly` (xapi calls it for a disk attached read-only,
//!   since the volume plugin declares VDI_ACTIVATE_READONLY) does the same
//!   for a read-only activation: a snapshot is read on any number of hosts
//!   at once (a backup reads it while the VM runs elsewhere), every layer
//!   read-only; any other volume is attached here alone, as by `activate`.
//! - `deactivate` ends its domain's activation; with the last one, the
//!   agent tears the device down and releases the volume in the manager.
//!   xapi calls it twice on VM shutdown (VBD unplug, then DP.destroy): the
//!   second call finds nothing to do and succeeds.
//! - `detach` does what `deactivate` does, so that whatever the path
//!   through xapi's error handling, no device is left behind. A volume
//!   held by another host is not touched: that is not this host's device.
//!
//! Every call is idempotent. The agent's URL and token come from a small
//! config file ([`config`]).

pub mod calls;
pub mod config;
pub mod uri;

use smapi::runner::Plugin;

pub const PLUGIN: Plugin = Plugin {
    binary: "vsky-datapath-plugin",
    calls: calls::CALLS,
    help: HELP,
};

const HELP: &str = "\
vsky-datapath-plugin: the VastSky SMAPIv3 datapath plugin (URI scheme 'vsky').

xapi-storage-script runs it through per-call symlinks in
/usr/libexec/xapi-storage-script/datapath/vsky/ (installed by
scripts/install-plugins), with the argument --json and the call's named
arguments as one JSON object on stdin. For debugging:

  echo '{\"dbg\":\"t\",\"uri\":\"vsky://sr-x/vol\",\"domain\":\"0\"}' | vsky-datapath-plugin Datapath.attach --json
  vsky-datapath-plugin --list-calls

Configuration: /etc/vsky/datapath.json (or the file named by
VSKY_DATAPATH_CONFIG):
  {\"agent_url\": \"http://127.0.0.1:10810\",
   \"token_file\": \"/etc/vsky/agent-api.token\"}
token_file holds the token the local vsky-agent was given with
--api-token-file.";
