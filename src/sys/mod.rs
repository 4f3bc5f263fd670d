//! The only module with `unsafe` code: thin wrappers over the Linux system
//! calls the runtime needs.
//!
//! # Contract
//!
//! Every other module reaches the operating system through the functions and
//! types listed here, and none of them names `libc` or `rustix`. Each wrapper
//! returns `io::Result` or a typed value, and each `unsafe` block states why
//! it is sound in a `// SAFETY:` line.
//!
//! # Which calls go through `rustix`, and which are written by hand
//!
//! `rustix` (direct system calls, safe wrappers over owned and borrowed
//! descriptors) covers most of what the runtime needs, including the pidfd
//! calls that `nix` lacks (`pidfd_open`, `waitid(P_PIDFD)`). Through it:
//! epoll, eventfd, timerfd and `poll`; `AF_UNIX` sockets, `SO_PEERCRED`,
//! `sendmsg`/`recvmsg` with `SCM_RIGHTS`; `pidfd_open`, `waitid`, `kill`;
//! `prctl` (subreaper, thread name), CPU affinity, resource limits; pipes,
//! `open`, `FIONBIO`; `getrandom`.
//!
//! By hand over `libc`, because `rustix` does not offer them (or not safely):
//! `fork` and the signal mask around it, `_exit`, signal dispositions and
//! `raise`, `signalfd`, `pidfd_send_signal` (with
//! `PIDFD_SIGNAL_PROCESS_GROUP`, and real-time signals), the
//! `PIDFD_GET_INFO` ioctl, `close_range`, `F_SETOWN`/`F_SETSIG`/`O_ASYNC`,
//! the shared `mmap`, a `pre_exec` hook, the environment of a fresh child
//! ([`global`], [`text`] hold no system calls).
//!
//! # The modules
//!
//! 1. [`process`]: fork, `_exit`, pidfds (`pidfd_open`, `pidfd_send_signal`,
//!    `waitid(P_PIDFD)`, `PIDFD_GET_INFO`), process groups, `prctl`, CPU
//!    affinity, resource limits, `close_range`, environment, signal dispositions.
//! 2. [`socket`]: `AF_UNIX` stream sockets on abstract addresses, socket pairs,
//!    accept with `SO_PEERCRED`, non-blocking reads and writes, descriptor
//!    passing with `SCM_RIGHTS`.
//! 3. [`poll`]: epoll, eventfd and timerfd.
//! 4. [`shared`]: the node's shared page (the serial counter and per-process
//!    status slots), mapped before the first fork and inherited by every process.
//! 5. [`signal`]: the node's `SIGINT`/`SIGTERM` self-pipe and the node-death pipe
//!    that kills every process when the node's write end closes.
//! 6. [`global`]: a process-wide value that a forked child replaces.
//! 7. [`text`]: function pointers that cross a fork as addresses, checked
//!    against the executable's text segment before they are called.
//! 8. [`cgroup`]: cgroup v2 and v1 directories (ports' groups, memory
//!    limits), and [`proc_fs`]: what `/proc` says of a process. Plain file
//!    operations, kept here with the rest of what the kernel offers.
#![allow(unsafe_code)] // This module is where the crate's unsafe code lives.

/// Calls a libc function and turns a `-1` result into `io::Error::last_os_error()`.
/// A call site that passes a pointer says why it is valid in a `// SAFETY:` line.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[allow(unused_unsafe)] // Some call sites are already inside an unsafe block.
        // SAFETY: the caller checked the arguments of this libc call.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

pub(crate) mod cgroup;
pub(crate) mod global;
pub(crate) mod poll;
pub(crate) mod proc_fs;
pub(crate) mod process;
pub(crate) mod shared;
pub(crate) mod signal;
pub(crate) mod socket;
pub(crate) mod text;

/// Fills `buf` with random bytes from the kernel (`getrandom(2)`).
pub(crate) fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
