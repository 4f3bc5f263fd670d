//! Process control: fork, `_exit`, pidfds and wait statuses, process groups,
//! `prctl`, affinity, resource limits and descriptor cleanup.
//!
//! See `pidfd_open(2)`, `pidfd_send_signal(2)`, `waitid(2)` and, for the exit
//! status of a process reaped by someone else, `PIDFD_GET_INFO` in
//! `include/uapi/linux/pidfd.h` (Linux 6.15+).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, waitid};
use rustix::thread::CpuSet;

/// How a process ended, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum WaitStatus {
    /// The process called `_exit(code)`.
    Exited(i32),
    /// The process was terminated by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
}

impl WaitStatus {
    /// Decodes a `waitpid`-style status word.
    pub(crate) fn from_raw(status: i32) -> WaitStatus {
        if libc::WIFSIGNALED(status) {
            WaitStatus::Signaled {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            }
        } else {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        }
    }
}

/// Signals a terminal (or a service manager) sends to a whole process group.
const GROUP_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Forks the calling process into a new process group of its own and runs
/// `child` in the new process, which never returns into the caller's code:
/// when `child` returns or panics, the child ends with `_exit`.
///
/// Returns the child's OS pid in the parent.
///
/// Signals a terminal sends to the caller's process group (Ctrl-C) never reach
/// the child: they are blocked around the fork, and the child leaves the group
/// and drops any terminal signal that arrived before it did, before it
/// unblocks them. Signals sent with `kill(2)` in that window are delivered.
/// The child starts with the default disposition for those signals (the
/// node's handlers are the node's) and with no signal blocked.
///
/// # Why this is a safe function
///
/// `fork` in a process with threads is unsafe in general; three facts make
/// this call sound for any `child`:
///
/// - Only the calling thread exists in the child. To safe code there, every
///   other thread of the parent looks stopped forever at the instant of the
///   fork, which is an execution safe Rust already allows: a lock such a
///   thread held stays held, so the child can deadlock on it (the runtime's
///   own state is built fresh in the child for that reason) but never sees
///   memory half-written without a lock, and atomics are whole.
/// - glibc's `fork` resets its allocator and stdio locks in the child, so
///   allocating is safe. Rust's own `stdout`/`stderr` locks and buffers are
///   taken and flushed here, around the fork, so no other thread holds them at
///   that moment and nothing buffered is printed twice.
/// - The child never unwinds or returns into the parent's stack frames: a
///   panic is caught and both ends of `child` are `_exit`.
pub(crate) fn fork_child(child: impl FnOnce() -> std::convert::Infallible) -> io::Result<i32> {
    use std::io::Write;
    // No other thread may hold the stdio locks at the fork, and nothing may sit
    // in their buffers (the child would print it a second time).
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let _ = out.flush();
    let _ = err.flush();
    // SAFETY: sigset manipulation on local values, and pthread_sigmask on the
    // calling thread only.
    let old = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in GROUP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    };
    // SAFETY: see "Why this is a safe function" above: the child runs only
    // `child` and ends in `_exit`; the stdio locks are held by this thread.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: restores the mask saved above on this thread.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
            Err(e)
        }
        0 => {
            // SAFETY: setpgid, sigtimedwait, signal, pthread_sigmask and raise
            // on this process only, with local sets.
            unsafe {
                libc::setpgid(0, 0);
                // Signals that arrived before the child left the group: those
                // the terminal sent to the group (si_code SI_KERNEL) are
                // dropped; those sent with kill(2) may have been meant for the
                // child itself, and are delivered.
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for sig in GROUP_SIGNALS {
                    libc::sigaddset(&mut set, sig);
                }
                let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                let mut deliver = [0 as libc::c_int; 4];
                let mut n = 0;
                loop {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    let sig = libc::sigtimedwait(&set, &mut info, &zero);
                    if sig <= 0 {
                        break;
                    }
                    if info.si_code != libc::SI_KERNEL && n < deliver.len() {
                        deliver[n] = sig;
                        n += 1;
                    }
                }
                for sig in GROUP_SIGNALS {
                    libc::signal(sig, libc::SIG_DFL);
                }
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                for &sig in &deliver[..n] {
                    libc::raise(sig);
                }
            }
            drop(out);
            drop(err);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child));
            // Only a panic can get here: the closure's type says it never returns.
            drop(outcome);
            exit_now(101)
        }
        pid => {
            // SAFETY: moving our own child (which may have done it already);
            // then restoring the mask saved above on this thread.
            unsafe {
                libc::setpgid(pid, pid);
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            }
            Ok(pid)
        }
    }
}

/// Ends the calling process at once with `code`, without running `atexit`
/// handlers or destructors (`_exit(2)`).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// Kills the calling process with `SIGKILL` (nothing of it runs after this).
pub(crate) fn kill_self() -> ! {
    // SAFETY: `kill` takes no pointers; SIGKILL to ourselves cannot be caught.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL to oneself is delivered before `kill` returns; should it not
    // be, nothing of this process may run anyway.
    exit_now(137)
}

/// The OS pid of the calling process.
pub(crate) fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// The real user id of the calling process.
pub(crate) fn getuid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Opens a pidfd for `pid` (close-on-exec). Race-free only while `pid` cannot be
/// reaped by anyone else, i.e. for a child that the caller has not waited for.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends `signal` to the process behind `pidfd`. Sending to a process that has
/// already exited succeeds and does nothing.
pub(crate) fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    if raw_pidfd_signal(pidfd, signal, 0) < 0 {
        let e = io::Error::last_os_error();
        // ESRCH: the process is gone (already reaped); nothing to signal.
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// `pidfd_send_signal(2)` as kill(2) would send it: its raw result.
fn raw_pidfd_signal(pidfd: &OwnedFd, signal: i32, flags: libc::c_uint) -> libc::c_long {
    // SAFETY: plain system call on a descriptor we own; a null siginfo means
    // "as kill(2) would".
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    }
}

/// Whether the process behind `pidfd` has ended (the pidfd is readable; a
/// zero-timeout poll).
pub(crate) fn pidfd_ended(pidfd: &OwnedFd) -> bool {
    let mut pfd = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    rustix::event::poll(&mut pfd, Some(&zero)).is_ok_and(|n| n == 1) && pfd[0].revents().contains(PollFlags::IN)
}

/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9+).
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// Sends `signal` to the process group led by the process behind `pidfd`.
///
/// Race-free while the leader is not reaped (a zombie leader still holds its
/// group id): the kernel resolves the group through the pidfd. On kernels
/// before 6.9 it falls back to `kill(-ospid)`, which is just as safe under the
/// same condition. A leader already reaped is not an error.
pub(crate) fn pidfd_signal_group(pidfd: &OwnedFd, ospid: i32, signal: i32) -> io::Result<()> {
    if raw_pidfd_signal(pidfd, signal, PIDFD_SIGNAL_PROCESS_GROUP) == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ESRCH) => Ok(()),
        Some(libc::EINVAL) => {
            // A kernel without process-group pidfd signals (before 6.9):
            // kill(2) the group, but only while its leader is not reaped (a
            // leader, even a zombie, keeps its group id from being reused).
            // Signal 0 only checks that the process can be signalled.
            let alive = raw_pidfd_signal(pidfd, 0, 0) == 0;
            if !alive {
                return Ok(());
            }
            kill_group(ospid, signal)
        }
        _ => Err(e),
    }
}

/// Reaps child `pid` if it has exited (`waitid(P_PID, WNOHANG)`); whether it
/// was reaped.
pub(crate) fn reap_if_exited(pid: i32) -> bool {
    let Some(pid) = Pid::from_raw(pid) else {
        return false;
    };
    matches!(
        waitid(WaitId::Pid(pid), WaitIdOptions::EXITED | WaitIdOptions::NOHANG),
        Ok(Some(_))
    )
}

/// Sends `signal` to the process `pid` (a group for `-pid`) with kill(2)
/// (gone already: `Ok`). The caller read `pid` an instant ago (from a
/// cgroup's `cgroup.procs`); as with kill(1), it may have been reused since.
pub(crate) fn kill_pid(pid: i32, signal: i32) -> io::Result<()> {
    let sig = Signal::from_named_raw(signal).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let target = Pid::from_raw(pid.abs()).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let sent = if pid < 0 {
        rustix::process::kill_process_group(target, sig)
    } else {
        rustix::process::kill_process(target, sig)
    };
    match sent {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` to the process group `pgid` with kill(2). The caller makes
/// sure the group's leader is not reaped (its id cannot have been reused).
pub(crate) fn kill_group(pgid: i32, signal: i32) -> io::Result<()> {
    kill_pid(-pgid, signal)
}

/// Reaps the child behind `pidfd` if it has exited (`waitid(P_PIDFD, WNOHANG)`).
///
/// `Ok(None)`: still running. `Err` with `ECHILD`: not a child of the caller.
pub(crate) fn pidfd_try_wait(pidfd: &OwnedFd) -> io::Result<Option<WaitStatus>> {
    let info = loop {
        match waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(info) => break info,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    Ok(info.map(|info| match (info.exit_status(), info.terminating_signal()) {
        (Some(code), _) => WaitStatus::Exited(code),
        (None, Some(signal)) => WaitStatus::Signaled {
            signal,
            core_dumped: info.dumped(),
        },
        // Only an exit is waited for: a stop or a continue cannot be reported.
        (None, None) => unreachable!("BUG: waitid(WEXITED) reported a process that did not end"),
    }))
}

/// `struct pidfd_info` of Linux 6.15 (`PIDFD_INFO_SIZE_VER1`).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
    coredump_mask: u32,
    spare1: u32,
}

const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `_IOWR(0xFF, 11, struct pidfd_info)` with the 72-byte layout above.
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;

static PIDFD_INFO_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The exit status of the process behind `pidfd`, readable by any holder of the
/// pidfd once the process has been reaped by its parent (Linux 6.15+).
///
/// `Ok(None)` when the status is not available (yet, or on older kernels).
pub(crate) fn pidfd_exit_info(pidfd: &OwnedFd) -> io::Result<Option<WaitStatus>> {
    if PIDFD_INFO_UNSUPPORTED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: `info` is a properly sized, writable pidfd_info as the request
    // code encodes; the kernel writes at most that many bytes.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &mut info as *mut PidfdInfo) };
    if r < 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOTTY) => {
                PIDFD_INFO_UNSUPPORTED.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            // ESRCH: reaped before exit information was recorded (older
            // kernels); EINVAL: a request this kernel does not understand.
            Some(libc::ESRCH) | Some(libc::EINVAL) => return Ok(None),
            _ => return Err(e),
        }
    }
    if info.mask & PIDFD_INFO_EXIT == 0 {
        return Ok(None);
    }
    Ok(Some(WaitStatus::from_raw(info.exit_code)))
}

/// Makes the calling process a child subreaper (`PR_SET_CHILD_SUBREAPER`).
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    Ok(rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?)
}

/// Sets the calling thread's name as `ps -o comm` and `top` show it
/// (`PR_SET_NAME`, cut to 15 bytes; a name with a NUL byte is cut there).
pub(crate) fn set_thread_name(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    let n = bytes
        .iter()
        .take(15)
        .position(|&b| b == 0)
        .unwrap_or(bytes.len().min(15));
    let name = std::ffi::CString::new(&bytes[..n]).expect("BUG: cut before any NUL byte");
    Ok(rustix::thread::set_name(&name)?)
}

/// Restricts the calling process to the given CPUs.
pub(crate) fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        if cpu >= CpuSet::MAX_CPU {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cpu index out of range"));
        }
        set.set(cpu);
    }
    Ok(rustix::thread::sched_setaffinity(None, &set)?)
}

/// The resource limits the runtime sets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resource {
    /// `RLIMIT_NOFILE`.
    OpenFiles,
    /// `RLIMIT_CPU`, in seconds.
    CpuSeconds,
    /// `RLIMIT_DATA`, in bytes.
    DataBytes,
}

impl Resource {
    fn raw(self) -> rustix::process::Resource {
        match self {
            Resource::OpenFiles => rustix::process::Resource::Nofile,
            Resource::CpuSeconds => rustix::process::Resource::Cpu,
            Resource::DataBytes => rustix::process::Resource::Data,
        }
    }
}

/// Reads the (soft, hard) limit of `resource` (`None` in either: unlimited).
pub(crate) fn get_rlimit(resource: Resource) -> io::Result<(u64, u64)> {
    let lim = rustix::process::getrlimit(resource.raw());
    Ok((lim.current.unwrap_or(u64::MAX), lim.maximum.unwrap_or(u64::MAX)))
}

/// Sets the (soft, hard) limit of `resource` for the calling process
/// (`u64::MAX`: unlimited).
pub(crate) fn set_rlimit(resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
    let limit = |v: u64| (v != u64::MAX).then_some(v);
    let lim = rustix::process::Rlimit {
        current: limit(soft),
        maximum: limit(hard),
    };
    Ok(rustix::process::setrlimit(resource.raw(), lim)?)
}

/// Spawns `cmd` with its process moved into a cgroup before it executes the
/// program: `procs` is that cgroup's `cgroup.procs`, open for writing. Nothing
/// the program starts can run outside the cgroup.
pub(crate) fn spawn_in_cgroup(cmd: &mut std::process::Command, procs: OwnedFd) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let fd = procs.as_raw_fd();
    // SAFETY: the hook runs in the forked child before exec. It only calls
    // write(2), which is async-signal-safe, on a descriptor opened before the
    // fork (and kept open by `procs` until the spawn returns); it allocates
    // nothing (an OS error is a plain code).
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process.
            if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let child = cmd.spawn();
    drop(procs);
    child
}

/// Closes every descriptor from 3 up except those in `keep` (`close_range(2)`).
pub(crate) fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep.iter().filter(|&&fd| fd > 2).map(|&fd| fd as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut lo: u32 = 3;
    // close_range takes integers only (rustix does not offer it).
    for fd in keep {
        if fd > lo {
            syscall!(close_range(lo, fd - 1, 0))?;
        }
        lo = fd + 1;
    }
    syscall!(close_range(lo, u32::MAX, 0)).map(drop)
}

/// Sets (`Some`) or removes (`None`) an environment variable. Called only in a
/// freshly forked child, before it starts any thread.
pub(crate) fn set_env_in_child(key: &OsStr, value: Option<&OsStr>) {
    // SAFETY: the caller is a freshly forked child with a single thread, so no
    // other thread can be reading the environment concurrently.
    unsafe {
        match value {
            Some(v) => std::env::set_var(key, v),
            None => std::env::remove_var(key),
        }
    }
}

/// Clears the whole environment. Called only in a freshly forked child.
pub(crate) fn clear_env_in_child() {
    let keys: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in keys {
        set_env_in_child(&k, None);
    }
}

/// `SIGXCPU`: the CPU time limit was reached.
pub(crate) const SIGXCPU: i32 = libc::SIGXCPU;
/// `SIGABRT`: what an allocation failure in Rust ends with.
pub(crate) const SIGABRT: i32 = libc::SIGABRT;
/// `SIGKILL`.
pub(crate) const SIGKILL: i32 = libc::SIGKILL;
/// `SIGTERM`.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
/// `SIGSEGV`.
#[cfg(test)] // Only the table's unit tests name it.
pub(crate) const SIGSEGV: i32 = libc::SIGSEGV;

/// The conventional name of a signal number ("SIGSEGV"), or `None`.
pub(crate) fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTKFLT => "SIGSTKFLT",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Gives `SIGCHLD` its default disposition, so that the kernel keeps zombies
/// for their parents to reap (an ignored `SIGCHLD` would reap them at once).
pub(crate) fn default_sigchld() {
    // SAFETY: SIG_DFL is a valid disposition for SIGCHLD.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
}
