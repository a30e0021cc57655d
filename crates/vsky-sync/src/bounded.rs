//! Blocking work spread over a bounded number of threads.
//!
//! The head assembles a volume with hundreds of blocking kernel calls and
//! network handshakes (one NBD import and two dm devices per leg, one
//! dm-raid per mirrored disk) that do not depend on each other, and most of
//! their time is waiting: a handshake's round trips, a dm-raid constructor
//! reading superblocks over NBD, a removal writing them back. Doing them one
//! by one made activation linear in the volume (docs/design/activation.md),
//! so they run on a few threads at once. Bounded, because every thread holds
//! kernel work in flight: a 256-mirrored-disk volume must not open 512
//! handshakes at the same instant.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::LockExt;

/// Runs `work` on every item with at most `workers` threads at once and
/// returns the results in the items' order.
///
/// Each thread makes its own `state` with `init` when it starts and passes
/// it to every item it takes (a netlink socket, say, which one thread at a
/// time may use). With one worker, or one item, everything runs on the
/// calling thread: a small volume pays no thread start.
///
/// A panic in `work` stops the threads from taking more items, and once
/// every thread has stopped it reaches the caller with its own payload, as
/// it would have from a loop (the items after it may have run already on
/// other threads, never the ones not yet taken).
pub fn map_bounded<T, R, S>(
    items: Vec<T>,
    workers: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, T) -> R + Sync,
) -> Vec<R>
where
    T: Send,
    R: Send,
{
    let threads = workers.min(items.len());
    if threads <= 1 {
        let mut state = init();
        return items.into_iter().map(|t| work(&mut state, t)).collect();
    }
    let count = items.len();
    // Each item is taken exactly once: by whoever moves `next` past it.
    let queue: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let panicked: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut state = init();
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = queue.get(i) else { break };
                    let Some(item) = slot.lock_unpoisoned().take() else {
                        continue;
                    };
                    match catch_unwind(AssertUnwindSafe(|| work(&mut state, item))) {
                        Ok(r) => *results[i].lock_unpoisoned() = Some(r),
                        Err(payload) => {
                            stop.store(true, Ordering::SeqCst);
                            panicked.lock_unpoisoned().get_or_insert(payload);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(payload) = panicked.into_inner().unwrap_or_else(|p| p.into_inner()) {
        resume_unwind(payload);
    }
    // With no panic every item was taken by one thread, which stored its
    // result before the scope ended.
    let out: Vec<R> = results
        .into_iter()
        .filter_map(|r| r.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect();
    debug_assert_eq!(out.len(), count);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    /// Results come back in the items' order, each item is worked once, and
    /// never more than `workers` run at the same time.
    #[test]
    fn results_in_order_at_most_workers_at_once() {
        for workers in [0, 1, 2, 4, 16] {
            let running = AtomicU32::new(0);
            let peak = AtomicU32::new(0);
            let items: Vec<u64> = (0..40).collect();
            let out = map_bounded(
                items,
                workers,
                || (),
                |_, i| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 10
                },
            );
            assert_eq!(out, (0..40).map(|i| i * 10).collect::<Vec<_>>());
            let peak = peak.load(Ordering::SeqCst) as usize;
            assert!(
                peak <= workers.max(1),
                "{peak} at once with {workers} workers"
            );
        }
    }

    /// Every thread gets its own state, made once, and keeps it for all the
    /// items it takes.
    #[test]
    fn one_state_per_thread() {
        let made = AtomicU32::new(0);
        let out = map_bounded(
            (0..64).collect::<Vec<u32>>(),
            4,
            || {
                (
                    made.fetch_add(1, Ordering::SeqCst),
                    std::thread::current().id(),
                )
            },
            |(n, thread), _| {
                assert_eq!(*thread, std::thread::current().id());
                *n
            },
        );
        let states: BTreeSet<u32> = out.into_iter().collect();
        assert!(made.load(Ordering::SeqCst) <= 4);
        assert!(states.len() <= 4);
    }

    /// One item, or one worker, stays on the calling thread.
    #[test]
    fn small_work_stays_on_the_caller() {
        let me = std::thread::current().id();
        let out = map_bounded(vec![1], 16, || (), |_, _| std::thread::current().id());
        assert_eq!(out, vec![me]);
        let out = map_bounded(vec![1, 2, 3], 1, || (), |_, _| std::thread::current().id());
        assert_eq!(out, vec![me; 3]);
        assert!(map_bounded(Vec::<u8>::new(), 8, || (), |_, x| x).is_empty());
    }

    /// A panic in the work reaches the caller with its own message, after
    /// the other threads are done. (That they take no item after it is not
    /// asserted: the panic hook, which may resolve a backtrace, runs before
    /// the unwinding that stops them, so how many items ran meanwhile is a
    /// matter of timing.)
    #[test]
    fn a_panic_reaches_the_caller() {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            map_bounded(
                (0..40).collect::<Vec<u32>>(),
                4,
                || (),
                |_, i| {
                    if i == 7 {
                        panic!("item 7");
                    }
                },
            )
        }));
        let payload = caught.expect_err("the panic reached the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"item 7"));
    }
}
