//! The node alone: `init()`, [`Config`], [`Node`], and what runs in the node
//! process for every other (the per-process runtime is `crate::runtime`).
//!
//! 1. [`table`]: the process table, links, monitors, names, and exit signals,
//!    a state machine (events in, effects out).
//! 2. [`control`]: the table's I/O: control connections, pidfds, strangers.
//! 3. [`watcher`]: the node thread that turns pidfd events into exits.
//! 4. [`zygote`]: the single-threaded process forked first, which forks
//!    `spawn_fn` processes, ports and schedulers (and its own hot spare).

pub(crate) mod control;
pub(crate) mod table;
pub(crate) mod watcher;
pub(crate) mod zygote;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex};

use crate::error::{InitError, InitErrorKind};
use crate::mailbox::{Ctx, Mailbox};
use crate::pid::{NodeId, Pid};
use crate::sys;
use crate::sys::poll::{Epoll, EventFd, Interest};
use crate::sys::{cgroup, proc_fs};
use crate::wire::envelope::{NodeReply, Registration, ToNode};

use self::control::{Control, MAIN_SERIAL, TOKEN_CTL_LISTENER, TOKEN_KICK, TOKEN_SIGNALS, ZYGOTE_SERIAL};
use crate::runtime::{self, LocalNode, Runtime, Settings};

/// The pool's classes, in slot order: the default class first.
fn pool_settings(config: &Config) -> Result<crate::runtime::PoolSettings, InitError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut classes = vec![(
        crate::pool::DEFAULT_CLASS.to_string(),
        config.schedulers.unwrap_or(cpus),
    )];
    classes.extend(config.classes.iter().cloned());
    let total: usize = classes.iter().map(|c| c.1).sum();
    if total > crate::sys::shared::SCHEDULERS {
        return Err(InitError::new(InitErrorKind::Config(format!(
            "{total} schedulers asked for, at most {} possible",
            crate::sys::shared::SCHEDULERS
        ))));
    }
    Ok(crate::runtime::PoolSettings {
        classes,
        init: config.scheduler_init.map(crate::sys::text::erase),
        step_limit: config.step_limit,
        kill_overruns: config.kill_overruns,
        busy_wait: config.busy_wait.unwrap_or(if cpus > 1 {
            Duration::from_micros(20)
        } else {
            Duration::ZERO
        }),
    })
}

/// The node's main thread, on the node of `any`.
pub(crate) fn main_pid(any: Pid) -> Pid {
    Pid::new(any.node(), MAIN_SERIAL)
}

/// Node options, for [`Config::init`]. [`init()`] uses the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    max_message_size: usize,
    shutdown_timeout: Duration,
    handle_signals: bool,
    coalesce_window: Duration,
    flush_delay: Duration,
    exit_flush_timeout: Duration,
    max_connections: usize,
    port_cgroups: bool,
    memory_cgroups: bool,
    schedulers: Option<usize>,
    classes: Vec<(String, usize)>,
    scheduler_init: Option<fn()>,
    step_limit: Option<Duration>,
    kill_overruns: bool,
    busy_wait: Option<Duration>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_message_size: 64 << 20,
            shutdown_timeout: Duration::from_secs(5),
            handle_signals: true,
            coalesce_window: Duration::from_micros(50),
            flush_delay: Duration::from_micros(50),
            exit_flush_timeout: Duration::from_secs(5),
            max_connections: 512,
            port_cgroups: true,
            memory_cgroups: true,
            schedulers: None,
            classes: Vec::new(),
            scheduler_init: None,
            step_limit: Some(Duration::from_secs(1)),
            kill_overruns: false,
            busy_wait: None,
        }
    }
}

impl Config {
    /// The default options.
    pub fn new() -> Config {
        Config::default()
    }

    /// Largest encoded message (default 64 MiB). A larger message is a send
    /// error; receivers refuse larger frames.
    pub fn max_message_size(mut self, bytes: usize) -> Config {
        self.max_message_size = bytes;
        self
    }

    /// How long an orderly shutdown waits before killing what is left
    /// (default 5 s). Used when the [`Node`] is dropped and on `SIGINT`/`SIGTERM`.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Config {
        self.shutdown_timeout = timeout;
        self
    }

    /// Whether the node handles `SIGINT` and `SIGTERM` with an orderly shutdown
    /// (default true). When false the application handles them itself.
    pub fn handle_signals(mut self, on: bool) -> Config {
        self.handle_signals = on;
        self
    }

    /// A frame sent within this time after a write on the same connection (and
    /// with no receive in between) is batched with the frames that follow
    /// (default 50 us).
    pub fn coalesce_window(mut self, window: Duration) -> Config {
        self.coalesce_window = window;
        self
    }

    /// How long a batched frame may wait before it is flushed (default 50 us).
    pub fn flush_delay(mut self, delay: Duration) -> Config {
        self.flush_delay = delay;
        self
    }

    /// How long an exiting process keeps trying to write the messages it still
    /// holds (default 5 s).
    pub fn exit_flush_timeout(mut self, timeout: Duration) -> Config {
        self.exit_flush_timeout = timeout;
        self
    }

    /// Most outgoing connections one process keeps open; past it the least
    /// recently used idle one is closed (default 512).
    pub fn max_connections(mut self, n: usize) -> Config {
        self.max_connections = n.max(1);
        self
    }

    /// Whether each port gets a cgroup of its own where a cgroup v2 subtree
    /// is writable (default on). The cgroup holds everything the program
    /// starts, even what leaves its process group with `setsid`; without it a
    /// port is held by its process group only. Off saves the cgroup's creation
    /// and removal on every port.
    pub fn port_cgroups(mut self, on: bool) -> Config {
        self.port_cgroups = on;
        self
    }

    /// Whether [`Builder::memory_limit`](crate::Builder::memory_limit) puts
    /// each limited process in a cgroup of its own where the node can make one
    /// with the memory controller (default on): cgroup v2 `memory.max`, or
    /// the cgroup v1 memory controller on hosts that still mount it. Off, or
    /// where neither is possible, the limit is `RLIMIT_DATA` (approximate: see
    /// [`MemoryLimiter::DataRlimit`](crate::MemoryLimiter::DataRlimit)).
    pub fn memory_cgroups(mut self, on: bool) -> Config {
        self.memory_cgroups = on;
        self
    }

    /// How many schedulers the pool's default class has (default: one per
    /// CPU the node may run on; 0: no default class). See [`crate::pool`].
    pub fn schedulers(mut self, n: usize) -> Config {
        self.schedulers = Some(n);
        self
    }

    /// Adds a class of `n` schedulers named `name`: tasks submitted to it run
    /// at most `n` at once, on schedulers of their own (for example a class
    /// of 8 for tasks that mostly wait, beside the CPU-bound default).
    pub fn scheduler_class(mut self, name: impl Into<String>, n: usize) -> Config {
        self.classes.push((name.into(), n));
        self
    }

    /// A function each scheduler runs when it starts, before any task (to set
    /// up logging or configuration: schedulers come from the zygote, forked
    /// before the application set anything up).
    pub fn scheduler_init(mut self, f: fn()) -> Config {
        self.scheduler_init = Some(f);
        self
    }

    /// How long one step of a lightweight actor may run before the watchdog
    /// reports it (a `tracing` warning, and
    /// [`ActorStats::overruns`](crate::pool::ActorStats)); default 1 s,
    /// `None` for no watchdog. A step cannot be preempted.
    pub fn actor_step_limit(mut self, limit: Option<Duration>) -> Config {
        self.step_limit = limit;
        self
    }

    /// Also kill the scheduler of an actor whose step runs over the limit:
    /// that actor ends with an `Error` saying so, the other actors of the
    /// scheduler end `Killed`, and the zygote replaces the scheduler.
    pub fn kill_overrunning_actors(mut self, kill: bool) -> Config {
        self.kill_overruns = kill;
        self
    }

    /// How long an idle scheduler, and a thread joining a task, poll for
    /// work or for the value before they sleep (default 20 us when the node
    /// may run on more than one CPU, none otherwise). Polling spares the
    /// sleep and the wake-up when the answer comes within that time, as a
    /// BEAM scheduler busy-waits; it costs that much CPU time per wait.
    pub fn pool_busy_wait(mut self, spin: Duration) -> Config {
        self.busy_wait = Some(spin);
        self
    }

    /// Turns the calling process into a node. See [`init()`].
    pub fn init(self) -> Result<Node, InitError> {
        init_node(self)
    }
}

/// Turns the calling process into a node, with the default [`Config`].
///
/// Call it first thing in `main`, before any thread is started: the node forks
/// its zygote while the process is still single-threaded, and it returns an
/// error ([`InitErrorKind::Threaded`]) otherwise. Keep the returned [`Node`]
/// alive for as long as processes should run: dropping it (returning from
/// `main`) shuts every process down in order.
///
/// The calling process becomes a child subreaper, `SIGCHLD` gets its default
/// disposition, the soft open-file limit is raised to the hard one, glibc's
/// allocator stops keeping "fastbins" (`mallopt(M_MXFAST, 0)`: a forked
/// child would merge them all on its first large allocation, copying every
/// page they sit on), and (unless
/// [`Config::handle_signals`] says otherwise) `SIGINT` and `SIGTERM` start an
/// orderly shutdown.
pub fn init() -> Result<Node, InitError> {
    Config::default().init()
}

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// The node's state: the process table and the exit watcher's resources.
#[derive(Debug)]
pub(crate) struct NodeShared {
    /// This node.
    pub(crate) id: NodeId,
    /// The process table.
    pub(crate) control: Mutex<Control>,
    /// Notified after the watcher handled events (processes exited).
    pub(crate) changed: Condvar,
    /// The watcher's epoll.
    pub(crate) epoll: &'static Epoll,
    /// Wakes the watcher.
    pub(crate) kick: EventFd,
    /// The only write end of the node-death pipe.
    _death_write: OwnedFd,
    /// The `SIGINT`/`SIGTERM` self-pipe.
    pub(crate) signals: Option<OwnedFd>,
    /// Set once the node has shut down.
    pub(crate) stopped: AtomicBool,
    /// The SIGINT/SIGTERM that started a shutdown, once one did (0 before).
    pub(crate) signalled: std::sync::atomic::AtomicI32,
    /// Serializes shutdowns.
    shutdown_lock: Mutex<()>,
    /// Default shutdown timeout.
    pub(crate) shutdown_timeout: Duration,
    /// The main thread's runtime.
    main: Mutex<Option<&'static Runtime>>,
}

impl NodeShared {
    /// A request from the node's main thread.
    pub(crate) fn local_request(&self, from: u64, msg: ToNode) -> Option<NodeReply> {
        let mut core = self.control.lock();
        let reply = core.local_request(from, msg);
        // A port asked to stop arms the timer of its kill: the watcher must
        // wake for it.
        watcher::release(self, core);
        reply
    }

    /// Whether new processes may start.
    pub(crate) fn accepting(&self) -> bool {
        !self.stopped.load(Ordering::Relaxed) && !self.control.lock().shutting_down()
    }

    /// Waits (until `deadline`) while `cond` holds of the process table.
    fn wait_while<'a>(
        &self,
        mut core: crate::sync::MutexGuard<'a, Control>,
        deadline: Instant,
        mut cond: impl FnMut(&Control) -> bool,
    ) -> crate::sync::MutexGuard<'a, Control> {
        while cond(&core) {
            let (c, timed_out) = self.changed.wait_until(core, deadline);
            core = c;
            if timed_out {
                break;
            }
        }
        core
    }

    /// Stops every process: `Shutdown` first, `SIGKILL` after `timeout`.
    pub(crate) fn shutdown(&'static self, timeout: Duration) {
        let _serial = self.shutdown_lock.lock();
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let deadline = Instant::now() + timeout;
        let mut core = self.control.lock();
        core.begin_shutdown();
        core = self.wait_while(core, deadline, |c| !c.user_processes().is_empty());
        if !core.user_processes().is_empty() {
            tracing::warn!(
                left = core.user_processes().len(),
                "shutdown timed out; killing what is left"
            );
            core.kill_all(false);
            core = self.wait_while(core, Instant::now() + Duration::from_secs(5), |c| {
                !c.user_processes().is_empty()
            });
        }
        // What the processes left behind (strays): asked to stop, and killed
        // when the shutdown time is up.
        let strays = core.strays();
        if !strays.is_empty() {
            drop(core);
            stop_strays(&strays, deadline);
            core = self.control.lock();
        }
        core.kill_all(true);
        core = self.wait_while(core, Instant::now() + Duration::from_secs(2), |c| {
            c.alive(ZYGOTE_SERIAL)
        });
        drop(core);
        if let Some(rt) = *self.main.lock() {
            if let Some(cg) = &rt.settings().cgroup {
                cgroup::kill_and_remove(cg);
            }
            if let Some(memory) = &rt.settings().memory {
                memory.remove_all();
            }
        }
        self.stopped.store(true, Ordering::Release);
        if let Some(rt) = *self.main.lock() {
            rt.inbox.lock().disconnected = true;
            rt.inbox.stop_background();
        }
    }
}

/// Stops the strays behind `pidfds`: `SIGTERM` now, `SIGKILL` at `deadline`
/// to those left, then reaps them (the node is their parent).
fn stop_strays(pidfds: &[std::os::fd::OwnedFd], deadline: Instant) {
    use sys::process::{SIGKILL, SIGTERM, pidfd_ended, pidfd_send_signal, pidfd_try_wait};
    tracing::info!(strays = pidfds.len(), "stopping what processes left behind");
    let all_ended = || pidfds.iter().all(pidfd_ended);
    for fd in pidfds {
        let _ = pidfd_send_signal(fd, SIGTERM);
    }
    while !all_ended() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for fd in pidfds.iter().filter(|fd| !pidfd_ended(fd)) {
        let _ = pidfd_send_signal(fd, SIGKILL);
    }
    let killed_by = Instant::now() + Duration::from_secs(2);
    while !all_ended() && Instant::now() < killed_by {
        std::thread::sleep(Duration::from_millis(2));
    }
    for fd in pidfds {
        // ECHILD: the node's watcher reaped it first.
        let _ = pidfd_try_wait(fd);
    }
}

fn init_node(config: Config) -> Result<Node, InitError> {
    if runtime::current().is_some() || INITIALIZED.swap(true, Ordering::AcqRel) {
        return Err(InitError::new(InitErrorKind::AlreadyInitialized));
    }
    let threads = proc_fs::thread_count();
    if threads > 1 {
        INITIALIZED.store(false, Ordering::Release);
        return Err(InitError::new(InitErrorKind::Threaded { threads }));
    }
    let mut raw_id = [0u8; 16];
    sys::random_bytes(&mut raw_id)?;
    let id = NodeId::from_bytes(raw_id);
    let shared = sys::shared::map_shared_area()?;
    shared.next_serial.store(control::FIRST_SERIAL, Ordering::Release);
    sys::process::set_child_subreaper()?;
    sys::process::default_sigchld();
    // Before the first fork: every process of the node inherits it.
    sys::process::fork_friendly_malloc();
    if let Ok((soft, hard)) = sys::process::get_rlimit(sys::process::Resource::OpenFiles)
        && soft < hard
    {
        let _ = sys::process::set_rlimit(sys::process::Resource::OpenFiles, hard, hard);
    }
    // Compute the text ranges once, before any fork, so every process has them.
    let _ = sys::text::in_text(0);
    if config.port_cgroups || config.memory_cgroups {
        // What nodes killed before could not remove.
        let removed = cgroup::remove_stale();
        if removed > 0 {
            tracing::debug!(removed, "removed the empty cgroups of nodes gone");
        }
    }
    // Leaked: every process of the node shares it, the forked ones by
    // inheritance (a spawn copies nothing).
    let settings: &'static Settings = Box::leak(Box::new(Settings {
        max_message: config.max_message_size,
        coalesce: config.coalesce_window,
        flush_delay: config.flush_delay,
        exit_flush: config.exit_flush_timeout,
        max_connections: config.max_connections,
        uid: sys::process::getuid(),
        cgroup: if config.port_cgroups {
            cgroup::node_root(id)
        } else {
            None
        },
        memory: if config.memory_cgroups {
            cgroup::memory_root(id)
        } else {
            None
        },
        pool: pool_settings(&config)?,
    }));
    let (death_read, death_write) = sys::signal::pipe()?;

    // The zygote: forked now, while this process has a single thread.
    let (zygote_node_end, zygote_end) = sys::socket::socketpair()?;
    let zygote_listener = sys::socket::listen_abstract(&id.zygote_address())?;
    let zygote_ospid = crate::node::zygote::start(crate::node::zygote::ZygoteSetup {
        node: id,
        shared,
        settings,
        ctl: zygote_end,
        listener: zygote_listener,
        death_read: std::os::fd::AsRawFd::as_raw_fd(&death_read),
    })?;
    let zygote_pidfd = sys::process::pidfd_open(zygote_ospid)?;

    let epoll: &'static Epoll = Box::leak(Box::new(Epoll::new()?));
    let ctl_listener: &'static OwnedFd = Box::leak(Box::new(sys::socket::listen_abstract(&id.node_address())?));
    let mut core = Control::new(
        id,
        sys::process::getuid(),
        epoll,
        shared,
        ctl_listener,
        settings.pool.clone(),
        settings.memory.clone(),
    );
    let (main_node_end, main_end) = sys::socket::socketpair()?;
    core.add_internal(MAIN_SERIAL, main_node_end, None, sys::process::getpid(), "node")?;
    core.add_internal(
        ZYGOTE_SERIAL,
        zygote_node_end,
        Some(zygote_pidfd),
        zygote_ospid,
        "zygote",
    )?;
    let signals = if config.handle_signals {
        let fd = sys::signal::install_shutdown_handler()?;
        epoll.add(&fd, TOKEN_SIGNALS, Interest::Read)?;
        Some(fd)
    } else {
        None
    };
    let kick = EventFd::new()?;
    epoll.add(&kick, TOKEN_KICK, Interest::Read)?;
    epoll.add(ctl_listener, TOKEN_CTL_LISTENER, Interest::Read)?;
    let node: &'static NodeShared = Box::leak(Box::new(NodeShared {
        id,
        control: Mutex::new(core),
        changed: Condvar::new(),
        epoll,
        kick,
        _death_write: death_write,
        signals,
        stopped: AtomicBool::new(false),
        signalled: std::sync::atomic::AtomicI32::new(0),
        shutdown_lock: Mutex::new(()),
        shutdown_timeout: config.shutdown_timeout,
        main: Mutex::new(None),
    }));
    let me = Pid::new(id, MAIN_SERIAL);
    let main_listener = sys::socket::listen_abstract(&me.address())?;
    let rt = runtime::install(Runtime::new(
        me,
        shared,
        settings,
        main_listener,
        main_end,
        death_read,
        Some(node),
        None,
    )?);
    *node.main.lock() = Some(rt);
    watcher::start(node)?;
    if rt.settings().pool.classes.iter().any(|c| c.1 > 0) {
        crate::runtime::zygote::start_pool(rt)
            .map_err(|e| InitError::new(InitErrorKind::Io(std::io::Error::other(e))))?;
        // `init()` returns with the pool ready: every scheduler has said so
        // (bounded, for a `scheduler_init` that never returns or crashes).
        let slots = rt.settings().pool.classes.iter().map(|c| c.1).sum::<usize>();
        let deadline = std::time::Instant::now() + POOL_READY_WAIT;
        while shared.schedulers[..slots]
            .iter()
            .any(|s| s.serial.load(Ordering::SeqCst) == 0)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
    tracing::debug!(node = %id, zygote = zygote_ospid, "node started");
    Ok(Node { rt, shared: node })
}

/// How long `init()` waits for the schedulers to be ready.
const POOL_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The node: the process that called [`init()`], and its handle on every
/// process it runs.
///
/// The node's main thread is itself a process: it has a [`Pid`], it can spawn,
/// send, monitor, link and receive ([`Node::ctx`]). Unlike other processes it
/// always traps exits: an exit signal reaches it as an [`Event::Exit`](crate::Event::Exit)
/// message, never kills it.
///
/// Dropping the node (returning from `main`) shuts every process down in order
/// ([`Node::shutdown`] with [`Config::shutdown_timeout`]).
#[derive(Debug)]
pub struct Node {
    rt: &'static Runtime,
    shared: &'static NodeShared,
}

/// Node-wide counters, from [`Node::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Processes started since `init()`.
    pub spawned: u64,
    /// Processes alive now (not counting the runtime's own).
    pub alive: usize,
    /// Exits by kind of reason (`"normal"`, `"killed"`, `"panic"`, ...).
    pub exits: BTreeMap<String, u64>,
    /// Connections to the node refused or cut (wrong user, broken stream).
    pub refused: u64,
    /// Orphans adopted by the node (as subreaper) and reaped.
    pub strangers_reaped: u64,
    /// Strays running now: what processes that ended left behind (started
    /// by themselves), adopted and watched by the node, which stops them at
    /// its shutdown and whose zygote kills them if it dies (see
    /// [`Builder::leave_strays`](crate::Builder::leave_strays)).
    pub strays: usize,
    /// Children restarted by supervisors.
    pub restarts: u64,
}

impl Node {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The main thread's process id.
    pub fn pid(&self) -> Pid {
        self.rt.pid()
    }

    /// The main thread's mailbox, typed as `M`.
    pub fn mailbox<M>(&self) -> Mailbox<M> {
        Mailbox::from_pid(self.rt.pid())
    }

    /// A receive context for the main thread, typed as `M`: it receives,
    /// monitors and links as the node's main thread.
    ///
    /// # Panics
    ///
    /// In a process other than the node (a closure that captured `&Node`):
    /// the main thread's context means nothing there. A process uses the
    /// [`Ctx`] it was given.
    pub fn ctx<M>(&self) -> Ctx<M> {
        Ctx::new(self.on_node("ctx"))
    }

    /// The node's runtime, if the caller runs in the node; a clear panic
    /// otherwise. A process forked from the node has a copy of the `Node`
    /// value (a closure may capture `&Node`), whose runtime and locks are the
    /// parent's, left as they were at the fork: using them there would act
    /// on descriptors that the fork closed.
    fn on_node(&self, what: &str) -> &'static Runtime {
        match runtime::current() {
            Some(rt) if std::ptr::eq(rt, self.rt) => rt,
            other => panic!(
                "converge: Node::{what} called in process {} rather than in the node: \
                 a process uses the Ctx it was given, and the free functions",
                other.map_or_else(|| "?".to_string(), |rt| rt.pid().to_string())
            ),
        }
    }

    /// How [`Builder::memory_limit`](crate::Builder::memory_limit) is
    /// enforced on this node (see [`Config::memory_cgroups`]).
    pub fn memory_limiter(&self) -> crate::MemoryLimiter {
        match &self.rt.settings().memory {
            Some(cgroup::MemoryCgroups::V2(_)) => crate::MemoryLimiter::CgroupV2,
            Some(cgroup::MemoryCgroups::V1(_)) => crate::MemoryLimiter::CgroupV1,
            None => crate::MemoryLimiter::DataRlimit,
        }
    }

    /// The processes alive now, oldest first (the runtime's own are not listed).
    ///
    /// # Panics
    ///
    /// In a process other than the node (see [`Node::ctx`]).
    pub fn processes(&self) -> Vec<Pid> {
        self.on_node("processes");
        let core = self.shared.control.lock();
        core.user_processes()
            .into_iter()
            .map(|s| Pid::new(self.shared.id, s))
            .collect()
    }

    /// Node-wide counters.
    ///
    /// # Panics
    ///
    /// In a process other than the node (see [`Node::ctx`]).
    pub fn stats(&self) -> NodeStats {
        self.on_node("stats");
        let core = self.shared.control.lock();
        let c = core.counters();
        NodeStats {
            spawned: c.spawned,
            alive: core.user_processes().len(),
            exits: c.exits.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            refused: c.refused,
            strangers_reaped: c.strangers_reaped,
            strays: core.adopted_strangers(),
            restarts: self.rt.shared().restarts.load(Ordering::Relaxed),
        }
    }

    /// Stops every process in an orderly way and waits for them: processes get
    /// the exit signal `Shutdown` (newest first; a process's children get it
    /// when their parent is gone), and whatever is still alive after `timeout`
    /// is killed. New spawns fail from the start of the shutdown. Calling it
    /// again does nothing.
    ///
    /// # Panics
    ///
    /// In a process other than the node (see [`Node::ctx`]).
    pub fn shutdown(&self, timeout: Duration) {
        self.on_node("shutdown");
        self.shared.shutdown(timeout);
    }

    /// Whether the node has shut down.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A process that owned a copy of the node (moved into its closure)
        // has nothing to shut down.
        if runtime::current().is_some_and(|rt| std::ptr::eq(rt, self.rt)) {
            self.shared.shutdown(self.shared.shutdown_timeout);
            // A signal started the shutdown (its thread may still be on the
            // way to ending the process): the node ends by that signal, not
            // with the return from `main` that dropped this.
            let signal = self.shared.signalled.load(Ordering::Acquire);
            if signal != 0 {
                sys::signal::die_by_signal(signal);
            }
        }
    }
}

impl LocalNode for NodeShared {
    fn request(&self, from: u64, msg: ToNode) -> Option<NodeReply> {
        self.local_request(from, msg)
    }

    fn request_in_order(&self, from: u64, msg: ToNode) {
        let mut core = self.control.lock();
        core.local_request_in_order(from, msg);
        watcher::release(self, core);
    }

    fn register(&self, reg: Registration, ctl: OwnedFd, pidfd_follows: bool) -> std::io::Result<()> {
        self.control.lock().register_local(reg, ctl, pidfd_follows)
    }

    fn attach_pidfd(&self, serial: u64, pidfd: OwnedFd, ospid: i32) {
        let mut core = self.control.lock();
        core.attach_local_pidfd(serial, pidfd, ospid);
        watcher::release(self, core);
    }

    fn withdraw(&self, serial: u64) {
        self.control.lock().withdraw(serial);
    }

    #[cfg(feature = "dist")]
    fn hand_over(&self, serial: u64, msg: crate::wire::envelope::ToProcess, fd: Option<OwnedFd>) -> bool {
        let mut core = self.control.lock();
        let done = core.hand_over(serial, msg, fd);
        watcher::release(self, core);
        done
    }

    fn epoll_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.epoll)
    }

    fn events_ready(&'static self) {
        watcher::process_now(self);
    }

    fn accepting(&self) -> bool {
        NodeShared::accepting(self)
    }

    fn shutdown(&'static self) {
        NodeShared::shutdown(self, self.shutdown_timeout);
    }
}
