//! The node's control side: the I/O around the process table. It accepts and
//! reads control connections, holds pidfds, and carries out what the table
//! decides (frames, signals, reaps, cgroups).
//!
//! Reading and applying are kept apart: what is pending is read into one
//! ordered queue, then applied frame by frame, and the table never reads a
//! socket while it applies one. Two rules keep the order the table needs:
//!
//! - A frame that names a serial the table does not know yet, but that was
//!   handed out, waits for its registration: the connections that may carry
//!   it (new ones, the zygote's, or every one for an actor) are read, and the
//!   registration (with what came before it on its connection) is applied
//!   first.
//! - Before the end of a process is turned into signals, its control
//!   connection is read to its end and applied: its last words and its
//!   reports about its children come before its `Down`.
//!
//! Every call runs under the node's core lock, from the exit watcher thread or
//! from the node's main thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use crate::node::table::reason::MemoryEnd;
use crate::node::table::{Counters, System, Table};
use crate::pid::NodeId;
use crate::runtime::PoolSettings;
use crate::sys::cgroup::MemoryCgroups;
use crate::sys::poll::{Epoll, Interest, Token};
use crate::sys::process::{
    WaitStatus, pidfd_ended, pidfd_exit_info, pidfd_open, pidfd_send_signal, pidfd_signal_group, pidfd_try_wait,
};
use crate::sys::shared::SharedArea;
use crate::sys::socket;
use crate::wire::decode_exact;
use crate::wire::envelope::{NodeReply, Registration, ToNode, ToProcess};
use crate::wire::frame::{self, Decoder, Kind};

pub(crate) use crate::node::table::{FIRST_SERIAL, MAIN_SERIAL, ZYGOTE_SERIAL};

/// Token of the control listener in the watcher's epoll.
pub(crate) const TOKEN_CTL_LISTENER: Token = Token::single(1);
/// Token of the shutdown-signal pipe.
pub(crate) const TOKEN_SIGNALS: Token = Token::single(2);
/// Token of the watcher's wake-up eventfd.
pub(crate) const TOKEN_KICK: Token = Token::single(3);
/// Kind of control connections' tokens (the number is the connection's).
pub(crate) const CONN: u8 = 1;
/// Kind of process pidfds' tokens (the number is the serial).
pub(crate) const PIDFD: u8 = 2;
/// Kind of adopted strangers' pidfds' tokens.
pub(crate) const STRANGER: u8 = 3;

/// Largest control frame accepted.
const MAX_CTL_FRAME: usize = 1 << 24;

/// What was read, waiting to be applied.
#[derive(Debug)]
enum Input {
    /// A control frame from connection `conn`.
    Frame {
        /// The connection.
        conn: u64,
        /// The frame.
        msg: ToNode,
    },
    /// Connection `conn` ended (`refused`: it broke the framing).
    Closed {
        /// The connection.
        conn: u64,
        /// Closed by the node for a bad frame.
        refused: bool,
    },
    /// The pidfd of a process became readable.
    Exited(u64),
}

impl Input {
    fn conn(&self) -> Option<u64> {
        match self {
            Input::Frame { conn, .. } | Input::Closed { conn, .. } => Some(*conn),
            Input::Exited(_) => None,
        }
    }

    /// The serial this input registers, if it is a registration (an actor
    /// that spawns one registers it in a frame for itself).
    /// Whether this is the registration of a child of `parent` that places
    /// its monitor `reference`.
    fn places_monitor(&self, parent: u64, reference: u64) -> bool {
        let Input::Frame { msg, .. } = self else {
            return false;
        };
        match msg {
            ToNode::Register(reg) | ToNode::Port { reg, .. } => {
                reg.parent == parent && reg.monitors.iter().any(|&(r, _)| r == reference)
            }
            _ => false,
        }
    }

    fn registers(&self) -> Option<u64> {
        let Input::Frame { msg, .. } = self else {
            return None;
        };
        match msg {
            ToNode::Register(reg) | ToNode::Port { reg, .. } | ToNode::SpawnActor { reg, .. } => Some(reg.serial),
            // One level only: a request for an actor never nests another.
            ToNode::ForActor { msg, .. } => match decode_exact::<ToNode>(msg).ok()? {
                ToNode::SpawnActor { reg, .. } => Some(reg.serial),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A control connection.
#[derive(Debug)]
struct CtlConn {
    /// The socket (non-blocking).
    fd: OwnedFd,
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
    /// Its framing broke: nothing more is read from it (the table closes it
    /// once the frames before the break are applied).
    broken: bool,
}

/// The operating system side of the table: sockets, pidfds, cgroups.
#[derive(Debug)]
pub(crate) struct Io {
    /// The watcher's epoll (outlives the node).
    epoll: &'static Epoll,
    /// Our uid: only the same user may connect.
    uid: u32,
    /// The control listener.
    listener: &'static OwnedFd,
    /// Control connections by number.
    conns: HashMap<u64, CtlConn>,
    /// Next number of a connection or a stranger.
    next_token: u64,
    /// Pidfds of the processes in the table.
    pidfds: HashMap<u64, OwnedFd>,
    /// Where memory-limited processes have their cgroups.
    memory: Option<MemoryCgroups>,
    /// Memory cgroups of ended processes that still hold processes they
    /// started: removed once those are gone.
    memory_leftovers: Vec<u64>,
    /// Adopted strangers being watched: number → (pidfd, OS pid, process
    /// group when adopted).
    strangers: HashMap<u64, (OwnedFd, i32, i32)>,
    /// Strangers adopted since the table last took them (for the zygote).
    adopted: Vec<(i32, i32)>,
    /// Read buffer.
    scratch: Vec<u8>,
}

impl Io {
    /// Adds a control connection (non-blocking); returns its number.
    fn add_conn(&mut self, fd: OwnedFd) -> io::Result<u64> {
        let conn = self.next_token;
        self.next_token += 1;
        self.epoll.add(&fd, Token::new(CONN, conn), Interest::Read)?;
        self.conns.insert(
            conn,
            CtlConn {
                fd,
                decoder: Decoder::default(),
                fds: VecDeque::new(),
                out: Vec::new(),
                off: 0,
                backlogged: false,
                broken: false,
            },
        );
        Ok(conn)
    }

    /// Accepts every pending connection of the same user; returns the new
    /// tokens and how many were refused.
    fn accept_all(&mut self) -> (Vec<u64>, u64) {
        let (mut tokens, mut refused) = (Vec::new(), 0);
        loop {
            match socket::accept_same_user(self.listener, self.uid) {
                Ok(Some(Ok(fd))) => match self.add_conn(fd) {
                    Ok(t) => tokens.push(t),
                    Err(e) => tracing::warn!("cannot watch a control connection: {e}"),
                },
                Ok(Some(Err(cred))) => {
                    refused += 1;
                    tracing::warn!(
                        uid = cred.uid,
                        pid = cred.pid,
                        "refused a control connection from another user"
                    );
                }
                Ok(None) => return (tokens, refused),
                Err(e) => {
                    tracing::warn!("accept on the control listener failed: {e}");
                    return (tokens, refused);
                }
            }
        }
    }

    /// Reads connection `conn` until it would block, into `queue`.
    fn read(&mut self, conn: u64, queue: &mut VecDeque<Input>) {
        loop {
            let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.broken) else {
                return;
            };
            let mut fds = Vec::new();
            let n = match socket::recv_with_fds(&c.fd, &mut self.scratch, &mut fds) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => 0,
            };
            c.fds.extend(fds);
            if n == 0 {
                queue.push_back(Input::Closed { conn, refused: false });
                return;
            }
            let mut broken = false;
            let res = c.decoder.feed(&self.scratch[..n], MAX_CTL_FRAME, |kind, body| {
                if kind != Kind::Ctl {
                    tracing::warn!("control frame of unknown kind {}", kind as u8);
                    broken = true;
                    return false;
                }
                match decode_exact::<ToNode>(body) {
                    Ok(msg) => {
                        queue.push_back(Input::Frame { conn, msg });
                        true
                    }
                    Err(e) => {
                        tracing::warn!("undecodable control frame: {e}");
                        broken = true;
                        false
                    }
                }
            });
            if broken || res.is_err() {
                // Nothing more is read from it; the frames before the break
                // are applied (with their descriptors), then it is closed.
                c.broken = true;
                queue.push_back(Input::Closed { conn, refused: true });
                return;
            }
            // Keep reading until the socket is empty: a read stops early at a
            // message that carries descriptors.
        }
    }

    /// Stops watching a connection and drops it.
    fn forget_conn(&mut self, conn: u64) {
        if let Some(c) = self.conns.remove(&conn) {
            self.epoll.delete(&c.fd);
        }
    }

    fn write(epoll: &Epoll, number: u64, conn: &mut CtlConn) {
        let token = Token::new(CONN, number);
        while conn.off < conn.out.len() {
            match socket::send(&conn.fd, &conn.out[conn.off..]) {
                Ok(n) => conn.off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.backlogged {
                        conn.backlogged = true;
                        let _ = epoll.modify(&conn.fd, token, Interest::ReadWrite);
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
            let _ = epoll.modify(&conn.fd, token, Interest::Read);
        }
    }

    /// Removes the memory cgroups of ended processes that have emptied
    /// since (the programs they started have ended).
    fn release_memory_leftovers(&mut self) {
        if let Some(cgroups) = &self.memory {
            self.memory_leftovers.retain(|&s| !cgroups.release(s));
        }
    }

    /// Watches the orphans of the process groups `groups` that were
    /// reparented to the node (raw forks made inside a process that has
    /// ended), to reap them; `known` are the table's OS pids.
    fn adopt_strangers(&mut self, groups: &[i32], known: &HashSet<i32>) {
        let watched: HashSet<i32> = self.strangers.values().map(|s| s.1).collect();
        for child in crate::sys::proc_fs::children_of_self() {
            if known.contains(&child) || watched.contains(&child) {
                continue;
            }
            let Some(pgid) = crate::sys::proc_fs::pgid_of(child) else {
                continue;
            };
            if !groups.contains(&pgid) {
                continue;
            }
            let Ok(fd) = pidfd_open(child) else {
                continue;
            };
            let n = self.next_token;
            self.next_token += 1;
            if self.epoll.add(&fd, Token::new(STRANGER, n), Interest::Read).is_ok() {
                tracing::debug!(ospid = child, pgid, "adopted an orphan");
                self.strangers.insert(n, (fd, child, pgid));
                self.adopted.push((child, pgid));
            }
        }
    }

    /// The pidfd of adopted stranger `n` is readable: reaps it; true if it was.
    fn reap_stranger(&mut self, n: u64) -> bool {
        let Some((fd, ..)) = self.strangers.get(&n) else {
            return false;
        };
        if let Ok(None) = pidfd_try_wait(fd) {
            return false;
        }
        self.epoll.delete(fd);
        self.strangers.remove(&n);
        self.release_memory_leftovers();
        true
    }
}

impl System for Io {
    fn strays(&self) -> Vec<(i32, i32)> {
        self.strangers.values().map(|&(_, ospid, pgid)| (ospid, pgid)).collect()
    }

    fn send(&mut self, conn: u64, msg: &ToProcess) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        frame::push(&mut c.out, Kind::Ctl, msg).expect("BUG: control frames always encode");
        if !c.backlogged {
            Self::write(self.epoll, conn, c);
        }
    }

    fn close(&mut self, conn: u64) {
        self.forget_conn(conn);
    }

    fn ended(&self, serial: u64) -> bool {
        self.pidfds.get(&serial).is_some_and(pidfd_ended)
    }

    fn signal(&mut self, serial: u64, group: Option<i32>, signal: i32) -> io::Result<()> {
        let fd = self
            .pidfds
            .get(&serial)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        match group {
            Some(pgid) => pidfd_signal_group(fd, pgid, signal),
            None => pidfd_send_signal(fd, signal),
        }
    }

    fn kill_cgroup(&mut self, cgroup: &str) {
        crate::sys::cgroup::kill(cgroup);
    }

    fn watch(&mut self, serial: u64) -> bool {
        self.pidfds
            .get(&serial)
            .is_some_and(|fd| self.epoll.add(fd, Token::new(PIDFD, serial), Interest::Read).is_ok())
    }

    fn unwatch(&mut self, serial: u64) {
        if let Some(fd) = self.pidfds.get(&serial) {
            self.epoll.delete(fd);
        }
    }

    fn rename(&mut self, from: u64, to: u64) {
        if let Some(fd) = self.pidfds.remove(&from) {
            self.pidfds.insert(to, fd);
        }
    }

    fn forget(&mut self, serial: u64) {
        self.pidfds.remove(&serial);
    }

    fn claim_fd(&mut self, conn: u64, serial: u64) -> bool {
        match self.conns.get_mut(&conn).and_then(|c| c.fds.pop_front()) {
            Some(fd) => {
                self.pidfds.entry(serial).or_insert(fd);
                true
            }
            None => false,
        }
    }

    fn drop_fd(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.fds.pop_front();
        }
    }

    fn wait_status(&mut self, serial: u64) -> Option<(WaitStatus, bool)> {
        let fd = self.pidfds.get(&serial)?;
        match pidfd_try_wait(fd) {
            Ok(status) => status.map(|s| (s, true)),
            // Not our child: its parent reaps it and tells us, or the kernel
            // keeps the status for pidfd holders.
            Err(_) => pidfd_exit_info(fd).ok().flatten().map(|s| (s, false)),
        }
    }

    fn zombie_status(&mut self, serial: u64, ospid: i32) -> Option<WaitStatus> {
        crate::sys::process::zombie_status(self.pidfds.get(&serial)?, ospid)
    }

    fn reap_quietly(&mut self, serial: u64) {
        if let Some(fd) = self.pidfds.get(&serial) {
            let _ = pidfd_try_wait(fd);
        }
    }

    fn release_leftovers(&mut self) {
        self.release_memory_leftovers();
    }

    fn memory_end(&mut self, serial: u64, sigkilled: bool) -> MemoryEnd {
        let Some(cgroups) = &self.memory else {
            return MemoryEnd::DataRlimit;
        };
        let end = if sigkilled && cgroups.oom_killed(serial) {
            MemoryEnd::OomKilled
        } else {
            MemoryEnd::Nothing
        };
        if !cgroups.release(serial) {
            self.memory_leftovers.push(serial);
        }
        end
    }

    fn parent_of(&self, ospid: i32) -> Option<i32> {
        crate::sys::proc_fs::parent_of(ospid)
    }

    fn rss(&self, ospid: i32) -> Option<u64> {
        crate::sys::proc_fs::rss_bytes(ospid)
    }

    #[cfg(feature = "dist")]
    fn remote_direct(&mut self, from: crate::pid::Pid, to: crate::pid::Pid) -> bool {
        crate::dist::open_direct(from, to)
    }

    #[cfg(feature = "dist")]
    fn remote_backlogged(&mut self, node: NodeId) {
        crate::dist::backlogged(node);
    }

    #[cfg(feature = "dist")]
    fn send_with_fd(&mut self, conn: u64, msg: &ToProcess, fd: OwnedFd) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.off < c.out.len() {
            Self::write(self.epoll, conn, c);
            if c.off < c.out.len() {
                // The descriptor must travel with its own frame's first byte.
                return false;
            }
        }
        let mut buf = Vec::with_capacity(128);
        frame::push(&mut buf, Kind::Ctl, msg).expect("BUG: control frames always encode");
        match socket::send_with_fds_now(&c.fd, &buf, &[std::os::fd::AsFd::as_fd(&fd)]) {
            Ok(n) => {
                if n < buf.len() {
                    c.out.extend_from_slice(&buf[n..]);
                    Self::write(self.epoll, conn, c);
                }
                true
            }
            Err(_) => false,
        }
    }

    fn remote(&mut self, from: crate::pid::Pid, to: crate::pid::Pid, kind: u8, body: &[u8]) {
        #[cfg(feature = "dist")]
        crate::dist::route(from, to, kind, body);
        #[cfg(not(feature = "dist"))]
        let _ = (from, to, kind, body);
    }

    #[cfg(feature = "dist")]
    fn remote_exit_signal(
        &mut self,
        from: crate::pid::Pid,
        target: crate::pid::Pid,
        reason: crate::exit::ExitReason,
        untrappable: bool,
    ) {
        crate::dist::remote_exit_signal(from, target, reason, untrappable);
    }

    #[cfg(feature = "dist")]
    fn remote_link(&mut self, from: crate::pid::Pid, target: crate::pid::Pid) -> bool {
        crate::dist::remote_link(from, target)
    }

    #[cfg(feature = "dist")]
    fn remote_unlink(&mut self, from: crate::pid::Pid, target: crate::pid::Pid) {
        crate::dist::remote_unlink(from, target);
    }

    #[cfg(feature = "dist")]
    fn remote_exit(&mut self, to: crate::pid::Pid, from: crate::pid::Pid, reason: crate::exit::ExitReason) {
        crate::dist::remote_exit(to, from, reason);
    }

    #[cfg(feature = "dist")]
    fn remote_monitor(
        &mut self,
        watcher: crate::pid::Pid,
        reference: u64,
        internal: bool,
        target: crate::pid::Pid,
    ) -> bool {
        crate::dist::remote_monitor(watcher, reference, internal, target)
    }

    #[cfg(feature = "dist")]
    fn remote_down(
        &mut self,
        watcher: crate::pid::Pid,
        reference: u64,
        internal: bool,
        pid: crate::pid::Pid,
        reason: crate::exit::ExitReason,
    ) {
        crate::dist::remote_down(watcher, reference, internal, pid, reason);
    }
}

/// The process table with its I/O.
#[derive(Debug)]
pub(crate) struct Control {
    /// The table.
    table: Table<Io>,
    /// What was read and is not applied yet, in order.
    queue: VecDeque<Input>,
    /// The watcher waits with a timeout (it will retry statuses and scan for
    /// orphans without being woken).
    pub(crate) watcher_will_wake: bool,
}

impl Control {
    pub(crate) fn new(
        node: NodeId,
        uid: u32,
        epoll: &'static Epoll,
        shared: &'static SharedArea,
        listener: &'static OwnedFd,
        pool: PoolSettings,
        memory: Option<MemoryCgroups>,
    ) -> Control {
        let io = Io {
            epoll,
            uid,
            listener,
            conns: HashMap::new(),
            next_token: 0,
            pidfds: HashMap::new(),
            memory,
            memory_leftovers: Vec::new(),
            strangers: HashMap::new(),
            adopted: Vec::new(),
            scratch: vec![0; 64 * 1024],
        };
        Control {
            table: Table::new(io, node, shared, pool),
            queue: VecDeque::new(),
            watcher_will_wake: false,
        }
    }

    // ---- reading and applying ----------------------------------------

    /// Accepts every pending control connection.
    pub(crate) fn accept_all(&mut self) {
        let (tokens, refused) = self.table.sys.accept_all();
        self.table.counters_mut().refused += refused;
        for t in tokens {
            self.table.conn_opened(t, None);
        }
    }

    /// Connection `conn` is readable: reads and applies what it has.
    pub(crate) fn read_conn(&mut self, conn: u64) {
        self.table.sys.read(conn, &mut self.queue);
        self.run();
    }

    /// The pidfd of `serial` became readable.
    pub(crate) fn on_pidfd(&mut self, serial: u64) {
        self.queue.push_back(Input::Exited(serial));
        self.run();
    }

    /// Applies the queue in order, then turns the ends of processes into
    /// signals, each after its control connection was read to its end.
    fn run(&mut self) {
        loop {
            while let Some(input) = self.queue.pop_front() {
                self.apply(input);
            }
            let Some(serial) = self.table.next_to_finalize() else {
                self.note_timers();
                return;
            };
            // Its last frames (last words, reports about its children) are
            // all in its control connection by now.
            if let Some(conn) = self.table.conn_of(serial) {
                self.table.sys.read(conn, &mut self.queue);
                while let Some(input) = self.queue.pop_front() {
                    self.apply(input);
                }
            }
            self.table.finalize(serial);
        }
    }

    /// Carries the table's new timers to the watcher: one that sleeps with
    /// no timeout, or a later one, must look again.
    fn note_timers(&mut self) {
        if self.table.take_timer_armed() {
            self.watcher_will_wake = false;
        }
    }

    /// Applies one input, after the registration it waits for.
    fn apply(&mut self, input: Input) {
        match input {
            Input::Frame { conn, msg } => {
                if let Some(serial) = self.table.awaits(&msg) {
                    self.apply_registration_of(serial, Some(conn));
                }
                // A demonitor of a monitor placed by a spawn whose
                // registration (which carries the monitor) travels on another
                // connection: that registration first.
                if let ToNode::Demonitor { reference, .. } = &msg
                    && let Some(from) = self.table.owner(conn)
                    && !self.table.watches(from, *reference)
                {
                    let reference = *reference;
                    self.apply_registration_where(Some(conn), false, |i| i.places_monitor(from, reference));
                }
                self.table.frame(conn, msg);
            }
            Input::Closed { conn, refused: false } => self.table.conn_closed(conn),
            Input::Closed { conn, refused: true } => self.table.conn_refused(conn),
            Input::Exited(serial) => self.table.pidfd_readable(serial),
        }
    }

    /// Reads the connections that may carry the registration of `serial`
    /// (new ones and the zygote's, where ports are registered; every one for
    /// an actor, registered on its spawner's), other than `except`, and
    /// applies that registration and what came before it on its connection.
    fn apply_registration_of(&mut self, serial: u64, except: Option<u64>) {
        let actor = self.table.shared().slot(serial).host_of(serial).is_some();
        self.apply_registration_where(except, actor, |i| i.registers() == Some(serial));
    }

    /// Reads the connections that may carry registrations (every one with
    /// `all`) other than `except`, and applies the first input that `pick`
    /// chooses with what came before it on its connection.
    fn apply_registration_where(&mut self, except: Option<u64>, all: bool, pick: impl Fn(&Input) -> bool) {
        self.accept_all();
        let actor = all;
        let mut conns: Vec<u64> = self
            .table
            .sys
            .conns
            .keys()
            .copied()
            .filter(|&c| Some(c) != except && (actor || self.table.carries_registrations(c)))
            .collect();
        conns.sort_unstable();
        for c in conns {
            self.table.sys.read(c, &mut self.queue);
        }
        let Some(at) = self.queue.iter().position(|i| pick(i) && i.conn() != except) else {
            return;
        };
        let conn = self.queue[at].conn();
        let mut before = Vec::new();
        let mut i = 0;
        let mut left = at + 1;
        while i < self.queue.len() && left > 0 {
            left -= 1;
            if self.queue[i].conn() == conn {
                before.push(self.queue.remove(i).expect("BUG: index checked"));
            } else {
                i += 1;
            }
        }
        for input in before {
            self.apply(input);
        }
    }

    // ---- the node's own calls ----------------------------------------

    /// A request from the node's main thread, answered directly.
    pub(crate) fn local_request(&mut self, from: u64, msg: ToNode) -> Option<NodeReply> {
        if let Some(serial) = self.table.awaits(&msg) {
            self.apply_registration_of(serial, None);
        }
        let reply = self.table.local_request(from, msg);
        self.run();
        reply
    }

    /// [`local_request`](Self::local_request), answered on the main thread's
    /// control connection after what the node sent it before.
    pub(crate) fn local_request_in_order(&mut self, from: u64, msg: ToNode) {
        if let Some(serial) = self.table.awaits(&msg) {
            self.apply_registration_of(serial, None);
        }
        self.table.local_request_in_order(from, msg);
        self.run();
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
        let conn = self.table.sys.add_conn(ctl)?;
        let has_pidfd = pidfd.is_some();
        if let Some(fd) = pidfd {
            self.table.sys.pidfds.insert(serial, fd);
        }
        self.table.add_internal(serial, conn, ospid, has_pidfd, name);
        Ok(())
    }

    /// Registers a process the node's main thread is about to fork (or to have
    /// the zygote fork): its control connection is a socket pair end. It is
    /// registered before it exists, so that nothing it does can reach the node
    /// before its registration. `pidfd_follows`: the spawner attaches the pidfd
    /// with [`attach_local_pidfd`](Self::attach_local_pidfd) after the fork.
    pub(crate) fn register_local(&mut self, reg: Registration, ctl: OwnedFd, pidfd_follows: bool) -> io::Result<()> {
        let conn = self.table.sys.add_conn(ctl)?;
        self.table.register_local(reg, conn, pidfd_follows);
        self.run();
        Ok(())
    }

    /// Attaches the pidfd of a process registered with `register_local`.
    pub(crate) fn attach_local_pidfd(&mut self, serial: u64, pidfd: OwnedFd, ospid: i32) {
        if self.table.wants_pidfd(serial) {
            self.table.sys.pidfds.insert(serial, pidfd);
            self.table.attach_pidfd(serial, ospid);
        }
        self.run();
    }

    /// Forgets a registration whose spawn failed.
    pub(crate) fn withdraw(&mut self, serial: u64) {
        self.table.withdraw(serial);
        self.run();
    }

    /// See [`Table::hand_over`].
    #[cfg(feature = "dist")]
    pub(crate) fn hand_over(&mut self, serial: u64, msg: ToProcess, fd: Option<OwnedFd>) -> bool {
        self.table.hand_over(serial, msg, fd)
    }

    /// A backlogged control connection is writable.
    pub(crate) fn on_conn_writable(&mut self, conn: u64) {
        let io = &mut self.table.sys;
        if let Some(c) = io.conns.get_mut(&conn) {
            Io::write(io.epoll, conn, c);
        }
    }

    /// Whether some ended process still waits for its status.
    pub(crate) fn has_pending(&self) -> bool {
        self.table.has_pending()
    }

    /// Looks again for the statuses still missing.
    pub(crate) fn retry_pending(&mut self) {
        self.table.retry_pending();
        self.run();
    }

    /// The earliest timer, if any.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.table.next_timer()
    }

    /// Runs the timers that are due.
    pub(crate) fn run_timers(&mut self) {
        self.table.run_timers(Instant::now());
        self.run();
    }

    /// How many ended processes' groups wait to be scanned for orphans.
    pub(crate) fn strangers_to_scan(&self) -> usize {
        self.table.strangers_to_scan()
    }

    /// Adopts the orphans of the process groups of processes that ended, and
    /// tells the zygote of those that die with the node.
    pub(crate) fn scan_strangers(&mut self) {
        let groups = self.table.take_stranger_groups();
        let groups_scanned = !groups.is_empty();
        if groups_scanned {
            let known = self.table.ospids();
            self.table.sys.adopt_strangers(&groups, &known);
        }
        for (ospid, pgid) in std::mem::take(&mut self.table.sys.adopted) {
            if !self.table.exempt_groups.contains(&pgid) {
                self.table.tell_zygote(ToProcess::Stray { ospid });
            }
        }
        // A group that let its strays outlive the node is forgotten once it
        // has no member among the node's children (its leader ended, and a
        // member's own children come to the node when it ends): its id may
        // be used again by a process whose strays must not be spared.
        if !self.table.exempt_groups.is_empty() && groups_scanned {
            let live: HashSet<i32> = crate::sys::proc_fs::children_of_self()
                .into_iter()
                .filter_map(crate::sys::proc_fs::pgid_of)
                .collect();
            let leaders = self.table.ospids();
            self.table
                .exempt_groups
                .retain(|g| live.contains(g) || leaders.contains(g));
        }
    }

    /// Pidfds of the strays to stop at the shutdown: what ended processes
    /// left behind (adopted now, if not yet), less the groups that chose to
    /// outlive the node. Children the node's own threads started (in the
    /// node's group) are not strays: they are the application's.
    pub(crate) fn strays(&mut self) -> Vec<OwnedFd> {
        self.scan_strangers();
        self.table
            .sys
            .strangers
            .values()
            .filter(|(_, _, pgid)| !self.table.exempt_groups.contains(pgid))
            .filter_map(|(fd, ..)| fd.try_clone().ok())
            .collect()
    }

    /// Adopted stranger `n` exited: reap it.
    pub(crate) fn on_stranger(&mut self, n: u64) {
        if self.table.sys.reap_stranger(n) {
            self.table.counters_mut().strangers_reaped += 1;
        }
    }

    /// Starts an orderly shutdown (see [`Table::begin_shutdown`]).
    pub(crate) fn begin_shutdown(&mut self) {
        self.table.begin_shutdown();
        self.run();
    }

    /// Whether a shutdown is under way.
    pub(crate) fn shutting_down(&self) -> bool {
        self.table.shutting_down()
    }

    /// Kills every process that is still alive (the end of a shutdown).
    pub(crate) fn kill_all(&mut self, include_internal: bool) {
        self.table.kill_all(include_internal);
    }

    /// Serials of the live processes that are not part of the runtime.
    pub(crate) fn user_processes(&self) -> Vec<u64> {
        self.table.user_processes()
    }

    /// Whether `serial` is known and alive.
    pub(crate) fn alive(&self, serial: u64) -> bool {
        self.table.alive(serial)
    }

    /// The node-wide counters.
    pub(crate) fn counters(&self) -> Counters {
        self.table.counters().clone()
    }

    /// Adopted strangers still running.
    pub(crate) fn adopted_strangers(&self) -> usize {
        self.table.sys.strangers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pid::{MAIN_SERIAL, NodeId, Pid};

    use crate::wire::envelope::Registration;

    fn reg(serial: u64) -> Registration {
        Registration::plain(serial, MAIN_SERIAL)
    }

    #[test]
    fn an_actors_spawn_inside_a_request_for_an_actor_is_a_registration() {
        let spawn = ToNode::SpawnActor {
            reg: reg(9),
            host: 4,
            register: None,
            start: Vec::new(),
        };
        let frame = |msg| Input::Frame { conn: 1, msg };
        assert_eq!(frame(spawn.clone()).registers(), Some(9));
        assert_eq!(frame(ToNode::for_actor(7, &spawn)).registers(), Some(9));
        // Nested requests are not looked into (the table refuses them).
        let nested = ToNode::for_actor(7, &ToNode::for_actor(8, &spawn));
        assert_eq!(frame(nested).registers(), None);
        let monitor = ToNode::Monitor {
            reference: 1,
            internal: false,
            target: Pid::new(NodeId::from_bytes([1; 16]), 9),
        };
        assert_eq!(frame(ToNode::for_actor(7, &monitor)).registers(), None);
    }
}
