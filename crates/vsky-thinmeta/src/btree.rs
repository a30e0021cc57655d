//! Walking and searching one btree, with every guard a hostile input needs.
//!
//! A tree is given by its root block and the size of its leaves' values.
//! [`walk`] hands every leaf entry to a visitor in ascending key order;
//! [`lookup`] finds one key. Both read each node through
//! [`Node::parse`](crate::node::Node::parse), and add what only a walk can
//! see:
//!
//! - **Key ranges.** Internal node key *i* is at most every key under child
//!   *i*, and key *i + 1* is above all of them (dm-btree lowers key 0 when
//!   it inserts below it, and splits and rebalances copy a child's first
//!   key up). So each child gets the range `[key i, key i+1)` (its parent's
//!   upper end for the last one) and every key in it must fall inside.
//!   With keys ascending inside each node, the leaves' keys then ascend
//!   across the whole walk.
//! - **Each block once.** A block reached twice in one walk is a cycle or a
//!   node with two parents; either way the tree is broken. (Trees share
//!   nodes *between* them, a snapshot's with its origin's, which is why the
//!   set is per walk.)
//! - **Depth.** A tree deeper than [`MAX_DEPTH`] is refused. dm-btree keeps
//!   its nodes at least about a third full when it removes entries, so even
//!   a 16 GiB metadata device (the kernel's maximum, 2^22 blocks) holds
//!   trees of well under 10 levels; the kernel's own btree cursor gives up
//!   past 16 (`DM_BTREE_CURSOR_MAX_DEPTH`).
//! - **Bounded work.** Every block is read at most once per walk and every
//!   block is below the end of the metadata, so a walk reads at most as
//!   many blocks as the metadata has; the stack of blocks still to visit
//!   holds at most `MAX_DEPTH` nodes' children (254 each). A lookup reads
//!   one node per level.

use std::collections::HashSet;

use crate::block::BlockSource;
use crate::error::{Error, KeyBound, Result, Tree};
use crate::node::Node;
use crate::reader::Blocks;

/// The deepest tree accepted, in levels (a lone leaf is one level).
pub const MAX_DEPTH: usize = 16;

/// A node still to visit, with the key range its parent gives it.
struct Pending {
    block: u64,
    low: u64,
    high: KeyBound,
    depth: usize,
}

/// Checks that the keys of `node` (ascending, as parsed) fall in its
/// parent's range.
fn check_range(node: &Node<'_>, tree: Tree, at: &Pending) -> Result<()> {
    let count = node.nr_entries();
    if count == 0 {
        return Ok(());
    }
    let (first, last) = (node.key(0), node.key(count - 1));
    for key in [first, last] {
        if key < at.low || !at.high.admits(key) {
            return Err(Error::KeyOutsideParent {
                tree,
                block: at.block,
                key,
                low: at.low,
                high: at.high,
            });
        }
    }
    Ok(())
}

/// Child `index` of internal `node`, with the key range it must keep to.
fn child(node: &Node<'_>, at: &Pending, index: u32) -> Pending {
    let high = if index + 1 < node.nr_entries() {
        KeyBound::Below(node.key(index + 1))
    } else {
        at.high
    };
    Pending {
        block: node.value64(index),
        low: node.key(index),
        high,
        depth: at.depth + 1,
    }
}

/// Calls `visit(key, value)` for every entry of the tree at `root`, in
/// ascending key order. Values are `leaf_value_size` bytes. The visitor
/// may stop the walk by returning an error, which the walk returns.
pub(crate) fn walk<S: BlockSource>(
    blocks: &mut Blocks<S>,
    tree: Tree,
    root: u64,
    leaf_value_size: u32,
    mut visit: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut visited = HashSet::new();
    let mut stack = vec![Pending {
        block: root,
        low: 0,
        high: KeyBound::End,
        depth: 1,
    }];
    while let Some(at) = stack.pop() {
        if at.depth > MAX_DEPTH {
            return Err(Error::TooDeep {
                tree,
                max: MAX_DEPTH,
            });
        }
        if !visited.insert(at.block) {
            return Err(Error::BlockVisitedTwice {
                tree,
                block: at.block,
            });
        }
        let block = blocks.read(tree, at.block)?;
        let node = Node::parse(at.block, block, tree, leaf_value_size)?;
        check_range(&node, tree, &at)?;
        if node.is_leaf() {
            for index in 0..node.nr_entries() {
                visit(node.key(index), node.value(index))?;
            }
        } else {
            // Last child first, so that the first is visited next.
            for index in (0..node.nr_entries()).rev() {
                stack.push(child(&node, &at, index));
            }
        }
    }
    Ok(())
}

/// The value of `key` in the tree at `root`, if it holds the key.
pub(crate) fn lookup<S: BlockSource>(
    blocks: &mut Blocks<S>,
    tree: Tree,
    root: u64,
    leaf_value_size: u32,
    key: u64,
) -> Result<Option<Vec<u8>>> {
    let mut path = Vec::with_capacity(MAX_DEPTH);
    let mut at = Pending {
        block: root,
        low: 0,
        high: KeyBound::End,
        depth: 1,
    };
    loop {
        if at.depth > MAX_DEPTH {
            return Err(Error::TooDeep {
                tree,
                max: MAX_DEPTH,
            });
        }
        if path.contains(&at.block) {
            return Err(Error::BlockVisitedTwice {
                tree,
                block: at.block,
            });
        }
        path.push(at.block);
        let block = blocks.read(tree, at.block)?;
        let node = Node::parse(at.block, block, tree, leaf_value_size)?;
        check_range(&node, tree, &at)?;
        // The last entry whose key is at most `key`.
        let found = (0..node.nr_entries())
            .rev()
            .find(|index| node.key(*index) <= key);
        let Some(index) = found else {
            return Ok(None);
        };
        if node.is_leaf() {
            let hit = node.key(index) == key;
            return Ok(hit.then(|| node.value(index).to_vec()));
        }
        // The child's keys are checked against its range when it is read.
        at = child(&node, &at, index);
    }
}
