//! The node's shared area: one anonymous `MAP_SHARED` mapping made in
//! `init()` before the first fork, so every process of the node inherits it.
//!
//! It holds the node-wide serial counter (a `Pid` is allocated with one atomic
//! add, with no round trip to the node) and one status slot per live process,
//! which the process itself updates (queue length, state, counters) and the
//! node reads for `process_info`. Only atomics live here: every field is valid
//! at all-zero, and nothing in it is a pointer.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// Number of status slots; a slot is found by `serial % SLOTS`.
pub(crate) const SLOTS: usize = 1 << 16;

/// The status a process publishes about itself.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Slot {
    /// The serial of the process that owns the slot now (0: free).
    pub(crate) serial: AtomicU64,
    /// Messages and signals waiting in the mailbox.
    pub(crate) queue_len: AtomicU64,
    /// Messages dropped because the mailbox was full.
    pub(crate) dropped: AtomicU64,
    /// Frames that could not be decoded or broke the framing.
    pub(crate) undecodable: AtomicU64,
    /// Connections refused (wrong user id) or cut (oversized frame).
    pub(crate) refused: AtomicU64,
    /// A `ProcessState` discriminant.
    pub(crate) state: AtomicU32,
}

/// The layout of the shared mapping.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SharedArea {
    /// The next process serial to hand out.
    pub(crate) next_serial: AtomicU64,
    /// Children restarted by supervisors, node-wide.
    pub(crate) restarts: AtomicU64,
    /// One slot per process, indexed by `serial % SLOTS`.
    pub(crate) slots: [Slot; SLOTS],
}

/// Maps a zeroed shared area that lives until the process ends.
pub(crate) fn map_shared_area() -> io::Result<&'static SharedArea> {
    let size = std::mem::size_of::<SharedArea>();
    // SAFETY: an anonymous mapping with no address hint; the result is checked.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // Keep core dumps of processes small: the area is mostly untouched.
    let _ = syscall!(madvise(ptr, size, libc::MADV_DONTDUMP));
    // SAFETY: the mapping is page-aligned (more than SharedArea's alignment),
    // `size` bytes long, zero-filled by the kernel, and never unmapped, so a
    // `'static` shared reference is valid. SharedArea holds only atomics, for
    // which all-zero is a valid value and concurrent access from other
    // processes through the same shared pages is well-defined.
    Ok(unsafe { &*(ptr as *const SharedArea) })
}
