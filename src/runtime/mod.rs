//! The runtime of one process: who it is, its control connection to the node,
//! its receive path ([`Inbox`]) and its send path ([`Outbox`]).
//!
//! Every process (the node's main thread included) has exactly one runtime,
//! installed in a [`ForkGlobal`] so that a forked child replaces it with its
//! own without touching the parent's.
//!
//! 1. `mod.rs`: the runtime: identity, control connection, the send calls.
//! 2. [`inbox`]: the receive path (why a receiving thread polls its own sockets).
//! 3. [`outbox`]: the send path (why frames are batched the way they are).
//! 4. [`spawn`] and [`child`]: forking a process and starting its runtime.
//! 5. [`zygote`]: asking the zygote for a `spawn_fn` process or a port.
//! 6. `direct` (feature `dist`): direct sessions to processes of other
//!    nodes.

pub(crate) mod child;
#[cfg(feature = "dist")]
pub(crate) mod direct;
pub(crate) mod inbox;
pub(crate) mod outbox;
pub(crate) mod spawn;
pub(crate) mod zygote;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sync::Mutex;
use serde::Serialize;

use crate::exit::ExitReason;
use crate::pid::{Overflow, Pid, ProcessState};
use crate::runtime::inbox::Inbox;
use crate::runtime::outbox::{BuildError, Outbox, Sent};
use crate::sys::global::ForkGlobal;
use crate::sys::process::exit_now;
use crate::sys::shared::{SharedArea, Slot};
use crate::sys::socket;
use crate::wire::body;
use crate::wire::envelope::{NodeReply, Registration, ToNode};
use crate::wire::frame::{self, Kind};

/// Settings every process of a node shares (from [`Config`](crate::Config)).
#[derive(Debug)]
pub(crate) struct Settings {
    /// Largest encoded message body.
    pub(crate) max_message: usize,
    /// Quiet time after which a frame is written at once.
    pub(crate) coalesce: Duration,
    /// Delay before coalesced frames are flushed by the timer.
    pub(crate) flush_delay: Duration,
    /// How long an exiting process tries to write what it still holds.
    pub(crate) exit_flush: Duration,
    /// Most outgoing connections a process keeps open.
    pub(crate) max_connections: usize,
    /// The node's user id (every process of a node runs as it).
    pub(crate) uid: u32,
    /// The node's cgroup for ports, where it could make one.
    pub(crate) cgroup: Option<String>,
    /// Where memory-limited processes get their cgroups (none: they get
    /// `RLIMIT_DATA`).
    pub(crate) memory: Option<crate::sys::cgroup::MemoryCgroups>,
    /// The scheduler pool's shape.
    pub(crate) pool: PoolSettings,
}

/// The scheduler pool's shape: its classes, in slot order, and what runs in
/// each scheduler first.
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolSettings {
    /// Class names and their number of schedulers; the first is the default.
    pub(crate) classes: Vec<(String, usize)>,
    /// A `fn()` to run in each scheduler when it starts.
    pub(crate) init: Option<crate::sys::text::FnAddr>,
    /// An actor step running longer than this is reported.
    pub(crate) step_limit: Option<Duration>,
    /// ... and its scheduler killed.
    pub(crate) kill_overruns: bool,
    /// How long a scheduler waiting for work, or a submitter waiting for a
    /// task's value, polls before it sleeps.
    pub(crate) busy_wait: Duration,
}

impl PoolSettings {
    /// The slots of class `class`.
    pub(crate) fn slots(&self, class: usize) -> std::ops::Range<usize> {
        let start: usize = self.classes[..class].iter().map(|c| c.1).sum();
        start..start + self.classes[class].1
    }

    /// The class of slot `slot`.
    pub(crate) fn class_of(&self, slot: usize) -> Option<usize> {
        (0..self.classes.len()).find(|&c| self.slots(c).contains(&slot))
    }
}

/// The node, as its own main thread's runtime reaches it: directly, with no
/// socket and no thread hand-off. `init()` installs it; the runtime (a lower
/// layer) never names the node's types.
pub(crate) trait LocalNode: Sync + std::fmt::Debug {
    /// A request of the main thread (`from`), answered directly.
    fn request(&self, from: u64, msg: ToNode) -> Option<NodeReply>;
    /// A request of the main thread (`from`), answered on its control
    /// connection after every frame the node sent it before.
    fn request_in_order(&self, from: u64, msg: ToNode);
    /// Registers a process about to be forked (or asked of the zygote),
    /// whose control connection is `ctl`; `pidfd_follows`: the spawner
    /// attaches its pidfd after the fork.
    fn register(&self, reg: Registration, ctl: OwnedFd, pidfd_follows: bool) -> io::Result<()>;
    /// Attaches the pidfd of a process registered with `register`.
    fn attach_pidfd(&self, serial: u64, pidfd: OwnedFd, ospid: i32);
    /// Forgets a registration whose spawn failed.
    fn withdraw(&self, serial: u64);
    /// Hands a control frame (with a direct session's socket) to process
    /// `serial` of this node; false if it is not one that takes it.
    #[cfg(feature = "dist")]
    fn hand_over(&self, serial: u64, msg: crate::wire::envelope::ToProcess, fd: Option<OwnedFd>) -> bool;
    /// The node's epoll, nested in the main thread's.
    fn epoll_fd(&self) -> RawFd;
    /// The node's events are ready: the main thread handles them itself.
    fn events_ready(&'static self);
    /// Whether new processes may start.
    fn accepting(&self) -> bool;
    /// Stops every process in order (the main thread's `exit`).
    fn shutdown(&'static self);
}

/// The runtime of the current process.
#[derive(Debug)]
pub(crate) struct Runtime {
    /// This process.
    me: Pid,
    /// Our user id (peers must have the same).
    uid: u32,
    /// The node's shared area.
    shared: &'static SharedArea,
    /// Node-wide settings.
    settings: &'static Settings,
    /// Control connection to the node (for the node's main thread: the end of
    /// the socket pair on which the node's exit watcher writes signals).
    ctl: OwnedFd,
    /// Serializes writes on the control connection; holds the frame buffer.
    ctl_write: Mutex<Vec<u8>>,
    /// Read end of the node-death pipe that children arm from.
    death: OwnedFd,
    /// The node's state, in the node process only.
    node: Option<&'static dyn LocalNode>,
    /// Receive path.
    pub(crate) inbox: Inbox,
    /// Send path.
    pub(crate) outbox: Outbox,
    /// Source of monitor references and request ids.
    next_ref: AtomicU64,
    /// Counts receives, for the batching rule.
    epoch: AtomicU64,
    /// Whether the background thread runs.
    bg_started: AtomicBool,
    /// Connection to the zygote, opened on first use.
    pub(crate) zygote: Mutex<Option<OwnedFd>>,
    /// Monitors on schedulers this process sent tasks to: scheduler → the
    /// monitor's reference (its `Down` stays for every task that waits).
    sched_watch: Mutex<std::collections::HashMap<Pid, u64>>,
    /// This process is a scheduler: it may host actors, to which its sends
    /// go without a socket.
    hosts_actors: AtomicBool,
    /// Routes to processes of other nodes: their direct sessions.
    #[cfg(feature = "dist")]
    directs: Mutex<direct::Directs>,
    /// How long a receive polls before it sleeps (nanoseconds).
    receive_spin: AtomicU64,
}

static CURRENT: ForkGlobal<Runtime> = ForkGlobal::new();

thread_local! {
    /// The actor whose step this thread runs (in a scheduler): what it sends
    /// and asks of the node is its own, not the scheduler's.
    static ACTING: std::cell::Cell<Option<Pid>> = const { std::cell::Cell::new(None) };
}

/// The actor whose step the calling thread runs, if any.
pub(crate) fn acting() -> Option<Pid> {
    ACTING.with(|a| a.get())
}

/// Sets (or clears) the actor whose step the calling thread runs.
pub(crate) fn set_acting(actor: Option<Pid>) {
    ACTING.with(|a| a.set(actor));
}

/// The runtime of the calling process, if `init()` ran (in this process or in
/// an ancestor).
pub(crate) fn current() -> Option<&'static Runtime> {
    CURRENT.get()
}

/// Installs `rt` as the runtime of this process.
pub(crate) fn install(rt: Runtime) -> &'static Runtime {
    CURRENT.set(rt)
}

impl Runtime {
    /// Builds the runtime of process `me`.
    #[allow(clippy::too_many_arguments)] // Every part is distinct state of the process.
    pub(crate) fn new(
        me: Pid,
        shared: &'static SharedArea,
        settings: &'static Settings,
        listener: OwnedFd,
        ctl: OwnedFd,
        death: OwnedFd,
        node: Option<&'static dyn LocalNode>,
        bound: Option<(usize, Overflow)>,
    ) -> io::Result<Runtime> {
        let outbox = Outbox::new(
            shared,
            settings.max_message,
            settings.coalesce,
            settings.flush_delay,
            settings.max_connections,
        );
        let inbox = Inbox::new(
            listener,
            ctl.as_raw_fd(),
            node.map(|n| n.epoll_fd()),
            bound,
            shared.slot(me.serial()),
        );
        shared
            .slot(me.serial())
            .claim(me.serial(), ProcessState::Running as u32, 0);
        Ok(Runtime {
            me,
            uid: settings.uid,
            shared,
            settings,
            ctl,
            ctl_write: Mutex::new(Vec::new()),
            death,
            node,
            inbox,
            outbox,
            next_ref: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
            bg_started: AtomicBool::new(false),
            zygote: Mutex::new(None),
            sched_watch: Mutex::new(std::collections::HashMap::new()),
            hosts_actors: AtomicBool::new(false),
            #[cfg(feature = "dist")]
            directs: Mutex::new(direct::Directs::default()),
            receive_spin: AtomicU64::new(0),
        })
    }

    /// The reference of this process's monitor on scheduler `scheduler`,
    /// set up on first use and kept: one monitor serves every task sent
    /// there, with no message to the node per task.
    pub(crate) fn watch_scheduler(&self, scheduler: Pid) -> u64 {
        let mut w = self.sched_watch.lock();
        if let Some(&r) = w.get(&scheduler) {
            return r;
        }
        let reference = self.next_ref();
        self.inbox.await_ref(reference);
        // This process's monitor, even inside an actor's step: it outlives
        // the actor.
        self.tell_node_raw(&ToNode::Monitor {
            reference,
            internal: true,
            target: scheduler,
        });
        w.insert(scheduler, reference);
        reference
    }

    /// Forgets the monitor on a scheduler that is gone.
    pub(crate) fn unwatch_scheduler(&self, scheduler: Pid) {
        if let Some(reference) = self.sched_watch.lock().remove(&scheduler) {
            self.inbox.forget_ref(reference);
        }
    }

    /// This process.
    pub(crate) fn pid(&self) -> Pid {
        self.me
    }

    /// Marks this process as a scheduler, which hosts actors.
    pub(crate) fn host_actors(&self) {
        self.hosts_actors.store(true, Ordering::Relaxed);
    }

    /// Who the calling code is: the actor whose step runs, or this process.
    pub(crate) fn sender(&self) -> Pid {
        acting().unwrap_or(self.me)
    }

    /// Our user id.
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    /// This process's status slot in the shared area.
    pub(crate) fn slot(&self) -> &'static Slot {
        self.shared.slot(self.me.serial())
    }

    /// The shared area.
    pub(crate) fn shared(&self) -> &'static SharedArea {
        self.shared
    }

    /// Node-wide settings.
    pub(crate) fn settings(&self) -> &'static Settings {
        self.settings
    }

    /// Largest frame body a receiver accepts.
    pub(crate) fn max_frame(&self) -> usize {
        self.settings.max_message + 16
    }

    /// The control connection.
    pub(crate) fn ctl_fd(&self) -> &OwnedFd {
        &self.ctl
    }

    /// The node-death pipe's read end, for children to arm from.
    pub(crate) fn death_fd(&self) -> RawFd {
        self.death.as_raw_fd()
    }

    /// The node's state, when this is the node process.
    pub(crate) fn node(&self) -> Option<&'static dyn LocalNode> {
        self.node
    }

    /// How long a receive of this process polls before it sleeps.
    pub(crate) fn receive_spin(&self) -> Duration {
        Duration::from_nanos(self.receive_spin.load(Ordering::Relaxed))
    }

    /// Sets [`receive_spin`](Self::receive_spin).
    pub(crate) fn set_receive_spin(&self, spin: Duration) {
        let nanos = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
        self.receive_spin.store(nanos, Ordering::Relaxed);
    }

    /// A fresh reference (monitor, call, join, request).
    pub(crate) fn next_ref(&self) -> u64 {
        self.next_ref.fetch_add(1, Ordering::Relaxed)
    }

    /// A thread is about to wait for something: flush what we sent.
    pub(crate) fn begin_receive(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        self.outbox.flush(&self.inbox, epoch);
        #[cfg(feature = "dist")]
        self.flush_direct(epoch);
        self.slot().state.store(ProcessState::Waiting as u32, Ordering::Relaxed);
    }

    /// Writes coalesced frames now.
    pub(crate) fn flush(&self) {
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.outbox.flush(&self.inbox, epoch);
        #[cfg(feature = "dist")]
        self.flush_direct(epoch);
    }

    /// The flush timer fired.
    pub(crate) fn flush_timer_fired(&self) {
        if let Some(timer) = self.inbox.timer_if_any() {
            timer.drain();
        }
        self.flush();
    }

    /// A backlogged connection to `serial` is writable.
    pub(crate) fn on_writable(&self, serial: u64) {
        self.outbox
            .on_writable(&self.inbox, serial, self.epoch.load(Ordering::Relaxed));
    }

    /// `pid` is gone: close our connection to it.
    pub(crate) fn forget_connection(&self, pid: Pid) {
        if pid.node() == self.me.node() {
            self.outbox.forget(pid.serial());
        } else {
            #[cfg(feature = "dist")]
            self.close_direct(pid);
        }
    }

    /// Starts the background thread if it is not running yet.
    pub(crate) fn ensure_background(&'static self) {
        if self.bg_started.load(Ordering::Relaxed) {
            return;
        }
        if self.bg_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("converge-rt".into())
            .stack_size(128 * 1024)
            .spawn(move || self.inbox.background(self));
        if let Err(e) = spawned {
            tracing::error!("cannot start the runtime thread: {e}");
            self.bg_started.store(false, Ordering::Release);
        }
    }

    /// Sends a control frame to the node and does not wait for an answer;
    /// whether it was written.
    pub(crate) fn tell_node(&self, msg: &ToNode) -> bool {
        if let Some(actor) = acting() {
            return self.tell_node_raw(&ToNode::for_actor(actor.serial(), msg));
        }
        self.tell_node_raw(msg)
    }

    /// Sends a control frame to the node as this process (never as an actor).
    /// Whether it was written.
    pub(crate) fn tell_node_raw(&self, msg: &ToNode) -> bool {
        if let Some(node) = self.node {
            node.request(self.me.serial(), msg.clone());
            return true;
        }
        let mut buf = self.ctl_write.lock();
        buf.clear();
        frame::push(&mut buf, Kind::Ctl, msg).expect("BUG: control frames always encode");
        match socket::send_all(&self.ctl, &buf, None) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("control connection to the node failed: {e}");
                false
            }
        }
    }

    /// Sends a control frame with descriptors attached.
    pub(crate) fn tell_node_with_fds(
        &self,
        conn: &OwnedFd,
        msg: &ToNode,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(64);
        frame::push(&mut buf, Kind::Ctl, msg).expect("BUG: control frames always encode");
        socket::send_with_fds(conn, &buf, fds)
    }

    /// Sends a request to the node and waits for its answer (`None` if the
    /// node is gone).
    pub(crate) fn ask_node(&'static self, make: impl FnOnce(u64) -> ToNode) -> Option<NodeReply> {
        self.ask(make, false)
    }

    /// [`ask_node`](Self::ask_node), returning only once every control frame
    /// the node sent this process before its answer is in the queue (in the
    /// main thread too, whose requests are otherwise answered directly).
    pub(crate) fn ask_node_in_order(&'static self, make: impl FnOnce(u64) -> ToNode) -> Option<NodeReply> {
        self.ask(make, true)
    }

    fn ask(&'static self, make: impl FnOnce(u64) -> ToNode, in_order: bool) -> Option<NodeReply> {
        let request = self.next_ref();
        let mut msg = make(request);
        if let Some(actor) = acting() {
            msg = ToNode::for_actor(actor.serial(), &msg);
        }
        self.inbox.await_ref(request);
        match self.node {
            Some(node) if !in_order => {
                self.inbox.forget_ref(request);
                return node.request(self.me.serial(), msg);
            }
            Some(node) => node.request_in_order(self.me.serial(), msg),
            None => {
                self.tell_node_raw(&msg);
            }
        }
        let reply = self.inbox.pump(self, None, |st| {
            st.awaited.get_mut(&request).and_then(|a| a.node.take())
        });
        self.inbox.forget_ref(request);
        reply
    }

    /// Encodes `msg` as a message frame for `target` and sends it.
    pub(crate) fn send_message<M: Serialize>(
        &'static self,
        target: Pid,
        msg: &M,
        try_only: bool,
    ) -> Result<Sent, BuildError> {
        self.send_frame(target, try_only, body::MESSAGE_PREFIX, |buf| {
            body::push_message(buf, msg).map_err(|e| e.to_string())
        })
    }

    /// Encodes `value` as a reply frame for `reference` at `target`.
    pub(crate) fn send_reply<R: Serialize>(
        &'static self,
        target: Pid,
        reference: u64,
        value: &R,
    ) -> Result<Sent, BuildError> {
        self.send_frame(target, false, body::REPLY_PREFIX, |buf| {
            body::push_reply(buf, reference, value).map_err(|e| e.to_string())
        })
    }

    fn send_frame(
        &'static self,
        target: Pid,
        try_only: bool,
        overhead: usize,
        build: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<Sent, BuildError> {
        if target.node() != self.me.node() {
            // Another node: on a direct session, or through this program's
            // cluster node, if it runs one (feature `dist`); otherwise
            // dropped, as for a node that is down.
            #[cfg(feature = "dist")]
            {
                let sent = self.send_remote(target, overhead, build);
                // A direct session's held frames and full socket are the
                // poller's to finish.
                if self.inbox.background_wanted() {
                    self.ensure_background();
                }
                return sent;
            }
            #[cfg(not(feature = "dist"))]
            return Ok(Sent::Dropped);
        }
        // Only a scheduler reads the target's slot (written by the target as
        // it runs: not a line every send should pull in).
        if self.hosts_actors.load(Ordering::Relaxed)
            && self.shared.slot(target.serial()).host_of(target.serial()) == Some(self.me.serial())
        {
            return self.send_local(target.serial(), overhead, build);
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        let sent = self
            .outbox
            .send(&self.inbox, self.sender(), epoch, target, try_only, overhead, build);
        if self.inbox.background_wanted() {
            self.ensure_background();
        }
        sent
    }

    /// Sends a frame encoded on another node (its body: fingerprint and
    /// payload, or reference, fingerprint and payload) to `target` here.
    /// Its connection to the target says it comes from `from` (of the other
    /// node), so that a `Down` about `from` finds the frames it sent first.
    #[cfg(feature = "dist")]
    pub(crate) fn send_encoded(
        &'static self,
        from: Pid,
        target: Pid,
        kind: crate::wire::frame::Kind,
        body: &[u8],
    ) -> Result<Sent, BuildError> {
        let overhead = match kind {
            crate::wire::frame::Kind::Reply => body::REPLY_PREFIX,
            // Not a message: not counted as one at the receiver.
            crate::wire::frame::Kind::Fence => 0,
            _ => body::MESSAGE_PREFIX,
        };
        let epoch = self.epoch.load(Ordering::Relaxed);
        let sent = self
            .outbox
            .send(&self.inbox, from, epoch, target, false, overhead, |buf| {
                let start = crate::wire::frame::begin(buf, kind);
                buf.extend_from_slice(body);
                crate::wire::frame::finish(buf, start);
                Ok(())
            });
        if self.inbox.background_wanted() {
            self.ensure_background();
        }
        sent
    }

    /// Runs `then` once what `from` (of another node) sent to `target`
    /// (here) is written: a signal about `from` follows its messages. With
    /// `close` (`from` ended), its connections close once written.
    #[cfg(feature = "dist")]
    pub(crate) fn after_remote_sender(&'static self, from: Pid, target: u64, close: bool, then: outbox::Then) {
        // Any target of this node gives the same key for `from`.
        let key = crate::runtime::outbox::sender_key(from, self.me);
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.outbox.after_sender(&self.inbox, (key, target), close, epoch, then);
        if self.inbox.background_wanted() {
            self.ensure_background();
        }
    }

    /// A message for an actor this process hosts: straight into its queue,
    /// with no socket.
    fn send_local(
        &self,
        actor: u64,
        overhead: usize,
        build: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<Sent, BuildError> {
        let mut buf = Vec::new();
        build(&mut buf).map_err(BuildError::Encode)?;
        let payload = (buf.len() - frame::HEADER).saturating_sub(overhead);
        if payload > self.settings.max_message {
            return Err(BuildError::TooLarge(payload));
        }
        let Some((fp, value_at)) = body::message_frame(&buf) else {
            // Replies go to processes, never to actors.
            return Ok(Sent::Dropped);
        };
        // The body in place: the frame's fields out of the way, no second
        // buffer.
        buf.drain(..value_at);
        let body = buf;
        self.inbox
            .lock()
            .hosted
            .push(actor, crate::runtime::inbox::Item::Msg { fp, body });
        Ok(Sent::Queued)
    }

    /// Ends this process with `reason`: writes what it still holds, tells the
    /// node its last words, and `_exit`s.
    pub(crate) fn finish(&self, reason: ExitReason) -> ! {
        self.slot().state.store(ProcessState::Exiting as u32, Ordering::Relaxed);
        let deadline = Instant::now() + self.settings.exit_flush;
        self.outbox.flush_blocking(deadline);
        #[cfg(feature = "dist")]
        self.flush_direct_blocking(deadline);
        // Exit status 0 without last words already means Normal: the common
        // end costs no message (and wakes no one but the exit watcher).
        if reason.is_normal() {
            exit_now(0)
        }
        // Last words that cannot be written (the process closed its control
        // connection, or the node is gone) must not read as Normal: the exit
        // code says "abnormal" at least (`Code(n)` at the node).
        let fallback = match reason {
            ExitReason::Code(n) if n != 0 => n,
            ExitReason::Panic(_) => 101,
            _ => 1,
        };
        if self.tell_node(&ToNode::LastWords { reason }) {
            exit_now(0)
        }
        exit_now(fallback)
    }
}
