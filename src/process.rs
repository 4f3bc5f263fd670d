//! Starting processes: [`spawn`], [`spawn_link`], [`spawn_monitor`],
//! [`spawn_fn`], [`spawn_join`] and their [`Builder`]; names and
//! `process_info`.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{JoinError, JoinErrorKind, RegisterError, SpawnError, SpawnErrorKind};
use crate::exit::{ExitReason, IntoExitReason};
use crate::mailbox::{Ctx, Mailbox};
use crate::monitor::MonitorRef;
use crate::pid::{Overflow, Pid, ProcessInfo};
use crate::runtime::child::ChildOptions;
use crate::runtime::inbox::decode_message;
use crate::runtime::spawn::{Spec, spawn_closure, spawn_from_zygote};
use crate::runtime::zygote::{Call, Entry};
use crate::runtime::{self, Runtime};
use crate::sys::text;
use crate::wire::envelope::{NodeReply, ToNode};

/// How [`Builder::memory_limit`] is enforced on a node, from
/// [`Node::memory_limiter`](crate::Node::memory_limiter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryLimiter {
    /// A cgroup v2 per limited process, with `memory.max`. The node's cgroup
    /// must be able to hand the memory controller down: the node runs in the
    /// root cgroup, or alone in its cgroup (a delegated service, a
    /// container's one program).
    CgroupV2,
    /// A cgroup of the v1 memory controller per limited process (hosts that
    /// mount it, where the v2 hierarchy has no memory controller).
    CgroupV1,
    /// `RLIMIT_DATA`: no cgroup could be made, or
    /// [`Config::memory_cgroups`](crate::Config::memory_cgroups) is off.
    /// Approximate: it bounds address space, not memory in use.
    DataRlimit,
}

fn current() -> Result<&'static Runtime, SpawnError> {
    runtime::current().ok_or_else(|| SpawnError::new(SpawnErrorKind::NotInitialized))
}

/// Options for a new process.
///
/// ```no_run
/// # fn main() -> Result<(), converge::Error> {
/// let node = converge::init()?;
/// let worker = converge::Builder::new()
///     .name("worker")
///     .env("RUST_LOG", "debug")
///     .mailbox_bound(1000, converge::Overflow::DropOldest)
///     .spawn(|ctx: converge::Ctx<u64>| {
///         while let Ok(n) = ctx.recv() {
///             println!("{n}");
///         }
///     })?;
/// worker.send(7)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    options: ChildOptions,
    keep_fds: Vec<RawFd>,
    trap_exits: bool,
}

impl Builder {
    /// Default options.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// A name for the process: shown by `ps -o comm` and `top` (cut to 15
    /// bytes) and by [`process_info`].
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.options.name = Some(name.into());
        self
    }

    /// The CPUs the process may run on.
    pub fn cpus(mut self, cpus: &[usize]) -> Builder {
        self.options.cpus = Some(cpus.to_vec());
        self
    }

    /// Sets an environment variable in the process.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Builder {
        self.options
            .env
            .push((key.as_ref().to_os_string(), Some(value.as_ref().to_os_string())));
        self
    }

    /// Removes an environment variable in the process.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Builder {
        self.options.env.push((key.as_ref().to_os_string(), None));
        self
    }

    /// Starts the process with an empty environment (before [`env`](Self::env)
    /// changes apply).
    pub fn env_clear(mut self) -> Builder {
        self.options.env_clear = true;
        self.options.env.clear();
        self
    }

    /// The process's working directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Builder {
        self.options.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Keeps a descriptor open in the process (every other inherited
    /// descriptor is closed). Closure processes only.
    pub fn keep_fd(mut self, fd: &impl AsRawFd) -> Builder {
        self.keep_fds.push(fd.as_raw_fd());
        self
    }

    /// Bounds the mailbox to `max` queued messages, with `policy` for what
    /// arrives when it is full. Signals (`Down`, `Exit`) are never dropped.
    pub fn mailbox_bound(mut self, max: usize, policy: Overflow) -> Builder {
        self.options.bound = Some((max, policy));
        self
    }

    /// The process traps exits from its first instant (see [`Ctx::trap_exits`]).
    pub fn trap_exits(mut self, on: bool) -> Builder {
        self.trap_exits = on;
        self
    }

    /// Limits the process's CPU time (`RLIMIT_CPU`); past it the process ends
    /// with [`ExitReason::CpuLimit`].
    pub fn cpu_time_limit(mut self, limit: Duration) -> Builder {
        self.options.cpu_seconds = Some(limit.as_secs().max(1));
        self
    }

    /// Limits the memory the process may use; past it the process ends with
    /// [`ExitReason::MemoryLimit`]. How depends on the node
    /// ([`Node::memory_limiter`](crate::Node::memory_limiter)):
    ///
    /// - in a cgroup of its own (v2 `memory.max`, or the v1 memory controller),
    ///   the limit counts the pages the process touches from its start (swap
    ///   too, where the kernel accounts it), and the kernel's OOM killer ends
    ///   it there. Any other `SIGKILL` stays [`ExitReason::Killed`]. Closure
    ///   processes and programs it starts itself share its cgroup unless they
    ///   have a limit of their own.
    /// - without a usable cgroup, `RLIMIT_DATA`: it bounds the address space
    ///   of heap and anonymous mappings (what the process inherited from its
    ///   parent included, touched or not), an allocation past it fails and
    ///   Rust aborts. An abort of such a process is reported as `MemoryLimit`,
    ///   whatever caused it.
    ///
    /// The full rules are in [`semantics`](crate::semantics) (Resource limits).
    pub fn memory_limit(mut self, bytes: u64) -> Builder {
        self.options.memory_bytes = Some(bytes);
        self
    }

    /// Limits the process's data segment (`RLIMIT_DATA`, which bounds heap
    /// allocations) and nothing more: an allocation past it fails, so
    /// `Vec::try_reserve` returns an error and a plain allocation aborts the
    /// process (its reason stays the `SIGABRT`). For a limit reported as
    /// [`ExitReason::MemoryLimit`], see [`memory_limit`](Self::memory_limit).
    pub fn data_limit(mut self, bytes: u64) -> Builder {
        self.options.data_bytes = Some(bytes);
        self
    }

    /// Lets what the process starts by itself (with a raw `fork`, or
    /// [`std::process::Command`]) outlive the node. By default what the
    /// process leaves behind when it ends, a *stray*, is adopted by the node,
    /// killed if the node dies, and stopped at the node's shutdown
    /// (`SIGTERM`, then `SIGKILL` when the shutdown timeout is up). While the
    /// process runs, the node's death signal is armed for its whole process
    /// group, which usually takes its children with it (not yet a
    /// guarantee).
    pub fn leave_strays(mut self, on: bool) -> Builder {
        self.options.leave_strays = on;
        self
    }

    /// Limits the process's open descriptors (`RLIMIT_NOFILE`): opening more
    /// fails with `EMFILE`, the process goes on.
    pub fn open_files_limit(mut self, n: u64) -> Builder {
        self.options.open_files = Some(n);
        self
    }

    fn spec(&self, link: bool, monitors: Vec<(u64, bool)>) -> Result<Spec<'_>, SpawnError> {
        if let Some(dir) = &self.options.cwd
            && !dir.is_dir()
        {
            return Err(SpawnError::new(SpawnErrorKind::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("working directory {} does not exist", dir.display()),
            ))));
        }
        Ok(Spec {
            options: &self.options,
            keep_fds: &self.keep_fds,
            link,
            monitors,
            trap_exits: self.trap_exits,
        })
    }

    /// Forks the calling process; the child runs `f` with its own mailbox and
    /// ends when `f` returns (its exit reason comes from the return value, see
    /// [`IntoExitReason`]) or panics ([`ExitReason::Panic`]).
    ///
    /// Only the calling thread exists in the child: `f` must not rely on other
    /// threads of the caller or on locks they may hold. Standard output and
    /// error are flushed before the fork. Every descriptor but stdio and those
    /// given to [`keep_fd`](Self::keep_fd) is closed in the child. For a parent
    /// with many threads, [`spawn_fn`](Self::spawn_fn) starts from a clean image.
    ///
    /// Each process leads a process group of its own (so that a terminal's
    /// Ctrl-C reaches the node, not every process). A group leader cannot
    /// start a session: `setsid()` in a process fails with `EPERM`. To run
    /// something in a session of its own, start it from the process as a
    /// child that calls `setsid` (a [`Command`](std::process::Command) with
    /// a `pre_exec` hook, or a [port](crate::port) whose program calls it).
    pub fn spawn<M, F, R>(&self, f: F) -> Result<Mailbox<M>, SpawnError>
    where
        M: Serialize + DeserializeOwned,
        F: FnOnce(Ctx<M>) -> R,
        R: IntoExitReason,
    {
        let rt = current()?;
        let pid = spawn_closure(rt, self.spec(false, Vec::new())?, move |rt| {
            f(Ctx::new(rt)).into_exit_reason()
        })?;
        Ok(Mailbox::from_pid(pid))
    }

    /// Like [`spawn`](Self::spawn), and links the new process with the caller
    /// atomically: the link exists before the child runs.
    pub fn spawn_link<M, F, R>(&self, f: F) -> Result<Mailbox<M>, SpawnError>
    where
        M: Serialize + DeserializeOwned,
        F: FnOnce(Ctx<M>) -> R,
        R: IntoExitReason,
    {
        let rt = current()?;
        let pid = spawn_closure(rt, self.spec(true, Vec::new())?, move |rt| {
            f(Ctx::new(rt)).into_exit_reason()
        })?;
        Ok(Mailbox::from_pid(pid))
    }

    /// Like [`spawn`](Self::spawn), and monitors the new process atomically:
    /// its `Down` comes with its real reason however soon it dies.
    pub fn spawn_monitor<M, F, R>(&self, f: F) -> Result<(Mailbox<M>, MonitorRef), SpawnError>
    where
        M: Serialize + DeserializeOwned,
        F: FnOnce(Ctx<M>) -> R,
        R: IntoExitReason,
    {
        let rt = current()?;
        let reference = rt.next_ref();
        let pid = spawn_closure(rt, self.spec(false, vec![(reference, false)])?, move |rt| {
            f(Ctx::new(rt)).into_exit_reason()
        })?;
        Ok((Mailbox::from_pid(pid), MonitorRef::new(rt.pid().serial(), reference)))
    }

    /// Starts a process from the zygote: a clean single-threaded image forked
    /// by `init()`, so the process inherits neither the caller's threads nor
    /// its heap. It runs `f(ctx, args)`; `f` must be a plain function (not a
    /// capturing closure) and `args` travel postcard-encoded.
    pub fn spawn_fn<M, A, R>(&self, f: fn(Ctx<M>, A) -> R, args: A) -> Result<Mailbox<M>, SpawnError>
    where
        M: Serialize + DeserializeOwned + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: IntoExitReason + 'static,
    {
        let rt = current()?;
        let pid = spawn_from_zygote(rt, self.spec(false, Vec::new())?, make_call(f, &args)?)?;
        Ok(Mailbox::from_pid(pid))
    }

    /// Starts `call` from the zygote, linked with the caller if `link`.
    pub(crate) fn spawn_call(&self, call: Call, link: bool) -> Result<Pid, SpawnError> {
        let rt = current()?;
        spawn_from_zygote(rt, self.spec(link, Vec::new())?, call)
    }

    /// Forks a process that computes a value, like `std::thread::spawn`:
    /// [`JoinHandle::join`] gives the value back, or the exit reason if the
    /// process ended without returning.
    pub fn spawn_join<M, T, F>(&self, f: F) -> Result<JoinHandle<T, M>, SpawnError>
    where
        M: Serialize + DeserializeOwned,
        T: Serialize + DeserializeOwned,
        F: FnOnce(Ctx<M>) -> T,
    {
        let rt = current()?;
        let reference = rt.next_ref();
        let parent = rt.pid();
        rt.inbox.await_ref(reference);
        let spawned = spawn_closure(rt, self.spec(false, vec![(reference, true)])?, move |rt| {
            let value = f(Ctx::new(rt));
            match rt.send_reply(parent, reference, &value) {
                Ok(_) => ExitReason::Normal,
                Err(e) => ExitReason::Error(format!("the return value could not be sent: {e:?}")),
            }
        });
        match spawned {
            Ok(pid) => Ok(JoinHandle {
                mailbox: Mailbox::from_pid(pid),
                reference,
                rt,
                finished: false,
                _value: PhantomData,
            }),
            Err(e) => {
                rt.inbox.forget_ref(reference);
                Err(e)
            }
        }
    }
}

/// What the zygote needs to run `f(ctx, args)`.
pub(crate) fn make_call<M, A, R>(f: fn(Ctx<M>, A) -> R, args: &A) -> Result<Call, SpawnError>
where
    M: Serialize + DeserializeOwned + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: IntoExitReason + 'static,
{
    Ok(Call {
        entry: text::erase::<Entry>(zygote_entry::<M, A, R>),
        func: text::erase(f),
        args: postcard::to_stdvec(args).map_err(|e| SpawnError::new(SpawnErrorKind::Encode(e.to_string())))?,
    })
}

fn zygote_entry<M, A, R>(rt: &'static Runtime, func: text::FnAddr, args: Vec<u8>) -> ExitReason
where
    M: Serialize + DeserializeOwned + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: IntoExitReason + 'static,
{
    let Some(f) = text::restore::<fn(Ctx<M>, A) -> R>(func) else {
        return ExitReason::Error("spawn_fn: not a function of this executable".into());
    };
    match crate::wire::decode_exact::<A>(&args) {
        Ok(args) => f(Ctx::new(rt), args).into_exit_reason(),
        Err(e) => ExitReason::Error(format!("spawn_fn: decoding the arguments failed: {e}")),
    }
}

/// Spawns a process running `f` with the default options (see [`Builder::spawn`]).
pub fn spawn<M, F, R>(f: F) -> Result<Mailbox<M>, SpawnError>
where
    M: Serialize + DeserializeOwned,
    F: FnOnce(Ctx<M>) -> R,
    R: IntoExitReason,
{
    Builder::new().spawn(f)
}

/// Spawns a process linked with the caller (see [`Builder::spawn_link`]).
pub fn spawn_link<M, F, R>(f: F) -> Result<Mailbox<M>, SpawnError>
where
    M: Serialize + DeserializeOwned,
    F: FnOnce(Ctx<M>) -> R,
    R: IntoExitReason,
{
    Builder::new().spawn_link(f)
}

/// Spawns a process monitored by the caller (see [`Builder::spawn_monitor`]).
pub fn spawn_monitor<M, F, R>(f: F) -> Result<(Mailbox<M>, MonitorRef), SpawnError>
where
    M: Serialize + DeserializeOwned,
    F: FnOnce(Ctx<M>) -> R,
    R: IntoExitReason,
{
    Builder::new().spawn_monitor(f)
}

/// Starts a process from the zygote (see [`Builder::spawn_fn`]).
pub fn spawn_fn<M, A, R>(f: fn(Ctx<M>, A) -> R, args: A) -> Result<Mailbox<M>, SpawnError>
where
    M: Serialize + DeserializeOwned + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: IntoExitReason + 'static,
{
    Builder::new().spawn_fn(f, args)
}

/// Forks a process that computes a value (see [`Builder::spawn_join`]).
pub fn spawn_join<M, T, F>(f: F) -> Result<JoinHandle<T, M>, SpawnError>
where
    M: Serialize + DeserializeOwned,
    T: Serialize + DeserializeOwned,
    F: FnOnce(Ctx<M>) -> T,
{
    Builder::new().spawn_join(f)
}

/// The handle of a process started with [`spawn_join`]: the process version of
/// `std::thread::JoinHandle`.
///
/// Dropping the handle does not stop the process; its value is then discarded.
#[derive(Debug)]
pub struct JoinHandle<T, M = ()> {
    mailbox: Mailbox<M>,
    reference: u64,
    rt: &'static Runtime,
    finished: bool,
    _value: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned, M> JoinHandle<T, M> {
    /// The process's mailbox.
    pub fn mailbox(&self) -> Mailbox<M> {
        self.mailbox
    }

    /// The process's id.
    pub fn pid(&self) -> Pid {
        self.mailbox.pid()
    }

    /// Waits for the process to end; gives its value, or its exit reason if it
    /// ended without one.
    pub fn join(mut self) -> Result<T, JoinError> {
        self.wait(None)
    }

    /// Like [`join`](Self::join), waiting at most `timeout`; on timeout the
    /// process goes on and the handle can be joined again.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<T, JoinError> {
        self.wait(Some(Instant::now() + timeout))
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<T, JoinError> {
        if self.finished {
            return Err(JoinError::new(JoinErrorKind::Exited(ExitReason::NoProc)));
        }
        let reference = self.reference;
        let got = self.rt.inbox.pump(self.rt, deadline, |st| {
            let a = st.awaited.get_mut(&reference)?;
            let down = a.down.take()?;
            Some((a.reply.take(), down))
        });
        let Some((reply, reason)) = got else {
            return Err(JoinError::new(JoinErrorKind::Timeout));
        };
        self.finished = true;
        self.rt.inbox.forget_ref(reference);
        match (reply, reason) {
            (Some((fp, body)), ExitReason::Normal) => {
                decode_message::<T>(fp, &body).map_err(|e| JoinError::new(JoinErrorKind::Decode(e)))
            }
            (_, ExitReason::Normal) => Err(JoinError::new(JoinErrorKind::Exited(ExitReason::Normal))),
            (_, reason) => Err(JoinError::new(JoinErrorKind::Exited(reason))),
        }
    }
}

impl<T, M> Drop for JoinHandle<T, M> {
    fn drop(&mut self) {
        if !self.finished {
            self.rt.inbox.forget_ref(self.reference);
            self.rt.tell_node(&ToNode::Demonitor {
                request: None,
                reference: self.reference,
            });
        }
    }
}

/// The id of the calling process (of the actor, inside an actor's step), if
/// `init()` ran.
pub fn self_pid() -> Option<Pid> {
    runtime::current().map(|rt| rt.sender())
}

/// Registers `pid` under `name` on its node; the name is removed when the
/// process exits.
pub fn register(name: &str, pid: impl Into<Pid>) -> Result<(), RegisterError> {
    let pid = pid.into();
    let Some(rt) = runtime::current() else {
        return Err(RegisterError::NoProc(pid));
    };
    match rt.ask_node(|request| ToNode::RegisterName {
        request,
        name: name.to_string(),
        pid,
    }) {
        Some(NodeReply::Done) => Ok(()),
        Some(NodeReply::NameTaken) => Err(RegisterError::Taken(name.to_string())),
        _ => Err(RegisterError::NoProc(pid)),
    }
}

/// Removes a registered name.
pub fn unregister(name: &str) {
    if let Some(rt) = runtime::current() {
        rt.tell_node(&ToNode::UnregisterName { name: name.to_string() });
    }
}

/// The process registered under `name` on this node, if it is alive.
pub fn whereis(name: &str) -> Option<Pid> {
    let rt = runtime::current()?;
    match rt.ask_node(|request| ToNode::Whereis {
        request,
        name: name.to_string(),
    }) {
        Some(NodeReply::Pid(p)) => p,
        _ => None,
    }
}

/// The status of a process on this node, or `None` if it is not alive.
pub fn process_info(pid: impl Into<Pid>) -> Option<ProcessInfo> {
    let pid = pid.into();
    let rt = runtime::current()?;
    match rt.ask_node(|request| ToNode::Info { request, pid }) {
        Some(NodeReply::Info(i)) => i,
        _ => None,
    }
}

/// Writes the messages this process has batched (they otherwise leave within
/// the flush delay, or when the process next receives).
pub fn flush() {
    if let Some(rt) = runtime::current() {
        rt.flush();
    }
}
