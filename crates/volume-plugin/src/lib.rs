//! The VastSky SMAPIv3 volume plugin: what xapi-storage-script runs for
//! SR and Volume calls of SRs of type `vastsky`.
//!
//! It is a translator. An SR is a *group* in the VastSky manager (by
//! default named `sr-<sr uuid>`); a VDI is a mirrored volume in that group,
//! keyed by a fresh UUID; its display name, description and xapi's `keys`
//! live in the manager's volume metadata. Sizes and health come from the
//! manager. Nothing is cached on the host except the attached SRs' state
//! files ([`state`]), which let later calls turn the opaque `sr` string
//! back into a manager address and credentials.
//!
//! VDIs are thin volumes unless the SR's `provisioning` is `thick`:
//! they take chunks as they are written, and have snapshots, clones and
//! reverts ([`chains`]).
//!
//! Modules: [`config`] (device-config keys, validation), [`state`] (SR
//! state files), [`manager`] (REST calls and error mapping), [`calls`]
//! (one function per SMAPIv3 call, and the call table), [`chains`]
//! (snapshot, clone, revert), [`context`] (the SR and volume a call
//! names, the volume record).
//!
//! Not implemented, because the manager cannot do them: Volume.copy,
//! compose, CBT, read-only activation (backups of snapshots) and sharable
//! volumes. Their executables are not installed, Query does not declare
//! them, and a direct invocation answers `Unimplemented`.

pub mod calls;
pub mod chains;
pub mod config;
pub mod context;
pub mod manager;
pub mod state;

use smapi::runner::Plugin;

/// The SR type admins pass to `xe sr-create type=…`; the install folder is
/// `org.xen.xapi.storage.<PLUGIN_NAME>`.
pub const PLUGIN_NAME: &str = "vastsky";

pub const PLUGIN: Plugin = Plugin {
    binary: "vsky-volume-plugin",
    calls: calls::CALLS,
    help: HELP,
};

const HELP: &str = "\
vsky-volume-plugin: the VastSky SMAPIv3 volume plugin (SR type 'vastsky').

xapi-storage-script runs it through per-call symlinks in
/usr/libexec/xapi-storage-script/volume/org.xen.xapi.storage.vastsky/
(installed by scripts/install-plugins), with the argument --json and the
call's named arguments as one JSON object on stdin. For debugging:

  echo '{\"dbg\":\"t\"}' | vsky-volume-plugin Plugin.Query --json
  vsky-volume-plugin --list-calls

Exit status 0: the result JSON on stdout. Exit status 1: the SMAPIv3 error
object {\"code\",\"params\",\"backtrace\"} on stdout.

Environment:
  VSKY_SR_STATE_DIR   where attached SRs' state files live
                      (default /var/lib/vsky/sr)

SR device-config keys: see Plugin.Query's 'configuration' or the README.";
