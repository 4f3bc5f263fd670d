//! The send path: one lazily opened stream connection per target process
//! (per sender and target when the process hosts actors: each actor sends on
//! connections of its own), frames encoded in place into the connection's
//! buffer, and a batching rule. An actor is reached through the listener of
//! the scheduler hosting it, named in its shared slot.
//!
//! # Why this batching rule
//!
//! One `send(2)` per message caps a stream near 0.5 M msg/s on the machines
//! measured, while one write of 64 frames carries several million. But waiting
//! for a batch to fill would add latency to request/response traffic. So:
//!
//! - a frame goes out at once when nothing is pending on its connection and
//!   either the connection has been quiet for the coalescing window, or this
//!   process has received since its last write (a reply in a ping-pong is
//!   never held back);
//! - otherwise it is appended to the pending bytes, which leave in one write
//!   when they reach 64 frames or 64 KiB, when the process enters a receive,
//!   on an explicit [`flush`](crate::flush), or when the flush timer (a
//!   timerfd polled by whichever thread is polling the process's sockets)
//!   fires a short delay later.
//!
//! When the kernel buffer is full the bytes stay queued here, in order, and the
//! connection is polled for writability: `send` never blocks.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sync::Mutex;

use crate::pid::Pid;
use crate::runtime::inbox::{Inbox, OUT};
use crate::sys::poll::{Interest, Token};
use crate::sys::shared::SharedArea;
use crate::sys::socket;
use crate::wire::envelope::Hello;
use crate::wire::frame::{self, Kind};

/// Pending frames at which a batch is written without waiting.
const BATCH_FRAMES: usize = 64;
/// Pending bytes at which a batch is written without waiting.
const BATCH_BYTES: usize = 64 * 1024;

/// What happened to a frame handed to [`Outbox::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Written to the kernel, or queued in order behind earlier frames.
    Queued,
    /// The target does not exist any more: the frame was dropped.
    Dropped,
    /// `try_send` only: the connection is backlogged, nothing was queued.
    Full,
}

/// Why a frame could not be built.
#[derive(Debug)]
pub(crate) enum BuildError {
    /// The body is over the size limit.
    TooLarge(usize),
    /// Encoding failed.
    Encode(String),
    /// A system call failed.
    Io(io::Error),
}

/// One outgoing connection.
#[derive(Debug)]
struct OutConn {
    /// The connected socket (non-blocking).
    fd: OwnedFd,
    /// Bytes not yet written, from `off`.
    buf: Vec<u8>,
    /// How much of `buf` has been written.
    off: usize,
    /// Frames in `buf[off..]` (approximately: a partly written frame counts).
    frames: usize,
    /// When bytes last went out.
    last_write: Instant,
    /// The process's receive epoch at the last write.
    last_epoch: u64,
    /// Registered for writability because the kernel buffer was full.
    backlogged: bool,
    /// Last use (a count of sends), for least-recently-used closing.
    last_used: u64,
    /// The message frames in `buf` not yet written whole: where each ends,
    /// and its size. A message counts as waiting at its receiver
    /// (`ProcessInfo::queue_len`) once it is written to the receiver's
    /// socket: one this process never gets to write is not counted.
    marks: std::collections::VecDeque<(usize, usize)>,
    /// What runs once `buf` is written up to a point: a signal that must
    /// follow the frames queued before it.
    then: std::collections::VecDeque<(usize, Then)>,
    /// Closed once everything pending is written (its sender is gone),
    /// unless it sends again first.
    closing: bool,
}

impl OutConn {
    fn pending(&self) -> usize {
        self.buf.len() - self.off
    }

    /// Runs everything waiting on this connection: it is written out, or
    /// gone.
    fn run_then(&mut self) {
        for (_, then) in self.then.drain(..) {
            (then.0)();
        }
    }
}

/// What runs once a connection has written what was queued before it. It
/// runs under the connections' lock, so that two of them run in the order
/// their frames were queued: it must be short, never block, and not send.
pub(crate) struct Then(Box<dyn FnOnce() + Send>);

impl Then {
    #[cfg(feature = "dist")]
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> Then {
        Then(Box::new(f))
    }
}

impl std::fmt::Debug for Then {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Then")
    }
}

/// Hashes a serial for the connection map: serials are unique integers, so a
/// multiplication spreads them enough (SipHash would cost more than the rest
/// of a send). Also the hasher of the distribution's maps by channel and by
/// node (random ids).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SerialHasher(u64);

/// A map by serial, channel or node id, hashed with [`SerialHasher`].
pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<SerialHasher>>;

impl Hasher for SerialHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
}

/// The open connections.
#[derive(Debug, Default)]
struct Conns {
    /// By (sender serial, target serial).
    map: IntMap<(u64, u64), OutConn>,
    /// Sends so far (the clock of least-recently-used closing).
    uses: u64,
    /// Targets found gone (their listener refused a connection), newest
    /// last, at most `DEAD_KEPT`: a send to one is dropped at once, with no
    /// new connection tried. Serials are never used again.
    dead: HashSet<u64, BuildHasherDefault<SerialHasher>>,
    dead_order: std::collections::VecDeque<u64>,
}

/// How many gone targets a process remembers.
const DEAD_KEPT: usize = 4096;

impl Conns {
    /// Notes that `serial` is gone.
    fn note_dead(&mut self, serial: u64) {
        if self.dead.insert(serial) {
            self.dead_order.push_back(serial);
            if self.dead_order.len() > DEAD_KEPT
                && let Some(old) = self.dead_order.pop_front()
            {
                self.dead.remove(&old);
            }
        }
    }
}

/// The key of sender `me` among the connections of this process: its serial
/// for a process of this node; for one of another node (frames a cluster
/// node delivers on its behalf), a hash of its node and serial with the top
/// bit set, which no serial here has.
pub(crate) fn sender_key(me: Pid, target: Pid) -> u64 {
    if me.node() == target.node() {
        return me.serial();
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    me.hash(&mut h);
    h.finish() | 1 << 63
}

/// The send side of a process.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Connections by sender and target serial.
    conns: Mutex<Conns>,
    /// Where actors' hosts are found.
    shared: &'static SharedArea,
    /// Whether the flush timer (in the inbox's descriptors) is armed.
    timer_armed: AtomicBool,
    /// Largest message body accepted.
    max_message: usize,
    /// Quiet time after which a frame is written at once.
    coalesce: Duration,
    /// Delay before the timer flushes coalesced frames.
    flush_delay: Duration,
    /// Most connections kept open; the least recently used idle one is closed
    /// past this.
    max_conns: usize,
}

impl Outbox {
    pub(crate) fn new(
        shared: &'static SharedArea,
        max_message: usize,
        coalesce: Duration,
        flush_delay: Duration,
        max_conns: usize,
    ) -> Outbox {
        Outbox {
            conns: Mutex::new(Conns::default()),
            shared,
            timer_armed: AtomicBool::new(false),
            max_message,
            coalesce,
            flush_delay,
            max_conns,
        }
    }

    /// Encodes one frame for `target` with `build` (which appends exactly one
    /// frame to the buffer, whose body starts with `overhead` bytes of frame
    /// fields before the message) and sends or queues it.
    #[allow(clippy::too_many_arguments)] // One hot call; a struct would only be unpacked again.
    pub(crate) fn send(
        &self,
        inbox: &Inbox,
        me: Pid,
        epoch: u64,
        target: Pid,
        try_only: bool,
        overhead: usize,
        build: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<Sent, BuildError> {
        let serial = target.serial();
        let key = (sender_key(me, target), serial);
        let mut guard = self.conns.lock();
        let conns = &mut *guard;
        conns.uses += 1;
        let uses = conns.uses;
        if !conns.map.contains_key(&key) {
            if conns.dead.contains(&serial) {
                return Ok(Sent::Dropped);
            }
            match self.connect(conns, inbox, me, epoch, target)? {
                Some(conn) => {
                    conns.map.insert(key, conn);
                }
                None => {
                    conns.note_dead(serial);
                    return Ok(Sent::Dropped);
                }
            }
        }
        let conn = conns.map.get_mut(&key).expect("BUG: connection present");
        if try_only && conn.backlogged {
            return Ok(Sent::Full);
        }
        let start = conn.buf.len();
        if let Err(e) = build(&mut conn.buf) {
            conn.buf.truncate(start);
            return Err(BuildError::Encode(e));
        }
        // The limit is on the encoded message, not counting the frame's own
        // fields (fingerprint, reference).
        let payload = (conn.buf.len() - start - frame::HEADER).saturating_sub(overhead);
        if payload > self.max_message {
            conn.buf.truncate(start);
            return Err(BuildError::TooLarge(payload));
        }
        conn.frames += 1;
        conn.last_used = uses;
        conn.closing = false;
        if overhead == crate::wire::body::MESSAGE_PREFIX {
            conn.marks.push_back((conn.buf.len(), payload));
        }
        if conn.backlogged {
            return Ok(Sent::Queued);
        }
        // The clock is read only for the first frame of a batch.
        let quiet = conn.frames == 1 && (conn.last_epoch != epoch || conn.last_write.elapsed() >= self.coalesce);
        if quiet || conn.frames >= BATCH_FRAMES || conn.pending() >= BATCH_BYTES {
            if !self.write(conn, inbox, serial, epoch) {
                conns.map.remove(&key);
            }
        } else {
            drop(guard);
            self.arm_timer(inbox);
        }
        Ok(Sent::Queued)
    }

    /// Opens a connection to `target`, its hello queued; `None` if `target` is
    /// gone.
    fn connect(
        &self,
        conns: &mut Conns,
        inbox: &Inbox,
        me: Pid,
        epoch: u64,
        target: Pid,
    ) -> Result<Option<OutConn>, BuildError> {
        if conns.map.len() >= self.max_conns {
            Self::close_idle(conns, inbox);
        }
        // An actor: its host's listener, told which actor the messages are for.
        let (address, to) = match self.shared.slot(target.serial()).host_of(target.serial()) {
            Some(host) => (Pid::new(target.node(), host).address(), Some(target.serial())),
            None => (target.address(), None),
        };
        let mut attempt = socket::connect_abstract(&address, true);
        if let Err(e) = &attempt
            && socket::out_of_descriptors(e)
            && Self::close_idle(conns, inbox)
        {
            // At the descriptor limit: an idle connection makes room.
            attempt = socket::connect_abstract(&address, true);
        }
        let fd = match attempt {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The listener's backlog is full: wait for room rather than
                // lose the frame.
                let fd = socket::connect_abstract(&address, false).map_err(BuildError::Io)?;
                socket::set_nonblocking(&fd, true).map_err(BuildError::Io)?;
                fd
            }
            Err(e) if socket::peer_gone(&e) => return Ok(None),
            Err(e) => return Err(BuildError::Io(e)),
        };
        let mut buf = Vec::with_capacity(256);
        frame::push(&mut buf, Kind::Hello, &Hello { from: me, to }).expect("BUG: hello always encodes");
        Ok(Some(OutConn {
            fd,
            buf,
            off: 0,
            frames: 0,
            last_write: Instant::now() - self.coalesce,
            last_epoch: epoch.wrapping_sub(1),
            backlogged: false,
            last_used: conns.uses,
            marks: std::collections::VecDeque::new(),
            then: std::collections::VecDeque::new(),
            closing: false,
        }))
    }

    /// Writes what `conn` has pending. Returns `false` if the peer is gone, or
    /// the connection was closing and is written out (it should be dropped).
    /// What the written bytes reached runs.
    fn write(&self, conn: &mut OutConn, inbox: &Inbox, serial: u64, epoch: u64) -> bool {
        while conn.pending() > 0 {
            match socket::send(&conn.fd, &conn.buf[conn.off..]) {
                Ok(n) => {
                    conn.off += n;
                    self.count_written(conn, serial);
                    while let Some((end, _)) = conn.then.front()
                        && *end <= conn.off
                    {
                        if let Some((_, then)) = conn.then.pop_front() {
                            (then.0)();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.backlogged {
                        conn.backlogged = true;
                        let _ = inbox.epoll().add(&conn.fd, Token::new(OUT, serial), Interest::Write);
                        inbox.need_background();
                    }
                    return true;
                }
                Err(_) => {
                    // Gone: what waited on it need not wait any more.
                    conn.run_then();
                    return false;
                }
            }
        }
        conn.run_then();
        conn.buf.clear();
        if conn.buf.capacity() > 4 * BATCH_BYTES {
            conn.buf.shrink_to(BATCH_BYTES);
        }
        conn.off = 0;
        conn.frames = 0;
        conn.last_write = Instant::now();
        conn.last_epoch = epoch;
        if conn.backlogged {
            conn.backlogged = false;
            inbox.unwatch(conn.fd.as_raw_fd());
        }
        !conn.closing
    }

    /// Counts the messages now written whole to `serial`'s socket as
    /// waiting there.
    fn count_written(&self, conn: &mut OutConn, serial: u64) {
        let (mut n, mut bytes) = (0, 0);
        while let Some(&(end, size)) = conn.marks.front()
            && end <= conn.off
        {
            conn.marks.pop_front();
            n += 1;
            bytes += size;
        }
        if n > 0 {
            self.shared.slot(serial).arrivals.count(serial, n, bytes);
        }
    }

    pub(crate) fn arm_timer(&self, inbox: &Inbox) {
        if !self.timer_armed.swap(true, Ordering::AcqRel) {
            let _ = inbox.io().timer.set(self.flush_delay);
            inbox.need_background();
        }
    }

    /// Writes every connection's pending frames that the kernel takes now.
    pub(crate) fn flush(&self, inbox: &Inbox, epoch: u64) {
        if self.timer_armed.load(Ordering::Acquire) {
            // Disarming also forgets an expiry not read yet, so the timer
            // never stays readable with nothing to flush. Disarmed first,
            // then marked so: a sender that arms it in between finds it
            // marked and leaves it, and its frame (queued before it armed)
            // is written below. The other way round, its fresh setting was
            // disarmed under a mark that stayed, and no timer ever came
            // again for what was coalesced later.
            if let Some(timer) = inbox.timer_if_any() {
                let _ = timer.disarm();
            }
            self.timer_armed.store(false, Ordering::Release);
        }
        let mut conns = self.conns.lock();
        conns.map.retain(|&(_, serial), conn| {
            conn.backlogged || conn.pending() == 0 || self.write(conn, inbox, serial, epoch)
        });
    }

    /// The connection to `serial` can take more bytes.
    pub(crate) fn on_writable(&self, inbox: &Inbox, serial: u64, epoch: u64) {
        let mut conns = self.conns.lock();
        // Every backlogged connection to `serial` (one per sender).
        conns.map.retain(|&(_, target), conn| {
            if target != serial || !conn.backlogged {
                return true;
            }
            conn.backlogged = false;
            inbox.unwatch(conn.fd.as_raw_fd());
            self.write(conn, inbox, serial, epoch)
        });
    }

    /// Writes everything pending, waiting for room up to `deadline`. Used when
    /// the process exits: what reaches the kernel survives the process.
    pub(crate) fn flush_blocking(&self, deadline: Instant) {
        let mut conns = self.conns.lock();
        for conn in conns.map.values_mut() {
            let _ = socket::send_all(&conn.fd, &conn.buf[conn.off..], Some(deadline));
            conn.run_then();
            conn.buf.clear();
            conn.off = 0;
        }
    }

    /// Writes what actor `sender` sent, waiting for room up to `deadline`,
    /// and closes its connections: it ended.
    pub(crate) fn close_sender(&self, inbox: &Inbox, sender: u64, deadline: Instant) {
        let mut conns = self.conns.lock();
        conns.map.retain(|&(from, _), conn| {
            if from != sender {
                return true;
            }
            let _ = socket::send_all(&conn.fd, &conn.buf[conn.off..], Some(deadline));
            if conn.backlogged {
                inbox.unwatch(conn.fd.as_raw_fd());
            }
            conn.run_then();
            false
        });
    }

    /// Runs `then` once what `sender` sent to `target` is written: a signal
    /// about `sender` must follow its messages. Never blocks: a connection
    /// whose receiver is slow to read is written as it reads, and `then`
    /// waits for it (or for its end, if the receiver goes away). With
    /// `close` (the sender ended), its connections close once written.
    #[cfg(feature = "dist")]
    pub(crate) fn after_sender(
        &self,
        inbox: &Inbox,
        (sender, target): (u64, u64),
        close: bool,
        epoch: u64,
        then: Then,
    ) {
        let mut conns = self.conns.lock();
        let mut then = Some(then);
        conns.map.retain(|&(from, to), conn| {
            if from != sender || (!close && to != target) {
                return true;
            }
            conn.closing |= close;
            if to == target
                && conn.pending() > 0
                && let Some(t) = then.take()
            {
                conn.then.push_back((conn.buf.len(), t));
            }
            conn.backlogged || self.write(conn, inbox, to, epoch)
        });
        if let Some(then) = then {
            (then.0)();
        }
    }

    /// Closes the connection used longest ago that has nothing pending;
    /// whether there was one.
    fn close_idle(conns: &mut Conns, inbox: &Inbox) -> bool {
        let victim = conns
            .map
            .iter()
            .filter(|(_, c)| c.pending() == 0 && !c.backlogged)
            .min_by_key(|(_, c)| c.last_used)
            .map(|(&k, _)| k);
        if let Some(serial) = victim
            && let Some(conn) = conns.map.remove(&serial)
        {
            inbox.unwatch(conn.fd.as_raw_fd());
            return true;
        }
        false
    }

    /// Forgets the connections to a process that is gone.
    pub(crate) fn forget(&self, serial: u64) {
        self.conns.lock().map.retain(|&(_, target), conn| {
            if target == serial {
                conn.run_then();
            }
            target != serial
        });
    }
}
