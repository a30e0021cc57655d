//! The kernel floor of the device-mapper side (docs/kernel-floor.md, B1,
//! B2, B10): what the head needs from the DM ioctl interface and from the
//! dm-raid target, decided from what the kernel reports. The head decides
//! at start-up, so that an unsuitable kernel stops the agent with a clear
//! error before it serves anything, never at attach time. Pure;
//! `Datapath::check_kernel` does the ioctls and feeds [`decide_dm_support`].

use std::fmt;

use super::DmError;
use super::table::RaidTableReadback;

/// A device-mapper target's version, as DM_LIST_VERSIONS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TargetVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl TargetVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        TargetVersion {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for TargetVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The DM ioctl interface major we speak. The `devicemapper` crate sends
/// 4.x headers, and the kernel refuses any request whose major differs.
pub const DM_INTERFACE_MAJOR: u32 = 4;

/// The oldest raid target the head accepts: the one Linux 4.19.0 ships
/// (XCP-ng 8.x dom0). Nothing older was read; reshaping and moving legs
/// (B9) need ≥ 1.9.0, `- -` on the table line 1.9.2.
pub const RAID_MIN: TargetVersion = TargetVersion::new(1, 14, 0);

/// The first raid target that prints a table carrying `rebuild` back with
/// the right `#raid_params` and index (Linux 5.6, B10).
pub const RAID_EXACT_TABLE: TargetVersion = TargetVersion::new(1, 15, 1);

/// What the kernel's device-mapper offers the head, once accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmSupport {
    /// The DM ioctl interface (major, minor, patch).
    pub interface: (u32, u32, u32),
    /// The loaded `raid` target (dm-raid).
    pub raid: TargetVersion,
    /// How far a raid table read back from this kernel can be trusted.
    pub readback: RaidTableReadback,
}

/// Decides whether the head can run on a kernel (release `kernel`, for the
/// message) whose DM interface is `interface` and whose loaded targets are
/// `targets` (name, major, minor, patch), as DM_VERSION and
/// DM_LIST_VERSIONS report them. The refusal names the kernel and says what
/// to do.
pub fn decide_dm_support(
    kernel: &str,
    interface: (u32, u32, u32),
    targets: &[(String, u32, u32, u32)],
) -> Result<DmSupport, DmError> {
    let refuse = |reason: String| {
        Err(DmError::Unsupported {
            kernel: kernel.to_string(),
            reason,
        })
    };
    let (major, minor, patch) = interface;
    if major != DM_INTERFACE_MAJOR {
        return refuse(format!(
            "its device-mapper ioctl interface is {major}.{minor}.{patch}, the head speaks \
             version {DM_INTERFACE_MAJOR} (every Linux since 2.6); run the head on a standard \
             Linux kernel, or run this agent with --storage-only"
        ));
    }
    let Some(&(_, a, b, c)) = targets.iter().find(|(name, ..)| name == "raid") else {
        return refuse(
            "it has no dm-raid target (\"raid\" is not among the loaded device-mapper \
             targets, and loading the dm-raid module failed): install the kernel's dm-raid \
             and raid1 modules and run `modprobe dm-raid`, or run this agent with \
             --storage-only"
                .into(),
        );
    };
    let raid = TargetVersion::new(a, b, c);
    if raid < RAID_MIN {
        return refuse(format!(
            "its dm-raid target is {raid}, older than {RAID_MIN} (Linux 4.19), the oldest the \
             head was checked against; run the head on Linux 4.19 or newer, or run this agent \
             with --storage-only"
        ));
    }
    Ok(DmSupport {
        interface,
        raid,
        readback: if raid >= RAID_EXACT_TABLE {
            RaidTableReadback::Exact
        } else {
            RaidTableReadback::UntrustedRebuild
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(raid: Option<(u32, u32, u32)>) -> Vec<(String, u32, u32, u32)> {
        let mut t = vec![
            ("striped".to_string(), 1, 6, 0),
            ("linear".to_string(), 1, 4, 0),
        ];
        if let Some((a, b, c)) = raid {
            t.push(("raid".to_string(), a, b, c));
        }
        t
    }

    /// XCP-ng's 4.19 (interface 4.39.0, raid 1.14.0) is accepted with the
    /// readback that distrusts `rebuild`; the lab's 6.1 (raid 1.15.1) with
    /// the exact one.
    #[test]
    fn the_4_19_and_6_1_kernels_are_accepted() {
        let xcp = decide_dm_support("4.19.0+1", (4, 39, 0), &targets(Some((1, 14, 0)))).unwrap();
        assert_eq!(xcp.raid, TargetVersion::new(1, 14, 0));
        assert_eq!(xcp.readback, RaidTableReadback::UntrustedRebuild);
        let lab =
            decide_dm_support("6.1.0-28-amd64", (4, 47, 0), &targets(Some((1, 15, 1)))).unwrap();
        assert_eq!(lab.readback, RaidTableReadback::Exact);
        // 1.15.0 still has the miscount; 2.0.0 is newer than 1.15.1.
        let v = |a, b, c| {
            decide_dm_support("k", (4, 39, 0), &targets(Some((a, b, c))))
                .unwrap()
                .readback
        };
        assert_eq!(v(1, 15, 0), RaidTableReadback::UntrustedRebuild);
        assert_eq!(v(2, 0, 0), RaidTableReadback::Exact);
    }

    /// Another interface major, no raid target, or one older than 4.19's
    /// are refused, naming the kernel and what to do.
    #[test]
    fn unsuitable_kernels_are_refused_with_what_to_do() {
        let msg = |r: Result<DmSupport, DmError>| r.unwrap_err().to_string();
        let other = msg(decide_dm_support(
            "9.0-x",
            (5, 0, 0),
            &targets(Some((1, 15, 1))),
        ));
        assert!(
            other.contains("9.0-x") && other.contains("5.0.0") && other.contains("--storage-only"),
            "{other}"
        );
        let none = msg(decide_dm_support("4.19.19", (4, 39, 0), &targets(None)));
        assert!(
            none.contains("4.19.19") && none.contains("modprobe dm-raid"),
            "{none}"
        );
        let old = msg(decide_dm_support(
            "4.14.1",
            (4, 37, 0),
            &targets(Some((1, 13, 2))),
        ));
        assert!(
            old.contains("1.13.2") && old.contains("1.14.0") && old.contains("--storage-only"),
            "{old}"
        );
    }
}
