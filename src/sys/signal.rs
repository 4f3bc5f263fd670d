//! Signals: the node's `SIGINT`/`SIGTERM` self-pipe, and the node-death pipe.
//!
//! The node holds the only write end of the death pipe. Every process gets its
//! own file description of the read end (its spawner opens it through
//! `/proc/self/fd`) and asks the
//! kernel (`F_SETOWN`, `F_SETSIG`, `O_ASYNC`, see `fcntl(2)`) to send it
//! `SIGKILL` when the pipe becomes readable, which happens when the last write
//! end closes: when the node dies, however it dies, every process dies with it
//! without needing a thread to watch.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use std::sync::atomic::{AtomicI32, Ordering};

/// `F_SETSIG` (not exported by libc for every target).
const F_SETSIG: libc::c_int = 10;

/// The write end of the shutdown self-pipe, for the signal handler.
static SHUTDOWN_PIPE: AtomicI32 = AtomicI32::new(-1);
/// The OS pid of the node that installed the handler.
static NODE_PID: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_shutdown_signal(signal: libc::c_int) {
    // SAFETY: getpid, signal and raise are async-signal-safe.
    unsafe {
        if libc::getpid() != NODE_PID.load(Ordering::Relaxed) {
            // A child forked from the node, hit before it reset its signal
            // dispositions: behave as the default disposition would.
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
            return;
        }
    }
    let fd = SHUTDOWN_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// A pipe with both ends close-on-exec; the read end is non-blocking.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::io::ioctl_fionbio(&r, true)?;
    Ok((r, w))
}

/// Routes `SIGINT` and `SIGTERM` to a pipe: each signal writes its number as one
/// byte. Returns the (non-blocking) read end.
pub(crate) fn install_shutdown_handler() -> io::Result<OwnedFd> {
    let (r, w) = pipe()?;
    rustix::io::ioctl_fionbio(&w, true)?;
    NODE_PID.store(super::process::getpid(), Ordering::Relaxed);
    // The write end lives for the rest of the process, owned by the handler.
    SHUTDOWN_PIPE.store(std::os::fd::IntoRawFd::into_raw_fd(w), Ordering::Relaxed);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is valid; the handler only calls write.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_shutdown_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(r)
}

/// Ends the calling process with `signal` as its wait status: the default
/// disposition is restored and the signal raised. Falls back to `_exit(128+n)`.
pub(crate) fn die_by_signal(signal: i32) -> ! {
    // SAFETY: restoring SIG_DFL and raising are plain libc calls.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    super::process::exit_now(128 + signal)
}

/// A new file description of the node-death pipe for a process about to be
/// forked, from `read_end` (the spawner's own): the new process arms it with
/// [`arm_death_signal`]. The spawner opens it, through `/proc/self/fd`, because
/// its own entries there are already cached; a new process would make them.
pub(crate) fn death_description(read_end: RawFd) -> io::Result<OwnedFd> {
    // "/proc/self/fd/<n>" and a NUL, built on the stack.
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    let mut digits = [0u8; 10];
    let mut n = read_end as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        path[14 + i] = digits[len - 1 - i];
    }
    let path = CStr::from_bytes_until_nul(&path).expect("BUG: the path ends in NUL");
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Arms the calling process to receive `SIGKILL` when every write end of the
/// node-death pipe is closed. `fd` is a description of the pipe's read end
/// made for this process (see [`death_description`]; a sibling forked at the
/// same moment by another thread may hold a copy until it closes what it
/// inherited, and only this process sets its owner); it is returned armed,
/// to be kept open (and passed on to the process's children).
///
/// `group`: the signal goes to the calling process's whole process group
/// (it leads one), so what it forks and execs itself dies with the node too,
/// while the description stays open in one of them.
///
/// Fails with `BrokenPipe` if the node is already gone.
pub(crate) fn arm_death_signal(fd: OwnedFd, group: bool) -> io::Result<OwnedFd> {
    let me = super::process::getpid();
    // A negative owner is a process group.
    let owner = if group { -me } else { me };
    // rustix has no F_SETOWN, F_SETSIG or O_ASYNC: plain fcntl(2) with integers.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETOWN, owner))?;
    syscall!(fcntl(fd.as_raw_fd(), F_SETSIG, libc::SIGKILL))?;
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK))?;
    // The node may have died before the signal was armed: check once by hand.
    let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
    rustix::event::poll(&mut pfd, Some(&Timespec { tv_sec: 0, tv_nsec: 0 }))?;
    if pfd[0].revents().intersects(PollFlags::HUP | PollFlags::IN) {
        return Err(io::Error::from(io::ErrorKind::BrokenPipe));
    }
    Ok(fd)
}

/// A `signalfd` that reads `SIGCHLD` (blocked for the calling thread, which
/// must be the process's only one): readable when a child changed state.
pub(crate) fn child_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local value, and pthread_sigmask on the
    // calling thread only.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    // rustix has no signalfd. SAFETY: `set` is a local, initialized sigset
    // that the kernel only reads during the call.
    let fd = syscall!(signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC))?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads every pending signal from a `signalfd`.
pub(crate) fn drain_signals(fd: &OwnedFd) {
    let mut buf = [0u8; 128 * 8];
    while rustix::io::read(fd, &mut buf).is_ok_and(|n| n > 0) {}
}
