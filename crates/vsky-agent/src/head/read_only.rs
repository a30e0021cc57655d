//! Snapshots read on this host (read-only attachments,
//! docs/design/snapshots.md §5.5.3): every layer of the chain in base form
//! (`chain.rs`), and the device users get, read-only.

use vsky_kernel::dm::{Device, Sectors, TableMode, Target, TargetLine, VolumeName};

use super::{Assembly, Head, HeadError, SECTOR};

impl Head {
    /// The device of a snapshot read here (docs/design/snapshots.md §5.5.3):
    /// read-only, see [`read_only_lines`].
    pub(super) fn read_only_device(
        &mut self,
        handle: &VolumeName,
        below: Option<(Device, Sectors)>,
        len: Sectors,
        mut assembly: Assembly,
    ) -> Result<Assembly, HeadError> {
        let device = self.dp.ensure_device_mode(
            &handle.top(),
            &read_only_lines(below, len),
            TableMode::ReadOnly,
        )?;
        assembly.device = device.path;
        assembly.size_bytes = *len * SECTOR;
        Ok(assembly)
    }
}

/// The table of a snapshot's device, `len` long: a linear over the thin
/// device of the highest layer that has one (layers nobody wrote have
/// none), and dm-zero past its end, as dm-thin reads past a shorter
/// external origin; all dm-zero when no layer was ever written.
fn read_only_lines(below: Option<(Device, Sectors)>, len: Sectors) -> Vec<TargetLine> {
    let mapped = below.map_or(Sectors(0), |(_, l)| Sectors((*l).min(*len)));
    let mut lines = Vec::with_capacity(2);
    if let Some((thin, _)) = below.filter(|_| *mapped > 0) {
        lines.push(TargetLine {
            start: Sectors(0),
            len: mapped,
            target: Target::Linear {
                dev: thin,
                offset: Sectors(0),
            },
        });
    }
    if *mapped < *len {
        lines.push(TargetLine {
            start: mapped,
            len: Sectors(*len - *mapped),
            target: Target::Zero,
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(minor: u32) -> Device {
        Device { major: 253, minor }
    }

    #[test]
    fn a_snapshot_reads_its_highest_thin_device_then_zeros() {
        let len = Sectors(1000);
        let lines = read_only_lines(Some((dev(7), len)), len);
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].target,
            Target::Linear {
                dev: dev(7),
                offset: Sectors(0)
            }
        );
        assert_eq!(lines[0].len, len);
        // A shorter layer below (the volume grew after it froze): zeros
        // past its end, as dm-thin reads past a shorter origin.
        let lines = read_only_lines(Some((dev(7), Sectors(600))), len);
        assert_eq!(
            lines
                .iter()
                .map(|l| (*l.start, *l.len, l.target.target_type()))
                .collect::<Vec<_>>(),
            [(0, 600, "linear"), (600, 400, "zero")]
        );
        // A longer one maps only the snapshot's length.
        let lines = read_only_lines(Some((dev(7), Sectors(4000))), len);
        assert_eq!(lines.len(), 1);
        assert_eq!(*lines[0].len, 1000);
        // Nothing ever written: all zeros.
        let lines = read_only_lines(None, len);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].target, Target::Zero);
        assert_eq!(lines[0].target.params(), "");
    }
}
