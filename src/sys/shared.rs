//! The node's shared area: one anonymous `MAP_SHARED` mapping made in
//! `init()` before the first fork, so every process of the node inherits it.
//!
//! It holds the node-wide serial counter (a `Pid` is allocated with one atomic
//! add, with no round trip to the node) and one status slot per live process,
//! which the process itself updates (queue length, state, counters) and the
//! node reads for `process_info`. Only atomics live here: every field is valid
//! at all-zero, and nothing in it is a pointer.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Number of status slots; a slot is found by `serial % SLOTS`.
pub(crate) const SLOTS: usize = 1 << 16;

/// The status a process publishes about itself.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Slot {
    /// The serial of the process that owns the slot now (0: free).
    pub(crate) serial: AtomicU64,
    /// Messages and signals in the process's own queue (read off its
    /// connections), as it last published.
    pub(crate) queue_len: AtomicU64,
    /// Bytes of the messages in that queue.
    pub(crate) queue_bytes: AtomicU64,
    /// Messages it has read off its connections since it started.
    pub(crate) read: AtomicU64,
    /// Their bytes.
    pub(crate) read_bytes: AtomicU64,
    /// Messages dropped because the mailbox was full.
    pub(crate) dropped: AtomicU64,
    /// Frames that could not be decoded or broke the framing.
    pub(crate) undecodable: AtomicU64,
    /// Connections refused (wrong user id) or cut (oversized frame).
    pub(crate) refused: AtomicU64,
    /// A `ProcessState` discriminant.
    pub(crate) state: AtomicU32,
    /// For an actor: the serial of the scheduler hosting it (0: an OS
    /// process of its own).
    pub(crate) host: AtomicU64,
    /// What its senders count, on a line of its own.
    pub(crate) arrivals: Arrivals,
}

/// Messages sent to a process, counted by their senders as they send them.
/// A line apart from what the process writes itself, so that a sender's
/// count does not bounce the line the receiver updates.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Arrivals {
    /// The serial whose messages are counted here (0: none, or an actor).
    pub(crate) serial: AtomicU64,
    /// Messages sent to it.
    pub(crate) sent: AtomicU64,
    /// Their bytes.
    pub(crate) sent_bytes: AtomicU64,
}

impl Arrivals {
    /// Starts counting for `serial` from zero (its spawner, before anyone
    /// can send to it).
    pub(crate) fn open(&self, serial: u64) {
        self.serial.store(0, Ordering::Relaxed);
        self.sent.store(0, Ordering::Relaxed);
        self.sent_bytes.store(0, Ordering::Relaxed);
        self.serial.store(serial, Ordering::Release);
    }

    /// Counts `n` messages of `bytes` in all written to `serial`'s
    /// connections, if this is its line.
    pub(crate) fn count(&self, serial: u64, n: u64, bytes: usize) {
        if self.serial.load(Ordering::Relaxed) == serial {
            self.sent.fetch_add(n, Ordering::Relaxed);
            self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }
}

impl Slot {
    /// Makes the slot process `serial`'s, in `state` and hosted by `host`
    /// (0: an OS process of its own), its counters zeroed. The serial is
    /// written last: whoever sees it sees the rest.
    pub(crate) fn claim(&self, serial: u64, state: u32, host: u64) {
        // Counts are kept for OS processes (an actor's queue is its
        // host's), from the spawner's `open` on if it came first.
        if host != 0 {
            self.arrivals.serial.store(0, Ordering::Relaxed);
        } else if self.arrivals.serial.load(Ordering::Acquire) != serial {
            self.arrivals.open(serial);
        }
        self.read.store(0, Ordering::Relaxed);
        self.read_bytes.store(0, Ordering::Relaxed);
        self.queue_bytes.store(0, Ordering::Relaxed);
        self.queue_len.store(0, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
        self.undecodable.store(0, Ordering::Relaxed);
        self.refused.store(0, Ordering::Relaxed);
        self.state.store(state, Ordering::Relaxed);
        self.host.store(host, Ordering::SeqCst);
        self.serial.store(serial, Ordering::SeqCst);
    }

    /// Frees the slot if it is still process `serial`'s.
    pub(crate) fn release(&self, serial: u64) {
        if self
            .serial
            .compare_exchange(serial, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.host.store(0, Ordering::Release);
            let _ = self
                .arrivals
                .serial
                .compare_exchange(serial, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Whether the slot is process `serial`'s now.
    pub(crate) fn is(&self, serial: u64) -> bool {
        self.serial.load(Ordering::Acquire) == serial
    }

    /// The scheduler hosting actor `serial`, if the slot is that actor's.
    pub(crate) fn host_of(&self, serial: u64) -> Option<u64> {
        let host = self.host.load(Ordering::Acquire);
        (host != 0 && self.is(serial)).then_some(host)
    }
}

/// Most scheduler processes a node runs.
pub(crate) const SCHEDULERS: usize = 64;

/// Task start marks; a task's is found by `task % TASK_MARKS`.
pub(crate) const TASK_MARKS: usize = 1 << 14;

/// The bit of a task mark that says the task was cancelled before it started.
pub(crate) const CANCELLED: u64 = 1 << 63;

/// A scheduler's place in the pool.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct SchedSlot {
    /// The serial of the scheduler serving this slot (0: none is ready).
    pub(crate) serial: AtomicU64,
    /// 0 while it is idle; otherwise the task it was handed (whoever hands
    /// it a task claims it first by swapping 0 for the task's id).
    pub(crate) busy: AtomicU64,
    /// The task it runs now (0: none).
    pub(crate) running: AtomicU64,
    /// Actors it hosts (counted by their spawners, for placement).
    pub(crate) actors: AtomicU64,
}

/// The pool's counters, node-wide.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct PoolCounters {
    /// Tasks handed to a scheduler (a requeued task counts again).
    pub(crate) submitted: AtomicU64,
    /// Tasks a scheduler started.
    pub(crate) started: AtomicU64,
    /// Tasks that returned.
    pub(crate) done: AtomicU64,
    /// Tasks that panicked, or whose scheduler died under them.
    pub(crate) failed: AtomicU64,
    /// Tasks cancelled before they started, or requeued.
    pub(crate) dropped: AtomicU64,
    /// Per class: tasks waiting in the node's queue.
    pub(crate) queued: [AtomicU64; SCHEDULERS],
    /// Actor steps run.
    pub(crate) steps: AtomicU64,
    /// Actor steps that ran over the step limit.
    pub(crate) overruns: AtomicU64,
}

/// The layout of the shared mapping.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SharedArea {
    /// The next process serial to hand out.
    pub(crate) next_serial: AtomicU64,
    /// Children restarted by supervisors, node-wide.
    pub(crate) restarts: AtomicU64,
    /// The next task id to hand out.
    pub(crate) next_task: AtomicU64,
    /// The pool's counters.
    pub(crate) pool: PoolCounters,
    /// The schedulers.
    pub(crate) schedulers: [SchedSlot; SCHEDULERS],
    /// Task `t` started (in a scheduler) if `task_marks[t % TASK_MARKS] == t`;
    /// it was cancelled before it started if the mark is `t | CANCELLED`.
    pub(crate) task_marks: [AtomicU64; TASK_MARKS],
    /// One slot per process, indexed by `serial % SLOTS`.
    pub(crate) slots: [Slot; SLOTS],
}

impl SharedArea {
    /// The status slot of process `serial`.
    pub(crate) fn slot(&self, serial: u64) -> &Slot {
        &self.slots[serial as usize % SLOTS]
    }
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
    // SAFETY: `ptr`..`ptr + size` is the mapping made above; MADV_DONTDUMP
    // changes no contents.
    let _ = syscall!(madvise(ptr, size, libc::MADV_DONTDUMP));
    // SAFETY: the mapping is page-aligned (more than SharedArea's alignment),
    // `size` bytes long, zero-filled by the kernel, and never unmapped, so a
    // `'static` shared reference is valid. SharedArea holds only atomics, for
    // which all-zero is a valid value and concurrent access from other
    // processes through the same shared pages is well-defined.
    Ok(unsafe { &*(ptr as *const SharedArea) })
}
