//! Direct sessions (feature `dist`): a process's own encrypted connection to
//! a process of another node, so that the messages between them pass no
//! node.
//!
//! # Why
//!
//! Through the nodes, a message from a process of one node to a process of
//! another is handed from the sender to its node, sealed and written, read by
//! the other node and handed to the receiver: three wake-ups where a bare TCP
//! connection between the two has one. On two CPUs each costs about 23 us
//! here. A direct session has the floor's path: the sender seals and writes,
//! the receiver reads and opens, in their own threads.
//!
//! # How one opens
//!
//! 1. On its first send to a process of another node, a process asks its
//!    node for a direct session to it, and sends through the node meanwhile.
//! 2. The node connects to the other node's listener and runs the session
//!    handshake with a hello that names both processes. The other node hands
//!    the socket and the session's keys to the receiver (only to a process
//!    that receives on its own: not to an actor, a port or a part of the
//!    runtime), which answers on the socket at once. On that answer this
//!    node hands the socket and the keys to the sender.
//! 3. The sender sends a *fence* through the node, after everything it sent
//!    that way, then writes to the session. The fence names its session
//!    (8 bytes of the handshake's hash, which both ends have), and the other
//!    node hands it on twice: in line with the sender's frames (what the
//!    sender sends through the node after it waits for the session), and on
//!    the receiver's control connection, in line with the signals about the
//!    sender. The receiver reads the session from the second on: what was
//!    sent through the node first is queued first, a signal before the
//!    fence (sent before the session opened) comes before what the session
//!    carries, and one after it waits for the session's end (see below).
//!    One session per sender waits for its fence at a receiver: a newer one
//!    is refused while it does (unless its sender closed it unused), and a
//!    fence late enough to find another session waiting marks nothing.
//!
//! The session carries the sender's frames as it would write them to a
//! process of its own node, sealed in records with the session's keys; the
//! receiver opens them and reads the frames as from any connection.
//!
//! # Order with signals
//!
//! A `Down` or an exit signal about the sender comes through the nodes.
//! The receiver holds it until the sender's session has ended, reading the
//! session meanwhile without blocking: the sender ended (its socket closed
//! with it), or it closed the session itself. A process that sends an exit
//! signal to a process it has a session to sends the signal at once and
//! lets the session drain and close (without blocking); what it sends to
//! that process meanwhile waits in it, then goes through the node. A
//! receiver that gets a frame through the node from a sender whose session
//! it still reads holds it too, after any signal held, so order holds when
//! a sender goes back to the nodes. A `NoConnection` (the nodes lost their
//! session) closes the session at once, unread past what arrived, and the
//! senders of the node close theirs to the other node's processes (a fence
//! may have been lost with the session): as on a partition, what was in
//! flight may be lost.
//!
//! # Backpressure
//!
//! A send never blocks: what the socket does not take waits in the sender.
//! Past the cluster's `max_queued` bytes, the session is dropped and the
//! sender's node tears down its session with the receiver's node, so that
//! every link and monitor across sees `NoConnection`, as when the nodes'
//! own session is over its cap.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Runtime;
use super::outbox::{BuildError, IntMap, Sent};
use crate::dist::{Keys, Sealer, Session};
use crate::pid::Pid;
use crate::sys::poll::{Interest, Token};
use crate::sys::socket;
use crate::wire::body;
use crate::wire::envelope::ToNode;
use crate::wire::frame::{self, Kind};

/// Kind of direct sessions' tokens while the socket is full (the number is
/// the session's own).
pub(crate) const DIRECT: u8 = 5;
/// How long a process waits after a refusal before it asks again for a
/// session to the same process.
const ASK_AGAIN: Duration = Duration::from_secs(30);
/// How long a process waits for its node's answer before it asks again (the
/// node always answers, within a few handshake deadlines: only a lost
/// answer takes this long).
const ANSWER_LOST: Duration = Duration::from_secs(60);
/// Most targets a process remembers (asked, refused or open).
const MAX_ROUTES: usize = 4096;
/// Most direct sessions a process keeps open; past this, new targets are
/// reached through the node.
const MAX_OPEN: usize = 256;
/// Frames held back before a write without waiting: more than between the
/// processes of a node (64), as a write and a seal cost more here
/// (`remote_throughput_64`: 549 ns a message with 64, 384-417 ns with 256,
/// no better with 1024).
const BATCH_FRAMES: usize = 256;
/// Bytes held back before a write without waiting.
const BATCH_BYTES: usize = 64 * 1024;
/// Bytes of frames sealed as one piece of the session's stream (and the
/// largest piece the receiver opens).
pub(crate) const CHUNK: usize = 256 * 1024;
/// What the receiver answers on a session once it holds it.
pub(crate) const ACCEPTED: &[u8] = b"accepted";
/// How long a receiver waits on a session's socket: to write its answer,
/// or for the end of a sender's earlier session (closed by it before it
/// asked for this one) when the new one's fence comes.
pub(crate) const DRAIN: Duration = Duration::from_secs(2);
/// An idle session whose other end's host stopped answering (gone, or cut
/// off) for about this long fails (keepalive): its receiver closes it, and
/// its sender goes back to the nodes.
pub(crate) const SILENT: Duration = Duration::from_secs(30);

/// How a process reaches one process of another node.
enum Route {
    /// Its node was asked for a direct session, at this time.
    Asked(Instant),
    /// None could be had (or the last one broke), at this time.
    Refused(Instant),
    /// Open.
    Open(Box<DirectOut>),
}

/// The sending side of a direct session.
struct DirectOut {
    /// The connected socket (non-blocking).
    fd: OwnedFd,
    sealer: Sealer,
    /// Frames not sealed yet.
    plain: Vec<u8>,
    /// Frames in `plain`.
    frames: usize,
    /// Sealed records not written yet, from `off`.
    sealed: Vec<u8>,
    off: usize,
    /// Registered for writability because the socket was full.
    backlogged: bool,
    last_write: Instant,
    /// The process's receive epoch at the last write.
    last_epoch: u64,
    /// Its number, in its token while backlogged.
    number: u64,
    /// Most bytes held before the session is given up.
    max_queued: usize,
    /// Draining (an exit signal went through the node): the session closes
    /// once written, and then what was sent since goes through the node,
    /// in order.
    held: Option<Vec<Held>>,
    /// Bytes of the frames in `held`.
    held_bytes: usize,
}

/// What waits for a draining session to close.
enum Held {
    /// A frame for the receiver, and the size of its fields before the
    /// message.
    Frame(usize, Vec<u8>),
    /// Another exit signal for it.
    Signal(ToNode),
}

impl std::fmt::Debug for DirectOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectOut")
            .field("fd", &self.fd)
            .field("pending", &self.pending())
            .field("draining", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

/// What became of a write.
enum Wrote {
    /// All of it, or the rest waits for the socket.
    Ok,
    /// The receiver closed the session (it ended, or lost its node's
    /// session with ours).
    Gone,
    /// Over `max_queued`.
    Backlogged,
}

impl DirectOut {
    /// Bytes it holds: unwritten, and held for after it.
    fn pending(&self) -> usize {
        self.unwritten() + self.held_bytes
    }

    /// Bytes not written to the socket yet.
    fn unwritten(&self) -> usize {
        self.plain.len() + self.sealed.len() - self.off
    }

    /// Seals what is pending and writes what the socket takes.
    fn write(&mut self, inbox: &super::inbox::Inbox, epoch: u64) -> Wrote {
        for chunk in self.plain.chunks(CHUNK) {
            if self.sealer.seal(0, chunk, &mut self.sealed).is_err() {
                return Wrote::Gone;
            }
        }
        self.plain.clear();
        self.frames = 0;
        while self.off < self.sealed.len() {
            match socket::send(&self.fd, &self.sealed[self.off..]) {
                Ok(n) => self.off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.sealed.len() - self.off > self.max_queued {
                        return Wrote::Backlogged;
                    }
                    if !self.backlogged {
                        self.backlogged = true;
                        let _ = inbox
                            .epoll()
                            .add(&self.fd, Token::new(DIRECT, self.number), Interest::Write);
                        inbox.need_background();
                    }
                    return Wrote::Ok;
                }
                Err(_) => return Wrote::Gone,
            }
        }
        self.sealed.clear();
        if self.sealed.capacity() > 4 * BATCH_BYTES {
            self.sealed.shrink_to(BATCH_BYTES);
        }
        self.off = 0;
        self.last_write = Instant::now();
        self.last_epoch = epoch;
        if self.backlogged {
            self.backlogged = false;
            inbox.unwatch(self.fd.as_raw_fd());
        }
        Wrote::Ok
    }
}

/// A process's routes to processes of other nodes.
#[derive(Default)]
pub(crate) struct Directs {
    routes: HashMap<Pid, Route>,
    /// Open sessions by number.
    numbers: IntMap<u64, Pid>,
    next: u64,
}

impl std::fmt::Debug for Directs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directs")
            .field("routes", &self.routes.len())
            .field("open", &self.numbers.len())
            .finish()
    }
}

impl Directs {
    /// Forgets the session to `to`, if open (its socket closes: the
    /// receiver reads to its end); `to` is then reached through the node,
    /// and asked for again later. What waited for it to drain.
    fn close(&mut self, inbox: &super::inbox::Inbox, to: Pid) -> Vec<Held> {
        match self.routes.insert(to, Route::Refused(Instant::now())) {
            Some(Route::Open(out)) => {
                self.numbers.remove(&out.number);
                if out.backlogged {
                    inbox.unwatch(out.fd.as_raw_fd());
                }
                out.held.unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Makes room for one more route: forgets the oldest asked or refused
    /// ones.
    fn make_room(&mut self) {
        if self.routes.len() < MAX_ROUTES {
            return;
        }
        let now = Instant::now();
        self.routes.retain(|_, r| match r {
            Route::Open(_) => true,
            Route::Asked(at) => now.duration_since(*at) < ANSWER_LOST,
            Route::Refused(at) => now.duration_since(*at) < ASK_AGAIN,
        });
    }
}

impl Runtime {
    /// Sends a frame built by `build` to `target`, of another node: on the
    /// direct session to it if one is open, else through the node (asking
    /// for a session on the way).
    pub(super) fn send_remote(
        &'static self,
        target: Pid,
        overhead: usize,
        build: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<Sent, BuildError> {
        if super::acting().is_some() || self.hosts_actors.load(Ordering::Relaxed) {
            // An actor's frames go through the node: a session carries one
            // sender's frames, and a scheduler's belong to many.
            return self.send_through_node(target, overhead, false, build);
        }
        let mut directs = self.directs.lock();
        match directs.routes.get_mut(&target) {
            Some(Route::Open(out)) => {
                let into = match &mut out.held {
                    // Draining: after the signal that waits for it.
                    Some(_) => &mut Vec::new(),
                    None => &mut out.plain,
                };
                let start = into.len();
                if let Err(e) = build(into) {
                    into.truncate(start);
                    return Err(BuildError::Encode(e));
                }
                let payload = (into.len() - start - frame::HEADER).saturating_sub(overhead);
                if payload > self.settings.max_message {
                    into.truncate(start);
                    return Err(BuildError::TooLarge(payload));
                }
                if let Some(held) = &mut out.held {
                    // It will go through the node.
                    if self.node.is_none() && into.len() > crate::dist::MAX_RELAYED {
                        return Err(BuildError::TooLarge(payload));
                    }
                    let frame = std::mem::take(into);
                    out.held_bytes += frame.len();
                    held.push(Held::Frame(overhead, frame));
                    if out.pending() > out.max_queued {
                        self.settle(&mut directs, target, Wrote::Backlogged);
                    }
                    return Ok(Sent::Queued);
                }
                out.frames += 1;
                if out.backlogged {
                    if out.pending() > out.max_queued {
                        self.settle(&mut directs, target, Wrote::Backlogged);
                    }
                    return Ok(Sent::Queued);
                }
                // The batching rule of the outbox (see there).
                let epoch = self.epoch.load(Ordering::Relaxed);
                let quiet =
                    out.frames == 1 && (out.last_epoch != epoch || out.last_write.elapsed() >= self.settings.coalesce);
                if quiet || out.frames >= BATCH_FRAMES || out.plain.len() >= BATCH_BYTES {
                    let wrote = out.write(&self.inbox, epoch);
                    self.settle(&mut directs, target, wrote);
                } else {
                    drop(directs);
                    self.outbox.arm_timer(&self.inbox);
                }
                return Ok(Sent::Queued);
            }
            Some(Route::Asked(at)) if at.elapsed() < ANSWER_LOST => {}
            Some(Route::Refused(at)) if at.elapsed() < ASK_AGAIN => {}
            _ => {
                directs.make_room();
                if directs.routes.len() < MAX_ROUTES && directs.numbers.len() < MAX_OPEN {
                    let route = match self.ask_direct(target) {
                        true => {
                            // The answer comes on the control connection:
                            // someone must poll it.
                            self.inbox.need_background();
                            Route::Asked(Instant::now())
                        }
                        false => Route::Refused(Instant::now()),
                    };
                    directs.routes.insert(target, route);
                }
            }
        }
        // Through the node, with the routes still locked: a fence sent for
        // a session that opens meanwhile comes after this frame.
        let sent = self.send_through_node(target, overhead, false, build);
        drop(directs);
        sent
    }

    /// Sends a frame to `target`, of another node, through this process's
    /// node (its cluster: the node's own program seals it itself); with
    /// `raw`, as this process whatever actor the calling thread runs.
    fn send_through_node(
        &self,
        target: Pid,
        overhead: usize,
        raw: bool,
        build: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<Sent, BuildError> {
        // Room for a small message at once: no growing per send.
        let mut frame = Vec::with_capacity(256);
        build(&mut frame).map_err(BuildError::Encode)?;
        let body = frame.get(frame::HEADER..).unwrap_or_default();
        let kind = if overhead == body::REPLY_PREFIX {
            Kind::Reply
        } else {
            Kind::Msg
        } as u8;
        if body.len().saturating_sub(overhead) > self.settings().max_message {
            return Err(BuildError::TooLarge(body.len() - overhead));
        }
        if self.node.is_some() {
            // The node's own program: straight to its cluster.
            let from = if raw { self.me } else { self.sender() };
            crate::dist::route(from, target, kind, body);
        } else {
            // Another process: through its node, whose table knows who it
            // is, on the control connection (in order).
            if body.len() > crate::dist::MAX_RELAYED {
                return Err(BuildError::TooLarge(body.len() - overhead));
            }
            let msg = ToNode::Remote {
                to: target,
                kind,
                body: body.to_vec(),
            };
            match raw {
                true => self.tell_node_raw(&msg),
                false => self.tell_node(&msg),
            };
        }
        Ok(Sent::Dropped)
    }

    /// Asks for a direct session to `target`; false if it cannot be had
    /// (the node's own program, whose cluster says so at once).
    fn ask_direct(&self, target: Pid) -> bool {
        if self.node.is_some() {
            crate::dist::open_direct(self.me, target)
        } else {
            self.tell_node_raw(&ToNode::Direct { to: target })
        }
    }

    /// What follows a write on the session to `to`: a broken session
    /// closes; one over its cap closes and the session between the two
    /// nodes is torn down (`NoConnection` across it); a draining one
    /// written out closes. What waited for it to close then goes through
    /// the node.
    fn settle(&self, directs: &mut Directs, to: Pid, wrote: Wrote) {
        let close = match wrote {
            Wrote::Ok => matches!(
                directs.routes.get(&to),
                Some(Route::Open(out)) if out.held.is_some() && out.unwritten() == 0
            ),
            Wrote::Gone => true,
            Wrote::Backlogged => {
                tracing::warn!(%to, "too many bytes queued on a direct session: dropped");
                if self.node.is_some() {
                    crate::dist::backlogged(to.node());
                } else {
                    self.tell_node_raw(&ToNode::Backlogged { node: to.node() });
                }
                true
            }
        };
        if !close {
            return;
        }
        for held in directs.close(&self.inbox, to) {
            match held {
                // Within the limits: checked as it was held.
                Held::Frame(overhead, frame) => {
                    let _ = self.send_through_node(to, overhead, true, |buf| {
                        buf.extend_from_slice(&frame);
                        Ok(())
                    });
                }
                Held::Signal(signal) => {
                    self.tell_node_raw(&signal);
                }
            }
        }
    }

    /// The node opened the direct session to `to` that this process asked
    /// for: the fence goes through the node, then frames go on the session.
    pub(crate) fn direct_ready(&self, to: Pid, fd: OwnedFd, keys: &Keys, max_queued: usize) {
        // The receiver gave it up meanwhile (it waited too long for the
        // fence): it is not used, and `to` is asked again later.
        if socket::set_nonblocking(&fd, true).is_err()
            || socket::peer_closed(&fd)
            || socket::fail_when_silent(&fd, SILENT).is_err()
        {
            self.direct_refused(to);
            return;
        }
        let (sealer, _) = Session::from_keys(keys, CHUNK).split();
        let mut directs = self.directs.lock();
        // Only a session still asked for: one whose route was given up
        // meanwhile (the session between the two nodes was lost, and the
        // receiver forgets what it was handed before) closes unused.
        if !matches!(directs.routes.get(&to), Some(Route::Asked(_))) {
            return;
        }
        if directs.numbers.len() >= MAX_OPEN {
            directs.routes.insert(to, Route::Refused(Instant::now()));
            return;
        }
        // After every frame sent through the node, which the routes' lock
        // orders before this; it names the session it is for.
        let fence = keys.id.to_le_bytes();
        if self.node.is_some() {
            crate::dist::route(self.me, to, Kind::Fence as u8, &fence);
        } else {
            self.tell_node_raw(&ToNode::Remote {
                to,
                kind: Kind::Fence as u8,
                body: fence.to_vec(),
            });
        }
        let number = directs.next;
        directs.next += 1;
        directs.numbers.insert(number, to);
        let out = DirectOut {
            fd,
            sealer,
            plain: Vec::new(),
            frames: 0,
            sealed: Vec::new(),
            off: 0,
            backlogged: false,
            last_write: Instant::now() - self.settings.coalesce,
            last_epoch: self.epoch.load(Ordering::Relaxed).wrapping_sub(1),
            number,
            max_queued,
            held: None,
            held_bytes: 0,
        };
        directs.routes.insert(to, Route::Open(Box::new(out)));
    }

    /// A direct session from `from`, of another node, handed over by the
    /// node (to the node's own program, in its process).
    pub(crate) fn direct_from(&self, from: Pid, fd: OwnedFd, keys: &Keys) {
        let mut st = self.inbox.lock();
        self.inbox.accept_direct(&mut st, from, fd, keys);
    }

    /// Whether a direct session to `to` is open.
    pub(crate) fn direct_open(&self, to: Pid) -> bool {
        matches!(self.directs.lock().routes.get(&to), Some(Route::Open(out)) if out.held.is_none())
    }

    /// The session between this node and `node` was lost: the direct
    /// sessions to its processes close (a fence sent on the lost session
    /// never arrived, and the receiver would never read them), and what
    /// follows goes through the nodes, on their next session.
    pub(crate) fn forget_node_routes(&self, node: crate::pid::NodeId) {
        let mut directs = self.directs.lock();
        let now = Instant::now();
        let mut lost = Vec::new();
        for (&to, route) in directs.routes.iter_mut().filter(|(to, _)| to.node() == node) {
            match route {
                Route::Open(_) => lost.push(to),
                // One asked for before the loss never opens: its receiver
                // forgets it with the lost session (`direct_ready`).
                Route::Asked(_) => *route = Route::Refused(now),
                Route::Refused(_) => {}
            }
        }
        for to in lost {
            self.settle(&mut directs, to, Wrote::Gone);
        }
    }

    /// No direct session to `to`: it is reached through the node.
    pub(crate) fn direct_refused(&self, to: Pid) {
        let mut directs = self.directs.lock();
        if !matches!(directs.routes.get(&to), Some(Route::Open(_))) {
            directs.routes.insert(to, Route::Refused(Instant::now()));
        }
    }

    /// `to` is gone (or out of reach): its direct session, if any, closes.
    pub(crate) fn close_direct(&self, to: Pid) {
        let mut directs = self.directs.lock();
        if matches!(directs.routes.get(&to), Some(Route::Open(_))) {
            self.settle(&mut directs, to, Wrote::Gone);
        }
    }

    /// Sends `signal` (an exit signal for `to`, of another node) through
    /// the node, and closes the direct session to `to`, if any, once it is
    /// written out: a receiver that traps it reads the session to its end
    /// first, so the messages come before it. Never blocks: what is sent to
    /// `to` meanwhile waits in the session, then goes through the node.
    pub(crate) fn signal_remote(&self, to: Pid, signal: ToNode) {
        let mut directs = self.directs.lock();
        let untrappable = matches!(signal, ToNode::ExitSignal { untrappable: true, .. });
        if let Some(Route::Open(out)) = directs.routes.get_mut(&to) {
            if let Some(held) = &mut out.held {
                // After what was sent since the last one; a kill at once.
                if !untrappable {
                    held.push(Held::Signal(signal));
                    return;
                }
            }
            if out.held.is_none() {
                out.held = Some(Vec::new());
            }
            let wrote = match out.backlogged {
                // Its writability finishes it.
                true => Wrote::Ok,
                false => out.write(&self.inbox, self.epoch.load(Ordering::Relaxed)),
            };
            self.settle(&mut directs, to, wrote);
        }
        // With the routes locked: nothing sent to `to` after the signal
        // passes it.
        self.tell_node(&signal);
    }

    /// Writes what the direct sessions hold back (the flush timer, or a
    /// receive begins).
    pub(super) fn flush_direct(&self, epoch: u64) {
        let mut directs = self.directs.lock();
        if directs.numbers.is_empty() {
            return;
        }
        let mut wrote = Vec::new();
        let Directs { routes, numbers, .. } = &mut *directs;
        for to in numbers.values() {
            if let Some(Route::Open(out)) = routes.get_mut(to)
                && !out.backlogged
                && out.plain.len() + out.sealed.len() > out.off
            {
                wrote.push((*to, out.write(&self.inbox, epoch)));
            }
        }
        for (to, w) in wrote {
            self.settle(&mut directs, to, w);
        }
    }

    /// A full direct session can take more bytes.
    pub(crate) fn on_direct_writable(&self, number: u64) {
        let mut directs = self.directs.lock();
        let Some(&to) = directs.numbers.get(&number) else {
            return;
        };
        let epoch = self.epoch.load(Ordering::Relaxed);
        if let Some(Route::Open(out)) = directs.routes.get_mut(&to) {
            out.backlogged = false;
            self.inbox.unwatch(out.fd.as_raw_fd());
            let wrote = out.write(&self.inbox, epoch);
            self.settle(&mut directs, to, wrote);
        }
    }

    /// Writes everything the direct sessions hold, waiting for room up to
    /// `deadline` (the process exits); what waited for a session to drain
    /// goes through the node after it.
    pub(super) fn flush_direct_blocking(&self, deadline: Instant) {
        let mut directs = self.directs.lock();
        let epoch = self.epoch.load(Ordering::Relaxed);
        let mut draining = Vec::new();
        for (&to, route) in &mut directs.routes {
            if let Route::Open(out) = route {
                let _ = out.write(&self.inbox, epoch);
                let _ = socket::send_all(&out.fd, &out.sealed[out.off..], Some(deadline));
                // Written, or never will be: nothing is written twice.
                out.off = out.sealed.len();
                if out.held.is_some() {
                    draining.push(to);
                }
            }
        }
        for to in draining {
            self.settle(&mut directs, to, Wrote::Gone);
        }
    }
}
