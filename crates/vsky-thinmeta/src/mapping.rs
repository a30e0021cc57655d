//! A thin device's block map: its mappings and the runs they form.
//!
//! Each leaf value of a device's mapping tree is a `u64` whose high 40 bits
//! are the data block and low 24 bits the pool time the mapping was made
//! at (`pack_block_time` in `dm-thin-metadata.c`). The key is the virtual
//! block. Since a walk gives the keys in ascending order, runs are built as
//! the mappings arrive, in constant memory per run.

/// The value of a leaf of a device's mapping tree.
pub(crate) const MAPPING_VALUE_SIZE: u32 = 8;

/// Bits of a mapping value that hold the time.
const TIME_BITS: u32 = 24;

/// One mapped virtual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The block of the thin device.
    pub virtual_block: u64,
    /// The pool's data block it maps to.
    pub data_block: u64,
    /// The pool time when the mapping was made (24 bits).
    pub time: u32,
}

impl Mapping {
    /// Unpacks the mapping of `virtual_block` from its tree value.
    pub(crate) fn unpack(virtual_block: u64, value: u64) -> Mapping {
        Mapping {
            virtual_block,
            data_block: value >> TIME_BITS,
            time: (value & ((1 << TIME_BITS) - 1)) as u32,
        }
    }
}

/// Consecutive virtual blocks mapped to consecutive data blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The first virtual block.
    pub virtual_begin: u64,
    /// The data block the first virtual block maps to.
    pub data_begin: u64,
    /// The number of blocks, at least 1.
    pub len: u64,
}

/// Consecutive mapped virtual blocks, wherever their data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedRun {
    /// The first virtual block.
    pub virtual_begin: u64,
    /// The number of blocks, at least 1.
    pub len: u64,
}

/// Whether `next` extends a run that ends with virtual block `last`.
fn follows(last_virtual: u64, next_virtual: u64) -> bool {
    last_virtual.checked_add(1) == Some(next_virtual)
}

/// Appends `mapping`, which is above every mapping already in `runs`, to
/// the runs of virtual and data blocks.
pub(crate) fn push_run(runs: &mut Vec<Run>, mapping: Mapping) {
    if let Some(run) = runs.last_mut() {
        let last_virtual = run.virtual_begin + (run.len - 1);
        let last_data = run.data_begin + (run.len - 1);
        if follows(last_virtual, mapping.virtual_block) && follows(last_data, mapping.data_block) {
            run.len += 1;
            return;
        }
    }
    runs.push(Run {
        virtual_begin: mapping.virtual_block,
        data_begin: mapping.data_block,
        len: 1,
    });
}

/// Appends `virtual_block`, which is above every block already in `runs`,
/// to the runs of mapped virtual blocks.
pub(crate) fn push_mapped(runs: &mut Vec<MappedRun>, virtual_block: u64) {
    if let Some(run) = runs.last_mut()
        && follows(run.virtual_begin + (run.len - 1), virtual_block)
    {
        run.len += 1;
        return;
    }
    runs.push(MappedRun {
        virtual_begin: virtual_block,
        len: 1,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(virtual_block: u64, data_block: u64) -> Mapping {
        Mapping {
            virtual_block,
            data_block,
            time: 0,
        }
    }

    #[test]
    fn unpacks_block_and_time() {
        let value = (0xAB_CDEF_0123u64 << 24) | 0x45_6789;
        assert_eq!(
            Mapping::unpack(9, value),
            Mapping {
                virtual_block: 9,
                data_block: 0xAB_CDEF_0123,
                time: 0x45_6789,
            }
        );
        assert_eq!(Mapping::unpack(0, u64::MAX).data_block, (1 << 40) - 1);
        assert_eq!(Mapping::unpack(0, u64::MAX).time, (1 << 24) - 1);
    }

    #[test]
    fn runs_break_where_either_side_jumps() {
        let mut runs = Vec::new();
        let mut mapped = Vec::new();
        for m in [
            mapping(0, 10),
            mapping(1, 11),
            mapping(2, 12),
            mapping(3, 20), // data jumps
            mapping(4, 21),
            mapping(6, 22), // virtual jumps
            mapping(u64::MAX - 1, 5),
            mapping(u64::MAX, 6),
        ] {
            push_run(&mut runs, m);
            push_mapped(&mut mapped, m.virtual_block);
        }
        let run = |virtual_begin, data_begin, len| Run {
            virtual_begin,
            data_begin,
            len,
        };
        assert_eq!(
            runs,
            [
                run(0, 10, 3),
                run(3, 20, 2),
                run(6, 22, 1),
                run(u64::MAX - 1, 5, 2)
            ]
        );
        let m = |virtual_begin, len| MappedRun { virtual_begin, len };
        assert_eq!(mapped, [m(0, 5), m(6, 1), m(u64::MAX - 1, 2)]);
    }
}
