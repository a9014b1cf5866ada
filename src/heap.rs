//! Per-thread heap accounting: the global allocator forwards every call to
//! the system allocator and keeps, for each thread, the bytes it allocated
//! less those it freed. The Rhai sandbox reads it to bound what one script
//! run may hold ([`crate::sandbox::MAX_RUN_MEMORY`]): Rhai bounds each
//! string, array and map, but not how many of them a script keeps.
//!
//! The cost is one thread-local add per allocation and per free.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Bytes allocated less bytes freed by this thread (memory allocated
    /// by one thread and freed by another makes it drift; readers only
    /// look at its change over a short run).
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    // `try_with`: a thread being torn down may still free memory.
    let _ = NET.try_with(|n| n.set(n.get().wrapping_add(delta)));
}

fn size(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// This thread's allocated bytes less its freed ones, since it started.
pub fn thread_net_bytes() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

/// The system allocator, counted per thread.
pub struct Counting;

// SAFETY: each method forwards its arguments unchanged to `System`, which
// upholds `GlobalAlloc`'s contract; the counting beside it touches only a
// const-initialised thread-local `Cell<i64>`, which has no destructor and
// never allocates, so it cannot recurse into the allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(size(layout.size()));
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(size(layout.size()));
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-size(layout.size()));
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(size(new_size) - size(layout.size()));
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[cfg(test)]
mod tests {
    use super::thread_net_bytes;

    #[test]
    fn a_thread_counts_what_it_holds() {
        let before = thread_net_bytes();
        let held = vec![1u8; 1 << 20];
        let during = thread_net_bytes() - before;
        assert!(during >= 1 << 20, "{during}");
        drop(std::hint::black_box(held));
        let after = thread_net_bytes() - before;
        assert!(after < 1 << 10, "{after}");
        // Another thread's allocations are not this thread's.
        std::thread::spawn(|| std::hint::black_box(vec![0u8; 1 << 22]).len())
            .join()
            .unwrap();
        assert!(thread_net_bytes() - before < 1 << 20);
    }
}
