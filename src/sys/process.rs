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

/// Turns off glibc's "fastbins" (`mallopt(M_MXFAST, 0)`), so that freed
/// small blocks are merged when they are freed rather than on the first
/// large allocation after it. A forked child would otherwise do that merge
/// at its first allocation of 1 KiB or more: a walk over every small block
/// its parent ever freed, each write a copy-on-write fault (a third of a
/// closure spawn's time in the child, measured). Small frees still go to
/// glibc's per-thread cache first. Nothing to do with another C library.
pub(crate) fn fork_friendly_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes a setting of glibc's allocator, which takes its
    // own lock; any value is valid for M_MXFAST (0 turns fastbins off).
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
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

/// Whether a child of the calling process, of either kind, has ended and
/// waits to be reaped: `waitid(P_ALL, WNOHANG | WNOWAIT | __WALL)`, which
/// reaps nothing. On an unexpected error, true (the caller then looks).
pub(crate) fn any_child_ended() -> bool {
    let options = WaitIdOptions::EXITED
        | WaitIdOptions::NOHANG
        | WaitIdOptions::NOWAIT
        | WaitIdOptions::from_bits_retain(libc::__WALL as u32);
    !matches!(waitid(WaitId::All, options), Ok(None) | Err(Errno::CHILD))
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

/// The wait status of `ospid`, the process of `pidfd`, read from
/// `/proc/<pid>/stat` (field 52, `exit_code`, as `waitpid(2)` reports it)
/// while it is a zombie that its parent has not reaped yet: the end of a
/// process that is not this one's child, without waiting for its parent's
/// report. `None` if it is not a zombie, if it was reaped meanwhile (its pid
/// may have been another process's by the read: checked after it, through
/// the pidfd), or if its status is hidden from this process (the kernel shows
/// a zombie's exit code only to a process that may trace it, as it shows
/// its executable: `/proc/<pid>/exe` is refused then).
///
/// The leader's code is the process's, unless the leader ended first
/// (`pthread_exit` in `main`) and another thread set the status later: call
/// it only for processes that never do that (the runtime's own). Nor does it
/// carry the core-dump flag when another thread dumped the core (the flag is
/// added after the leader has ended): `None` for a signal that dumps core.
pub(crate) fn zombie_status(pidfd: &OwnedFd, ospid: i32) -> Option<WaitStatus> {
    let stat = std::fs::read_to_string(format!("/proc/{ospid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // From field 3 (the state) on: `exit_code` is field 52.
    if fields.first() != Some(&"Z") {
        return None;
    }
    let code: i32 = fields.get(49)?.parse().ok()?;
    let signal = code & 0x7f;
    let dumps_core = [
        libc::SIGQUIT,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGSEGV,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGSYS,
    ];
    if dumps_core.contains(&signal) {
        return None;
    }
    if let Err(e) = std::fs::read_link(format!("/proc/{ospid}/exe"))
        && e.kind() == io::ErrorKind::PermissionDenied
    {
        return None;
    }
    // Not reaped yet: the pid was still its own when it was read.
    if raw_pidfd_signal(pidfd, 0, 0) != 0 {
        return None;
    }
    Some(WaitStatus::from_raw(code))
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

/// A program to start with [`spawn_program`], prepared beforehand: its child
/// only makes system calls, as it shares the caller's memory until it execs.
#[derive(Debug)]
pub(crate) struct Program {
    /// Where it is looked for, in order: itself if it names a path; else in
    /// each directory of the `PATH` it is given (`/bin:/usr/bin` if none),
    /// as `execvp(3)` does.
    paths: Vec<std::ffi::CString>,
    argv: Vec<std::ffi::CString>,
    envp: Vec<std::ffi::CString>,
    cwd: Option<std::ffi::CString>,
}

impl Program {
    /// `program` run with `args` (its `argv[0]` is `arg0`, or `program`),
    /// exactly the environment `env`, in `cwd` (or the caller's directory).
    /// A nul byte in any of them is an `InvalidInput` error.
    pub(crate) fn new(
        program: &[u8],
        arg0: Option<&[u8]>,
        args: &[Vec<u8>],
        env: &[(Vec<u8>, Vec<u8>)],
        cwd: Option<&[u8]>,
    ) -> io::Result<Program> {
        use std::ffi::CString;
        let c = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a nul byte in a program's name, argument, environment or directory",
                )
            })
        };
        let paths = if program.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        } else if program.contains(&b'/') {
            vec![c(program)?]
        } else {
            let path = env
                .iter()
                .rev()
                .find(|(k, _)| k == b"PATH")
                .map_or(&b"/bin:/usr/bin"[..], |(_, v)| v);
            path.split(|&b| b == b':')
                .map(|dir| {
                    // An empty entry is the current directory.
                    if dir.is_empty() {
                        c(program)
                    } else {
                        let mut p = dir.to_vec();
                        if !dir.ends_with(b"/") {
                            p.push(b'/');
                        }
                        p.extend_from_slice(program);
                        c(&p)
                    }
                })
                .collect::<io::Result<_>>()?
        };
        let mut argv = vec![c(arg0.unwrap_or(program))?];
        for a in args {
            argv.push(c(a)?);
        }
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = Vec::with_capacity(k.len() + 1 + v.len());
                kv.extend_from_slice(k);
                kv.push(b'=');
                kv.extend_from_slice(v);
                c(&kv)
            })
            .collect::<io::Result<_>>()?;
        Ok(Program {
            paths,
            argv,
            envp,
            cwd: cwd.map(c).transpose()?,
        })
    }
}

/// What the child of [`spawn_program`] reads, in the caller's memory.
struct SpawnPlan {
    paths: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    /// For each of `paths`, the arguments that run it as a script without
    /// a `#!` line: `/bin/sh`, the path, then the program's arguments (as
    /// `execvp(3)` does).
    scripts: Vec<Vec<*const libc::c_char>>,
    envp: Vec<*const libc::c_char>,
    cwd: *const libc::c_char,
    stdio: [RawFd; 3],
    procs: RawFd,
    /// The child's error number, if it could not exec.
    error: std::sync::atomic::AtomicI32,
}

/// Bytes of the stack the child of [`spawn_program`] runs on until it execs
/// (system calls only), besides its guard page.
const SPAWN_STACK: usize = 64 * 1024;

/// Starts `program` in a process group of its own, with `stdio` as its
/// standard input, output and error, moved into the cgroup whose
/// `cgroup.procs` is open as `procs` (if any) before it execs: nothing it
/// starts can escape the cgroup. Its handled signals are reset to their
/// defaults, `SIGPIPE` too, and no signal is blocked.
///
/// The child shares this process's memory and this thread waits until it
/// execs (`CLONE_VM | CLONE_VFORK`, as `posix_spawn(3)` does): no page table
/// is copied, however large this process. Returns its pid and a pidfd.
pub(crate) fn spawn_program(
    program: &Program,
    stdio: [std::os::fd::BorrowedFd<'_>; 3],
    procs: Option<std::os::fd::BorrowedFd<'_>>,
) -> io::Result<(i32, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let nul = std::ptr::null::<libc::c_char>();
    // A stream whose descriptor is another stream's slot (0 to 2) would be
    // replaced before its own turn: a copy above 2 is used instead.
    let mut moved: Vec<OwnedFd> = Vec::new();
    let mut fds = stdio.map(|fd| fd.as_raw_fd());
    for (slot, fd) in fds.iter_mut().enumerate() {
        if (0..=2).contains(fd) && *fd != slot as RawFd {
            let copy = rustix::io::fcntl_dupfd_cloexec(stdio[slot], 3)?;
            *fd = copy.as_raw_fd();
            moved.push(copy);
        }
    }
    let argv: Vec<_> = program.argv.iter().map(|a| a.as_ptr()).chain([nul]).collect();
    let mut plan = SpawnPlan {
        paths: program.paths.iter().map(|p| p.as_ptr()).collect(),
        scripts: program
            .paths
            .iter()
            .map(|p| {
                [c"/bin/sh".as_ptr(), p.as_ptr()]
                    .into_iter()
                    .chain(argv[1..].iter().copied())
                    .collect()
            })
            .collect(),
        argv,
        envp: program.envp.iter().map(|e| e.as_ptr()).chain([nul]).collect(),
        cwd: program.cwd.as_ref().map_or(nul, |c| c.as_ptr()),
        stdio: fds,
        procs: procs.map_or(-1, |fd| fd.as_raw_fd()),
        error: std::sync::atomic::AtomicI32::new(0),
    };
    let page = 4096;
    // SAFETY: a fresh private anonymous mapping; checked for failure.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SPAWN_STACK + page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the lowest page of the mapping made above becomes its guard:
    // an overflow faults instead of writing past it.
    unsafe { libc::mprotect(stack, page, libc::PROT_NONE) };
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the signal sets are local values and the mask is this thread's.
    // `clone` runs `spawn_child` on the stack mapped above (its top, 16-byte
    // aligned as it is page-aligned), with `plan`, which lives until `clone`
    // returns: with CLONE_VFORK this thread is suspended until the child
    // execs or exits, and the child touches nothing else of this process
    // (no allocation, no lock, no thread-local). All signals are blocked
    // across the call (glibc's own too, through the system call itself), so
    // no handler of this process runs on the child's stack; the child resets
    // them before it unblocks any.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        std::ptr::write_bytes(&mut all, 0xff, 1);
        let mut old: libc::sigset_t = std::mem::zeroed();
        let kernel_set = std::mem::size_of::<libc::c_ulong>();
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &all, &mut old, kernel_set);
        let pid = libc::clone(
            spawn_child,
            stack.cast::<u8>().add(SPAWN_STACK + page).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            (&raw mut plan).cast(),
            &mut pidfd as *mut libc::c_int,
        );
        let e = io::Error::last_os_error();
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old,
            std::ptr::null_mut::<libc::sigset_t>(),
            kernel_set,
        );
        libc::munmap(stack, SPAWN_STACK + page);
        if pid == -1 {
            return Err(e);
        }
        pid
    };
    drop(moved);
    if pidfd < 0 {
        // A kernel without CLONE_PIDFD (before 5.2) ignores it.
        let _ = kill_pid(pid, libc::SIGKILL);
        // SAFETY: reaps our own child, just killed.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel has no CLONE_PIDFD (Linux 5.2)",
        ));
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor, ours alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    match plan.error.load(Ordering::Acquire) {
        0 => Ok((pid, pidfd)),
        errno => {
            // It ended without exec: reap it.
            let _ = waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// The child of [`spawn_program`], on its own stack in the caller's memory:
/// system calls only, then `execve` or `_exit`.
extern "C" fn spawn_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `SpawnPlan` that `spawn_program` keeps alive
    // while this runs (its thread is suspended until exec or exit).
    let plan = unsafe { &*arg.cast::<SpawnPlan>() };
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL);
    let fail = |e: i32| -> libc::c_int {
        // Never 0: that reads as "it runs".
        plan.error.store(if e == 0 { libc::EIO } else { e }, Ordering::Release);
        // SAFETY: ends this child at once; nothing of it is shared but
        // `plan`, written above.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: every call below takes descriptors, local values or the
    // nul-terminated strings and arrays of `plan`, and affects this child
    // only (its own cgroup, group, signal handlers and mask, descriptors
    // and directory), as documented for `spawn_program`.
    unsafe {
        if plan.procs >= 0 {
            match libc::write(plan.procs, b"0".as_ptr().cast(), 1) {
                1 => {}
                -1 => return fail(errno()),
                _ => return fail(libc::EIO),
            }
        }
        libc::setpgid(0, 0);
        for sig in 1..libc::SIGRTMAX() + 1 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let ignored = old.sa_sigaction == libc::SIG_IGN && sig != libc::SIGPIPE;
            if old.sa_sigaction != libc::SIG_DFL && !ignored {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        for (to, &fd) in plan.stdio.iter().enumerate() {
            let to = to as RawFd;
            let done = if fd == to {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, to)
            };
            if done == -1 {
                return fail(errno());
            }
        }
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
            return fail(errno());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // As execvp(3): on to the next directory when it is not there;
        // "permission denied" if that was all that was found.
        let mut error = libc::ENOENT;
        let mut denied = false;
        for (&path, script) in plan.paths.iter().zip(&plan.scripts) {
            libc::execve(path, plan.argv.as_ptr(), plan.envp.as_ptr());
            if errno() == libc::ENOEXEC {
                // No `#!` line: a shell script, as execvp(3) runs it.
                libc::execve(script[0], script.as_ptr(), plan.envp.as_ptr());
                return fail(errno());
            }
            match errno() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                e => {
                    error = e;
                    break;
                }
            }
        }
        if denied && error == libc::ENOENT {
            error = libc::EACCES;
        }
        fail(error)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A zombie's status, as `waitpid` would give it, is read before its
    /// parent reaps it; nothing is read from a process that runs, or from
    /// one reaped already.
    #[test]
    fn a_zombie_status_is_read_until_it_is_reaped() {
        let cases = [
            ("exit 3", WaitStatus::Exited(3)),
            (
                "kill -KILL $$",
                WaitStatus::Signaled {
                    signal: SIGKILL,
                    core_dumped: false,
                },
            ),
        ];
        for (script, status) in cases {
            let mut child = std::process::Command::new("/bin/sh")
                .args(["-c", script])
                .spawn()
                .unwrap();
            let pid = child.id() as i32;
            let fd = pidfd_open(pid).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            assert!(
                super::super::socket::wait_fd(&fd, false, Some(deadline)).unwrap(),
                "{script}"
            );
            assert_eq!(zombie_status(&fd, pid), Some(status), "{script}");
            child.wait().unwrap();
            assert_eq!(zombie_status(&fd, pid), None, "{script}: reaped");
        }
        // A signal that dumps core: its flag may be added after the leader
        // ended (another thread dumped it), so it is left to the parent.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "kill -ABRT $$"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let fd = pidfd_open(pid).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(super::super::socket::wait_fd(&fd, false, Some(deadline)).unwrap());
        assert_eq!(zombie_status(&fd, pid), None);
        child.wait().unwrap();
        let mut running = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let pid = running.id() as i32;
        let fd = pidfd_open(pid).unwrap();
        assert_eq!(zombie_status(&fd, pid), None);
        running.kill().unwrap();
        running.wait().unwrap();
    }

    /// A child that ended and is not reaped is seen, and only then. Checked
    /// in a process of its own: the tests' process has other tests' children.
    #[test]
    fn an_ended_child_is_seen_until_it_is_reaped() {
        let checker = fork_child(|| {
            let step = |n: i32, ok: bool| {
                if !ok {
                    exit_now(n)
                }
            };
            step(10, !any_child_ended());
            let mut sleeper = std::process::Command::new("sleep").arg("10").spawn().unwrap();
            let fd = pidfd_open(sleeper.id() as i32).unwrap();
            step(11, !any_child_ended());
            sleeper.kill().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            step(12, super::super::socket::wait_fd(&fd, false, Some(deadline)).unwrap());
            step(13, any_child_ended());
            step(14, any_child_ended());
            sleeper.wait().unwrap();
            step(15, !any_child_ended());
            exit_now(0)
        })
        .unwrap();
        let fd = pidfd_open(checker).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let ended = super::super::socket::wait_fd(&fd, false, Some(deadline)).unwrap();
        if !ended {
            // Its group holds the checker and the sleeper it started.
            let _ = kill_pid(-checker, SIGKILL);
            let _ = waitid(WaitId::PidFd(fd.as_fd()), WaitIdOptions::EXITED);
            panic!("the checker did not end in 20 s");
        }
        assert_eq!(pidfd_try_wait(&fd).unwrap(), Some(WaitStatus::Exited(0)));
    }
}
