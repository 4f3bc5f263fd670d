//! The receive path of a process: its listening socket, the connections
//! senders opened to it, its control connection to the node, and the queue that
//! `recv` takes from.
//!
//! # Why this receive path
//!
//! Waking a thread on the other core costs about 45 us on the machines
//! measured, so no thread sits between the socket and `recv`: a thread blocked
//! in `recv` (or `call`, or `join`) waits in `epoll_wait` on the process's own
//! sockets and decodes in its own thread. At most one thread polls at a time
//! (the *poller*); other waiting threads sleep on a condition variable and are
//! woken when the poller has queued something.
//!
//! While no thread of the process is receiving, a background thread takes the
//! poller role, so that senders are drained eagerly (and never have to hold
//! frames in their own memory for long), coalesced frames are flushed, and
//! children are reaped. It steps aside for a receiving thread (evicted through
//! an eventfd, one wake-up at the start of a busy period). While receives
//! follow each other closely (a ping-pong) it looks in only once a millisecond
//! on its own timer, so the receiving thread never has to wake it; only a
//! receive that lasted longer than that wakes it when it ends.
//!
//! Everything is created lazily: the background thread the first time it is
//! needed, and the epoll instance, eventfds and flush timer the first time the
//! process receives or sends. A process that does neither (a closure that
//! computes and returns) makes no system call for them, and an idle process
//! holds one runtime thread at most.
//!
//! In the node's main thread, the exit watcher's epoll is nested in this one:
//! a main thread blocked in a receive handles the node's events itself when it
//! wakes first, so a `Down` reaches it without a hand-off between threads.
//!
//! Order: frames from one connection are queued in the order they were read;
//! when a signal about process A (a `Down` or a trapped `Exit`) arrives on the
//! control connection, everything A wrote to this process is read first
//! (pending connections included), so A's messages come before the signal.
//!
//! 1. `mod.rs`: the queue, the state, and who polls (the hand-off between a
//!    receiving thread and the background thread).
//! 2. [`conns`]: data connections: accept, read, frames, order per sender.
//! 3. [`control`]: the control connection from the node, and reaping children.
//! 4. [`ports`]: the pipes of the ports this process owns.
//! 5. [`hosted`]: the queues of the actors this process (a scheduler) hosts.
//! 6. `direct` (feature `dist`): direct sessions from processes of other
//!    nodes.

mod conns;
mod control;
#[cfg(feature = "dist")]
mod direct;
mod hosted;
mod ports;

pub(crate) use hosted::Hosted;
pub(crate) use ports::PortIo;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex, MutexGuard};

use crate::exit::ExitReason;
use crate::link::ExitSignal;
use crate::monitor::Down;
use crate::pid::{Overflow, Pid};
use crate::runtime::Runtime;
use crate::sys::poll::{Epoll, Event, EventFd, Interest, TimerFd, Token};
use crate::sys::shared::Slot;
use crate::wire::envelope::NodeReply;
use crate::wire::frame::Decoder;
use crate::wire::port::PortOutput;
use crate::wire::{DecodeError, decode_exact};

const TOKEN_LISTENER: Token = Token::single(1);
const TOKEN_CTL: Token = Token::single(2);
const TOKEN_KICK: Token = Token::single(3);
const TOKEN_TIMER: Token = Token::single(4);
/// How often a process out of descriptors tries again to accept.
const LISTENER_RETRY: Duration = Duration::from_millis(10);
const TOKEN_INNER: Token = Token::single(5);
const TOKEN_BG_KICK: Token = Token::single(6);
/// The node's own epoll, nested in the main thread's.
const TOKEN_NODE: Token = Token::single(7);
/// Kind of inbound data connections' tokens.
const CONN: u8 = 1;
/// Kind of child pidfds' tokens.
const CHILD: u8 = 2;
/// Kind of backlogged outbound connections' tokens (waiting to be writable;
/// the number is the receiver's serial).
pub(crate) const OUT: u8 = 3;
/// Kind of ports' pipes' tokens: the number is `serial << 2 | pipe`.
const PORT: u8 = 4;
const PORT_STDOUT: u64 = 0;
const PORT_STDERR: u64 = 1;
const PORT_STDIN: u64 = 2;

/// How long the background thread stays away after a receive ended.
const BACKGROUND_IDLE: Duration = Duration::from_millis(1);
/// Bytes read from one connection per poll round before others get a turn.
const READ_BUDGET: usize = 1 << 20;
/// Size of the read buffer.
const SCRATCH: usize = 64 * 1024;

/// Something in the mailbox queue.
#[derive(Debug)]
pub(crate) enum Item {
    /// A message: its type fingerprint and postcard body.
    Msg {
        /// Fingerprint of the type it was encoded from.
        fp: u64,
        /// The encoded body.
        body: Vec<u8>,
    },
    /// A monitored process is gone.
    Down(Down),
    /// An exit signal, trapped.
    Exit(ExitSignal),
    /// An event of a port this process owns.
    Port {
        /// The port's serial.
        port: u64,
        /// The event.
        output: PortOutput,
    },
}

/// What arrived for a reference the runtime waits on (a call, a join, a
/// request to the node).
#[derive(Debug, Default)]
pub(crate) struct Awaited {
    /// A reply frame: fingerprint and body.
    pub(crate) reply: Option<(u64, Vec<u8>)>,
    /// The monitored process's exit reason.
    pub(crate) down: Option<ExitReason>,
    /// The node's answer.
    pub(crate) node: Option<NodeReply>,
}

/// Who is polling the process's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poller {
    /// Nobody.
    Idle,
    /// A thread that waits for something (recv, call, join).
    User,
    /// The background thread.
    Background,
}

/// One inbound connection.
#[derive(Debug)]
struct InConn {
    /// The accepted socket (non-blocking).
    fd: OwnedFd,
    /// The sender, once its hello has arrived.
    sender: Option<Pid>,
    /// Frame decoder.
    decoder: Decoder,
    /// Accept order, to drain older connections of a sender first.
    seq: u64,
    /// The actor its messages are for (this process hosts it).
    tenant: Option<u64>,
    /// A direct session from a process of another node: its records are
    /// opened before its frames are read.
    #[cfg(feature = "dist")]
    opener: Option<Box<crate::dist::Opener>>,
}

/// The mutable state of the receive path.
#[derive(Debug)]
pub(crate) struct State {
    /// Messages and signals, in arrival order.
    queue: VecDeque<Item>,
    /// Messages (not signals) in `queue`, for the bound, and their bytes.
    messages: Messages,
    /// This process's status slot, where the queue's figures are published.
    slot: &'static Slot,
    /// The type fingerprints of the typed views ([`Ctx`](crate::Ctx)) made
    /// in this process: a message of one of them waits for its own view.
    views: Vec<(u64, &'static str)>,
    /// References the runtime waits on.
    pub(crate) awaited: HashMap<u64, Awaited>,
    /// The process's listening socket.
    listener: OwnedFd,
    /// Inbound connections by token.
    conns: HashMap<Token, InConn>,
    /// Next connection token / accept sequence number.
    next_conn: u64,
    /// Decoder of the control connection.
    ctl_decoder: Decoder,
    /// Descriptors that came on the control connection, for the frames
    /// that carry them, in order.
    ctl_fds: VecDeque<OwnedFd>,
    /// Direct sessions handed over, waiting for their sender's fence, and
    /// since when.
    #[cfg(feature = "dist")]
    direct_in: HashMap<Pid, direct::Waiting>,
    /// Senders with a direct session being read: a frame of theirs through
    /// the node waits until it is read to its end.
    #[cfg(feature = "dist")]
    direct_senders: std::collections::HashSet<Pid>,
    /// Senders whose direct session is read and whose later signals come
    /// after it (their fence came on the control connection too).
    #[cfg(feature = "dist")]
    signals_behind: std::collections::HashSet<Pid>,
    /// Signals about senders whose direct session is still read, and their
    /// frames through the node since, in order: queued once it ends.
    #[cfg(feature = "dist")]
    held: HashMap<Pid, VecDeque<direct::Held>>,
    /// The sender whose held signals and frames are being queued.
    #[cfg(feature = "dist")]
    releasing: Option<Pid>,
    /// What the records of a direct session opened into: its frames.
    #[cfg(feature = "dist")]
    opened: Vec<u8>,
    #[cfg(feature = "dist")]
    frames: crate::dist::Frames,
    /// Children whose pidfds this process polls, to reap them: token → (serial, pidfd).
    children: HashMap<Token, (u64, OwnedFd)>,
    /// Ports this process owns, by serial.
    ports: HashMap<u64, PortIo>,
    /// Paused ports whose owner took enough of their output: their pipes
    /// are to be read again.
    resume: Vec<u64>,
    /// Who polls.
    poller: Poller,
    /// User threads waiting on the condition variable.
    users_waiting: usize,
    /// The background thread sleeps until a receive ends.
    bg_parked: bool,
    /// When a user poll last returned.
    last_user_poll: Option<Instant>,
    /// User threads inside `pump` now.
    users_in_pump: usize,
    /// Since when user threads have been inside `pump` without a break.
    pumping_since: Option<Instant>,
    /// Mailbox bound and overflow policy.
    bound: Option<(usize, Overflow)>,
    /// Read buffer.
    scratch: Vec<u8>,
    /// Event buffer.
    events: Vec<Event>,
    /// The node is gone (control connection closed).
    pub(crate) disconnected: bool,
    /// The background thread should end.
    stop: bool,
    /// The listener is not watched: a connection waits for a descriptor.
    listener_paused: bool,
    /// The actors this process hosts (a scheduler).
    pub(crate) hosted: Hosted,
}

/// The descriptors a process polls with, created the first time it needs them
/// (a process that never receives or sends creates none: spawning one that
/// returns at once costs no more system calls than its work).
#[derive(Debug)]
pub(crate) struct Io {
    /// Every source of the process: listener, connections, control, children.
    pub(crate) epoll: Epoll,
    /// Wakes the polling user thread.
    kick: EventFd,
    /// Evicts the background thread from its poll.
    bg_kick: EventFd,
    /// Fires to flush coalesced frames (see the outbox).
    pub(crate) timer: TimerFd,
}

/// The receive side of a process.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// Polling descriptors, created on first use.
    io: OnceLock<Io>,
    /// The background thread's poller, created when it starts.
    bg_outer: OnceLock<Epoll>,
    /// The listening socket's descriptor (owned by the state).
    listener_fd: RawFd,
    /// The control connection's descriptor (owned by the runtime).
    ctl_fd: RawFd,
    /// In the node's main thread: the node's epoll, polled too.
    node_epoll: Option<RawFd>,
    /// Set when something needs the background thread.
    bg_wanted: AtomicBool,
    /// Receive state.
    state: Mutex<State>,
    /// Wakes user threads waiting for the poller.
    cond: Condvar,
    /// Wakes the background thread.
    bg_cond: Condvar,
}

impl Inbox {
    /// Builds the receive path over `listener` and the control connection.
    pub(crate) fn new(
        listener: OwnedFd,
        ctl_fd: RawFd,
        node_epoll: Option<RawFd>,
        bound: Option<(usize, Overflow)>,
        slot: &'static Slot,
    ) -> Inbox {
        Inbox {
            io: OnceLock::new(),
            bg_outer: OnceLock::new(),
            listener_fd: listener.as_raw_fd(),
            ctl_fd,
            node_epoll,
            bg_wanted: AtomicBool::new(false),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                messages: Messages::default(),
                slot,
                views: Vec::new(),
                awaited: HashMap::new(),
                listener,
                conns: HashMap::new(),
                next_conn: 0,
                ctl_decoder: Decoder::default(),
                ctl_fds: VecDeque::new(),
                #[cfg(feature = "dist")]
                direct_in: HashMap::new(),
                #[cfg(feature = "dist")]
                direct_senders: std::collections::HashSet::new(),
                #[cfg(feature = "dist")]
                signals_behind: std::collections::HashSet::new(),
                #[cfg(feature = "dist")]
                held: HashMap::new(),
                #[cfg(feature = "dist")]
                releasing: None,
                #[cfg(feature = "dist")]
                opened: Vec::new(),
                #[cfg(feature = "dist")]
                frames: crate::dist::Frames::default(),
                children: HashMap::new(),
                ports: HashMap::new(),
                resume: Vec::new(),
                poller: Poller::Idle,
                users_waiting: 0,
                bg_parked: false,
                last_user_poll: None,
                users_in_pump: 0,
                pumping_since: None,
                bound,
                scratch: Vec::new(),
                events: Vec::new(),
                disconnected: false,
                stop: false,
                listener_paused: false,
                hosted: Hosted::default(),
            }),
            cond: Condvar::new(),
            bg_cond: Condvar::new(),
        }
    }

    /// The polling descriptors, created (and the listener, the control
    /// connection and the flush timer registered) on first use.
    pub(crate) fn io(&self) -> &Io {
        match self.try_io() {
            Ok(io) => io,
            Err(e) => panic!("converge: cannot create the process's polling descriptors: {e}"),
        }
    }

    /// Makes every descriptor the process polls with now, while it can (a
    /// process about to get a descriptor limit): the polling descriptors and
    /// the background thread's own.
    pub(crate) fn make_descriptors(&self) -> io::Result<()> {
        self.try_io()?;
        self.background_poller().map(drop)
    }

    /// The background thread's poller (over the process's epoll and its kick),
    /// made on first use.
    fn background_poller(&self) -> io::Result<&Epoll> {
        if let Some(outer) = self.bg_outer.get() {
            return Ok(outer);
        }
        let outer = Epoll::new()?;
        outer.add(&self.try_io()?.epoll, TOKEN_INNER, Interest::Read)?;
        outer.add(&self.try_io()?.bg_kick, TOKEN_BG_KICK, Interest::Read)?;
        let _ = self.bg_outer.set(outer);
        Ok(self.bg_outer.get().expect("BUG: just set"))
    }

    /// [`io`](Self::io), or why its descriptors could not be made.
    fn try_io(&self) -> io::Result<&Io> {
        if let Some(io) = self.io.get() {
            return Ok(io);
        }
        let made = (|| -> io::Result<Io> {
            let io = Io {
                epoll: Epoll::new()?,
                kick: EventFd::new()?,
                bg_kick: EventFd::new()?,
                timer: TimerFd::new()?,
            };
            io.epoll.add_raw(self.listener_fd, TOKEN_LISTENER, Interest::Read)?;
            io.epoll.add_raw(self.ctl_fd, TOKEN_CTL, Interest::Read)?;
            io.epoll.add(&io.kick, TOKEN_KICK, Interest::Read)?;
            io.epoll.add(&io.timer, TOKEN_TIMER, Interest::Read)?;
            if let Some(fd) = self.node_epoll {
                io.epoll.add_raw(fd, TOKEN_NODE, Interest::Read)?;
            }
            Ok(io)
        })();
        // Another thread may have won the race: its Io is the one kept.
        let _ = self.io.set(made?);
        Ok(self.io.get().expect("BUG: just set"))
    }

    /// Stops polling `fd` (nothing to do if the polling descriptors were
    /// never made: then nothing was polled).
    pub(crate) fn unwatch(&self, fd: RawFd) {
        if let Some(io) = self.io.get() {
            io.epoll.delete_raw(fd);
        }
    }

    /// The process's epoll instance.
    pub(crate) fn epoll(&self) -> &Epoll {
        &self.io().epoll
    }

    /// The flush timer, if the descriptors exist.
    pub(crate) fn timer_if_any(&self) -> Option<&TimerFd> {
        self.io.get().map(|io| &io.timer)
    }

    /// Asks for the background thread to be started (see
    /// [`Runtime::ensure_background`]).
    pub(crate) fn need_background(&self) {
        self.bg_wanted.store(true, Ordering::Relaxed);
    }

    /// Whether something asked for the background thread.
    pub(crate) fn background_wanted(&self) -> bool {
        self.bg_wanted.load(Ordering::Relaxed)
    }

    /// Locks the receive state.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Starts waiting for answers to `reference`.
    pub(crate) fn await_ref(&self, reference: u64) {
        self.state.lock().awaited.insert(reference, Awaited::default());
    }

    /// Stops waiting for `reference`; later answers are dropped.
    pub(crate) fn forget_ref(&self, reference: u64) {
        self.state.lock().awaited.remove(&reference);
    }

    pub(crate) fn add_child(&self, serial: u64, pidfd: OwnedFd) -> io::Result<()> {
        let mut st = self.state.lock();
        let token = Token::new(CHILD, st.next_conn);
        st.next_conn += 1;
        self.epoll().add(&pidfd, token, Interest::Read)?;
        st.children.insert(token, (serial, pidfd));
        self.need_background();
        Ok(())
    }

    /// Like [`pump`](Self::pump), polling without sleeping for up to `spin`
    /// first: an answer expected within microseconds is picked up without
    /// the cost of a sleep and a wake-up (as a BEAM scheduler busy-waits
    /// before it sleeps).
    pub(crate) fn pump_spinning<R>(
        &self,
        rt: &'static Runtime,
        deadline: Option<Instant>,
        spin: Duration,
        mut check: impl FnMut(&mut State) -> Option<R>,
    ) -> Option<R> {
        if !spin.is_zero() {
            let start = Instant::now();
            let until = deadline.map_or(start + spin, |d| d.min(start + spin));
            loop {
                let now = Instant::now();
                if let Some(r) = self.pump(rt, Some(now), &mut check) {
                    return Some(r);
                }
                if now >= until || self.state.lock().disconnected {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        self.pump(rt, deadline, check)
    }

    /// Waits until `check` returns `Some` or the deadline passes, polling the
    /// process's sockets in this thread when no other thread does.
    pub(crate) fn pump<R>(
        &self,
        rt: &'static Runtime,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut State) -> Option<R>,
    ) -> Option<R> {
        // What was taken may let a paused port be read again.
        let mut check = |st: &mut State| {
            let r = check(st);
            if !st.resume.is_empty() {
                self.resume_ports(st);
            }
            r
        };
        let mut st = self.state.lock();
        if let Some(r) = check(&mut st) {
            return Some(r);
        }
        // About to wait: what this process sent must leave first.
        rt.begin_receive();
        st.users_in_pump += 1;
        if st.pumping_since.is_none() {
            st.pumping_since = Some(Instant::now());
        }
        let mut polled = false;
        let out = loop {
            if let Some(r) = check(&mut st) {
                break Some(r);
            }
            let now = Instant::now();
            // Poll at least once, even past the deadline (or after the node
            // shut down), so that `try_recv` sees what already waits in the
            // sockets.
            if polled && (deadline.is_some_and(|d| now >= d) || st.disconnected) {
                break None;
            }
            match st.poller {
                Poller::Idle => {
                    polled = true;
                    st.poller = Poller::User;
                    let mut events = std::mem::take(&mut st.events);
                    events.clear();
                    let timeout = if st.disconnected {
                        Some(Duration::ZERO)
                    } else {
                        deadline.map(|d| d.saturating_duration_since(now))
                    };
                    drop(st);
                    let waited = self.epoll().wait(&mut events, timeout);
                    st = self.state.lock();
                    st.poller = Poller::Idle;
                    st.last_user_poll = Some(Instant::now());
                    if let Err(e) = waited {
                        tracing::error!("epoll_wait failed: {e}");
                    }
                    self.handle(rt, &mut st, &events);
                    st.events = events;
                    if st.users_waiting > 0 {
                        self.cond.notify_all();
                    }
                }
                Poller::User => {
                    // Another thread polls for everyone.
                    polled = true;
                    st = self.wait_for_poller(st, deadline);
                }
                Poller::Background => {
                    polled = true;
                    self.io().bg_kick.notify();
                    st = self.wait_for_poller(st, deadline);
                }
            }
        };
        rt.slot()
            .state
            .store(crate::pid::ProcessState::Running as u32, Ordering::Relaxed);
        st.users_in_pump -= 1;
        if st.users_in_pump == 0 {
            st.pumping_since = None;
            if st.bg_parked {
                // The background thread slept through a long receive; let it
                // watch again (it waits out the idle delay first).
                st.bg_parked = false;
                self.bg_cond.notify_one();
            }
        }
        drop(st);
        rt.ensure_background();
        out
    }

    fn wait_for_poller<'a>(&self, mut st: MutexGuard<'a, State>, deadline: Option<Instant>) -> MutexGuard<'a, State> {
        st.users_waiting += 1;
        let mut st = match deadline {
            Some(d) => self.cond.wait_until(st, d).0,
            None => self.cond.wait(st),
        };
        st.users_waiting -= 1;
        st
    }

    /// The background thread: polls while no user thread does.
    pub(crate) fn background(&self, rt: &Runtime) {
        let outer = match self.background_poller() {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("cannot start the background poller: {e}");
                return;
            }
        };
        let mut outer_events = Vec::with_capacity(4);
        let mut st = self.state.lock();
        loop {
            if st.stop {
                return;
            }
            if let Some(since) = st.pumping_since {
                // A user thread receives. Through a long receive, sleep until
                // it ends (it wakes us); through short ones that follow each
                // other (a ping-pong), look again now and then, so that the
                // receiving thread never has to wake us.
                let long = since.elapsed();
                if long >= BACKGROUND_IDLE {
                    st.bg_parked = true;
                    st = self.bg_cond.wait(st);
                    st.bg_parked = false;
                } else {
                    st = self.bg_cond.wait_for(st, BACKGROUND_IDLE - long).0;
                }
                continue;
            }
            if let Some(t) = st.last_user_poll {
                let idle = t.elapsed();
                if idle < BACKGROUND_IDLE {
                    st = self.bg_cond.wait_for(st, BACKGROUND_IDLE - idle).0;
                    continue;
                }
            }
            st.poller = Poller::Background;
            let mut events = std::mem::take(&mut st.events);
            events.clear();
            outer_events.clear();
            drop(st);
            if let Err(e) = outer.wait(&mut outer_events, None) {
                tracing::error!("epoll_wait failed: {e}");
            }
            for ev in &outer_events {
                match ev.token {
                    TOKEN_BG_KICK => self.io().bg_kick.drain(),
                    _ => {
                        let _ = self.io().epoll.wait(&mut events, Some(Duration::ZERO));
                    }
                }
            }
            st = self.state.lock();
            st.poller = Poller::Idle;
            self.handle(rt, &mut st, &events);
            st.events = events;
            if st.users_waiting > 0 {
                self.cond.notify_all();
            }
        }
    }

    /// Handles ready events. Runs with the state locked, by the poller.
    fn handle(&self, rt: &Runtime, st: &mut State, events: &[Event]) {
        for ev in events {
            match ev.token {
                TOKEN_LISTENER => self.accept_all(rt, st),
                TOKEN_CTL => self.read_ctl(rt, st),
                TOKEN_NODE => {
                    if let Some(node) = rt.node() {
                        node.events_ready();
                        // A Down for this thread may just have been written.
                        self.read_ctl(rt, st);
                    }
                }
                TOKEN_KICK => self.io().kick.drain(),
                TOKEN_TIMER => {
                    if st.listener_paused {
                        // Accept again (the listener reports what waits).
                        st.listener_paused = false;
                        let _ = self.epoll().add_raw(self.listener_fd, TOKEN_LISTENER, Interest::Read);
                    }
                    rt.flush_timer_fired();
                }
                t if t.kind() == CONN => {
                    self.read_conn(rt, st, t, READ_BUDGET);
                }
                t if t.kind() == CHILD => self.reap_child(rt, st, t),
                t if t.kind() == PORT => {
                    let serial = t.n() >> 2;
                    match t.n() & 3 {
                        PORT_STDIN => self.port_flush_input(rt, st, serial),
                        pipe => self.read_port(rt, st, serial, pipe, false),
                    }
                }
                t if t.kind() == OUT => rt.on_writable(t.n()),
                #[cfg(feature = "dist")]
                t if t.kind() == crate::runtime::direct::DIRECT => rt.on_direct_writable(t.n()),
                _ => {}
            }
        }
        #[cfg(feature = "dist")]
        self.release_held(rt, st);
        st.publish();
    }

    /// Stops the background thread (the node's runtime, at shutdown).
    pub(crate) fn stop_background(&self) {
        self.state.lock().stop = true;
        self.bg_cond.notify_all();
        if let Some(io) = self.io.get() {
            io.bg_kick.notify();
        }
    }
}

/// Queues a message, applying the mailbox bound.
///
/// `counted`: its sender counted it in the slot's arrivals (a message from a
/// data connection), so it is no longer on its way.
fn push_message(
    queue: &mut VecDeque<Item>,
    messages: &mut Messages,
    bound: Option<(usize, Overflow)>,
    slot: &Slot,
    (fp, body): (u64, &[u8]),
    counted: bool,
) {
    if counted {
        slot.read.fetch_add(1, Ordering::Relaxed);
        slot.read_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    }
    if let Some((max, policy)) = bound
        && messages.n >= max
    {
        slot.dropped.fetch_add(1, Ordering::Relaxed);
        match policy {
            Overflow::DropNewest => return,
            Overflow::DropOldest => {
                if let Some(i) = queue.iter().position(|it| matches!(it, Item::Msg { .. }))
                    && let Some(old) = queue.remove(i)
                {
                    messages.remove(&old);
                }
            }
        }
    }
    messages.n += 1;
    messages.bytes += body.len();
    queue.push_back(Item::Msg {
        fp,
        body: body.to_vec(),
    });
}

/// The messages in a queue: how many, and their bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Messages {
    n: usize,
    bytes: usize,
}

impl Messages {
    /// Counts `item` out, if it is a message.
    fn remove(&mut self, item: &Item) {
        if let Item::Msg { body, .. } = item {
            self.n -= 1;
            self.bytes -= body.len();
        }
    }
}

impl State {
    /// How many messages and signals wait.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Publishes the queue's length and bytes in the process's slot, for
    /// `process_info`.
    fn publish(&self) {
        self.slot.queue_len.store(self.queue.len() as u64, Ordering::Relaxed);
        self.slot
            .queue_bytes
            .store(self.messages.bytes as u64, Ordering::Relaxed);
    }

    /// Removes the item at `i`, keeping the message count right (and the
    /// count of a port's queued output).
    fn take(&mut self, i: usize) -> Option<Item> {
        let item = self.queue.remove(i)?;
        self.messages.remove(&item);
        if let Item::Port { port, output } = &item
            && let Some(p) = self.ports.get_mut(port)
        {
            p.queued = p.queued.saturating_sub(ports::output_bytes(output));
            if p.paused && p.queued <= ports::PORT_QUEUE_LOW {
                p.paused = false;
                self.resume.push(*port);
            }
        }
        self.publish();
        Some(item)
    }

    /// Removes the first item that `pick` chooses (a selective receive),
    /// leaving the others in order.
    pub(crate) fn take_first(&mut self, pick: impl FnMut(&Item) -> bool) -> Option<Item> {
        let i = self.queue.iter().position(pick)?;
        self.take(i)
    }

    /// Notes that a typed view of type fingerprint `fp` exists in this process.
    pub(crate) fn add_view(&mut self, fp: u64, type_name: &'static str) {
        if !self.views.iter().any(|&(f, _)| f == fp) {
            self.views.push((fp, type_name));
        }
    }

    /// Whether `item` is a message for a view of another type than `want`.
    fn for_another_view(&self, item: &Item, want: u64) -> bool {
        matches!(item, Item::Msg { fp, .. } if *fp != want && self.views.iter().any(|&(f, _)| f == *fp))
    }

    /// What the queue holds, by message type.
    pub(crate) fn summary(&self) -> crate::mailbox::QueueInfo {
        let mut by_type: Vec<crate::mailbox::TypeCount> = Vec::new();
        let mut signals = 0;
        for item in &self.queue {
            let Item::Msg { fp, body } = item else {
                signals += 1;
                continue;
            };
            match by_type.iter_mut().find(|t| t.fingerprint == *fp) {
                Some(t) => {
                    t.count += 1;
                    t.bytes += body.len();
                }
                None => by_type.push(crate::mailbox::TypeCount {
                    type_name: self.views.iter().find(|&&(f, _)| f == *fp).map(|&(_, n)| n),
                    fingerprint: *fp,
                    count: 1,
                    bytes: body.len(),
                }),
            }
        }
        crate::mailbox::QueueInfo {
            len: self.queue.len(),
            messages: self.messages.n,
            bytes: self.messages.bytes,
            signals,
            by_type,
        }
    }

    /// Removes the first item for a view of type fingerprint `want`: a
    /// signal, a message of that type, or a message no view can decode.
    pub(crate) fn take_event(&mut self, want: u64) -> Option<Item> {
        let i = self.queue.iter().position(|it| !self.for_another_view(it, want))?;
        self.take(i)
    }

    /// Removes the first message that decodes as `M` and that `pred`
    /// accepts. A message of another view's type stays queued for it; one
    /// that no view can decode is removed on the way and handed to
    /// `undecodable`.
    pub(crate) fn take_message<M: serde::de::DeserializeOwned>(
        &mut self,
        mut pred: impl FnMut(&M) -> bool,
        mut undecodable: impl FnMut(DecodeError),
    ) -> Option<M> {
        let want = crate::wire::fingerprint::<M>();
        let mut i = 0;
        while i < self.queue.len() {
            if self.for_another_view(&self.queue[i], want) {
                i += 1;
                continue;
            }
            let Item::Msg { fp, body } = &self.queue[i] else {
                i += 1;
                continue;
            };
            match decode_message::<M>(*fp, body) {
                Ok(m) if pred(&m) => {
                    self.take(i);
                    return Some(m);
                }
                Ok(_) => i += 1,
                Err(e) => {
                    self.take(i);
                    undecodable(e);
                }
            }
        }
        None
    }
}

/// Decodes a message body as `M`, checking the type fingerprint.
pub(crate) fn decode_message<M: serde::de::DeserializeOwned>(fp: u64, body: &[u8]) -> Result<M, DecodeError> {
    let expected = crate::wire::fingerprint::<M>();
    if fp != expected {
        return Err(DecodeError::WrongType { found: fp, expected });
    }
    decode_exact(body)
}
