//! What can be wrong with a metadata device, as a typed error.
//!
//! Every way the reader refuses its input has a variant of its own, named
//! after what was found, with the block number where it was found. The
//! caller (the fold) treats them all alike, as "this block map cannot be
//! trusted", but an operator reading an event needs to tell a device that
//! was never formatted from a checksum failure or an I/O error.

use std::fmt;
use std::io;

use crate::checksum::BlockKind;

/// The result of every fallible call of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which btree a tree error was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    /// The device details tree: thin device id → its details.
    Details,
    /// The top level of the mapping tree: thin device id → the root of that
    /// device's own mapping tree.
    Devices,
    /// One thin device's mapping tree: virtual block → data block and time.
    Mappings {
        /// The thin device.
        dev: u64,
    },
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tree::Details => f.write_str("the device details tree"),
            Tree::Devices => f.write_str("the top level of the mapping tree"),
            Tree::Mappings { dev } => write!(f, "the mapping tree of thin device {dev}"),
        }
    }
}

/// Why a btree node was refused, though its checksum was right.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeProblem {
    /// Neither or both of the INTERNAL (1) and LEAF (2) flags are set.
    #[error("flags {flags:#x} make it neither exactly a leaf nor exactly an internal node")]
    NotLeafOrInternal {
        /// The node's flags.
        flags: u32,
    },
    /// More entries than the node has room for.
    #[error("it has {nr_entries} entries, more than its max_entries {max_entries}")]
    TooManyEntries {
        /// Entries the node says it holds.
        nr_entries: u32,
        /// Entries the node says it has room for.
        max_entries: u32,
    },
    /// `max_entries` keys and values do not fit in a block.
    #[error(
        "{max_entries} entries of 8-byte keys and {value_size}-byte values do not fit in a block"
    )]
    DoesNotFit {
        /// Entries the node says it has room for.
        max_entries: u32,
        /// The size of one value.
        value_size: u32,
    },
    /// The values are not the size this tree's values have.
    #[error("its values are {value_size} bytes, not {expected}")]
    WrongValueSize {
        /// The node's value size.
        value_size: u32,
        /// The size this tree and this kind of node need.
        expected: u32,
    },
    /// A key is not greater than the key before it.
    #[error("key {index} ({key}) is not above the key before it")]
    KeysNotAscending {
        /// The position of the key in the node.
        index: u32,
        /// The key.
        key: u64,
    },
    /// An internal node with no children (the kernel never writes one).
    #[error("it is an internal node with no entries")]
    EmptyInternal,
}

/// Why the metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block source failed.
    #[error("reading metadata block {block}: {error}")]
    Io {
        /// The block being read.
        block: u64,
        /// What the source said.
        #[source]
        error: io::Error,
    },
    /// The source holds less than one block, so no superblock.
    #[error("the metadata device is shorter than one 4096-byte block")]
    Empty,
    /// Block 0 is all zeros: dm-thin formats the metadata only when a pool
    /// is first loaded read-write, so this pool never held anything.
    #[error("the metadata was never formatted (block 0 is all zeros)")]
    Unformatted,
    /// Block 0 is not a dm-thin superblock.
    #[error("no thin-pool superblock: magic {found}, not 27022010")]
    BadMagic {
        /// The magic number found.
        found: u64,
    },
    /// A block's checksum does not match its contents.
    #[error(
        "bad checksum at block {block} ({kind}): it records {stored:#010x}, its contents give {computed:#010x}"
    )]
    BadChecksum {
        /// The block.
        block: u64,
        /// What the block was read as.
        kind: BlockKind,
        /// The checksum the block carries.
        stored: u32,
        /// The checksum of its contents.
        computed: u32,
    },
    /// A block records another location than the one it was read from.
    #[error("block {block} ({kind}) records that it is block {recorded}")]
    WrongLocation {
        /// The block read.
        block: u64,
        /// What the block was read as.
        kind: BlockKind,
        /// The block number it records.
        recorded: u64,
    },
    /// A metadata format version this parser was not written for.
    #[error("unsupported metadata version {version} (this parser reads versions 1 and 2)")]
    UnsupportedVersion {
        /// The superblock's version.
        version: u32,
    },
    /// Incompatible feature flags, which no kernel this parser knows sets.
    #[error("unsupported incompatible metadata features {incompat_flags:#x}")]
    UnsupportedFeatures {
        /// The superblock's `incompat_flags`.
        incompat_flags: u32,
    },
    /// The kernel found the metadata damaged and wants `thin_check` run.
    #[error(
        "the superblock's needs_check flag is set: the pool must be checked (thin_check) before its metadata is trusted"
    )]
    NeedsCheck,
    /// Metadata blocks of another size than 4 KiB.
    #[error("metadata blocks of {sectors} sectors, not 8 (4096 bytes)")]
    BadMetadataBlockSize {
        /// The superblock's `metadata_block_size`.
        sectors: u32,
    },
    /// A data block size dm-thin does not allow.
    #[error(
        "a data block size of {sectors} sectors, which dm-thin does not allow (a multiple of 128 up to 2097152)"
    )]
    BadDataBlockSize {
        /// The superblock's `data_block_size`.
        sectors: u32,
    },
    /// A btree node whose contents are impossible.
    #[error("{tree}: btree node at block {block}: {problem}")]
    BadNode {
        /// The tree the node was reached in.
        tree: Tree,
        /// The node's block.
        block: u64,
        /// What is wrong with it.
        problem: NodeProblem,
    },
    /// A pointer to a block past the end of the metadata.
    #[error("{tree}: block {block} is past the end of the metadata ({end} blocks)")]
    BlockPastEnd {
        /// The tree that points there.
        tree: Tree,
        /// The block pointed to.
        block: u64,
        /// The number of metadata blocks.
        end: u64,
    },
    /// A block reached twice in one walk of one tree: a cycle, or two
    /// parents of one node.
    #[error("{tree}: block {block} is reached twice (a cycle or a node with two parents)")]
    BlockVisitedTwice {
        /// The tree walked.
        tree: Tree,
        /// The block reached twice.
        block: u64,
    },
    /// A tree deeper than any the kernel writes.
    #[error("{tree} is deeper than {max} levels, deeper than any valid one")]
    TooDeep {
        /// The tree walked.
        tree: Tree,
        /// The deepest tree accepted.
        max: usize,
    },
    /// A key outside the range its parent gives its subtree.
    #[error(
        "{tree}: key {key} in the node at block {block} is outside its parent's range {low}..{high}"
    )]
    KeyOutsideParent {
        /// The tree walked.
        tree: Tree,
        /// The node holding the key.
        block: u64,
        /// The key.
        key: u64,
        /// The lowest key the parent allows.
        low: u64,
        /// The key the parent's next child starts at ("end" when none).
        high: KeyBound,
    },
    /// No thin device has this id.
    #[error("unknown thin device id {dev}")]
    UnknownDevice {
        /// The id asked for.
        dev: u64,
    },
    /// A thin device listed in one of the two device trees but not in the
    /// other.
    #[error("thin device {dev} is in {present} but not in {missing}")]
    DeviceTreesDisagree {
        /// The device.
        dev: u64,
        /// The tree that lists it.
        present: Tree,
        /// The tree that does not.
        missing: Tree,
    },
    /// A device's details count another number of mappings than its tree
    /// holds.
    #[error(
        "thin device {dev} records {recorded} mapped blocks, but its mapping tree holds {found}"
    )]
    MappedBlocksMismatch {
        /// The device.
        dev: u64,
        /// `mapped_blocks` in its details.
        recorded: u64,
        /// Mappings found in its tree.
        found: u64,
    },
    /// A mapping to a data block the pool does not have.
    #[error(
        "thin device {dev} maps virtual block {virtual_block} to data block {data_block}, past the pool's {data_blocks} data blocks"
    )]
    DataBlockPastEnd {
        /// The device.
        dev: u64,
        /// The virtual block.
        virtual_block: u64,
        /// The data block it maps to.
        data_block: u64,
        /// The pool's data blocks.
        data_blocks: u64,
    },
}

/// The upper end of a key range: a key, or no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyBound {
    /// Keys must be below this one.
    Below(u64),
    /// Any key above the low end.
    End,
}

impl fmt::Display for KeyBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyBound::Below(key) => write!(f, "{key}"),
            KeyBound::End => f.write_str("end"),
        }
    }
}

impl KeyBound {
    /// Whether `key` is below this bound.
    pub(crate) fn admits(self, key: u64) -> bool {
        match self {
            KeyBound::Below(high) => key < high,
            KeyBound::End => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_block_and_the_tree() {
        let err = Error::BadNode {
            tree: Tree::Mappings { dev: 3 },
            block: 17,
            problem: NodeProblem::TooManyEntries {
                nr_entries: 300,
                max_entries: 126,
            },
        };
        assert_eq!(
            err.to_string(),
            "the mapping tree of thin device 3: btree node at block 17: \
             it has 300 entries, more than its max_entries 126"
        );
        let err = Error::BadChecksum {
            block: 9,
            kind: BlockKind::BtreeNode,
            stored: 1,
            computed: 2,
        };
        assert!(
            err.to_string()
                .starts_with("bad checksum at block 9 (btree node)")
        );
        let err = Error::KeyOutsideParent {
            tree: Tree::Devices,
            block: 4,
            key: 1,
            low: 2,
            high: KeyBound::End,
        };
        assert!(err.to_string().ends_with("range 2..end"));
    }
}
