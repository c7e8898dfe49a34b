//! Locks that survive a panic elsewhere. A std lock is poisoned when a thread panics while
//! holding it; `expect` on it would turn that one panic into a cascade through every later
//! user (the HTTP handlers, the loop, the elector). The data behind these locks is always left
//! consistent between statements (counters, caches, views that are replaced whole), so the
//! guard is taken back from the poison error and used.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub trait MutexExt<T> {
    /// `lock()`, recovering from poisoning.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub trait RwLockExt<T> {
    /// `read()`, recovering from poisoning.
    fn read_recovered(&self) -> RwLockReadGuard<'_, T>;
    /// `write()`, recovering from poisoning.
    fn write_recovered(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockExt<T> for RwLock<T> {
    fn read_recovered(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_recovered(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_panic_while_holding_a_lock_does_not_spread() {
        let m = Arc::new(Mutex::new(1));
        let l = Arc::new(RwLock::new(1));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = l2.write().unwrap();
            panic!("while holding both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *m.locked() += 1;
        *l.write_recovered() += 1;
        assert_eq!((*m.locked(), *l.read_recovered()), (2, 2));
    }
}
