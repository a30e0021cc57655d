//! A read-only parser of a dm-thin pool's metadata: the superblock, the
//! thin devices, and each device's block map.
//!
//! **Why it exists.** A thin volume is a chain of layers, each a thin pool
//! with one thin device over its parent (docs/design/snapshots.md §5). When
//! a frozen layer `P` has a single child `Y` and nothing else needs `P` as
//! it is, `Y` is *folded* into `P` (§5.6): every block `Y` maps is copied
//! into `P` at the same offset, and `Y` goes. The fold must copy exactly
//! the blocks `Y` maps, no fewer (data would be lost) and no more (`P`
//! would grow for nothing), and it learns which those are from `Y`'s pool
//! metadata. `Y` is frozen, so its pool is loaded `read_only` and nothing
//! writes that metadata while it is read. The reference reader,
//! `thin_dump` from thin-provisioning-tools, is the cross-check in this
//! crate's tests, but XCP-ng's dom0 may not ship it, and its XML would be
//! one more format to parse; this crate reads the on-disk format directly,
//! with no dependency beyond `thiserror`.
//!
//! **Use.** Open a [`ThinMetadata`] over a [`BlockSource`] (a pool's
//! metadata device opened with `O_DIRECT`, as a [`DirectFileSource`]: a
//! buffered read may return blocks cached before the pool's last commit;
//! an image file as a [`ReadSeekSource`]; or bytes in memory), then ask for [`ThinMetadata::devices`],
//! [`ThinMetadata::mappings`] (runs of virtual → data blocks) or
//! [`ThinMetadata::mapped_runs`] (runs of mapped virtual blocks: all a
//! fold needs).
//!
//! **What it trusts, and what it does not.**
//! - It trusts the source to return the bytes on the device, and the
//!   device not to change while it is read. On a pool loaded read-write
//!   the kernel commits new trees over freed blocks at any time, so a walk
//!   could see a mix of two transactions; read only pools that are
//!   `read_only` or not loaded. (The kernel's metadata snapshot, which
//!   would allow reading a live pool, is not read: the superblock only
//!   reports where it is.)
//! - It trusts nothing in the bytes. Every block's checksum and recorded
//!   location are verified, every structure is checked as the kernel
//!   checks it and more (see `node.rs`, `btree.rs`), and a device's
//!   mapping count must equal the one its details record, as `thin_check`
//!   requires. Whatever the bytes, a call returns an answer or a typed
//!   [`Error`]: it does not panic, it reads each block at most once per
//!   tree walk (so it ends), and what it allocates is bounded by the size
//!   of the metadata.
//! - Checksums catch damage, not malice: whoever can write the metadata
//!   device can write a valid tree that maps anything.
//! - It does not read the space maps (reference counts), so it does not
//!   notice a block map that disagrees with them; `thin_check` does.
//!
//! The format: Linux `drivers/md/dm-thin-metadata.c` and
//! `drivers/md/persistent-data/` (`dm-btree*`, `dm-block-manager.c`); each
//! module's header describes the part it reads. Everything is
//! little-endian, in 4 KiB blocks.

#![forbid(unsafe_code)]

mod block;
mod btree;
mod checksum;
mod device;
mod error;
mod mapping;
mod node;
mod reader;
mod superblock;

pub use block::{BLOCK_SIZE, Block, BlockSource, DirectFileSource, ReadSeekSource};
pub use btree::MAX_DEPTH;
pub use checksum::{BlockKind, crc32c};
pub use device::ThinDevice;
pub use error::{Error, KeyBound, NodeProblem, Result, Tree};
pub use mapping::{MappedRun, Mapping, Run};
pub use superblock::{MAGIC, NEEDS_CHECK_FLAG, Superblock, VERSIONS};

use block::le64;
use device::DETAILS_SIZE;
use mapping::MAPPING_VALUE_SIZE;
use reader::Blocks;

/// The value size of the top level of the mapping tree: a device's root.
const ROOT_VALUE_SIZE: u32 = 8;

/// An open metadata device: its checked superblock, and the source to read
/// its trees from.
pub struct ThinMetadata<S> {
    blocks: Blocks<S>,
    superblock: Superblock,
}

impl<S: BlockSource> ThinMetadata<S> {
    /// Reads and checks the superblock of the metadata in `source`.
    pub fn open(source: S) -> Result<Self> {
        let mut blocks = Blocks::new(source);
        if blocks.end() == 0 {
            return Err(Error::Empty);
        }
        let superblock = Superblock::parse(blocks.read_unchecked(0)?)?;
        // Blocks past the metadata space map's end are not the pool's,
        // even if the device is longer.
        blocks.limit(superblock.metadata_blocks);
        Ok(ThinMetadata { blocks, superblock })
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    /// Every thin device of the pool, by ascending id. The two trees that
    /// list devices (the details and the top level of the mappings) must
    /// list the same ones.
    pub fn devices(&mut self) -> Result<Vec<ThinDevice>> {
        let mut devices = Vec::new();
        let root = self.superblock.details_root;
        btree::walk(
            &mut self.blocks,
            Tree::Details,
            root,
            DETAILS_SIZE,
            |id, value| {
                devices.push(ThinDevice::parse(id, value));
                Ok(())
            },
        )?;
        let missing_from_top = |dev| Error::DeviceTreesDisagree {
            dev,
            present: Tree::Details,
            missing: Tree::Devices,
        };
        let mut next = devices.iter().map(|device| device.id);
        let root = self.superblock.mapping_root;
        btree::walk(
            &mut self.blocks,
            Tree::Devices,
            root,
            ROOT_VALUE_SIZE,
            |id, _| match next.next() {
                Some(listed) if listed == id => Ok(()),
                Some(listed) if listed < id => Err(missing_from_top(listed)),
                _ => Err(Error::DeviceTreesDisagree {
                    dev: id,
                    present: Tree::Devices,
                    missing: Tree::Details,
                }),
            },
        )?;
        if let Some(dev) = next.next() {
            return Err(missing_from_top(dev));
        }
        Ok(devices)
    }

    /// Thin device `dev`'s details.
    pub fn device(&mut self, dev: u64) -> Result<ThinDevice> {
        let root = self.superblock.details_root;
        match btree::lookup(&mut self.blocks, Tree::Details, root, DETAILS_SIZE, dev)? {
            Some(value) => Ok(ThinDevice::parse(dev, &value)),
            None => Err(Error::UnknownDevice { dev }),
        }
    }

    /// Calls `visit` with each mapping of thin device `dev`, by ascending
    /// virtual block, and returns the device's details.
    ///
    /// The count of mappings is checked against the details only at the
    /// end: on an error, `visit` may have seen some mappings already, and
    /// they are not to be trusted either.
    pub fn for_each_mapping(
        &mut self,
        dev: u64,
        mut visit: impl FnMut(Mapping),
    ) -> Result<ThinDevice> {
        let device = self.device(dev)?;
        let top = self.superblock.mapping_root;
        let root = btree::lookup(&mut self.blocks, Tree::Devices, top, ROOT_VALUE_SIZE, dev)?
            .ok_or(Error::DeviceTreesDisagree {
                dev,
                present: Tree::Details,
                missing: Tree::Devices,
            })?;
        let data_blocks = self.superblock.data_blocks;
        let mut found = 0u64;
        let tree = Tree::Mappings { dev };
        btree::walk(
            &mut self.blocks,
            tree,
            le64(&root, 0),
            MAPPING_VALUE_SIZE,
            |key, value| {
                let mapping = Mapping::unpack(key, le64(value, 0));
                if mapping.data_block >= data_blocks {
                    return Err(Error::DataBlockPastEnd {
                        dev,
                        virtual_block: key,
                        data_block: mapping.data_block,
                        data_blocks,
                    });
                }
                found += 1;
                visit(mapping);
                Ok(())
            },
        )?;
        if found != device.mapped_blocks {
            return Err(Error::MappedBlocksMismatch {
                dev,
                recorded: device.mapped_blocks,
                found,
            });
        }
        Ok(device)
    }

    /// Thin device `dev`'s mappings, as runs of consecutive virtual blocks
    /// mapped to consecutive data blocks, by ascending virtual block.
    pub fn mappings(&mut self, dev: u64) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        self.for_each_mapping(dev, |mapping| mapping::push_run(&mut runs, mapping))?;
        Ok(runs)
    }

    /// The virtual blocks thin device `dev` maps, as runs of consecutive
    /// blocks, by ascending virtual block: what a fold copies.
    pub fn mapped_runs(&mut self, dev: u64) -> Result<Vec<MappedRun>> {
        let mut runs = Vec::new();
        self.for_each_mapping(dev, |mapping| {
            mapping::push_mapped(&mut runs, mapping.virtual_block)
        })?;
        Ok(runs)
    }

    /// Gives the source back.
    pub fn into_source(self) -> S {
        self.blocks.into_source()
    }
}

impl<S> std::fmt::Debug for ThinMetadata<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThinMetadata")
            .field("superblock", &self.superblock)
            .finish_non_exhaustive()
    }
}
