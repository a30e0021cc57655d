//! Locks that survive a panicking holder.
//!
//! `std`'s `Mutex` and `RwLock` are *poisoned* when a thread panics while
//! holding them, and every later `lock()` returns an error. VastSky recovers
//! the guard instead, everywhere, for two reasons:
//!
//! - The state behind these locks is kept consistent by its writers: each
//!   critical section is a short update (push to a queue, replace a map,
//!   bump a counter) that leaves the value valid at every step, so a panic
//!   in the middle of one leaves nothing half-written that a reader could
//!   trip over.
//! - A panic in one task (a request handler, a connection thread) must not
//!   take down the whole service: with `lock().unwrap()`, every later user
//!   of the lock would panic too, and one bad request would stop the
//!   manager's API, an agent's heartbeats or the NBD server.
//!
//! So instead of `lock().unwrap_or_else(|e| e.into_inner())` written out at
//! every call site, `use vsky_sync::LockExt;` and call `lock_unpoisoned()`
//! (and `read_unpoisoned()` / `write_unpoisoned()` on an `RwLock`,
//! `wait_unpoisoned()` on a `Condvar`).
//!
//! It also holds the workspace's other thread helpers: [`map_bounded`]
//! (blocking work over a bounded number of threads, for the head's kernel
//! calls) and, with the `tasks` feature, supervised tokio tasks.
//!
//! The crate has no dependencies, so every crate of the workspace, even the
//! leaves (`vsky-nbd`, `vsky-api`), can use it without new edges between the
//! others.

pub mod bounded;
#[cfg(feature = "tasks")]
pub mod supervise;
pub use bounded::map_bounded;
#[cfg(feature = "tasks")]
pub use supervise::{blocking, restarts, supervise};

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `Mutex::lock` that recovers the guard of a poisoned mutex (see the crate
/// docs for why that is right here).
pub trait LockExt<T: ?Sized> {
    /// Locks, and if a previous holder panicked, takes the lock anyway.
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `RwLock::read` / `RwLock::write` that recover the guard of a poisoned
/// lock (see the crate docs for why that is right here).
pub trait RwLockExt<T: ?Sized> {
    /// Read-locks, and if a writer panicked, takes the lock anyway.
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    /// Write-locks, and if a writer panicked, takes the lock anyway.
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `Condvar::wait` that recovers the guard when the mutex was poisoned while
/// this thread waited (see the crate docs for why that is right here).
pub trait CondvarExt {
    /// Waits for a notification, and takes the lock back even if another
    /// holder panicked meanwhile.
    fn wait_unpoisoned<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T>;
}

impl CondvarExt for Condvar {
    fn wait_unpoisoned<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A mutex poisoned by a panicking holder still hands out its value,
    /// with the writes made before the panic.
    #[test]
    fn a_poisoned_mutex_is_recovered() {
        let m = Arc::new(Mutex::new(vec![1]));
        let holder = Arc::clone(&m);
        let panicked = std::thread::spawn(move || {
            let mut v = holder.lock().unwrap();
            v.push(2);
            panic!("holder panics with the lock held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(m.is_poisoned());
        m.lock_unpoisoned().push(3);
        assert_eq!(*m.lock_unpoisoned(), [1, 2, 3]);
    }

    /// Same for an RwLock, through both its read and write sides.
    #[test]
    fn a_poisoned_rwlock_is_recovered() {
        let l = Arc::new(RwLock::new(1));
        let holder = Arc::clone(&l);
        let panicked = std::thread::spawn(move || {
            let mut v = holder.write().unwrap();
            *v = 2;
            panic!("writer panics with the lock held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(l.is_poisoned());
        *l.write_unpoisoned() += 1;
        assert_eq!(*l.read_unpoisoned(), 3);
    }

    /// A waiter on a condvar whose mutex a notifier poisoned still wakes
    /// with the lock and sees the notifier's write.
    #[test]
    fn a_condvar_wait_survives_a_poisoned_mutex() {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let notifier = Arc::clone(&pair);
        let waiter = std::thread::spawn(move || {
            let (m, cv) = &*pair;
            let mut ready = m.lock_unpoisoned();
            while !*ready {
                ready = cv.wait_unpoisoned(ready);
            }
            *ready
        });
        let panicked = std::thread::spawn(move || {
            let (m, cv) = &*notifier;
            let mut ready = m.lock().unwrap();
            *ready = true;
            cv.notify_all();
            panic!("notifier panics with the lock held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(waiter.join().unwrap());
    }
}
