//! Device names: every device we create is `vsky-…`, derived from the
//! volume name so that a restarted agent finds (and teardown removes) exactly
//! the devices of one volume.
//!
//! Device-mapper names are one namespace for the whole kernel. An agent run
//! with another name prefix ([`set_name_prefix`], e.g. `vskyp-…`) neither
//! sees nor touches the default agent's devices, nor they its own: that is
//! how the VM lab runs two heads in one kernel (a live migration, a
//! partitioned head). In production every host runs one agent with the
//! default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use devicemapper::DmName;

use super::{DmError, Result};

/// The default name prefix: devices `vsky-…`.
pub const DEFAULT_NAME_PREFIX: &str = "vsky";
/// Prefix of the DM UUIDs we set (followed by the full name), so tools can
/// tell our devices apart.
pub(super) const UUID_PREFIX: &str = "VSKY-";
/// DM_NAME_LEN is 128 including the NUL; leave room for our suffixes.
const NAME_MAX_BYTES: usize = 127;
/// A prefix is this many bytes at most: volume names (64) and our longest
/// suffixes (`+r<k>+<tag>+meta`) must still fit the kernel's 127 bytes.
const PREFIX_MAX_BYTES: usize = 8;

/// This process's prefix with its separator (`vsky-`), fixed once read.
static NAME_PREFIX: OnceLock<String> = OnceLock::new();

/// Checks a name prefix: 1-8 lowercase ASCII letters and digits, starting
/// with a letter (no separator: device names are `<prefix>-…`). Returns the
/// prefix with its separator.
pub fn check_name_prefix(prefix: &str) -> Result<String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= PREFIX_MAX_BYTES
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        return Err(DmError::InvalidName {
            name: prefix.to_string(),
            reason: "a name prefix is 1-8 lowercase ASCII letters and digits, starting with a letter",
        });
    }
    Ok(format!("{prefix}-"))
}

/// Sets this process's device name prefix. Call it once, before any device
/// name is made or parsed; afterwards (or a second time with another
/// prefix) it fails, since names already made would use the old one.
pub fn set_name_prefix(prefix: &str) -> Result<()> {
    let wanted = check_name_prefix(prefix)?;
    let set = NAME_PREFIX.get_or_init(|| wanted.clone());
    if *set != wanted {
        return Err(DmError::InvalidName {
            name: prefix.to_string(),
            reason: "the name prefix is set once, before any device name is made",
        });
    }
    Ok(())
}

/// The prefix of every device this process creates, with its separator
/// (`vsky-` unless [`set_name_prefix`] said otherwise); teardown only ever
/// touches these.
pub fn name_prefix() -> &'static str {
    NAME_PREFIX.get_or_init(|| format!("{DEFAULT_NAME_PREFIX}-"))
}

/// The prefix without its separator (`vsky`): NBD backend identifiers are
/// `<prefix>:…`.
pub fn name_prefix_word() -> &'static str {
    name_prefix().trim_end_matches('-')
}

/// A validated device-mapper device name (`vsky-…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevName(String);

impl DevName {
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let bad = |reason| {
            Err(DmError::InvalidName {
                name: name.clone(),
                reason,
            })
        };
        if !name.starts_with(name_prefix()) {
            return bad(
                "not one of this agent's devices (its names start with its name prefix, vsky- by default)",
            );
        }
        if name.len() > NAME_MAX_BYTES {
            return bad("longer than 127 bytes");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        {
            return bad("only ASCII letters, digits and - _ . + are allowed");
        }
        Ok(DevName(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The node we create: `/dev/mapper/<name>`.
    pub fn node_path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.0)
    }
    pub(super) fn dm_name(&self) -> &DmName {
        // Validated above with rules stricter than DmName's.
        DmName::new(&self.0).expect("DevName is a valid DmName")
    }
}

impl fmt::Display for DevName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A volume name as the manager gives it; device names derive from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeName(String);

impl VolumeName {
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        // The manager's names: 1-64 of [A-Za-z0-9._-]. Internal devices
        // separate name parts with '+', which volume names never contain, so
        // `vsky-a+r0` (mirror 0 of volume `a`) can never collide with the top
        // device of a volume named `a-r0` (`vsky-a-r0`). Room is left for
        // "vsky-" and "+r<k>+<tag>+meta" within the kernel's 127 bytes.
        if name.is_empty() || name.len() > 64 {
            return Err(DmError::InvalidName {
                name,
                reason: "volume names are 1-64 bytes",
            });
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(DmError::InvalidName {
                name,
                reason: "volume names use ASCII letters, digits, _, . and -",
            });
        }
        Ok(VolumeName(name))
    }
    /// The volume device, `vsky-<vol>`.
    pub fn top(&self) -> DevName {
        DevName(format!("{}{}", name_prefix(), self.0))
    }
    /// Mirrored disk `k` of the volume, `vsky-<vol>+r<k>`.
    pub fn raid(&self, k: u32) -> DevName {
        DevName(format!("{}{}+r{k}", name_prefix(), self.0))
    }

    /// Column `k` of a striped volume whose columns span several mirrored
    /// disks (a linear concatenation), `vsky-<vol>+c<k>`.
    pub fn column(&self, k: u32) -> DevName {
        DevName(format!("{}{}+c{k}", name_prefix(), self.0))
    }
    /// The thin stack of a layer of a thin volume (docs/design/snapshots.md
    /// §5.4): the pool's metadata and data linears over the layer's space
    /// (`vsky-<layer>`, the concatenation of its mirrors), the pool, and
    /// its thin device.
    pub fn thin_meta(&self) -> DevName {
        DevName(format!("{}{}+tmeta", name_prefix(), self.0))
    }
    pub fn thin_data(&self) -> DevName {
        DevName(format!("{}{}+tdata", name_prefix(), self.0))
    }
    pub fn pool(&self) -> DevName {
        DevName(format!("{}{}+pool", name_prefix(), self.0))
    }
    pub fn thin(&self) -> DevName {
        DevName(format!("{}{}+thin", name_prefix(), self.0))
    }
    /// The meta/data pair of one leg of mirror `k`. `tag` identifies the
    /// chunk (a replacement leg needs a name different from the one it
    /// replaces, since both exist during the swap).
    pub fn leg(&self, k: u32, tag: &str) -> Result<LegNames> {
        if tag.is_empty()
            || tag.len() > 40
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.".contains(&b))
        {
            return Err(DmError::InvalidName {
                name: tag.to_string(),
                reason: "leg tags are 1-40 ASCII letters, digits, _ or .",
            });
        }
        let base = format!("{}{}+r{k}+{tag}", name_prefix(), self.0);
        Ok(LegNames {
            meta: DevName::new(format!("{base}+meta"))?,
            data: DevName::new(format!("{base}+data"))?,
        })
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Names of a leg's two linear devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegNames {
    pub meta: DevName,
    pub data: DevName,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are validated and derived consistently.
    #[test]
    fn names() {
        let v = VolumeName::new("vm42.disk0").unwrap();
        assert_eq!(v.top().as_str(), "vsky-vm42.disk0");
        assert_eq!(v.raid(1).as_str(), "vsky-vm42.disk0+r1");
        let l = v.leg(1, "c17").unwrap();
        assert_eq!(l.meta.as_str(), "vsky-vm42.disk0+r1+c17+meta");
        assert_eq!(l.data.as_str(), "vsky-vm42.disk0+r1+c17+data");
        // Dashes are allowed in volume names and cannot collide with parts.
        let dashed = VolumeName::new("a-r0").unwrap();
        assert_ne!(dashed.top(), VolumeName::new("a").unwrap().raid(0));
        let layer = VolumeName::new("_L1f").unwrap();
        assert_eq!(layer.thin_meta().as_str(), "vsky-_L1f+tmeta");
        assert_eq!(layer.thin_data().as_str(), "vsky-_L1f+tdata");
        assert_eq!(layer.pool().as_str(), "vsky-_L1f+pool");
        assert_eq!(layer.thin().as_str(), "vsky-_L1f+thin");
        assert!(VolumeName::new("a+b").is_err());
        assert!(VolumeName::new("").is_err());
        assert!(VolumeName::new("x".repeat(65)).is_err());
        assert!(v.leg(0, "bad tag").is_err());
        assert!(DevName::new("other").is_err());
        assert!(DevName::new("vsky-ä").is_err());
        // Not this process's prefix (the default): someone else's device.
        assert!(DevName::new("vskyp-x").is_err());
        assert_eq!(
            DevName::new("vsky-x").unwrap().node_path(),
            Path::new("/dev/mapper/vsky-x")
        );
    }

    #[test]
    fn name_prefixes_are_short_lowercase_words() {
        assert_eq!(check_name_prefix("vsky").unwrap(), "vsky-");
        assert_eq!(check_name_prefix("vskyp2").unwrap(), "vskyp2-");
        for bad in ["", "Vsky", "2vsky", "vsky-", "vs:ky", "abcdefghi", "vsky+"] {
            assert!(check_name_prefix(bad).is_err(), "{bad:?} accepted");
        }
        // The default is what this process uses (no test sets another:
        // the prefix is process-wide).
        assert_eq!(name_prefix(), "vsky-");
        assert_eq!(name_prefix_word(), "vsky");
        assert!(set_name_prefix("vsky").is_ok());
        assert!(set_name_prefix("vskyp").is_err());
    }
}
