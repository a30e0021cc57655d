//! A compact set of free chunk indexes on one disk.
//!
//! Disks hold up to millions of chunks, and a pool up to tens of thousands of
//! disks, so one bit or one tree node per chunk would cost gigabytes. Free
//! chunks come in long runs (a fresh disk is one run), so the set is kept as
//! disjoint half-open ranges `start..end` keyed by start: O(log runs) to take
//! the lowest free chunk or give one back.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreeList {
    /// start → end (exclusive); ranges are disjoint and never adjacent
    /// (adjacent ranges are merged), so the representation is canonical.
    runs: BTreeMap<u32, u32>,
    len: u64,
}

impl FreeList {
    /// All of `0..count` free.
    pub fn full(count: u32) -> Self {
        let mut list = FreeList::default();
        if count > 0 {
            list.runs.insert(0, count);
            list.len = u64::from(count);
        }
        list
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, index: u32) -> bool {
        self.runs
            .range(..=index)
            .next_back()
            .is_some_and(|(_, &end)| index < end)
    }

    /// Takes the lowest free index. Lowest-first keeps a disk's used chunks
    /// packed at its front, which keeps the run count small.
    pub fn take_lowest(&mut self) -> Option<u32> {
        let (&start, &end) = self.runs.iter().next()?;
        self.runs.remove(&start);
        if start + 1 < end {
            self.runs.insert(start + 1, end);
        }
        self.len -= 1;
        Some(start)
    }

    /// Removes one given index; returns false if it was not free.
    pub fn take(&mut self, index: u32) -> bool {
        let Some((&start, &end)) = self.runs.range(..=index).next_back() else {
            return false;
        };
        if index >= end {
            return false;
        }
        self.runs.remove(&start);
        if start < index {
            self.runs.insert(start, index);
        }
        if index + 1 < end {
            self.runs.insert(index + 1, end);
        }
        self.len -= 1;
        true
    }

    /// Returns an index to the set; returns false if it was already free.
    pub fn give_back(&mut self, index: u32) -> bool {
        if self.contains(index) {
            return false;
        }
        let mut start = index;
        let mut end = index + 1;
        // Merge with the run that ends right before `index`.
        if let Some((&s, &e)) = self.runs.range(..index).next_back()
            && e == index
        {
            self.runs.remove(&s);
            start = s;
        }
        // Merge with the run that starts right after `index`.
        if let Some(e) = self.runs.remove(&(index + 1)) {
            end = e;
        }
        self.runs.insert(start, end);
        self.len += 1;
        true
    }

    /// Grows the index space from `old_count` to `new_count` (a disk that
    /// grew); the new indexes are free.
    pub fn extend(&mut self, old_count: u32, new_count: u32) {
        for index in old_count..new_count {
            // Appending at the end merges into the last run, so this is
            // O(added · log runs); disks grow rarely.
            self.give_back(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn takes_lowest_first_and_merges_on_return() {
        let mut list = FreeList::full(4);
        assert_eq!(list.take_lowest(), Some(0));
        assert_eq!(list.take_lowest(), Some(1));
        assert!(list.give_back(0));
        assert!(!list.give_back(0), "double free is refused");
        assert_eq!(list.take_lowest(), Some(0));
        assert!(list.give_back(1));
        assert!(list.give_back(0));
        assert_eq!(
            list,
            FreeList::full(4),
            "runs merge back to one canonical run"
        );
    }

    proptest! {
        /// The range set behaves exactly like a plain set of integers.
        #[test]
        fn matches_a_plain_set(ops in prop::collection::vec((0u8..3, 0u32..64), 0..400)) {
            let mut list = FreeList::full(64);
            let mut model: BTreeSet<u32> = (0..64).collect();
            for (op, index) in ops {
                match op {
                    0 => prop_assert_eq!(list.take_lowest(), model.pop_first()),
                    1 => prop_assert_eq!(list.take(index), model.remove(&index)),
                    _ => prop_assert_eq!(list.give_back(index), model.insert(index)),
                }
                prop_assert_eq!(list.len(), model.len() as u64);
                for i in 0..64 {
                    prop_assert_eq!(list.contains(i), model.contains(&i));
                }
            }
        }
    }
}
