//! Bounded reads: the one way the parser reads a block.
//!
//! Every block number the parser follows comes from the bytes it reads,
//! so each is checked against the end of the metadata before the source
//! is asked: the source's size, and once the superblock is read, the
//! smaller of that and the size the superblock records (the metadata
//! space map's). A failed read becomes [`Error::Io`] with the block
//! number. Blocks are read into one buffer, reused.

use crate::block::{BLOCK_SIZE, Block, BlockSource};
use crate::error::{Error, Result, Tree};

/// The parser's view of its source.
pub(crate) struct Blocks<S> {
    source: S,
    end: u64,
    buf: Box<Block>,
}

impl<S: BlockSource> Blocks<S> {
    /// Reads from `source`, as far as its end.
    pub(crate) fn new(source: S) -> Self {
        let end = source.nr_blocks();
        Blocks {
            source,
            end,
            buf: Box::new([0u8; BLOCK_SIZE]),
        }
    }

    /// Reads no block at `end` or past it from now on.
    pub(crate) fn limit(&mut self, end: u64) {
        self.end = self.end.min(end);
    }

    /// The first block past the end.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Reads block `index`, which `tree` points to.
    pub(crate) fn read(&mut self, tree: Tree, index: u64) -> Result<&Block> {
        if index >= self.end {
            return Err(Error::BlockPastEnd {
                tree,
                block: index,
                end: self.end,
            });
        }
        self.read_unchecked(index)
    }

    /// Reads block `index`, which is below the end.
    pub(crate) fn read_unchecked(&mut self, index: u64) -> Result<&Block> {
        self.source
            .read_block(index, &mut self.buf)
            .map_err(|error| Error::Io {
                block: index,
                error,
            })?;
        Ok(&self.buf)
    }

    /// Gives the source back.
    pub(crate) fn into_source(self) -> S {
        self.source
    }
}
