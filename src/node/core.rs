//! The node's process table: registrations, pidfds, links, monitors, names,
//! and the one place where deaths become exit and down signals.
//!
//! Every process reaches the core through its control connection (the node's
//! main thread calls it directly). The core runs under one lock, taken by the
//! exit watcher thread for events and by the node's API for local requests.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::exit::ExitReason;
use crate::node::cgroup::MemoryCgroups;
use crate::node::runtime::PoolSettings;
use crate::process::{NodeId, Pid, ProcessInfo, ProcessState};
use crate::sys::poll::{Epoll, Interest};
use crate::sys::process::{
    SIGABRT, SIGKILL, SIGTERM, SIGXCPU, WaitStatus, pidfd_ended, pidfd_exit_info, pidfd_open, pidfd_send_signal,
    pidfd_signal_group, pidfd_try_wait,
};
use crate::sys::shared::SharedArea;
use crate::sys::socket;
use crate::wire::decode_exact;
use crate::wire::envelope::{NodeReply, PortInfo, Registration, ToNode, ToProcess};
use crate::wire::frame::{self, Decoder, Kind};
use std::time::{Duration, Instant};

/// Token of the control listener in the watcher's epoll.
pub(crate) const TOKEN_CTL_LISTENER: u64 = 1;
/// Token of the shutdown-signal pipe.
pub(crate) const TOKEN_SIGNALS: u64 = 2;
/// Token of the watcher's wake-up eventfd.
pub(crate) const TOKEN_KICK: u64 = 3;
const TAG_MASK: u64 = 0xff << 56;
/// Tag of control connections.
pub(crate) const CONN_TAG: u64 = 1 << 56;
/// Tag of process pidfds (low bits: the serial).
pub(crate) const PIDFD_TAG: u64 = 2 << 56;
/// Tag of adopted strangers' pidfds.
pub(crate) const STRANGER_TAG: u64 = 3 << 56;

/// Serial of the node's main thread.
pub(crate) const MAIN_SERIAL: u64 = 1;
/// Serial of the zygote.
pub(crate) const ZYGOTE_SERIAL: u64 = 2;
/// First serial handed out to processes.
pub(crate) const FIRST_SERIAL: u64 = 3;

/// A monitor placed on a process.
#[derive(Debug, Clone, Copy)]
struct MonitorEntry {
    /// The watcher's reference.
    reference: u64,
    /// The watcher.
    watcher: u64,
    /// For the watcher's runtime (call/join), not its mailbox.
    internal: bool,
}

/// One process known to the node.
#[derive(Debug)]
struct Proc {
    /// Its serial.
    serial: u64,
    /// Who spawned it.
    parent: u64,
    /// OS pid, once known.
    ospid: Option<i32>,
    /// Name for `ps` and `process_info`.
    name: Option<String>,
    /// The pidfd, once known.
    pidfd: Option<OwnedFd>,
    /// Token of its control connection.
    ctl: Option<u64>,
    /// Linked processes.
    links: BTreeSet<u64>,
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
    /// A kill waits for the pidfd.
    kill_pending: bool,
    /// Its wait status, once known.
    status: Option<WaitStatus>,
    /// Its pidfd reported the exit.
    exited: bool,
    /// `SIGXCPU` means `CpuLimit`.
    cpu_limited: bool,
    /// It has a memory limit: see `Core::memory_end`.
    memory_limited: bool,
    /// Names registered to it.
    names: Vec<String>,
    /// Part of the runtime (main thread, zygote): not stopped by shutdown.
    internal: bool,
    /// The spawner (the node's main thread) attaches the pidfd after the fork.
    pidfd_follows: bool,
    /// Its pidfd is in the watcher's epoll (the node reaps it).
    watched: bool,
    /// An external program (a port) leading its own process group.
    port: Option<PortInfo>,
    /// The process that reaps it: its OS parent (the spawner, or the zygote).
    reaper: u64,
    /// A scheduler's slot in the pool.
    scheduler: Option<u32>,
    /// An actor: the scheduler that hosts it.
    host: Option<u64>,
    /// An actor's exit reason, once it ended.
    actor_exit: Option<ExitReason>,
    /// A spare of the zygote (reaped by the zygote, which says nothing).
    spare: bool,
}

impl Proc {
    fn new(serial: u64, parent: u64) -> Proc {
        Proc {
            serial,
            parent,
            ospid: None,
            name: None,
            pidfd: None,
            ctl: None,
            links: BTreeSet::new(),
            monitors: Vec::new(),
            watching: HashMap::new(),
            trap_exits: false,
            last_words: None,
            kill_reason: None,
            kill_pending: false,
            status: None,
            exited: false,
            cpu_limited: false,
            memory_limited: false,
            names: Vec::new(),
            internal: false,
            pidfd_follows: false,
            watched: false,
            port: None,
            reaper: parent,
            scheduler: None,
            host: None,
            actor_exit: None,
            spare: false,
        }
    }
}

/// A control connection.
#[derive(Debug)]
struct CtlConn {
    /// The socket (non-blocking).
    fd: OwnedFd,
    /// The process it belongs to, once registered.
    serial: Option<u64>,
    /// Frame decoder.
    decoder: Decoder,
    /// Descriptors received and not yet claimed by a frame.
    fds: VecDeque<OwnedFd>,
    /// Bytes waiting to be written.
    out: Vec<u8>,
    /// Written part of `out`.
    off: usize,
    /// Registered for writability.
    backlogged: bool,
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
pub(crate) struct Core {
    /// Where memory-limited processes have their cgroups.
    memory: Option<MemoryCgroups>,
    /// Memory cgroups of exited processes that still hold processes they
    /// started: removed once those are gone.
    memory_leftovers: Vec<u64>,
    /// This node.
    node: NodeId,
    /// Our uid.
    uid: u32,
    /// The watcher's epoll (outlives the core).
    epoll: &'static Epoll,
    /// The shared area, for process status.
    shared: &'static SharedArea,
    /// The control listener.
    listener: &'static OwnedFd,
    /// Known processes.
    procs: HashMap<u64, Proc>,
    /// Registered names.
    names: HashMap<String, u64>,
    /// Control connections by token.
    conns: HashMap<u64, CtlConn>,
    /// Next connection token.
    next_token: u64,
    /// Exited processes whose status is not known yet.
    pending: HashSet<u64>,
    /// Adopted strangers being watched: token → pidfd.
    strangers: HashMap<u64, OwnedFd>,
    /// Their OS pids.
    stranger_pids: HashMap<u64, i32>,
    /// Process groups of exited processes, to scan for orphans.
    stranger_groups: Vec<i32>,
    /// Shutdown in progress.
    pub(crate) shutting_down: bool,
    /// Counters.
    pub(crate) counters: Counters,
    /// Read buffer.
    scratch: Vec<u8>,
    /// Finalizations waiting to run.
    to_finalize: VecDeque<u64>,
    /// Whether finalizations are running (they are not re-entered).
    finalizing: bool,
    /// Ports to kill at a deadline (their shutdown time is up).
    timers: Vec<(Instant, u64)>,
    /// The watcher waits with a timeout (it will retry statuses and scan for
    /// orphans without being woken).
    pub(crate) watcher_will_wake: bool,
    /// Statuses reported by a parent before the child's registration was read.
    early_status: HashMap<u64, WaitStatus>,
    /// The scheduler pool's shape.
    pool: PoolSettings,
    /// Per class: tasks waiting for an idle scheduler, oldest first.
    queues: Vec<VecDeque<Queued>>,
    /// Per scheduler: the submitter and reference of the last task handed
    /// to it from a queue (told if the scheduler dies).
    dispatched: HashMap<u64, (u64, u64)>,
    /// The zygote's hot spare, registered and waiting.
    spare: Option<u64>,
    /// Connections whose frames are being handled now.
    reading: Vec<u64>,
    /// Slots whose scheduler is to be replaced, until a new one registers:
    /// slot → whether the one that died had been ready. Asked again of a
    /// zygote that takes over (the one asked may have died first).
    replacements: HashMap<u32, bool>,
}

/// A task waiting in the node's queue.
#[derive(Debug)]
struct Queued {
    task: u64,
    submitter: u64,
    reference: u64,
    message: Vec<u8>,
}

impl Core {
    pub(crate) fn new(
        node: NodeId,
        uid: u32,
        epoll: &'static Epoll,
        shared: &'static SharedArea,
        listener: &'static OwnedFd,
        pool: PoolSettings,
        memory: Option<MemoryCgroups>,
    ) -> Core {
        Core {
            memory,
            memory_leftovers: Vec::new(),
            queues: pool.classes.iter().map(|_| VecDeque::new()).collect(),
            pool,
            dispatched: HashMap::new(),
            spare: None,
            reading: Vec::new(),
            replacements: HashMap::new(),
            node,
            uid,
            epoll,
            shared,
            listener,
            procs: HashMap::new(),
            names: HashMap::new(),
            conns: HashMap::new(),
            next_token: 0,
            pending: HashSet::new(),
            strangers: HashMap::new(),
            stranger_pids: HashMap::new(),
            stranger_groups: Vec::new(),
            shutting_down: false,
            counters: Counters::default(),
            scratch: vec![0; 64 * 1024],
            to_finalize: VecDeque::new(),
            finalizing: false,
            timers: Vec::new(),
            watcher_will_wake: false,
            early_status: HashMap::new(),
        }
    }

    fn pid(&self, serial: u64) -> Pid {
        Pid::new(self.node, serial)
    }

    /// Adds a control connection (a socket pair end or an accepted socket).
    /// The socket must be non-blocking.
    pub(crate) fn add_conn(&mut self, fd: OwnedFd, serial: Option<u64>) -> io::Result<u64> {
        let token = CONN_TAG | self.next_token;
        self.next_token += 1;
        self.epoll.add(fd.as_raw_fd(), token, Interest::Read)?;
        self.conns.insert(
            token,
            CtlConn {
                fd,
                serial,
                decoder: Decoder::default(),
                fds: VecDeque::new(),
                out: Vec::new(),
                off: 0,
                backlogged: false,
            },
        );
        Ok(token)
    }

    /// Registers a runtime-internal process (the main thread, the zygote).
    pub(crate) fn add_internal(
        &mut self,
        serial: u64,
        ctl: OwnedFd,
        pidfd: Option<OwnedFd>,
        ospid: i32,
        name: &str,
    ) -> io::Result<()> {
        let token = self.add_conn(ctl, Some(serial))?;
        let mut p = Proc::new(serial, MAIN_SERIAL);
        p.ctl = Some(token);
        p.internal = true;
        p.ospid = Some(ospid);
        p.name = Some(name.to_string());
        p.trap_exits = serial == MAIN_SERIAL;
        self.procs.insert(serial, p);
        if let Some(fd) = pidfd {
            self.attach_pidfd(serial, fd, ospid);
        }
        Ok(())
    }

    /// Registers the zygote's hot spare (a child of the zygote).
    fn add_spare(&mut self, token: u64, serial: u64, pidfd: OwnedFd, ospid: i32) {
        // Only a child of the zygote, on a connection of its own, with a
        // serial nobody has.
        let parent = crate::node::proc_fs::parent_of(ospid);
        let zygote = self.procs.get(&ZYGOTE_SERIAL).and_then(|z| z.ospid);
        // A spare whose zygote died (even if the node has not seen it yet)
        // is the node's: the node is the subreaper.
        let node = self.procs.get(&MAIN_SERIAL).and_then(|m| m.ospid);
        let fresh = self.conns.get(&token).is_some_and(|c| c.serial.is_none()) && !self.procs.contains_key(&serial);
        if !fresh || parent.is_none() || (parent != zygote && parent != node) {
            self.counters.refused += 1;
            tracing::warn!(
                ospid,
                ?parent,
                ?zygote,
                fresh,
                "refused a zygote spare that is not the zygote's child"
            );
            self.close_conn(token);
            return;
        }
        if let Some(c) = self.conns.get_mut(&token) {
            c.serial = Some(serial);
        }
        tracing::debug!(
            serial,
            ospid,
            zygote_alive = self.zygote_alive(),
            "zygote spare registered"
        );
        let mut p = Proc::new(serial, MAIN_SERIAL);
        p.spare = true;
        p.ctl = Some(token);
        p.internal = true;
        // Its parent, the zygote, reaps it; the node watches its pidfd all
        // the same, to know when it is gone.
        p.reaper = MAIN_SERIAL;
        p.name = Some("zygote-spare".into());
        self.procs.insert(serial, p);
        self.attach_pidfd(serial, pidfd, ospid);
        if let Some(old) = self.spare.replace(serial) {
            self.kill(old, ExitReason::Killed);
        }
        if self.shutting_down {
            self.kill(serial, ExitReason::Shutdown);
        } else if !self.zygote_alive() {
            // The zygote died before its spare was known.
            self.promote_spare();
        }
    }

    /// The zygote is gone: its spare becomes the zygote (the same role,
    /// serial and listener), forks a spare of its own, and starts the
    /// replacements of the schedulers that died meanwhile.
    fn promote_spare(&mut self) {
        let Some(serial) = self.spare.take() else {
            tracing::error!("the zygote is gone and has no spare: no spawn_fn, ports or scheduler replacements");
            return;
        };
        let Some(mut p) = self.procs.remove(&serial) else {
            return;
        };
        if p.exited {
            self.procs.insert(serial, p);
            return;
        }
        tracing::warn!(ospid = ?p.ospid, "the zygote is gone: its spare takes over");
        p.serial = ZYGOTE_SERIAL;
        p.name = Some("zygote".into());
        if let Some(fd) = &p.pidfd {
            self.epoll.delete(fd.as_raw_fd());
            p.watched = self
                .epoll
                .add(fd.as_raw_fd(), PIDFD_TAG | ZYGOTE_SERIAL, Interest::Read)
                .is_ok();
        }
        if let Some(c) = p.ctl.and_then(|t| self.conns.get_mut(&t)) {
            c.serial = Some(ZYGOTE_SERIAL);
        }
        self.procs.insert(ZYGOTE_SERIAL, p);
        self.send_to(ZYGOTE_SERIAL, ToProcess::TakeOver);
        let asked: Vec<(u32, bool)> = self.replacements.iter().map(|(&s, &r)| (s, r)).collect();
        for (slot, was_ready) in asked {
            self.send_to(ZYGOTE_SERIAL, ToProcess::ReplaceScheduler { slot, was_ready });
        }
    }

    /// A scheduler ended: submitters stop picking it, and the zygote starts
    /// another in its slot.
    fn replace_scheduler(&mut self, slot: u32, serial: u64, never_ran: bool) {
        let was_ready = self.shared.schedulers[slot as usize]
            .serial
            .compare_exchange(
                serial,
                0,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
            || never_ran;
        if self.shutting_down {
            return;
        }
        self.replacements.insert(slot, was_ready);
        tracing::debug!(
            slot,
            serial,
            was_ready,
            zygote = self.zygote_alive(),
            "scheduler to replace"
        );
        if self.zygote_alive() {
            self.send_to(ZYGOTE_SERIAL, ToProcess::ReplaceScheduler { slot, was_ready });
        }
    }

    /// Registers a process the node's main thread is about to fork (or to have
    /// the zygote fork): its control connection is a socket pair end. It is
    /// registered before it exists, so that nothing it does can reach the node
    /// before its registration. `pidfd_follows`: the spawner attaches the pidfd
    /// with [`attach_local_pidfd`](Self::attach_local_pidfd) after the fork.
    pub(crate) fn register_local(&mut self, reg: Registration, ctl: OwnedFd, pidfd_follows: bool) -> io::Result<()> {
        let serial = reg.serial;
        let token = self.add_conn(ctl, Some(serial))?;
        self.register(reg, token);
        if let Some(p) = self.procs.get_mut(&serial) {
            p.pidfd_follows = pidfd_follows;
        }
        self.run_finalizations();
        Ok(())
    }

    /// Registers a port: an external program started by its owner (the
    /// registration's parent), leading its own process group.
    pub(crate) fn register_port(&mut self, reg: Registration, pidfd: OwnedFd, ospid: i32, port: PortInfo) {
        let serial = reg.serial;
        let parent = reg.parent;
        let parent_alive = self.procs.get(&parent).is_some_and(|p| !p.exited);
        let mut p = Proc::new(serial, parent);
        p.name = reg.name;
        p.port = Some(port);
        p.reaper = reg.reaper.unwrap_or(parent);
        self.insert_child(p, &reg.monitors, reg.link, parent_alive);
        self.attach_pidfd(serial, pidfd, ospid);
        if let Some(status) = self.early_status.remove(&serial)
            && let Some(p) = self.procs.get_mut(&serial)
        {
            // Reaped already: nothing to signal (its group id may be reused).
            p.status = Some(status);
            p.exited = true;
            self.to_finalize.push_back(serial);
        } else if !parent_alive {
            // Its owner is already gone: so is the port.
            self.kill(serial, ExitReason::Shutdown);
        }
        self.run_finalizations();
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
                    reference,
                    watcher: parent,
                    internal,
                })
                .collect();
            if link {
                p.links.insert(parent);
            }
        }
        if !p.internal {
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

    /// Registers an actor that scheduler `host` runs, and hands it the
    /// message that starts it. An actor whose host is gone never runs: it
    /// ends at once with `NoProc`.
    fn spawn_actor(&mut self, reg: Registration, host: u64, register: Option<String>, start: Vec<u8>) {
        let serial = reg.serial;
        let parent = reg.parent;
        if self.procs.contains_key(&serial) {
            return;
        }
        let parent_alive = self.procs.get(&parent).is_some_and(|p| !p.exited);
        let host_alive = self.known(host)
            && self
                .procs
                .get(&host)
                .is_some_and(|h| !h.exited && h.scheduler.is_some());
        let mut p = Proc::new(serial, parent);
        p.name = reg.name;
        p.trap_exits = reg.trap_exits;
        p.host = Some(host);
        p.reaper = host;
        self.insert_child(p, &reg.monitors, reg.link, parent_alive);
        if let Some(name) = register {
            let taken = self
                .names
                .get(&name)
                .is_some_and(|h| self.procs.get(h).is_some_and(|p| !p.exited));
            if taken {
                // As OTP's `start_link` with a name in use: it never runs.
                // Its host forgets what came for it.
                let reason = ExitReason::Error(format!("the name {name} is registered already"));
                if host_alive {
                    self.send_to(
                        host,
                        ToProcess::KillActor {
                            actor: serial,
                            reason: reason.clone(),
                        },
                    );
                }
                self.actor_ended(serial, reason);
                return;
            }
            self.names.insert(name.clone(), serial);
            if let Some(p) = self.procs.get_mut(&serial) {
                p.names.push(name);
            }
        }
        if host_alive {
            self.send_to(host, ToProcess::Message(start));
            if !parent_alive && reg.link {
                // The spawner is already gone: the link fires at once.
                self.exit_signal(parent, serial, ExitReason::NoProc, false);
            }
        } else {
            self.actor_ended(serial, ExitReason::NoProc);
        }
    }

    /// An actor ended (its host said so, or its host is gone).
    fn actor_ended(&mut self, serial: u64, reason: ExitReason) {
        if let Some(p) = self.procs.get_mut(&serial)
            && !p.exited
        {
            p.actor_exit = Some(reason);
            p.exited = true;
            self.to_finalize.push_back(serial);
        }
    }

    /// Attaches the pidfd of a process registered with `register_local`.
    pub(crate) fn attach_local_pidfd(&mut self, serial: u64, pidfd: OwnedFd, ospid: i32) {
        if let Some(p) = self.procs.get_mut(&serial) {
            p.pidfd_follows = false;
        }
        self.attach_pidfd(serial, pidfd, ospid);
        self.run_finalizations();
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
        }
    }

    fn register(&mut self, reg: Registration, token: u64) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.serial = Some(reg.serial);
        }
        if self.procs.contains_key(&reg.serial) {
            return;
        }
        let serial = reg.serial;
        // The spawner's own registration may still be unread on its own
        // connection (a child can be quicker than its parent's announcement).
        let parent_alive = self.known(reg.parent) && self.procs.get(&reg.parent).is_some_and(|p| !p.exited);
        let mut p = Proc::new(serial, reg.parent);
        p.reaper = reg.reaper.unwrap_or(reg.parent);
        p.ctl = Some(token);
        p.name = reg.name;
        p.trap_exits = reg.trap_exits;
        // Schedulers are the runtime's: not listed, not stopped by a shutdown
        // (they end with the node), replaced by the zygote when they die.
        p.internal = reg.scheduler.is_some();
        p.scheduler = reg.scheduler;
        if let Some(slot) = reg.scheduler {
            // Replaced.
            tracing::debug!(slot, serial, "scheduler registered");
            self.replacements.remove(&slot);
        }
        p.cpu_limited = reg.cpu_limited;
        p.memory_limited = reg.memory_limited;
        if let Some(status) = self.early_status.remove(&serial) {
            p.status = Some(status);
        }
        self.insert_child(p, &reg.monitors, reg.link, parent_alive);
        if !parent_alive && reg.link {
            // The spawner is already gone: the link fires at once.
            self.exit_signal(reg.parent, serial, ExitReason::NoProc, false);
        }
        tracing::trace!(serial, parent = reg.parent, "registered");
    }

    fn attach_pidfd(&mut self, serial: u64, pidfd: OwnedFd, ospid: i32) {
        // The node watches the pidfds of the processes it must reap itself:
        // its own children, and those whose parent is gone (adopted). A
        // process whose parent lives is reaped by that parent, which reports
        // the status: watching it too would only wake the node for nothing.
        let reaper = self.procs.get(&serial).map(|p| p.reaper);
        let watch = match reaper {
            Some(MAIN_SERIAL) | None => true,
            Some(reaper) => self.procs.get(&reaper).is_none_or(|q| q.exited),
        };
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        if p.pidfd.is_some() {
            return;
        }
        if watch
            && self
                .epoll
                .add(pidfd.as_raw_fd(), PIDFD_TAG | serial, Interest::Read)
                .is_err()
        {
            return;
        }
        p.watched = watch;
        p.ospid = Some(ospid);
        p.pidfd = Some(pidfd);
        if p.kill_pending {
            p.kill_pending = false;
            if let Some(fd) = &p.pidfd {
                let _ = pidfd_send_signal(fd, SIGKILL);
            }
        }
    }

    /// Accepts every pending control connection.
    pub(crate) fn accept_all(&mut self) {
        loop {
            match socket::accept(self.listener) {
                Ok(Some((fd, cred))) => {
                    if cred.uid != self.uid {
                        self.counters.refused += 1;
                        tracing::warn!(
                            uid = cred.uid,
                            pid = cred.pid,
                            "refused a control connection from another user"
                        );
                        continue;
                    }
                    if let Err(e) = self.add_conn(fd, None) {
                        tracing::warn!("cannot watch a control connection: {e}");
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("accept on the control listener failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads a control connection and handles its frames.
    pub(crate) fn read_conn(&mut self, token: u64) {
        // A frame of this connection is being handled (a lookup reads the
        // others): its later frames wait their turn.
        if self.reading.contains(&token) {
            return;
        }
        self.reading.push(token);
        self.read_conn_frames(token);
        self.reading.retain(|&t| t != token);
    }

    fn read_conn_frames(&mut self, token: u64) {
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            let mut fds = Vec::new();
            let n = match socket::recv_with_fds(&conn.fd, &mut self.scratch, &mut fds) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => 0,
            };
            conn.fds.extend(fds);
            if n == 0 {
                self.conn_closed(token);
                return;
            }
            let mut frames = Vec::new();
            let res = conn.decoder.feed(&self.scratch[..n], 1 << 24, |kind, body| {
                if kind == Kind::Ctl {
                    frames.push(decode_exact::<ToNode>(body));
                    true
                } else {
                    frames.push(Err(crate::wire::DecodeError::Frame(
                        crate::wire::FrameError::UnknownKind(kind as u8),
                    )));
                    false
                }
            });
            let mut broken = res.is_err();
            for f in frames {
                match f {
                    Ok(msg) => self.on_frame(token, msg),
                    Err(e) => {
                        tracing::warn!("undecodable control frame: {e}");
                        broken = true;
                        break;
                    }
                }
            }
            if broken {
                self.counters.refused += 1;
                self.conn_closed(token);
                return;
            }
            // Keep reading until the socket is empty: a read stops early at a
            // message that carries descriptors.
        }
    }

    fn conn_closed(&mut self, token: u64) {
        let serial = self.conns.get(&token).and_then(|c| c.serial);
        self.close_conn(token);
        if let Some(serial) = serial
            && let Some(p) = self.procs.get_mut(&serial)
        {
            p.ctl = None;
            if p.pidfd.is_none() && (!p.internal || p.scheduler.is_some()) && !p.pidfd_follows {
                // Registered, but neither its spawner nor itself handed
                // over a pidfd before every holder of the connection was
                // gone: it never ran.
                p.status = None;
                p.last_words.get_or_insert(ExitReason::NoProc);
                p.exited = true;
                self.to_finalize.push_back(serial);
            }
        }
        self.run_finalizations();
    }

    fn close_conn(&mut self, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            self.epoll.delete(c.fd.as_raw_fd());
        }
    }

    fn on_frame(&mut self, token: u64, msg: ToNode) {
        let from = self.conns.get(&token).and_then(|c| c.serial);
        match msg {
            ToNode::Register(reg) => self.register(reg, token),
            ToNode::Withdraw { serial } => self.withdraw(serial),
            ToNode::Pidfd { serial, ospid } => {
                let fd = self.conns.get_mut(&token).and_then(|c| c.fds.pop_front());
                if let Some(fd) = fd {
                    self.attach_pidfd(serial, fd, ospid);
                }
            }
            ToNode::Port { reg, ospid, port } => {
                let fd = self.conns.get_mut(&token).and_then(|c| c.fds.pop_front());
                if let Some(fd) = fd {
                    self.register_port(reg, fd, ospid, port);
                }
            }
            ToNode::ZygoteSpare { serial, ospid } => {
                let fd = self.conns.get_mut(&token).and_then(|c| c.fds.pop_front());
                if let Some(fd) = fd {
                    self.add_spare(token, serial, fd, ospid);
                }
            }
            other => match from {
                Some(from) => {
                    if let Some(reply) = self.request(from, other) {
                        let request = reply.0;
                        self.send_to(
                            from,
                            ToProcess::Reply {
                                request,
                                reply: reply.1,
                            },
                        );
                    }
                }
                None => {
                    tracing::warn!("control frame before registration");
                }
            },
        }
        self.run_finalizations();
    }

    /// A request from the node's main thread, answered directly.
    pub(crate) fn local_request(&mut self, from: u64, msg: ToNode) -> Option<NodeReply> {
        let r = self.request(from, msg).map(|(_, r)| r);
        self.run_finalizations();
        r
    }

    /// Handles a request from `from`; returns (request id, answer) when the
    /// request expects one.
    fn request(&mut self, from: u64, msg: ToNode) -> Option<(u64, NodeReply)> {
        match msg {
            ToNode::Register(_) | ToNode::Pidfd { .. } | ToNode::Port { .. } | ToNode::ZygoteSpare { .. } => None,
            ToNode::Withdraw { serial } => {
                self.withdraw(serial);
                None
            }
            ToNode::Link { request, target } => {
                let target = target.serial();
                if target == from {
                    return Some((request, NodeReply::Done));
                }
                if !self.known(target) {
                    return Some((request, NodeReply::NoProc));
                }
                if let Some(p) = self.procs.get_mut(&from) {
                    p.links.insert(target);
                }
                if let Some(p) = self.procs.get_mut(&target) {
                    p.links.insert(from);
                }
                Some((request, NodeReply::Done))
            }
            ToNode::Unlink { target } => {
                let target = target.serial();
                if let Some(p) = self.procs.get_mut(&from) {
                    p.links.remove(&target);
                }
                if let Some(p) = self.procs.get_mut(&target) {
                    p.links.remove(&from);
                }
                None
            }
            ToNode::Monitor {
                reference,
                internal,
                target,
            } => {
                let t = target.serial();
                if target.node() != self.node || !self.known(t) {
                    self.send_to(
                        from,
                        ToProcess::Down {
                            reference,
                            internal,
                            pid: target,
                            reason: ExitReason::NoProc,
                        },
                    );
                    return None;
                }
                if let Some(p) = self.procs.get_mut(&t) {
                    p.monitors.push(MonitorEntry {
                        reference,
                        watcher: from,
                        internal,
                    });
                }
                if let Some(p) = self.procs.get_mut(&from) {
                    p.watching.insert(reference, t);
                }
                None
            }
            ToNode::Demonitor { reference } => {
                let target = self.procs.get_mut(&from).and_then(|p| p.watching.remove(&reference));
                if let Some(t) = target
                    && let Some(p) = self.procs.get_mut(&t)
                {
                    p.monitors.retain(|m| !(m.watcher == from && m.reference == reference));
                }
                None
            }
            ToNode::TrapExits { request, on } => {
                if let Some(p) = self.procs.get_mut(&from)
                    && p.serial != MAIN_SERIAL
                {
                    p.trap_exits = on;
                }
                Some((request, NodeReply::Done))
            }
            ToNode::ExitSignal {
                target,
                reason,
                untrappable,
            } => {
                if target.node() == self.node {
                    self.exit_signal(from, target.serial(), reason, untrappable);
                }
                None
            }
            ToNode::RegisterName { request, name, pid } => {
                let s = pid.serial();
                if pid.node() != self.node || !self.known(s) {
                    return Some((request, NodeReply::NoProc));
                }
                if let Some(&holder) = self.names.get(&name)
                    && holder != s
                    && self.procs.get(&holder).is_some_and(|p| !p.exited)
                {
                    return Some((request, NodeReply::NameTaken));
                }
                if let Some(old) = self.names.insert(name.clone(), s)
                    && let Some(p) = self.procs.get_mut(&old)
                {
                    p.names.retain(|n| n != &name);
                }
                if let Some(p) = self.procs.get_mut(&s) {
                    p.names.push(name);
                }
                Some((request, NodeReply::Done))
            }
            ToNode::UnregisterName { name } => {
                if let Some(s) = self.names.remove(&name)
                    && let Some(p) = self.procs.get_mut(&s)
                {
                    p.names.retain(|n| n != &name);
                }
                None
            }
            ToNode::Whereis { request, name } => {
                let pid = self
                    .names
                    .get(&name)
                    .filter(|s| self.procs.get(s).is_some_and(|p| !p.exited))
                    .map(|&s| self.pid(s));
                Some((request, NodeReply::Pid(pid)))
            }
            ToNode::Info { request, pid } => {
                let info = if pid.node() == self.node && self.known(pid.serial()) {
                    self.info(pid.serial())
                } else {
                    None
                };
                Some((request, NodeReply::Info(info)))
            }
            ToNode::ChildExited { serial, status } => {
                // The child's registration travels on its own connection and
                // may not have been read yet.
                if !self.procs.contains_key(&serial) && self.known(serial) {
                    tracing::trace!(serial, "status report read before the registration");
                }
                match self.procs.get_mut(&serial) {
                    Some(p) => {
                        if p.status.is_none() {
                            p.status = Some(status);
                        }
                        p.exited = true;
                        self.to_finalize.push_back(serial);
                    }
                    None => {
                        self.early_status.insert(serial, status);
                    }
                }
                None
            }
            ToNode::Enqueue {
                class,
                task,
                reference,
                message,
            } => {
                if let Some(q) = self.queues.get_mut(class as usize) {
                    q.push_back(Queued {
                        task,
                        submitter: from,
                        reference,
                        message,
                    });
                    self.dispatch(class as usize);
                }
                None
            }
            ToNode::Idle { slot } => {
                if let Some(class) = self.pool.class_of(slot as usize) {
                    self.dispatch(class);
                }
                None
            }
            ToNode::SpawnActor {
                reg,
                host,
                register,
                start,
            } => {
                if reg.parent == from {
                    self.spawn_actor(reg, host, register, start);
                }
                None
            }
            ToNode::ActorExit { actor, reason } => {
                if self.procs.get(&actor).is_some_and(|p| p.host == Some(from)) {
                    self.actor_ended(actor, reason);
                }
                None
            }
            ToNode::ForActor { actor, msg } => {
                let hosted = self.known(actor) && self.procs.get(&actor).is_some_and(|p| p.host == Some(from));
                let msg = match decode_exact::<ToNode>(&msg) {
                    Ok(m) if hosted && !matches!(m, ToNode::ForActor { .. } | ToNode::ActorExit { .. }) => m,
                    _ => {
                        self.counters.refused += 1;
                        tracing::warn!(from, actor, "refused a request for an actor the sender does not host");
                        return None;
                    }
                };
                self.request(actor, msg)
            }
            ToNode::LastWords { reason } => {
                if let Some(p) = self.procs.get_mut(&from) {
                    p.last_words = Some(reason);
                }
                None
            }
        }
    }

    /// Whether `serial` is a live (or not yet finalized) process. An unknown
    /// serial may belong to a registration still in flight on a control
    /// connection: read them all before saying no.
    fn known(&mut self, serial: u64) -> bool {
        if self.procs.contains_key(&serial) {
            return true;
        }
        if serial >= self.shared.next_serial.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        self.refresh();
        if !self.procs.contains_key(&serial) {
            // An actor's registration travels on its spawner's connection:
            // its slot says it exists; read every connection.
            if self.shared.slot(serial).host_of(serial).is_some() {
                let tokens: Vec<u64> = self.conns.keys().copied().collect();
                for t in tokens {
                    self.read_conn(t);
                }
            }
        }
        self.procs.contains_key(&serial)
    }

    /// Reads the registrations still in flight: connections not accepted yet,
    /// accepted ones whose first frame was not read yet, and the zygote's
    /// (where ports are registered).
    fn refresh(&mut self) {
        self.accept_all();
        // Registrations come on new connections, and ports' on the zygote's.
        let tokens: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.serial.is_none() || c.serial == Some(ZYGOTE_SERIAL))
            .map(|(&t, _)| t)
            .collect();
        for t in tokens {
            self.read_conn(t);
        }
    }

    /// An exit signal from `from` to `target`.
    fn exit_signal(&mut self, from: u64, target: u64, reason: ExitReason, untrappable: bool) {
        if !self.known(target) {
            return;
        }
        let Some(p) = self.procs.get(&target) else {
            return;
        };
        if p.exited {
            return;
        }
        let from_pid = self.pid(from);
        if target == MAIN_SERIAL || (p.internal && !untrappable) {
            // The node's main thread always traps exits; the zygote ignores them.
            if target == MAIN_SERIAL {
                let reason = if untrappable { ExitReason::Killed } else { reason };
                self.send_to(target, ToProcess::Exit { from: from_pid, reason });
            }
            return;
        }
        if p.port.is_some() && !untrappable {
            // A port is an external program: it cannot trap. Shutdown asks it
            // to stop (SIGTERM to its group), the rest kills it.
            if reason == ExitReason::Shutdown {
                self.terminate_port(target);
            } else if !reason.is_normal() || from == target {
                self.kill(target, reason);
            }
            return;
        }
        if untrappable {
            self.kill(target, ExitReason::Killed);
        } else if p.trap_exits {
            self.send_to(target, ToProcess::Exit { from: from_pid, reason });
        } else if reason.is_normal() && from != target {
            // A normal exit signal does nothing to a process that does not trap.
        } else {
            self.kill(target, reason);
        }
    }

    /// Whether the zygote runs (it reaps the ports and owns their cgroups).
    fn zygote_alive(&self) -> bool {
        self.procs.get(&ZYGOTE_SERIAL).is_some_and(|z| !z.exited)
    }

    /// Kills `serial` with SIGKILL, recording the reason it dies with.
    pub(crate) fn kill(&mut self, serial: u64, reason: ExitReason) {
        let zygote = self.zygote_alive();
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        // A process already gone did not die of this: its own reason stands
        // (gone, even if the node has not handled its end yet).
        if p.kill_reason.is_none() && !p.exited && !p.pidfd.as_ref().is_some_and(pidfd_ended) {
            p.kill_reason = Some(reason.clone());
        }
        if let Some(host) = p.host {
            // An actor: its host ends it between two steps, and says so.
            if !p.exited {
                self.send_to(host, ToProcess::KillActor { actor: serial, reason });
            }
            return;
        }
        match (&p.pidfd, &p.port, p.ospid) {
            (Some(fd), Some(port), Some(ospid)) => {
                if let Err(e) = pidfd_signal_group(fd, ospid, SIGKILL) {
                    tracing::warn!(serial, "kill failed: {e}");
                }
                // The zygote kills the port's cgroup when it reaps the port
                // (and then uses the cgroup again: only it may kill it).
                if !zygote && let Some(cg) = &port.cgroup {
                    crate::node::cgroup::kill(cg);
                }
            }
            (Some(fd), _, _) => {
                if let Err(e) = pidfd_send_signal(fd, SIGKILL) {
                    tracing::warn!(serial, "kill failed: {e}");
                }
            }
            _ => p.kill_pending = true,
        }
    }

    /// Asks a port to stop: `SIGTERM` to its process group now, `SIGKILL` when
    /// its shutdown time is up.
    fn terminate_port(&mut self, serial: u64) {
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        if p.kill_reason.is_none() {
            p.kill_reason = Some(ExitReason::Shutdown);
        }
        let (Some(fd), Some(port), Some(ospid)) = (&p.pidfd, &p.port, p.ospid) else {
            p.kill_pending = true;
            return;
        };
        let _ = pidfd_signal_group(fd, ospid, SIGTERM);
        let deadline = Instant::now() + Duration::from_millis(port.shutdown_ms);
        self.timers.push((deadline, serial));
        self.watcher_will_wake = false;
    }

    /// The earliest timer, if any.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.iter().map(|t| t.0).min()
    }

    /// Runs the timers that are due: ports that did not stop in time are
    /// killed.
    pub(crate) fn run_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self.timers.iter().filter(|t| t.0 <= now).map(|t| t.1).collect();
        self.timers.retain(|t| t.0 > now);
        for serial in due {
            if self.procs.get(&serial).is_some_and(|p| !p.exited) {
                self.kill(serial, ExitReason::Shutdown);
            }
        }
        self.run_finalizations();
    }

    /// Hands queued tasks of `class` to its idle schedulers, oldest first,
    /// and publishes how many still wait (a scheduler that becomes idle
    /// while tasks wait says so).
    fn dispatch(&mut self, class: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        let slots = self.pool.slots(class);
        // Published first: a scheduler that becomes idle while this runs sees
        // that tasks wait (and says so), or is claimed here.
        self.shared.pool.queued[class].store(self.queues[class].len() as u64, SeqCst);
        while let Some(task) = self.queues[class].front().map(|q| q.task) {
            let taken = slots.clone().find_map(|slot| {
                let s = &self.shared.schedulers[slot];
                let serial = s.serial.load(SeqCst);
                let ready = serial != 0 && self.procs.get(&serial).is_some_and(|p| !p.exited);
                (ready && s.busy.compare_exchange(0, task, SeqCst, SeqCst).is_ok()).then_some(serial)
            });
            let Some(serial) = taken else { break };
            let q = self.queues[class].pop_front().expect("BUG: front seen above");
            self.dispatched.insert(serial, (q.submitter, q.reference));
            self.send_to(serial, ToProcess::Message(q.message));
        }
        self.shared.pool.queued[class].store(self.queues[class].len() as u64, SeqCst);
    }

    /// Queues a control frame for process `serial`.
    fn send_to(&mut self, serial: u64, msg: ToProcess) {
        if let Some(host) = self.procs.get(&serial).and_then(|p| p.host) {
            // An actor: through its host. Replies are the host's own (it made
            // the request, with its own reference).
            let msg = match msg {
                ToProcess::Reply { .. } => msg,
                other => ToProcess::ForActor {
                    actor: serial,
                    msg: Box::new(other),
                },
            };
            return self.send_to(host, msg);
        }
        let Some(token) = self.procs.get(&serial).and_then(|p| p.ctl) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        frame::push(&mut conn.out, Kind::Ctl, &msg).expect("BUG: control frames always encode");
        if !conn.backlogged {
            Self::write_conn(self.epoll, token, conn);
        }
    }

    fn write_conn(epoll: &Epoll, token: u64, conn: &mut CtlConn) {
        while conn.off < conn.out.len() {
            match socket::send(&conn.fd, &conn.out[conn.off..]) {
                Ok(n) => conn.off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.backlogged {
                        conn.backlogged = true;
                        let _ = epoll.modify(conn.fd.as_raw_fd(), token, Interest::ReadWrite);
                    }
                    return;
                }
                Err(_) => {
                    // The process is gone; its pidfd tells the rest.
                    conn.out.clear();
                    conn.off = 0;
                    return;
                }
            }
        }
        conn.out.clear();
        conn.off = 0;
        if conn.backlogged {
            conn.backlogged = false;
            let _ = epoll.modify(conn.fd.as_raw_fd(), token, Interest::Read);
        }
    }

    /// A backlogged control connection is writable.
    pub(crate) fn on_conn_writable(&mut self, token: u64) {
        if let Some(conn) = self.conns.get_mut(&token) {
            Self::write_conn(self.epoll, token, conn);
        }
    }

    /// A pidfd became readable: the process has exited.
    pub(crate) fn on_pidfd(&mut self, serial: u64) {
        let zygote = self.zygote_alive();
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        p.exited = true;
        if let Some(fd) = &p.pidfd
            && p.watched
        {
            self.epoll.delete(fd.as_raw_fd());
            p.watched = false;
        }
        // A port's leader is gone: nothing of its group may outlive it. The
        // group is signalled before the leader is reaped, while its id cannot
        // have been reused.
        if let (Some(fd), Some(port), Some(ospid)) = (&p.pidfd, &p.port, p.ospid) {
            let _ = pidfd_signal_group(fd, ospid, SIGKILL);
            if !zygote && let Some(cg) = &port.cgroup {
                crate::node::cgroup::kill(cg);
            }
        }
        if let Some(p) = self.procs.get(&serial)
            && p.spare
        {
            // A spare (or a spare that took over): its parent, the zygote,
            // reaps it and says nothing; once its zygote is gone it is the
            // node's child, to reap here.
            if let Some(fd) = &p.pidfd {
                let _ = pidfd_try_wait(fd);
            }
            self.to_finalize.push_back(serial);
        } else {
            self.try_status(serial);
        }
        self.run_finalizations();
    }

    /// Looks for the status of an exited process; finalizes it when found.
    fn try_status(&mut self, serial: u64) {
        let Some(p) = self.procs.get_mut(&serial) else {
            self.pending.remove(&serial);
            return;
        };
        if p.status.is_none()
            && let Some(fd) = &p.pidfd
        {
            match pidfd_try_wait(fd) {
                Ok(Some(s)) => p.status = Some(s),
                Ok(None) => {}
                Err(_) => {
                    // Not our child: its parent reaps it and tells us, or
                    // the kernel keeps the status for pidfd holders.
                    if let Ok(Some(s)) = pidfd_exit_info(fd) {
                        p.status = Some(s);
                    }
                }
            }
        }
        if p.status.is_some() {
            self.pending.remove(&serial);
            self.to_finalize.push_back(serial);
        } else {
            self.pending.insert(serial);
        }
    }

    /// What the memory limit of the exited `p` says of its end; releases
    /// its memory cgroup. A `SIGKILL` is looked up in the cgroup's counters.
    fn memory_end(&mut self, serial: u64, p: &Proc) -> MemoryEnd {
        if !p.memory_limited {
            return MemoryEnd::Nothing;
        }
        let Some(cgroups) = &self.memory else {
            return MemoryEnd::DataRlimit;
        };
        let killed = matches!(p.status, Some(WaitStatus::Signaled { signal: SIGKILL, .. }));
        let end = if killed && cgroups.oom_killed(serial) {
            MemoryEnd::OomKilled
        } else {
            MemoryEnd::Nothing
        };
        if !cgroups.release(serial) {
            self.memory_leftovers.push(serial);
        }
        end
    }

    /// Removes the memory cgroups of exited processes that have emptied
    /// since (the programs they started have ended).
    fn release_memory_leftovers(&mut self) {
        if let Some(cgroups) = &self.memory {
            self.memory_leftovers.retain(|&s| !cgroups.release(s));
        }
    }

    /// Whether some exited process still waits for its status.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Looks again for the statuses still missing.
    pub(crate) fn retry_pending(&mut self) {
        let pending: Vec<u64> = self.pending.iter().copied().collect();
        for s in pending {
            self.try_status(s);
        }
        self.run_finalizations();
    }

    fn run_finalizations(&mut self) {
        if self.finalizing {
            return;
        }
        self.finalizing = true;
        while let Some(serial) = self.to_finalize.pop_front() {
            self.finalize(serial);
        }
        self.finalizing = false;
    }

    /// Turns the death of `serial` into its signals, exactly once.
    fn finalize(&mut self, serial: u64) {
        // Its last frames (last words, reports about its children) are all in
        // its control connection by now: read them first.
        if let Some(token) = self.procs.get(&serial).and_then(|p| p.ctl) {
            self.read_conn(token);
        }
        let Some(p) = self.procs.remove(&serial) else {
            return;
        };
        self.pending.remove(&serial);
        self.release_memory_leftovers();
        let memory = self.memory_end(serial, &p);
        let reason = reason_of(&p, memory);
        if !p.internal {
            *self.counters.exits.entry(kind_name(&reason)).or_default() += 1;
        }
        let pid = self.pid(serial);
        tracing::debug!(pid = %pid, ospid = ?p.ospid, name = ?p.name, %reason, "process exited");
        self.shared.slot(serial).release(serial);
        for name in &p.names {
            if self.names.get(name) == Some(&serial) {
                self.names.remove(name);
            }
        }
        for m in &p.monitors {
            if let Some(w) = self.procs.get_mut(&m.watcher) {
                w.watching.remove(&m.reference);
            }
            self.send_to(
                m.watcher,
                ToProcess::Down {
                    reference: m.reference,
                    internal: m.internal,
                    pid,
                    reason: reason.clone(),
                },
            );
        }
        if let Some(slot) = p.scheduler {
            // One that never ran (its zygote died first) is no sign of a
            // failing start.
            self.replace_scheduler(slot, serial, reason == ExitReason::NoProc);
        }
        if serial == ZYGOTE_SERIAL && !self.shutting_down {
            self.promote_spare();
        }
        if self.spare == Some(serial) {
            self.spare = None;
        }
        if p.scheduler.is_some() {
            // The actors it hosted end with it, with its reason.
            let hosted: Vec<u64> = self
                .procs
                .values()
                .filter(|a| a.host == Some(serial) && !a.exited)
                .map(|a| a.serial)
                .collect();
            for a in hosted {
                self.actor_ended(a, reason.clone());
            }
        }
        if p.scheduler.is_some()
            && let Some((submitter, reference)) = self.dispatched.remove(&serial)
        {
            // The task it was handed from a queue (if it had not finished):
            // its submitter decides what now.
            self.send_to(
                submitter,
                ToProcess::Down {
                    reference,
                    internal: true,
                    pid,
                    reason: reason.clone(),
                },
            );
        }
        for (reference, target) in &p.watching {
            if let Some(t) = self.procs.get_mut(target) {
                t.monitors
                    .retain(|m| !(m.watcher == serial && m.reference == *reference));
            }
        }
        for &l in &p.links {
            if let Some(o) = self.procs.get_mut(&l) {
                o.links.remove(&serial);
            }
            let (trap, internal) = match self.procs.get(&l) {
                Some(o) => (o.trap_exits, o.internal),
                None => continue,
            };
            if trap {
                self.send_to(
                    l,
                    ToProcess::Exit {
                        from: pid,
                        reason: reason.clone(),
                    },
                );
            } else if !reason.is_normal() && !internal {
                self.kill(l, reason.clone());
            }
        }
        if let Some(t) = p.ctl {
            self.close_conn(t);
        }
        // Its ports go with it: stopped in order if it ended normally, killed
        // with its reason otherwise.
        let ports: Vec<u64> = self
            .procs
            .values()
            .filter(|c| c.parent == serial && c.port.is_some() && !c.exited)
            .map(|c| c.serial)
            .collect();
        for port in ports {
            if reason.is_normal() {
                self.terminate_port(port);
            } else {
                self.kill(port, reason.clone());
            }
        }
        // Its children are the node's now (it is their subreaper): watch them.
        let orphans: Vec<u64> = self
            .procs
            .values()
            .filter(|c| c.reaper == serial && !c.watched && !c.exited && c.pidfd.is_some())
            .map(|c| c.serial)
            .collect();
        for c in orphans {
            if let Some(child) = self.procs.get_mut(&c)
                && let Some(fd) = &child.pidfd
                && self.epoll.add(fd.as_raw_fd(), PIDFD_TAG | c, Interest::Read).is_ok()
            {
                child.watched = true;
            }
        }
        if self.shutting_down {
            let children: Vec<u64> = self
                .procs
                .values()
                .filter(|c| c.parent == serial && !c.internal && !c.exited)
                .map(|c| c.serial)
                .collect();
            for c in children {
                self.exit_signal(MAIN_SERIAL, c, ExitReason::Shutdown, false);
            }
        }
        // Its children that were not reaped are ours now.
        if !self.pending.is_empty() {
            let pending: Vec<u64> = self.pending.iter().copied().collect();
            for s in pending {
                self.try_status(s);
            }
        }
        // Orphans it left behind are looked for later, off this path (a scan
        // of /proc costs more than the rest of an exit).
        if let Some(pgid) = p.ospid {
            self.stranger_groups.push(pgid);
        }
    }

    /// How many exited processes' groups wait to be scanned for orphans.
    pub(crate) fn strangers_to_scan(&self) -> usize {
        self.stranger_groups.len()
    }

    /// Adopts the orphans of the process groups of processes that exited.
    pub(crate) fn scan_strangers(&mut self) {
        let groups = std::mem::take(&mut self.stranger_groups);
        if !groups.is_empty() {
            self.adopt_strangers(&groups);
        }
    }

    /// Watches the orphans of process group `pgid` that were reparented to the
    /// node (raw forks made inside a process that has exited), to reap them.
    fn adopt_strangers(&mut self, groups: &[i32]) {
        let known: HashSet<i32> = self.procs.values().filter_map(|p| p.ospid).collect();
        let watched: HashSet<i32> = self.stranger_pids.values().copied().collect();
        for child in crate::node::proc_fs::children_of_self() {
            if known.contains(&child) || watched.contains(&child) {
                continue;
            }
            let Some(pgid) = crate::node::proc_fs::pgid_of(child) else {
                continue;
            };
            if !groups.contains(&pgid) {
                continue;
            }
            let Ok(fd) = pidfd_open(child) else {
                continue;
            };
            let token = STRANGER_TAG | self.next_token;
            self.next_token += 1;
            if self.epoll.add(fd.as_raw_fd(), token, Interest::Read).is_ok() {
                tracing::debug!(ospid = child, pgid, "adopted an orphan");
                self.strangers.insert(token, fd);
                self.stranger_pids.insert(token, child);
            }
        }
    }

    /// An adopted stranger exited: reap it.
    pub(crate) fn on_stranger(&mut self, token: u64) {
        if let Some(fd) = self.strangers.get(&token)
            && let Ok(Some(_)) | Err(_) = pidfd_try_wait(fd)
        {
            self.epoll.delete(fd.as_raw_fd());
            self.strangers.remove(&token);
            self.stranger_pids.remove(&token);
            self.counters.strangers_reaped += 1;
            self.release_memory_leftovers();
        }
    }

    /// The status of one process.
    pub(crate) fn info(&self, serial: u64) -> Option<ProcessInfo> {
        let p = self.procs.get(&serial)?;
        let slot = self.shared.slot(serial);
        let own = slot.is(serial);
        let state = if p.exited {
            ProcessState::Exiting
        } else if own {
            ProcessState::from_u32(slot.state.load(std::sync::atomic::Ordering::Relaxed))
        } else {
            ProcessState::Starting
        };
        let get = |a: &std::sync::atomic::AtomicU64| {
            if own {
                a.load(std::sync::atomic::Ordering::Relaxed)
            } else {
                0
            }
        };
        Some(ProcessInfo {
            pid: self.pid(serial),
            os_pid: p.ospid,
            name: p.name.clone(),
            parent: Some(self.pid(p.parent)),
            state,
            queue_len: get(&slot.queue_len),
            memory: p.ospid.and_then(crate::node::proc_fs::rss_bytes),
            dropped: get(&slot.dropped),
            undecodable: get(&slot.undecodable),
            refused: get(&slot.refused),
            trap_exits: p.trap_exits,
            links: p.links.iter().map(|&l| self.pid(l)).collect(),
            monitors: p.monitors.len(),
            registered_names: p.names.clone(),
        })
    }

    /// Serials of the live processes that are not part of the runtime.
    pub(crate) fn user_processes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.procs.values().filter(|p| !p.internal).map(|p| p.serial).collect();
        v.sort_unstable();
        v
    }

    /// Starts an orderly shutdown: the processes the main thread started (and
    /// orphans) get `Shutdown`, newest first; the others follow when their
    /// parent is gone.
    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        let mut top: Vec<u64> = self
            .procs
            .values()
            .filter(|p| {
                !p.internal
                    && !p.exited
                    && (p.parent == MAIN_SERIAL || self.procs.get(&p.parent).is_none_or(|q| q.exited))
            })
            .map(|p| p.serial)
            .collect();
        top.sort_unstable_by(|a, b| b.cmp(a));
        for s in top {
            self.exit_signal(MAIN_SERIAL, s, ExitReason::Shutdown, false);
        }
        self.run_finalizations();
    }

    /// Kills every process that is still alive (the end of a shutdown).
    pub(crate) fn kill_all(&mut self, include_internal: bool) {
        let all: Vec<u64> = self
            .procs
            .values()
            .filter(|p| p.serial != MAIN_SERIAL && (include_internal || !p.internal))
            .map(|p| p.serial)
            .collect();
        for s in all {
            self.kill(s, ExitReason::Killed);
        }
    }

    /// The zygote's pidfd and whether it is alive.
    pub(crate) fn alive(&self, serial: u64) -> bool {
        self.procs.get(&serial).is_some_and(|p| !p.exited)
    }

    /// The node-wide counters.
    pub(crate) fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Kind of an event token.
    pub(crate) fn token_kind(token: u64) -> u64 {
        token & TAG_MASK
    }
}

/// What a process's memory limit says of its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemoryEnd {
    /// Nothing: no limit, or its cgroup saw no OOM kill at the limit.
    Nothing,
    /// The kernel's OOM killer ended it at its cgroup's limit.
    OomKilled,
    /// Its limit is `RLIMIT_DATA`: an allocation past it aborts the process,
    /// so an abort is taken for the limit (approximate: an abort for another
    /// reason reads the same).
    DataRlimit,
}

/// The exit reason of a finalized process (see `docs/semantics.md`).
fn reason_of(p: &Proc, memory: MemoryEnd) -> ExitReason {
    if let Some(r) = &p.actor_exit {
        return r.clone();
    }
    match p.status {
        Some(WaitStatus::Signaled { signal, core_dumped }) => {
            if signal == SIGKILL || (p.port.is_some() && p.kill_reason.is_some()) {
                // Killed by the node for a reason of its own, or by the
                // kernel at the memory limit, or by anyone else.
                p.kill_reason.clone().unwrap_or(if memory == MemoryEnd::OomKilled {
                    ExitReason::MemoryLimit
                } else {
                    ExitReason::Killed
                })
            } else if signal == SIGXCPU && p.cpu_limited {
                ExitReason::CpuLimit
            } else if signal == SIGABRT && memory == MemoryEnd::DataRlimit {
                ExitReason::MemoryLimit
            } else {
                ExitReason::from_signal(signal, core_dumped)
            }
        }
        Some(WaitStatus::Exited(0)) => p.last_words.clone().unwrap_or(ExitReason::Normal),
        Some(WaitStatus::Exited(code)) => ExitReason::Code(code),
        None => p.last_words.clone().unwrap_or(ExitReason::NoProc),
    }
}

/// A short name for counting exits by kind.
pub(crate) fn kind_name(r: &ExitReason) -> &'static str {
    match r {
        ExitReason::Normal => "normal",
        ExitReason::Error(_) => "error",
        ExitReason::Panic(_) => "panic",
        ExitReason::Exit(_) => "exit",
        ExitReason::Shutdown => "shutdown",
        ExitReason::Killed => "killed",
        ExitReason::Signal { .. } => "signal",
        ExitReason::Code(_) => "code",
        ExitReason::NoProc => "noproc",
        ExitReason::NoConnection => "noconnection",
        ExitReason::MemoryLimit => "memory_limit",
        ExitReason::CpuLimit => "cpu_limit",
    }
}
