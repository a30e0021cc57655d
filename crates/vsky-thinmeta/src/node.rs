//! One btree node, checked.
//!
//! Every btree of persistent-data (`drivers/md/persistent-data/dm-btree*`)
//! is made of nodes that each fill one block (`struct btree_node` in
//! `dm-btree-internal.h`, little-endian):
//!
//! | bytes | field                                              |
//! |-------|----------------------------------------------------|
//! | 0     | `csum`, CRC-32C of bytes 4.. (salt 121107)          |
//! | 4     | `flags`: 1 = INTERNAL, 2 = LEAF                    |
//! | 8     | `blocknr`, the block the node lives in             |
//! | 16    | `nr_entries`                                       |
//! | 20    | `max_entries`                                      |
//! | 24    | `value_size`                                       |
//! | 28    | padding                                            |
//! | 32    | `max_entries` keys, `u64` each                     |
//! | 32 + 8 × `max_entries` | `max_entries` values of `value_size` bytes |
//!
//! Only the first `nr_entries` keys and values are in use. An internal
//! node's values are the `u64` blocks of its children (so its `value_size`
//! is 8 whatever the tree); a leaf's are the tree's values.
//!
//! [`Node::parse`] makes the kernel's checks (`node_check` in
//! `dm-btree-spine.c`: location, checksum, `max_entries` fits the block,
//! `nr_entries` ≤ `max_entries`, a leaf or an internal node) and three of
//! its own that a reader relies on: exactly one of the two flags, the value
//! size this tree and kind of node must have, and keys strictly ascending.
//! An internal node with no children is refused too: the kernel never
//! writes one, and reading it as "nothing mapped here" would lose data.

use crate::block::{BLOCK_SIZE, Block, le32, le64};
use crate::checksum::{BlockKind, block_checksum, stored_checksum};
use crate::error::{Error, NodeProblem, Result, Tree};

/// The size of a node's header.
const HEADER_SIZE: usize = 32;
/// The size of a key.
const KEY_SIZE: usize = 8;
/// `INTERNAL_NODE`.
const INTERNAL: u32 = 1;
/// `LEAF_NODE`.
const LEAF: u32 = 2;
/// The value size of internal nodes: a child's block number.
const CHILD_SIZE: u32 = 8;

/// A checked node, borrowing the block it was read from.
#[derive(Debug)]
pub(crate) struct Node<'a> {
    block: &'a Block,
    leaf: bool,
    nr_entries: u32,
    /// Where the values start.
    values_at: usize,
    value_size: usize,
}

impl<'a> Node<'a> {
    /// Checks `block`, read from block `index` of the metadata, as a node
    /// of `tree` whose leaves hold values of `leaf_value_size` bytes.
    pub(crate) fn parse(
        index: u64,
        block: &'a Block,
        tree: Tree,
        leaf_value_size: u32,
    ) -> Result<Node<'a>> {
        let bad = |problem| Error::BadNode {
            tree,
            block: index,
            problem,
        };
        let recorded = le64(block, 8);
        if recorded != index {
            return Err(Error::WrongLocation {
                block: index,
                kind: BlockKind::BtreeNode,
                recorded,
            });
        }
        let stored = stored_checksum(block);
        let computed = block_checksum(BlockKind::BtreeNode, block);
        if stored != computed {
            return Err(Error::BadChecksum {
                block: index,
                kind: BlockKind::BtreeNode,
                stored,
                computed,
            });
        }
        let flags = le32(block, 4);
        let nr_entries = le32(block, 16);
        let max_entries = le32(block, 20);
        let value_size = le32(block, 24);
        // Both fields are the block's, up to u32::MAX: the product may not
        // fit a u64, and then it certainly does not fit the block.
        let needed = (KEY_SIZE as u64 + u64::from(value_size))
            .checked_mul(u64::from(max_entries))
            .and_then(|n| n.checked_add(HEADER_SIZE as u64));
        if needed.is_none_or(|n| n > BLOCK_SIZE as u64) {
            return Err(bad(NodeProblem::DoesNotFit {
                max_entries,
                value_size,
            }));
        }
        if nr_entries > max_entries {
            return Err(bad(NodeProblem::TooManyEntries {
                nr_entries,
                max_entries,
            }));
        }
        let leaf = match flags & (INTERNAL | LEAF) {
            INTERNAL => false,
            LEAF => true,
            _ => return Err(bad(NodeProblem::NotLeafOrInternal { flags })),
        };
        let expected = if leaf { leaf_value_size } else { CHILD_SIZE };
        if value_size != expected {
            return Err(bad(NodeProblem::WrongValueSize {
                value_size,
                expected,
            }));
        }
        if !leaf && nr_entries == 0 {
            return Err(bad(NodeProblem::EmptyInternal));
        }
        // The checks above bound both by the block size.
        let node = Node {
            block,
            leaf,
            nr_entries,
            values_at: HEADER_SIZE + KEY_SIZE * max_entries as usize,
            value_size: value_size as usize,
        };
        for index in 1..nr_entries {
            let key = node.key(index);
            if key <= node.key(index - 1) {
                return Err(bad(NodeProblem::KeysNotAscending { index, key }));
            }
        }
        Ok(node)
    }

    /// Whether this is a leaf (else an internal node).
    pub(crate) fn is_leaf(&self) -> bool {
        self.leaf
    }

    /// The number of entries in use.
    pub(crate) fn nr_entries(&self) -> u32 {
        self.nr_entries
    }

    /// Key `index` (below [`Self::nr_entries`]).
    pub(crate) fn key(&self, index: u32) -> u64 {
        le64(self.block, HEADER_SIZE + KEY_SIZE * index as usize)
    }

    /// Value `index` (below [`Self::nr_entries`]).
    pub(crate) fn value(&self, index: u32) -> &'a [u8] {
        let start = self.values_at + self.value_size * index as usize;
        let value = start
            .checked_add(self.value_size)
            .and_then(|end| self.block.get(start..end));
        debug_assert!(value.is_some(), "value {index} past the block");
        value.unwrap_or(&[])
    }

    /// Value `index` read as a `u64` (a child's block in an internal node).
    pub(crate) fn value64(&self, index: u32) -> u64 {
        let value = self.value(index);
        if value.len() < 8 {
            debug_assert!(false, "value {index} is not a u64");
            return 0;
        }
        le64(value, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TREE: Tree = Tree::Mappings { dev: 1 };

    /// A node at block 5 with the given header and keys, values `key * 10`.
    fn node(flags: u32, max: u32, value_size: u32, keys: &[u64]) -> Block {
        let mut b = [0u8; BLOCK_SIZE];
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&5u64.to_le_bytes());
        b[16..20].copy_from_slice(&(keys.len() as u32).to_le_bytes());
        b[20..24].copy_from_slice(&max.to_le_bytes());
        b[24..28].copy_from_slice(&value_size.to_le_bytes());
        let values_at = 32 + 8 * max as usize;
        for (i, key) in keys.iter().enumerate() {
            b[32 + 8 * i..40 + 8 * i].copy_from_slice(&key.to_le_bytes());
            if value_size >= 8 {
                let at = values_at + value_size as usize * i;
                b[at..at + 8].copy_from_slice(&(key * 10).to_le_bytes());
            }
        }
        seal(&mut b);
        b
    }

    fn seal(b: &mut Block) {
        let csum = block_checksum(BlockKind::BtreeNode, b);
        b[0..4].copy_from_slice(&csum.to_le_bytes());
    }

    fn problem(result: Result<Node<'_>>) -> NodeProblem {
        match result {
            Err(Error::BadNode {
                block: 5,
                tree: TREE,
                problem,
            }) => problem,
            other => panic!("not a bad node: {other:?}"),
        }
    }

    #[test]
    fn reads_keys_and_values_of_a_leaf_and_an_internal_node() {
        let b = node(LEAF, 126, 24, &[1, 5, 9]);
        let leaf = Node::parse(5, &b, TREE, 24).unwrap();
        assert!(leaf.is_leaf());
        assert_eq!(leaf.nr_entries(), 3);
        assert_eq!((leaf.key(2), le64(leaf.value(2), 0)), (9, 90));
        assert_eq!(leaf.value(1).len(), 24);
        let b = node(INTERNAL, 252, 8, &[0, 100]);
        let internal = Node::parse(5, &b, TREE, 24).unwrap();
        assert!(!internal.is_leaf());
        assert_eq!(internal.value64(1), 1000);
        // The largest node that fits.
        let b = node(LEAF, 254, 8, &[]);
        assert_eq!(Node::parse(5, &b, TREE, 8).unwrap().nr_entries(), 0);
    }

    /// Header fields at their largest overflow any size computed from them
    /// (a debug build would panic): the node just does not fit.
    #[test]
    fn the_largest_header_fields_do_not_fit() {
        let mut b = [0u8; BLOCK_SIZE];
        b[4..8].copy_from_slice(&LEAF.to_le_bytes());
        b[8..16].copy_from_slice(&5u64.to_le_bytes());
        b[20..28].fill(0xff);
        seal(&mut b);
        assert_eq!(
            problem(Node::parse(5, &b, TREE, 8)),
            NodeProblem::DoesNotFit {
                max_entries: u32::MAX,
                value_size: u32::MAX,
            }
        );
    }

    #[test]
    fn refuses_broken_nodes() {
        let b = node(LEAF, 126, 8, &[1]);
        assert!(matches!(
            Node::parse(6, &b, TREE, 8),
            Err(Error::WrongLocation {
                block: 6,
                recorded: 5,
                ..
            })
        ));
        let mut c = b;
        c[40] ^= 0x80;
        assert!(matches!(
            Node::parse(5, &c, TREE, 8),
            Err(Error::BadChecksum {
                block: 5,
                kind: BlockKind::BtreeNode,
                ..
            })
        ));
        assert_eq!(
            problem(Node::parse(5, &node(LEAF, 255, 8, &[]), TREE, 8)),
            NodeProblem::DoesNotFit {
                max_entries: 255,
                value_size: 8
            }
        );
        assert_eq!(
            problem(Node::parse(5, &node(LEAF, 1, u32::MAX, &[]), TREE, 8)),
            NodeProblem::DoesNotFit {
                max_entries: 1,
                value_size: u32::MAX
            }
        );
        let mut c = node(LEAF, 2, 8, &[1, 2]);
        c[16..20].copy_from_slice(&3u32.to_le_bytes());
        seal(&mut c);
        assert_eq!(
            problem(Node::parse(5, &c, TREE, 8)),
            NodeProblem::TooManyEntries {
                nr_entries: 3,
                max_entries: 2
            }
        );
        for flags in [0, 3, 4] {
            assert_eq!(
                problem(Node::parse(5, &node(flags, 10, 8, &[1]), TREE, 8)),
                NodeProblem::NotLeafOrInternal { flags }
            );
        }
        assert_eq!(
            problem(Node::parse(5, &node(LEAF, 10, 8, &[1]), TREE, 24)),
            NodeProblem::WrongValueSize {
                value_size: 8,
                expected: 24
            }
        );
        assert_eq!(
            problem(Node::parse(5, &node(INTERNAL, 10, 24, &[1]), TREE, 24)),
            NodeProblem::WrongValueSize {
                value_size: 24,
                expected: 8
            }
        );
        assert_eq!(
            problem(Node::parse(5, &node(INTERNAL, 10, 8, &[]), TREE, 8)),
            NodeProblem::EmptyInternal
        );
        assert_eq!(
            problem(Node::parse(5, &node(LEAF, 10, 8, &[1, 4, 4]), TREE, 8)),
            NodeProblem::KeysNotAscending { index: 2, key: 4 }
        );
        assert_eq!(
            problem(Node::parse(5, &node(LEAF, 10, 8, &[7, 3]), TREE, 8)),
            NodeProblem::KeysNotAscending { index: 1, key: 3 }
        );
    }
}
