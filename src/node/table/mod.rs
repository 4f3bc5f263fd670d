//! The node's process table: registrations, links, monitors, names, and the
//! one place where deaths become exit and down signals.
//!
//! The table is a state machine. Events come in as method calls (a control
//! frame from a process, a pidfd that became readable, a parent's report of a
//! status, a connection that closed, a timer); effects go out through
//! [`System`] (frames to send, signals, pidfds to watch or reap), which the
//! node's control side (`node/control.rs`) carries out and the unit tests
//! record. The table never reads a socket: the control side reads what is
//! pending first and hands it over in order (see `control.rs` for how a
//! registration still in flight, or the last frames of a process that ended,
//! are read before the event that needs them).
//!
//! 1. `mod.rs`: the table, a process's life, registration, queries.
//! 2. [`ends`]: a process's end, its finalization, exit signals, kills.
//! 3. [`requests`]: what a process asks of the node (links, monitors, names...).
//! 4. [`pool`]: schedulers, their replacement, the zygote's spare, actors, and
//!    the node's task queue.
//! 5. [`reason`]: the exit reason of an ended process, a pure function.

mod ends;
mod pool;
pub(crate) mod reason;
mod requests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::time::Instant;

use crate::exit::ExitReason;
use crate::pid::{NodeId, Pid, ProcessInfo, ProcessState};
use crate::runtime::PoolSettings;
use crate::sys::process::{SIGKILL, WaitStatus};
use crate::sys::shared::SharedArea;
use crate::wire::envelope::{PortInfo, Registration, ToProcess};

use self::pool::Queued;
use self::reason::MemoryEnd;

pub(crate) use crate::pid::{FIRST_SERIAL, MAIN_SERIAL, ZYGOTE_SERIAL};

/// The watcher of a monitor placed by a process of another node: no process
/// here.
pub(crate) const REMOTE_WATCHER: u64 = u64::MAX;

/// What the table asks of the system around it. The node's control side
/// carries it out on sockets, pidfds and cgroups; the unit tests record it.
pub(crate) trait System {
    /// Queues the control frame `msg` on connection `conn`.
    fn send(&mut self, conn: u64, msg: &ToProcess);
    /// Closes connection `conn`.
    fn close(&mut self, conn: u64);
    /// Whether the pidfd of `serial` already says that it ended.
    fn ended(&self, serial: u64) -> bool;
    /// Sends `signal` to `serial` by its pidfd, or to its process group
    /// `group` (a port, which leads its group).
    fn signal(&mut self, serial: u64, group: Option<i32>, signal: i32) -> io::Result<()>;
    /// Kills a port's cgroup (only when the zygote, which owns it, is gone).
    fn kill_cgroup(&mut self, cgroup: &str);
    /// Watches the pidfd of `serial` for its exit; false if it cannot.
    fn watch(&mut self, serial: u64) -> bool;
    /// Stops watching the pidfd of `serial`.
    fn unwatch(&mut self, serial: u64);
    /// Moves the pidfd of `from` to serial `to` (a spare becomes the zygote).
    fn rename(&mut self, from: u64, to: u64);
    /// Closes the pidfd of `serial`.
    fn forget(&mut self, serial: u64);
    /// Makes the next descriptor received on `conn` the pidfd of `serial`;
    /// false if none came.
    fn claim_fd(&mut self, conn: u64, serial: u64) -> bool;
    /// Drops the next descriptor received on `conn` (its frame was refused).
    fn drop_fd(&mut self, conn: u64);
    /// The wait status of the ended `serial`, if it can be had now: `waitid`
    /// for the node's own child, `PIDFD_GET_INFO` for another's.
    /// With whether this process reaped it (it was its child), or found its
    /// status through its pidfd once its parent reaped it.
    fn wait_status(&mut self, serial: u64) -> Option<(WaitStatus, bool)>;
    /// The wait status of `serial` (OS pid `ospid`), another process's
    /// child, read while it is a zombie its parent has not reaped yet.
    fn zombie_status(&mut self, serial: u64, ospid: i32) -> Option<WaitStatus>;
    /// Reaps `serial` if it is the node's child, status unused (a spare, or
    /// a process whose status the node found while its parent lived).
    fn reap_quietly(&mut self, serial: u64);
    /// What the memory limit of the ended `serial` says of its end (a
    /// `SIGKILL` is looked up in its cgroup); releases its cgroup.
    fn memory_end(&mut self, serial: u64, sigkilled: bool) -> MemoryEnd;
    /// Removes the memory cgroups of ended processes that the programs they
    /// started have left since.
    fn release_leftovers(&mut self);
    /// The OS parent of `ospid`.
    fn parent_of(&self, ospid: i32) -> Option<i32>;
    /// The resident memory of `ospid`.
    fn rss(&self, ospid: i32) -> Option<u64>;
    /// The strays the node watches: (OS pid, process group when adopted).
    fn strays(&self) -> Vec<(i32, i32)> {
        Vec::new()
    }
    /// Passes a frame that process `from` sent to a process of another
    /// node to the node's cluster (feature `dist`); dropped without one.
    fn remote(&mut self, _from: crate::pid::Pid, _to: crate::pid::Pid, _kind: u8, _body: &[u8]) {}
    /// Asks the node's cluster for a direct session from `from` (here) to
    /// `to` (of another node), answered to `from` later; false without a
    /// cluster.
    #[cfg(feature = "dist")]
    fn remote_direct(&mut self, _from: crate::pid::Pid, _to: crate::pid::Pid) -> bool {
        false
    }
    /// A direct session to a process of `node` was over its cap: the
    /// cluster tears down its session with `node`.
    #[cfg(feature = "dist")]
    fn remote_backlogged(&mut self, _node: NodeId) {}
    /// Sends `msg` on control connection `conn` with `fd` attached; false
    /// if it could not go now (nothing was sent, `fd` is closed).
    #[cfg(feature = "dist")]
    fn send_with_fd(&mut self, conn: u64, msg: &ToProcess, fd: std::os::fd::OwnedFd) -> bool {
        let _ = (conn, msg, fd);
        false
    }
    /// Places monitor `reference` of `watcher` (here) on `target` (on
    /// another node) through the node's cluster; false without one.
    fn remote_monitor(
        &mut self,
        _watcher: crate::pid::Pid,
        _reference: u64,
        _internal: bool,
        _target: crate::pid::Pid,
    ) -> bool {
        false
    }
    /// Links `from` (here) with `target` (on another node) through the
    /// node's cluster; false without one.
    fn remote_link(&mut self, _from: crate::pid::Pid, _target: crate::pid::Pid) -> bool {
        false
    }
    /// Removes the link between `from` (here) and `target` (on another node).
    fn remote_unlink(&mut self, _from: crate::pid::Pid, _target: crate::pid::Pid) {}
    /// Sends an exit signal (`exit`, `kill`) from `from` (here) to `target`
    /// (on another node).
    fn remote_exit_signal(
        &mut self,
        _from: crate::pid::Pid,
        _target: crate::pid::Pid,
        _reason: ExitReason,
        _untrappable: bool,
    ) {
    }
    /// Sends the exit signal of `from` (here) to `to`, linked on another node.
    fn remote_exit(&mut self, _to: crate::pid::Pid, _from: crate::pid::Pid, _reason: ExitReason) {}
    /// Sends the `Down` of a monitor that `watcher`, on another node, placed
    /// here.
    fn remote_down(
        &mut self,
        _watcher: crate::pid::Pid,
        _reference: u64,
        _internal: bool,
        _pid: crate::pid::Pid,
        _reason: ExitReason,
    ) {
    }
}

/// A monitor placed on a process.
#[derive(Debug, Clone)]
struct MonitorEntry {
    /// The watcher's reference.
    reference: u64,
    /// The watcher.
    watcher: u64,
    /// For the watcher's runtime (call/join), not its mailbox.
    internal: bool,
    /// A watcher on another node (then `watcher` is [`REMOTE_WATCHER`]).
    remote: Option<crate::pid::Pid>,
    /// The registered name it was placed by, if it was.
    name: Option<String>,
}

/// What a process is to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// An application's process (a closure, `spawn_fn`).
    User,
    /// Part of the runtime: the node's main thread or the zygote. Not listed,
    /// not stopped by a shutdown; trappable exit signals do nothing to it.
    Runtime,
    /// The zygote's hot spare (part of the runtime too; its parent, the
    /// zygote, reaps it and says nothing).
    Spare,
    /// A scheduler of the pool in this slot (part of the runtime; replaced
    /// by the zygote when it dies).
    Scheduler(u32),
    /// An external program leading its own process group.
    Port(PortInfo),
    /// A lightweight actor run by the scheduler `host`.
    Actor {
        /// Its scheduler's serial.
        host: u64,
    },
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Registered; its pidfd is not known yet. `pidfd_follows`: its spawner
    /// (the node's main thread) attaches it after the fork. `kill_pending`: a
    /// kill waits for the pidfd.
    Starting { pidfd_follows: bool, kill_pending: bool },
    /// Its pidfd is held; `watched`: in the node's epoll (the node reaps it).
    Running { watched: bool },
    /// It ended (its pidfd said so, its parent reported it, or it never ran);
    /// finalized once its status is known.
    Ended,
}

/// One process known to the node.
#[derive(Debug)]
struct Proc {
    /// Its serial.
    serial: u64,
    /// Who spawned it.
    parent: u64,
    /// What it is.
    role: Role,
    /// Where it is in its life.
    life: Life,
    /// OS pid, once known.
    ospid: Option<i32>,
    /// The node holds its pidfd (through [`System`]).
    pidfd: bool,
    /// Name for `ps` and `process_info`.
    name: Option<String>,
    /// Token of its control connection.
    ctl: Option<u64>,
    /// Linked processes.
    links: BTreeSet<u64>,
    /// Linked processes of other nodes.
    remote_links: HashSet<Pid>,
    /// Monitors placed on it, in order.
    monitors: Vec<MonitorEntry>,
    /// Monitors it placed: reference → target.
    watching: HashMap<u64, u64>,
    /// Exit signals become messages.
    trap_exits: bool,
    /// The reason it sent before `_exit(0)`.
    last_words: Option<ExitReason>,
    /// The reason the node killed it for.
    kill_reason: Option<ExitReason>,
    /// A port asked to stop (`SIGTERM` sent, `Shutdown` recorded): a kill
    /// that follows replaces that reason.
    terminating: bool,
    /// Its wait status, once known.
    status: Option<WaitStatus>,
    /// Its status came from its parent's report, or the node reaped it: no
    /// report is to come.
    reported: bool,
    /// An actor's exit reason, once it ended.
    actor_exit: Option<ExitReason>,
    /// `SIGXCPU` means `CpuLimit`.
    cpu_limited: bool,
    /// It has a memory limit: see [`System::memory_end`].
    memory_limited: bool,
    /// What it starts by itself may outlive the node.
    leave_strays: bool,
    /// Names registered to it.
    names: Vec<String>,
    /// The process that reaps it: its OS parent (the spawner, or the zygote).
    reaper: u64,
}

impl Proc {
    fn new(serial: u64, parent: u64, role: Role) -> Proc {
        Proc {
            serial,
            parent,
            role,
            life: Life::Starting {
                pidfd_follows: false,
                kill_pending: false,
            },
            ospid: None,
            pidfd: false,
            name: None,
            ctl: None,
            links: BTreeSet::new(),
            remote_links: HashSet::new(),
            monitors: Vec::new(),
            watching: HashMap::new(),
            trap_exits: false,
            last_words: None,
            kill_reason: None,
            terminating: false,
            status: None,
            reported: false,
            actor_exit: None,
            cpu_limited: false,
            memory_limited: false,
            leave_strays: false,
            names: Vec::new(),
            reaper: parent,
        }
    }

    fn exited(&self) -> bool {
        self.life == Life::Ended
    }

    /// Part of the runtime: not listed, not stopped by a shutdown.
    fn internal(&self) -> bool {
        matches!(self.role, Role::Runtime | Role::Spare | Role::Scheduler(_))
    }

    /// Whether the node reads its status when it ends, if its parent has not
    /// reaped it yet, rather than wait for its parent's report: a process
    /// that runs the runtime (its status is the whole process's; a port's
    /// program could end its main thread first).
    fn reads_zombie(&self) -> bool {
        matches!(self.role, Role::User | Role::Scheduler(_))
    }

    fn port(&self) -> Option<&PortInfo> {
        match &self.role {
            Role::Port(info) => Some(info),
            _ => None,
        }
    }

    fn host(&self) -> Option<u64> {
        match self.role {
            Role::Actor { host } => Some(host),
            _ => None,
        }
    }

    fn scheduler(&self) -> Option<u32> {
        match self.role {
            Role::Scheduler(slot) => Some(slot),
            _ => None,
        }
    }
}

/// Node-wide counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    /// Processes registered.
    pub(crate) spawned: u64,
    /// Exits by reason kind.
    pub(crate) exits: HashMap<&'static str, u64>,
    /// Connections refused (other user, broken control stream).
    pub(crate) refused: u64,
    /// Strangers adopted and reaped.
    pub(crate) strangers_reaped: u64,
}

/// The process table and signal logic.
#[derive(Debug)]
pub(crate) struct Table<S> {
    /// What carries out the table's effects.
    pub(crate) sys: S,
    /// This node.
    node: NodeId,
    /// The shared area: serials handed out, status slots, the pool's slots.
    shared: &'static SharedArea,
    /// Known processes.
    procs: HashMap<u64, Proc>,
    /// Registered names.
    names: HashMap<String, u64>,
    /// Control connections: token → the process it belongs to, once known.
    owners: HashMap<u64, Option<u64>>,
    /// Ended processes whose status is not known yet.
    pending: HashSet<u64>,
    /// Statuses reported by a parent before the child's registration was read.
    early_status: HashMap<u64, WaitStatus>,
    /// Processes finalized with a status the node found itself, whose parent
    /// (the value) reaps them and still reports it: the report is dropped
    /// when it comes (their pidfds are kept until then).
    reports_due: HashMap<u64, u64>,
    /// The same, by parent.
    due_by_reaper: HashMap<u64, Vec<u64>>,
    /// Ended processes whose end is ready to be turned into signals, in order.
    to_finalize: VecDeque<u64>,
    /// Ports to kill at a deadline (their shutdown time is up).
    timers: Vec<(Instant, u64)>,
    /// A timer was armed since the control side last asked.
    timer_armed: bool,
    /// Process groups of ended processes, to scan for orphans.
    stranger_groups: Vec<i32>,
    /// Process groups whose leaders chose to let what they start outlive the
    /// node (`Builder::leave_strays`): their strays are reaped, not killed.
    pub(crate) exempt_groups: std::collections::HashSet<i32>,
    /// Shutdown in progress.
    shutting_down: bool,
    /// Counters.
    counters: Counters,
    /// The scheduler pool's shape.
    pool: PoolSettings,
    /// Per class: tasks waiting for an idle scheduler, oldest first.
    queues: Vec<VecDeque<Queued>>,
    /// Per scheduler: the submitter and reference of the last task handed
    /// to it from a queue (told if the scheduler dies).
    dispatched: HashMap<u64, (u64, u64)>,
    /// The zygote's hot spare, registered and waiting.
    spare: Option<u64>,
    /// A spare took over from a zygote: the zygote's serial has named more
    /// than one OS process.
    zygote_replaced: bool,
    /// Slots whose scheduler is to be replaced, until a new one registers:
    /// slot → whether the one that died had been ready. Asked again of a
    /// zygote that takes over (the one asked may have died first).
    replacements: HashMap<u32, bool>,
}

impl<S: System> Table<S> {
    pub(crate) fn new(sys: S, node: NodeId, shared: &'static SharedArea, pool: PoolSettings) -> Table<S> {
        Table {
            sys,
            node,
            shared,
            procs: HashMap::new(),
            names: HashMap::new(),
            owners: HashMap::new(),
            pending: HashSet::new(),
            early_status: HashMap::new(),
            reports_due: HashMap::new(),
            due_by_reaper: HashMap::new(),
            to_finalize: VecDeque::new(),
            timers: Vec::new(),
            timer_armed: false,
            stranger_groups: Vec::new(),
            exempt_groups: std::collections::HashSet::new(),
            shutting_down: false,
            counters: Counters::default(),
            queues: pool.classes.iter().map(|_| VecDeque::new()).collect(),
            pool,
            dispatched: HashMap::new(),
            spare: None,
            zygote_replaced: false,
            replacements: HashMap::new(),
        }
    }

    fn pid(&self, serial: u64) -> Pid {
        Pid::new(self.node, serial)
    }

    // ---- connections -------------------------------------------------

    /// A control connection was opened (`owner`: the process it belongs
    /// to, when known from the start).
    pub(crate) fn conn_opened(&mut self, conn: u64, owner: Option<u64>) {
        self.owners.insert(conn, owner);
    }

    /// The process a connection belongs to.
    pub(crate) fn owner(&self, conn: u64) -> Option<u64> {
        self.owners.get(&conn).copied().flatten()
    }

    /// Whether `serial` has monitor `reference` in place.
    pub(crate) fn watches(&self, serial: u64, reference: u64) -> bool {
        self.procs
            .get(&serial)
            .is_some_and(|p| p.watching.contains_key(&reference))
    }

    /// The control connection of `serial`, while it is open.
    pub(crate) fn conn_of(&self, serial: u64) -> Option<u64> {
        self.procs.get(&serial).and_then(|p| p.ctl)
    }

    /// Whether a connection carries registrations (it is not registered yet,
    /// or it is the zygote's, on which ports are registered).
    pub(crate) fn carries_registrations(&self, conn: u64) -> bool {
        matches!(self.owners.get(&conn), Some(None) | Some(Some(ZYGOTE_SERIAL)))
    }

    fn close_conn(&mut self, conn: u64) {
        if self.owners.remove(&conn).is_some() {
            self.sys.close(conn);
        }
    }

    /// A connection broke its framing: it is closed as if its end had gone.
    pub(crate) fn conn_refused(&mut self, conn: u64) {
        self.counters.refused += 1;
        self.conn_closed(conn);
    }

    /// Every holder of connection `conn` is gone.
    pub(crate) fn conn_closed(&mut self, conn: u64) {
        let serial = self.owner(conn);
        self.close_conn(conn);
        if let Some(serial) = serial
            && let Some(p) = self.procs.get_mut(&serial)
        {
            p.ctl = None;
            let never_ran = matches!(
                p.life,
                Life::Starting {
                    pidfd_follows: false,
                    ..
                }
            ) && !matches!(p.role, Role::Runtime | Role::Spare);
            if never_ran {
                // Registered, but neither its spawner nor itself handed over
                // a pidfd before every holder of the connection was gone: it
                // never ran.
                p.status = None;
                p.last_words.get_or_insert(ExitReason::NoProc);
                p.life = Life::Ended;
                self.to_finalize.push_back(serial);
            }
        }
    }

    // ---- registration ------------------------------------------------

    /// Registers a runtime-internal process (the main thread, the zygote).
    pub(crate) fn add_internal(&mut self, serial: u64, conn: u64, ospid: i32, pidfd: bool, name: &str) {
        self.conn_opened(conn, Some(serial));
        let mut p = Proc::new(serial, MAIN_SERIAL, Role::Runtime);
        p.ctl = Some(conn);
        p.ospid = Some(ospid);
        p.name = Some(name.to_string());
        p.trap_exits = serial == MAIN_SERIAL;
        self.procs.insert(serial, p);
        if pidfd {
            self.attach_pidfd(serial, ospid);
        }
    }

    /// Registers a process the node's main thread is about to fork (or to
    /// have the zygote fork), on its own connection `conn`, before it
    /// exists: nothing it does can reach the node before its registration.
    /// `pidfd_follows`: the spawner attaches the pidfd after the fork.
    pub(crate) fn register_local(&mut self, reg: Registration, conn: u64, pidfd_follows: bool) {
        let serial = reg.serial;
        self.conn_opened(conn, Some(serial));
        self.register(reg, conn);
        if let Some(p) = self.procs.get_mut(&serial)
            && let Life::Starting { kill_pending, .. } = p.life
        {
            p.life = Life::Starting {
                pidfd_follows,
                kill_pending,
            };
        }
    }

    /// A process registers itself on connection `conn`.
    fn register(&mut self, reg: Registration, conn: u64) {
        self.owners.insert(conn, Some(reg.serial));
        if self.procs.contains_key(&reg.serial) {
            return;
        }
        let serial = reg.serial;
        let parent_alive = self.alive(reg.parent);
        // Schedulers are the runtime's: not listed, not stopped by a
        // shutdown (they end with the node), replaced when they die.
        let role = match reg.scheduler {
            Some(slot) => {
                tracing::debug!(slot, serial, "scheduler registered");
                self.replacements.remove(&slot);
                Role::Scheduler(slot)
            }
            None => Role::User,
        };
        let mut p = Proc::new(serial, reg.parent, role);
        p.reaper = reg.reaper.unwrap_or(reg.parent);
        p.ctl = Some(conn);
        p.name = reg.name;
        p.trap_exits = reg.trap_exits;
        p.cpu_limited = reg.cpu_limited;
        p.memory_limited = reg.memory_limited;
        p.leave_strays = reg.leave_strays;
        let early = self.early_status.remove(&serial);
        p.status = early;
        p.reported = early.is_some();
        self.insert_child(p, &reg.monitors, reg.link, parent_alive);
        if early.is_some() {
            // Its parent reaped it before its registration was read: it
            // ended with that status.
            self.ended(serial);
        } else if !parent_alive && reg.link {
            // The spawner is already gone: the link fires at once.
            self.exit_signal(reg.parent, serial, ExitReason::NoProc, false);
        }
        tracing::trace!(serial, parent = reg.parent, "registered");
    }

    /// Registers a port: an external program started by its owner (the
    /// registration's parent), leading its own process group. Its pidfd is
    /// with the system already.
    pub(crate) fn register_port(&mut self, reg: Registration, ospid: i32, port: PortInfo) {
        let serial = reg.serial;
        let parent = reg.parent;
        if self.procs.contains_key(&serial) {
            return;
        }
        let parent_alive = self.alive(parent);
        let mut p = Proc::new(serial, parent, Role::Port(port));
        p.name = reg.name;
        p.reaper = reg.reaper.unwrap_or(parent);
        self.insert_child(p, &reg.monitors, reg.link, parent_alive);
        self.attach_pidfd(serial, ospid);
        if let Some(status) = self.early_status.remove(&serial)
            && let Some(p) = self.procs.get_mut(&serial)
        {
            // Reaped already: nothing to signal (its group id may be reused).
            p.status = Some(status);
            p.reported = true;
            self.ended(serial);
        } else if !parent_alive {
            // Its owner is already gone: so is the port.
            self.kill(serial, ExitReason::Shutdown);
        }
    }

    /// Adds `p`, a new process, to the table: monitored by and linked to its
    /// parent as its registration says, if the parent is alive, and counted
    /// as spawned unless it is the runtime's own.
    fn insert_child(&mut self, mut p: Proc, monitors: &[(u64, bool)], link: bool, parent_alive: bool) {
        let (serial, parent) = (p.serial, p.parent);
        if parent_alive {
            p.monitors = monitors
                .iter()
                .map(|&(reference, internal)| MonitorEntry {
                    name: None,
                    reference,
                    watcher: parent,
                    internal,
                    remote: None,
                })
                .collect();
            if link {
                p.links.insert(parent);
            }
        }
        if !p.internal() {
            self.counters.spawned += 1;
        }
        self.procs.insert(serial, p);
        if parent_alive {
            let owner = self.procs.get_mut(&parent).expect("BUG: parent checked by the caller");
            for &(reference, _) in monitors {
                owner.watching.insert(reference, serial);
            }
            if link {
                owner.links.insert(serial);
            }
        }
    }

    /// Forgets a registration whose spawn failed.
    pub(crate) fn withdraw(&mut self, serial: u64) {
        if let Some(p) = self.procs.remove(&serial) {
            for l in &p.links {
                if let Some(o) = self.procs.get_mut(l) {
                    o.links.remove(&serial);
                }
            }
            for m in &p.monitors {
                if let Some(w) = self.procs.get_mut(&m.watcher) {
                    w.watching.remove(&m.reference);
                }
            }
            if let Some(t) = p.ctl {
                self.close_conn(t);
            }
            if p.pidfd {
                self.sys.forget(serial);
            }
        }
    }

    /// Whether `serial` is registered and waits for its pidfd.
    pub(crate) fn wants_pidfd(&self, serial: u64) -> bool {
        self.procs.get(&serial).is_some_and(|p| !p.pidfd)
    }

    /// The pidfd of `serial` was handed to the system: the node watches it
    /// if it must reap the process itself (its own child, or one whose
    /// parent is gone), or if it reads the status of the process itself (one
    /// that runs the runtime: its parent's report is then not waited for).
    /// A port whose zygote lives is reaped by the zygote, which reports the
    /// status: watching it too would only wake the node for nothing.
    pub(crate) fn attach_pidfd(&mut self, serial: u64, ospid: i32) {
        let reaper = self.procs.get(&serial).map(|p| p.reaper);
        let reads_zombie = self.procs.get(&serial).is_some_and(Proc::reads_zombie);
        let must_watch = match reaper {
            Some(MAIN_SERIAL) | None => true,
            // The zygote's serial passes to its spare when it takes over: a
            // child of the zygote that died is the node's, to reap here.
            Some(ZYGOTE_SERIAL) => {
                let zygote = self
                    .procs
                    .get(&ZYGOTE_SERIAL)
                    .filter(|z| !z.exited())
                    .and_then(|z| z.ospid);
                zygote.is_none() || (self.zygote_replaced && self.sys.parent_of(ospid) != zygote)
            }
            Some(reaper) => !self.alive(reaper),
        };
        let watch = must_watch || reads_zombie;
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        if p.pidfd {
            return;
        }
        let kill_pending = match p.life {
            Life::Starting { kill_pending, .. } => kill_pending,
            // Its parent reported its end first: nothing to watch.
            Life::Running { .. } | Life::Ended => {
                p.pidfd = true;
                p.ospid = Some(ospid);
                return;
            }
        };
        let watched = watch && self.sys.watch(serial);
        if must_watch && !watched {
            // Nobody would see its end: as if no pidfd had come (its
            // connection's end then says it never ran).
            tracing::warn!(serial, ospid, "cannot watch a pidfd");
            self.sys.forget(serial);
            return;
        }
        // Watched only to read its status first: its parent reports it.
        p.pidfd = true;
        p.ospid = Some(ospid);
        p.life = Life::Running { watched };
        if kill_pending {
            let _ = self.sys.signal(serial, None, SIGKILL);
        }
    }

    // ---- shutdown and queries ----------------------------------------

    /// Starts an orderly shutdown: the processes the main thread started (and
    /// orphans) get `Shutdown`, newest first; the others follow when their
    /// parent is gone.
    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        let mut top: Vec<u64> = self
            .procs
            .values()
            .filter(|p| !p.internal() && !p.exited() && (p.parent == MAIN_SERIAL || !self.alive(p.parent)))
            .map(|p| p.serial)
            .collect();
        top.sort_unstable_by(|a, b| b.cmp(a));
        for s in top {
            self.exit_signal(MAIN_SERIAL, s, ExitReason::Shutdown, false);
        }
    }

    /// Whether a shutdown is under way.
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Kills every process that is still alive (the end of a shutdown).
    pub(crate) fn kill_all(&mut self, include_internal: bool) {
        let mut all: Vec<u64> = self
            .procs
            .values()
            .filter(|p| p.serial != MAIN_SERIAL && (include_internal || !p.internal()))
            .map(|p| p.serial)
            .collect();
        all.sort_unstable();
        for s in all {
            self.kill(s, ExitReason::Killed);
        }
    }

    /// Whether `serial` is known and has not ended.
    pub(crate) fn alive(&self, serial: u64) -> bool {
        self.procs.get(&serial).is_some_and(|p| !p.exited())
    }

    /// Whether `serial` is in the table (alive, or ended and not finalized).
    pub(crate) fn knows(&self, serial: u64) -> bool {
        self.procs.contains_key(&serial)
    }

    /// Serials of the live processes that are not part of the runtime.
    pub(crate) fn user_processes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .procs
            .values()
            .filter(|p| !p.internal())
            .map(|p| p.serial)
            .collect();
        v.sort_unstable();
        v
    }

    /// The OS pids of every process in the table.
    pub(crate) fn ospids(&self) -> HashSet<i32> {
        self.procs.values().filter_map(|p| p.ospid).collect()
    }

    /// Hands `msg` (with `fd`, a direct session's socket) to process
    /// `serial`, if it is one that receives on its own (not an actor, a
    /// port or a part of the runtime) and alive; false if not (`fd` is
    /// closed).
    #[cfg(feature = "dist")]
    pub(crate) fn hand_over(&mut self, serial: u64, msg: ToProcess, fd: Option<std::os::fd::OwnedFd>) -> bool {
        let Some(p) = self.procs.get(&serial) else {
            return false;
        };
        if !self.alive(serial) || p.host().is_some() || p.port().is_some() || p.internal() {
            return false;
        }
        let Some(conn) = p.ctl else {
            return false;
        };
        match fd {
            Some(fd) => self.sys.send_with_fd(conn, &msg, fd),
            None => {
                self.sys.send(conn, &msg);
                true
            }
        }
    }

    /// Queues a control frame for the zygote.
    pub(crate) fn tell_zygote(&mut self, msg: ToProcess) {
        self.send_to(ZYGOTE_SERIAL, msg);
    }

    /// Takes the process groups of ended processes, to scan for orphans.
    pub(crate) fn take_stranger_groups(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.stranger_groups)
    }

    /// How many ended processes' groups wait to be scanned for orphans.
    pub(crate) fn strangers_to_scan(&self) -> usize {
        self.stranger_groups.len()
    }

    /// The shared area.
    pub(crate) fn shared(&self) -> &'static SharedArea {
        self.shared
    }

    /// The node-wide counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The node-wide counters, to count what the control side refuses.
    pub(crate) fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The status of one process.
    pub(crate) fn info(&self, serial: u64) -> Option<ProcessInfo> {
        use std::sync::atomic::Ordering::Relaxed;
        let p = self.procs.get(&serial)?;
        let slot = self.shared.slot(serial);
        let own = slot.is(serial);
        let state = if p.exited() {
            ProcessState::Exiting
        } else if own {
            ProcessState::from_u32(slot.state.load(Relaxed))
        } else {
            ProcessState::Starting
        };
        let get = |a: &std::sync::atomic::AtomicU64| if own { a.load(Relaxed) } else { 0 };
        let counted = slot.arrivals.serial.load(Relaxed) == serial;
        let sent = |a: &std::sync::atomic::AtomicU64| if counted { a.load(Relaxed) } else { 0 };
        Some(ProcessInfo {
            pid: self.pid(serial),
            os_pid: p.ospid,
            name: p.name.clone(),
            parent: Some(self.pid(p.parent)),
            state,
            // Its own queue, and what its senders sent that it has not read
            // (counted from its spawn on, before it runs too).
            queue_len: get(&slot.queue_len) + sent(&slot.arrivals.sent).saturating_sub(get(&slot.read)),
            queue_bytes: get(&slot.queue_bytes) + sent(&slot.arrivals.sent_bytes).saturating_sub(get(&slot.read_bytes)),
            memory: p.ospid.and_then(|o| self.sys.rss(o)),
            dropped: get(&slot.dropped),
            undecodable: get(&slot.undecodable),
            refused: get(&slot.refused),
            trap_exits: p.trap_exits,
            links: p.links.iter().map(|&l| self.pid(l)).collect(),
            monitors: p.monitors.len(),
            registered_names: p.names.clone(),
        })
    }
}
