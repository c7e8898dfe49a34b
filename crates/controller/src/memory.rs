//! How the binary keeps its resident memory small: the facts its allocator setup rests on.
//!
//! The binary's global allocator (`src/main.rs`, which may use `unsafe`; this library may not)
//! is mimalloc, set up so that what the heap gives back reaches the OS at once:
//! - *purge delay 0*: mimalloc v3 keeps freed pages committed for 1 s by default, and purges
//!   them only when the allocator is next called; a controller that goes idle after a cycle
//!   then keeps the cycle's peak resident until the next cycle.
//! - *no transparent huge pages* for the process (`PR_SET_THP_DISABLE`, and mimalloc built
//!   with `no_thp`): a 2 MiB huge page is resident whole however little of it is used, which
//!   put 45 MiB of huge pages under a 23 MiB live heap (BENCHMARKS.md).
//! - *two runtime workers* at most, whatever the number of cores ([`DEFAULT_WORKER_THREADS`];
//!   `TOKIO_WORKER_THREADS` overrides it): each worker keeps its own allocator pages and
//!   stack, about 2 MiB more per worker at 1000 apps (measured: 35, 37, 44 and 47 MiB median
//!   with 1, 2, 4 and 16 workers), and the controller's work is I/O with bounded concurrency,
//!   decoding long lists and hashing on the blocking pool.
//!
//! It also counts the live heap into [`HEAP_LIVE_BYTES`], exported on `/metrics`, so that the
//! heap and the allocator's own overhead can be told apart when resident memory grows.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes handed out by the allocator and not yet freed. Stays 0 where no counting allocator
/// is installed (the library's own tests).
pub static HEAP_LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The live heap, in bytes; `None` without a counting allocator.
pub fn heap_live_bytes() -> Option<usize> {
    match HEAP_LIVE_BYTES.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// The async runtime's worker threads, at most (fewer on a machine with fewer cores).
pub const DEFAULT_WORKER_THREADS: usize = 2;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys names the options
/// only for v2). `tests/allocator.rs` checks the number against the option's default.
pub const MI_OPTION_PURGE_DELAY: i32 = 15;
