//! A node in a cluster: membership over UDP, sessions over TCP opened on
//! first use, ticks on every session, node events, and messages to the
//! processes of other nodes.
//!
//! [`Cluster::start`] runs in the node's own process (its main program).
//! Threads of the node carry it: one for membership (its UDP socket and
//! timers), one accepting sessions, a reader and a writer per session, and
//! one for ticks. A send to a process of another node, made by the node's
//! main program, is sealed on the session to that node (opened first if
//! there is none) and delivered there by its node, in order per sender.

mod direct;

pub(crate) use direct::{backlogged, open_direct};

use crate::runtime::outbox::IntMap;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::membership::{Load, Member, MemberEvent, Membership, MembershipConfig};
use super::session::{DistError, Hello, Opener, Sealer, Secret, Session};
use super::spawn::{RemoteTaskError, SpawnRefused};
use super::transport::{Acceptor, HANDSHAKE_TIMEOUT, Listener, Stream, Tcp, Transport, connect, keep_session};
use crate::exit::ExitReason;
use crate::mailbox::Mailbox;
use crate::pid::{NodeId, Pid};
use crate::sync::{Condvar, Mutex};
use crate::wire::envelope::ToNode;
use crate::wire::frame::Kind;

/// Options of a node in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The node's name in the cluster (`alpha`, or `alpha@host`).
    pub name: String,
    /// Where it listens: TCP for sessions, UDP for membership, same port
    /// (port 0: one the system picks, free for both).
    pub listen: SocketAddr,
    /// Every session and packet is authenticated with it.
    pub secret: Secret,
    /// Ticks on an idle session (default 250 ms).
    pub tick: Duration,
    /// Silent ticks after which a session is lost (default 4: about 1 s).
    pub ticks_down: u32,
    /// Bytes queued for one peer past which its session is torn down
    /// (default 256 MiB: a few of the largest messages).
    pub max_queued: usize,
    /// The largest frame accepted (default 64 MiB and 64 KiB: a message of
    /// a node's default largest size, with its envelope).
    pub max_frame: usize,
    /// Membership's timings.
    pub membership: MembershipConfig,
    /// What sessions run on (default [`Tcp`]). Every node of a cluster uses
    /// the same kind.
    pub transport: Arc<dyn Transport>,
    /// Sessions kept open at most (default 64): past it, the idle session
    /// used longest ago is closed, quietly (no `NodeDown`: the node is still
    /// a member), and opened again on next use. No full mesh is forced.
    pub max_sessions: usize,
    /// How long a session carries nothing but ticks before it counts as idle
    /// (default 10 s). A session with a link or a monitor across it is never
    /// idle.
    pub idle_after: Duration,
}

impl ClusterConfig {
    /// A node named `name` listening on `listen`, with `secret`.
    pub fn new(name: impl Into<String>, listen: SocketAddr, secret: Secret) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            listen,
            secret,
            tick: Duration::from_millis(250),
            ticks_down: 4,
            max_queued: 256 << 20,
            max_frame: (64 << 20) + (64 << 10),
            membership: MembershipConfig::default(),
            transport: Arc::new(Tcp),
            max_sessions: 64,
            idle_after: Duration::from_secs(10),
        }
    }

    /// Sessions run on `transport` instead of plain TCP.
    pub fn transport(mut self, transport: impl Transport) -> ClusterConfig {
        self.transport = Arc::new(transport);
        self
    }
}

/// Why a node is down for this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NodeDownReason {
    /// This node left the cluster (what its own watchers hear of every
    /// other node).
    Left,
    /// Membership declared it down: it stopped answering probes, or left
    /// the cluster (seen at once).
    Unreachable,
    /// The session to it broke or went silent (no tick): `NoConnection`.
    NoConnection,
    /// Its session was torn down: more bytes queued for it than allowed.
    Backlogged,
    /// No member of that name is known.
    Unknown,
}

/// A change of another node, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NodeEvent {
    /// The node joined (or came back as a new incarnation).
    NodeUp {
        /// Its name.
        node: String,
        /// Its incarnation.
        id: NodeId,
    },
    /// The node is down, or this node lost its session to it.
    NodeDown {
        /// Its name.
        node: String,
        /// Why.
        reason: NodeDownReason,
    },
}

/// Another node as this one knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeInfo {
    /// Its name.
    pub name: String,
    /// Its incarnation.
    pub id: NodeId,
    /// Where its sessions are accepted.
    pub addr: SocketAddr,
    /// Whether a session to it is open.
    pub connected: bool,
    /// The load it last advertised (see [`Cluster::advertise_load`]), if
    /// heard yet.
    pub load: Option<Load>,
}

/// What a cluster node counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Sessions opened (both ways).
    pub sessions: u64,
    /// Sessions lost: broken, silent, or torn down.
    pub lost: u64,
    /// Sessions torn down because too many bytes were queued for the peer.
    pub backlogged: u64,
    /// Connections refused at the handshake.
    pub refused: u64,
    /// Messages sent to other nodes.
    pub sent: u64,
    /// Messages delivered here from other nodes.
    pub delivered: u64,
    /// Frames for a process of an earlier incarnation of this node, or of
    /// no node known: dropped.
    pub stale: u64,
    /// Sessions closed because they were idle and more than
    /// [`ClusterConfig::max_sessions`] were open (by either end).
    pub closed_idle: u64,
    /// Direct sessions between a process here and one of another node,
    /// opened from here or handed over to a process here.
    pub direct: u64,
    /// Direct sessions that could not be had (the process there does not
    /// take them, or is gone; the node was unreachable): their senders go
    /// through the nodes.
    pub direct_refused: u64,
}

/// What travels on a session, after its handshake.
#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    /// Nothing to say: the peer is alive.
    Tick,
    /// A frame from `from` for a process of the receiving node.
    Deliver {
        from: Pid,
        to: Pid,
        kind: u8,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// `watcher` monitors `target`, of the receiving node.
    Monitor {
        watcher: Pid,
        reference: u64,
        internal: bool,
        target: Pid,
    },
    /// `pid`, watched by `watcher` of the receiving node, ended (sent on
    /// `pid`'s channel: after every frame it sent).
    Down {
        watcher: Pid,
        reference: u64,
        internal: bool,
        pid: Pid,
        reason: ExitReason,
    },
    /// `from` links with `to`, of the receiving node.
    Link { from: Pid, to: Pid },
    /// The link of `from` with `to` is gone.
    Unlink { from: Pid, to: Pid },
    /// `from` ended: the exit signal for `to`, linked with it (on `from`'s
    /// channel: after every frame it sent).
    Exit { to: Pid, from: Pid, reason: ExitReason },
    /// An exit signal (`exit`, `kill`) from `from` to `to` (on `from`'s
    /// channel: after every frame it sent).
    Signal {
        from: Pid,
        to: Pid,
        reason: ExitReason,
        untrappable: bool,
    },
    /// Which process has `name` there?
    Whereis { request: u64, name: String },
    /// The answer.
    Found { request: u64, pid: Option<Pid> },
    /// Start the function registered as `name` there, with `args`.
    Spawn { request: u64, name: String, args: Vec<u8> },
    /// The answer.
    Spawned {
        request: u64,
        result: Result<Pid, SpawnRefused>,
    },
    /// Run the task registered as `name` there on its pool, with `args`,
    /// within `timeout_ms`.
    Task {
        request: u64,
        name: String,
        args: Vec<u8>,
        timeout_ms: u64,
    },
    /// Its value, or why none.
    TaskDone {
        request: u64,
        result: Result<Vec<u8>, RemoteTaskError>,
    },
    /// This session has been idle here for `idle_ms`: may it close, if it
    /// has there too? Nothing more is sent on it until the answer.
    MayClose { idle_ms: u64 },
    /// Yes: the last frame sent on the session; the asker closes it.
    CloseOk,
    /// No: it is in use here; it stays.
    Busy,
}

/// A frame from a peer, decoded as the session's reader decodes it: what
/// decodes encodes back to the same value (fuzzing entry).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_frame(data: &[u8]) {
    // A message read in place, as the session reader reads one, is the
    // frame the full decode reads.
    if data.first() == Some(&DELIVER)
        && let Ok(OutgoingDeliver::Deliver { from, to, kind, body }) = postcard::from_bytes::<OutgoingDeliver>(data)
    {
        match postcard::from_bytes::<Wire>(data) {
            Ok(Wire::Deliver {
                from: f,
                to: t,
                kind: k,
                body: b,
            }) => assert!(f == from && t == to && k == kind && b == body),
            other => panic!("read in place, but not as a frame: {other:?}"),
        }
    }
    if let Ok(wire) = postcard::from_bytes::<Wire>(data) {
        let again = postcard::to_stdvec(&wire).expect("BUG: a decoded frame encodes");
        let back: Wire = postcard::from_bytes(&again).expect("BUG: an encoded frame decodes");
        assert_eq!(format!("{back:?}"), format!("{wire:?}"));
    }
}

/// What another node answered.
#[derive(Debug, Clone)]
enum Answer {
    Found(Option<Pid>),
    Spawned(Result<Pid, SpawnRefused>),
    TaskDone(Result<Vec<u8>, RemoteTaskError>),
}

/// Channel of ticks and requests; a sender's messages use its own.
const CONTROL: u32 = 0;

/// The frames waiting to be sealed for a peer, per channel (one frame of a
/// channel at a time, so that a channel's frames stay whole and in order).
#[derive(Default)]
struct Outgoing {
    channels: IntMap<u32, VecDeque<Vec<u8>>>,
    /// Channels with frames, in turn.
    turn: VecDeque<u32>,
    bytes: usize,
    /// Frames queued and not yet sealed whole.
    frames: usize,
    closed: bool,
    /// The frame being sealed on each channel, and how much of it is.
    sending: IntMap<u32, (Vec<u8>, usize)>,
    /// Someone seals and writes now: the writer, or a sender writing its
    /// frame at once. One at a time, so records leave in the order sealed.
    writing: bool,
    /// Sealed bytes that a sender could not write at once (the socket was
    /// full): the writer writes them before anything else.
    unwritten: Vec<u8>,
    /// When the last write was made, and the reader's count of reads then.
    last_write: Option<Instant>,
    reads_then: u64,
    /// When the oldest frame held back to be coalesced was queued.
    held_since: Option<Instant>,
}

impl Outgoing {
    /// Nothing queued or part-sent (sealed records being written are ahead
    /// of anything queued later).
    fn is_empty(&self) -> bool {
        self.frames == 0 && self.sending.is_empty() && self.turn.is_empty()
    }
}

/// The sending side of a session, shared by its writer and the threads
/// that send.
///
/// The batching rule is the one of sends between processes (see the
/// runtime's outbox): a frame is written at once, by the thread that sends
/// it, when nothing is queued and either the session has been quiet for
/// [`COALESCE`] or something was read from it since the last write (an
/// answer is never held back). Frames that follow a recent write are held
/// and leave in one write when they reach a batch, or [`FLUSH_DELAY`]
/// after the first of them, written by the session's writer thread, which
/// also finishes what the socket did not take at once. A sender never
/// blocks on the socket.
struct Out {
    queue: Mutex<Outgoing>,
    wake: Condvar,
    /// Reads made by the session's reader so far.
    reads: AtomicU64,
}

/// A session quiet this long writes a new frame at once.
const COALESCE: Duration = Duration::from_micros(50);
/// Frames held back to be coalesced are written this long after the first.
const FLUSH_DELAY: Duration = Duration::from_micros(50);
/// Frames held back that are written without waiting.
const BATCH_FRAMES: usize = 64;

/// A frame for a channel, waiting for its session.
type Queued = (u32, Vec<u8>);

struct Peer {
    name: String,
    id: NodeId,
    stream: Box<dyn Stream>,
    /// The session's halves: sealing (the writer, or a sender writing at
    /// once) and opening (the reader) go on apart.
    sealer: Arc<Mutex<Sealer>>,
    opener: Arc<Mutex<Opener>>,
    out: Arc<Out>,
    last_heard: Arc<Mutex<Instant>>,
    /// When something other than ticks last went either way on it
    /// (milliseconds of [`Inner::clock`]).
    last_used: Arc<AtomicU64>,
    initiated: bool,
    /// Distinguishes this session from a later one to the same node.
    serial: u64,
}

struct Inner {
    me: Hello,
    config: ClusterConfig,
    addr: SocketAddr,
    membership: Mutex<Membership>,
    udp: UdpSocket,
    peers: Mutex<IntMap<NodeId, Peer>>,
    /// Frames for nodes whose session is being opened.
    pending: Mutex<HashMap<NodeId, Vec<Queued>>>,
    /// Nodes a session to which is being opened (by this node, or by them
    /// when asked to connect back), or closed for idleness.
    connecting: Mutex<std::collections::HashSet<NodeId>>,
    /// Sessions being closed for idleness, out of `peers` (their node is in
    /// `connecting`: what is sent to it meanwhile waits in `pending`, and
    /// goes on a new session, or on this one if it stays).
    closing: Mutex<HashMap<NodeId, (Peer, Instant)>>,
    /// The start of [`Peer::last_used`]'s clock.
    clock: Instant,
    /// Requests waiting for an answer from a node, and its tasks running
    /// here, by node: a session with any is not idle.
    awaited: Mutex<HashMap<NodeId, usize>>,
    watchers: Mutex<Vec<(Option<String>, Mailbox<NodeEvent>)>>,
    requests: Mutex<HashMap<u64, Option<Answer>>>,
    answered: Condvar,
    answered_lock: Mutex<()>,
    next: AtomicU64,
    stats: Mutex<ClusterStats>,
    /// [`ClusterStats::sent`], counted apart: once per message sent, no lock.
    sent: AtomicU64,
    stopped: AtomicBool,
    /// Gossip addresses of the seeds joined through and of every member
    /// seen: a node left alone (a partition) announces itself to them until
    /// it is back in the cluster.
    known: Mutex<Vec<SocketAddr>>,
    /// Monitors placed from here on processes of other nodes, by node.
    remote_monitors: Mutex<HashMap<NodeId, Vec<RemoteMonitor>>>,
    /// Links between processes here and processes of other nodes (here,
    /// there), by the other node.
    links: Mutex<HashMap<NodeId, std::collections::HashSet<(Pid, Pid)>>>,
    /// Requests for the node's table, made in order by a thread of their
    /// own (the table may be the caller, holding its lock).
    injector: Mutex<std::sync::mpsc::Sender<ToNode>>,
    /// The load this node advertises, and when it last did.
    load: Mutex<Option<(Load, Instant)>>,
    /// Whether the program set it ([`Cluster::advertise_load`]); if not,
    /// the node's scheduler pool is its load.
    explicit_load: AtomicBool,
    /// Direct sessions being opened now.
    opening_direct: AtomicU64,
    /// The reader of each node's latest session: the next session's reader
    /// waits for it to end.
    readers: Mutex<IntMap<NodeId, Arc<ReaderEnd>>>,
}

/// The end of a session's reader. A session that closes may still hold
/// frames its reader has not delivered (it read them after the session was
/// lost or replaced, or had no CPU until then): the next session's reader
/// delivers nothing before they are, so one sender's messages keep their
/// order across the two.
#[derive(Default)]
struct ReaderEnd {
    ended: Mutex<bool>,
    cv: Condvar,
}

impl ReaderEnd {
    fn end(&self) {
        *self.ended.lock() = true;
        self.cv.notify_all();
    }

    /// Waits for the end until `deadline`, calling `alive` every 100 ms
    /// meanwhile (the session waiting is not silent: it is not read yet).
    /// Whether it ended.
    fn wait(&self, deadline: Instant, alive: impl Fn()) -> bool {
        let mut ended = self.ended.lock();
        while !*ended && Instant::now() < deadline {
            ended = self.cv.wait_for(ended, Duration::from_millis(100)).0;
            alive();
        }
        *ended
    }
}

/// Ends a reader's [`ReaderEnd`] when its thread ends, however it ends
/// (a panic too: the next session's reader must not wait for it).
struct EndsReader<'a> {
    inner: &'a Inner,
    node: NodeId,
    end: Arc<ReaderEnd>,
}

impl Drop for EndsReader<'_> {
    fn drop(&mut self) {
        let mut readers = self.inner.readers.lock();
        if readers.get(&self.node).is_some_and(|r| Arc::ptr_eq(r, &self.end)) {
            readers.remove(&self.node);
        }
        drop(readers);
        self.end.end();
    }
}

/// This node's place in a cluster. Dropping it leaves the cluster.
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.inner.me.name)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

/// The largest frame a process other than the node's main program sends to
/// another node: it travels to its node as a control frame first.
pub(crate) const MAX_RELAYED: usize = (1 << 24) - 4096;

/// The cluster of this OS process, where sends to other nodes go.
static ROUTE: std::sync::OnceLock<std::sync::Weak<Inner>> = std::sync::OnceLock::new();

/// Hands a frame for a process of another node to this process's cluster;
/// false when there is none (the frame is dropped, as a send to a node not
/// connected is).
pub(crate) fn route(from: Pid, to: Pid, kind: u8, body: &[u8]) -> bool {
    let Some(inner) = this_cluster() else {
        return false;
    };
    // Encoded once, from the body where it is.
    let deliver = OutgoingDeliver::Deliver { from, to, kind, body };
    let frame =
        postcard::to_extend(&deliver, Vec::with_capacity(body.len() + 48)).expect("BUG: wire frames always encode");
    inner.send_frame_to_node(to.node(), channel_of(from), frame);
    inner.sent.fetch_add(1, Ordering::Relaxed);
    true
}

/// Counts something awaited from or for a node while it lives (see
/// `Inner::awaited`).
struct Awaited<'a> {
    inner: &'a Inner,
    node: NodeId,
}

impl<'a> Awaited<'a> {
    fn new(inner: &'a Inner, node: NodeId) -> Awaited<'a> {
        *inner.awaited.lock().entry(node).or_default() += 1;
        Awaited { inner, node }
    }
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        let mut awaited = self.inner.awaited.lock();
        if let Some(n) = awaited.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                awaited.remove(&self.node);
            }
        }
    }
}

/// Whether a message to another node, encoded as [`route`] encodes it,
/// is the [`Wire::Deliver`] frame of the same fields.
#[cfg(test)]
pub(crate) fn deliver_encodes_as_wire(from: Pid, to: Pid, kind: u8, body: &[u8]) -> bool {
    let sent = postcard::to_stdvec(&OutgoingDeliver::Deliver { from, to, kind, body }).expect("encodes");
    let wire = Wire::Deliver {
        from,
        to,
        kind,
        body: body.to_vec(),
    };
    let decoded = postcard::from_bytes::<Wire>(&sent).expect("decodes");
    sent == postcard::to_stdvec(&wire).expect("encodes")
        && matches!(decoded, Wire::Deliver { from: f, to: t, kind: k, body: b } if f == from && t == to && k == kind && b == body)
}

/// [`Wire::Deliver`] as it is sent and read: the same encoding (variant
/// for variant), its body borrowed, so a message is neither copied into a
/// frame of its own nor out of the record it came in.
#[derive(Serialize, Deserialize)]
enum OutgoingDeliver<'a> {
    #[allow(dead_code)] // Only its place: the variants' numbers match Wire's.
    Tick,
    Deliver {
        from: Pid,
        to: Pid,
        kind: u8,
        #[serde(with = "serde_bytes", borrow)]
        body: &'a [u8],
    },
}

/// The first byte of an encoded [`Wire::Deliver`]: its variant's number.
const DELIVER: u8 = 1;

/// What the frames of one read did, counted once per read rather than per
/// frame.
#[derive(Debug)]
struct Tally<'a> {
    /// The session's last use, stamped at the first frame of the read that
    /// is more than a tick or a closing word (before any later frame of the
    /// read asks whether the session is in use).
    last_used: &'a AtomicU64,
    used: bool,
    delivered: u64,
    stale: u64,
}

impl<'a> Tally<'a> {
    fn new(last_used: &'a AtomicU64) -> Tally<'a> {
        Tally {
            last_used,
            used: false,
            delivered: 0,
            stale: 0,
        }
    }

    fn used(&mut self, inner: &Inner) {
        if !std::mem::replace(&mut self.used, true) {
            self.last_used.store(inner.millis(), Ordering::Relaxed);
        }
    }

    /// Adds the counts to the node's.
    fn count(self, inner: &Inner) {
        if self.delivered + self.stale > 0 {
            let mut stats = inner.stats.lock();
            stats.delivered += self.delivered;
            stats.stale += self.stale;
        }
    }
}

/// A sender's frames keep their order on a channel of their own (and the
/// `Down` about it comes on that channel, after them).
fn channel_of(sender: Pid) -> u32 {
    1 + (sender.serial() % u64::from(u32::MAX - 1)) as u32
}

/// This process's cluster, if it runs one.
fn this_cluster() -> Option<Arc<Inner>> {
    let inner = ROUTE.get()?;
    // A process forked from the node has a copy of the pointer, not the
    // threads behind it; its own runtime (installed before it runs any of
    // its code) has no node. Cheaper than a getpid(2) per message.
    if crate::runtime::current().is_none_or(|rt| rt.node().is_none()) {
        return None;
    }
    inner.upgrade()
}

/// Places monitor `reference` of `watcher` on `target`, a process of another
/// node: false when this process runs no cluster (the table then says
/// `NoProc`). A node that is not there gives `NoConnection` at once.
pub(crate) fn remote_monitor(watcher: Pid, reference: u64, internal: bool, target: Pid) -> bool {
    let Some(inner) = this_cluster() else {
        return false;
    };
    let node = target.node();
    if !inner.knows(node) {
        inner.inject(ToNode::RemoteDown {
            watcher: watcher.serial(),
            reference,
            internal,
            pid: target,
            reason: ExitReason::NoConnection,
        });
        return true;
    }
    inner
        .remote_monitors
        .lock()
        .entry(node)
        .or_default()
        .push(RemoteMonitor {
            watcher,
            reference,
            internal,
            target,
        });
    inner.send_to_node(
        node,
        channel_of(watcher),
        &Wire::Monitor {
            watcher,
            reference,
            internal,
            target,
        },
    );
    true
}

/// Links `from` (here) with `target` (of another node): false when this
/// process runs no cluster. A node not there gives `NoConnection` at once.
pub(crate) fn remote_link(from: Pid, target: Pid) -> bool {
    let Some(inner) = this_cluster() else {
        return false;
    };
    let node = target.node();
    if !inner.knows(node) {
        inner.inject(ToNode::RemoteExit {
            target: from.serial(),
            from: target,
            reason: ExitReason::NoConnection,
        });
        return true;
    }
    inner.links.lock().entry(node).or_default().insert((from, target));
    inner.send_to_node(node, channel_of(from), &Wire::Link { from, to: target });
    true
}

/// Sends an exit signal (`exit`, `kill`) from `from` (here) to `target` (of
/// another node); dropped when the node is not there, as a signal to a
/// process gone is.
pub(crate) fn remote_exit_signal(from: Pid, target: Pid, reason: ExitReason, untrappable: bool) {
    if let Some(inner) = this_cluster() {
        inner.send_to_node(
            target.node(),
            channel_of(from),
            &Wire::Signal {
                from,
                to: target,
                reason,
                untrappable,
            },
        );
    }
}

/// Removes the link between `from` (here) and `target` (of another node).
pub(crate) fn remote_unlink(from: Pid, target: Pid) {
    if let Some(inner) = this_cluster() {
        if let Some(set) = inner.links.lock().get_mut(&target.node()) {
            set.remove(&(from, target));
        }
        inner.send_to_node(target.node(), channel_of(from), &Wire::Unlink { from, to: target });
    }
}

/// Sends the exit signal of `from` (here, ended) to `to`, linked with it on
/// another node.
pub(crate) fn remote_exit(to: Pid, from: Pid, reason: ExitReason) {
    if let Some(inner) = this_cluster() {
        if let Some(set) = inner.links.lock().get_mut(&to.node()) {
            set.remove(&(from, to));
        }
        inner.send_to_node(to.node(), channel_of(from), &Wire::Exit { to, from, reason });
    }
}

/// Sends the `Down` of a monitor that `watcher`, of another node, placed on
/// `pid` here.
pub(crate) fn remote_down(watcher: Pid, reference: u64, internal: bool, pid: Pid, reason: ExitReason) {
    if let Some(inner) = this_cluster() {
        inner.send_to_node(
            watcher.node(),
            channel_of(pid),
            &Wire::Down {
                watcher,
                reference,
                internal,
                pid,
                reason,
            },
        );
    }
}

/// A monitor placed from here on a process of another node.
#[derive(Debug, Clone)]
struct RemoteMonitor {
    watcher: Pid,
    reference: u64,
    internal: bool,
    target: Pid,
}

impl Cluster {
    /// Starts this node's membership and session listener (in the node's
    /// main program, after `converge::init`). The node is alone until it
    /// [`join`](Cluster::join)s.
    pub fn start(node: &crate::Node, config: ClusterConfig) -> Result<Cluster, DistError> {
        let io = |e: std::io::Error| DistError::Io(e.to_string());
        let (listener, udp) = bind_both(&*config.transport, config.listen).map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let me = Hello::new(node.id(), config.name.clone());
        let member = Member::new(node.id(), &config.name, addr, addr);
        let membership = Membership::new(member, &config.secret, config.membership);
        let (inject_tx, inject_rx) = std::sync::mpsc::channel::<ToNode>();
        udp.set_read_timeout(Some(Duration::from_millis(50))).map_err(io)?;
        let inner = Arc::new(Inner {
            me: me.clone(),
            config: config.clone(),
            addr,
            membership: Mutex::new(membership),
            udp,
            peers: Mutex::new(IntMap::default()),
            pending: Mutex::new(HashMap::new()),
            connecting: Mutex::new(std::collections::HashSet::new()),
            closing: Mutex::new(HashMap::new()),
            clock: Instant::now(),
            awaited: Mutex::new(HashMap::new()),
            watchers: Mutex::new(Vec::new()),
            requests: Mutex::new(HashMap::new()),
            answered: Condvar::new(),
            answered_lock: Mutex::new(()),
            next: AtomicU64::new(1),
            stats: Mutex::new(ClusterStats::default()),
            sent: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            known: Mutex::new(Vec::new()),
            remote_monitors: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            injector: Mutex::new(inject_tx),
            load: Mutex::new(None),
            explicit_load: AtomicBool::new(false),
            opening_direct: AtomicU64::new(0),
            readers: Mutex::new(IntMap::default()),
        });
        spawn("converge-dist-inject", move || {
            // As the node's main program: the table takes these from it only.
            if let Some(rt) = crate::runtime::current() {
                for msg in inject_rx {
                    // The main program's own direct sessions close here, with
                    // no lock of the cluster held: closing one may send what
                    // waited for it through the node, which takes them.
                    if let ToNode::NodeLost { node } = msg {
                        rt.forget_node_routes(node);
                        rt.inbox.node_lost(rt, node);
                    }
                    rt.tell_node_raw(&msg);
                }
            }
        });
        if ROUTE.set(Arc::downgrade(&inner)).is_err() {
            return Err(DistError::Io("this program already runs a cluster node".into()));
        }
        let acceptor = Acceptor::new(listener, config.secret.clone(), me, config.max_frame);
        spawn("converge-dist-accept", {
            let inner = Arc::clone(&inner);
            move || accept_loop(&inner, acceptor)
        });
        spawn("converge-dist-gossip", {
            let inner = Arc::clone(&inner);
            move || gossip_loop(&inner)
        });
        spawn("converge-dist-ticks", {
            let inner = Arc::clone(&inner);
            move || tick_loop(&inner)
        });
        Ok(Cluster { inner })
    }

    /// Where this node listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.me.name
    }

    /// Joins the cluster through any member's address.
    pub fn join(&self, seed: SocketAddr) {
        {
            let mut known = self.inner.known.lock();
            if !known.contains(&seed) {
                known.push(seed);
            }
        }
        let mut m = self.inner.membership.lock();
        m.join(seed, Instant::now());
        self.inner.flush_packets(&mut m);
    }

    /// The other nodes, as membership knows them.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        // Membership first: the gossip thread takes the peers' lock under
        // membership's.
        let membership = self.inner.membership.lock();
        let members = membership.members();
        let peers = self.inner.peers.lock();
        let mut nodes: Vec<NodeInfo> = members
            .into_iter()
            .map(|m| NodeInfo {
                connected: peers.contains_key(&m.node),
                load: membership.load_of(m.node),
                name: m.name,
                id: m.node,
                addr: m.sessions,
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// Tells the cluster what this node has room for: other nodes see it in
    /// [`nodes`](Cluster::nodes) within a few gossip rounds (a change goes
    /// out at once, and the latest is repeated every second so that nodes
    /// that join later hear it too). Until a program calls it, a node
    /// advertises its scheduler pool: its schedulers as slots, the tasks
    /// running as busy and those waiting as queued.
    pub fn advertise_load(&self, load: Load) {
        self.inner.explicit_load.store(true, Ordering::Release);
        // Under membership's lock (taken first, as the gossip loop does):
        // loads set at once go out in the order they were set.
        let mut m = self.inner.membership.lock();
        let mut current = self.inner.load.lock();
        if current.is_some_and(|(l, _)| l == load) {
            return;
        }
        let now = Instant::now();
        *current = Some((load, now));
        drop(current);
        m.advertise(load, now);
        self.inner.flush_packets(&mut m);
    }

    /// Sends every change of other nodes to `to`.
    pub fn monitor_nodes(&self, to: Mailbox<NodeEvent>) {
        self.inner.watchers.lock().push((None, to));
    }

    /// Sends `NodeDown` to `to` when the node `name` goes down or its session
    /// is lost; at once when no member has that name.
    pub fn monitor_node(&self, name: &str, to: Mailbox<NodeEvent>) {
        if !self.nodes().iter().any(|n| n.name == name) {
            let _ = to.send(NodeEvent::NodeDown {
                node: name.to_string(),
                reason: NodeDownReason::Unknown,
            });
            return;
        }
        self.inner.watchers.lock().push((Some(name.to_string()), to));
    }

    /// The process registered as `name` on the node `node` (asked there).
    pub fn whereis(&self, node: &str, name: &str, timeout: Duration) -> Option<Pid> {
        let name = name.to_string();
        match self.ask(node, timeout, |request| Wire::Whereis { request, name }) {
            Some(Answer::Found(pid)) => pid,
            _ => None,
        }
    }

    /// Starts the function registered as `name` on the node `node` (see
    /// [`spawnable`](super::spawnable)) with `args`: its process there. Only
    /// registered functions can be started; `args` are checked there.
    pub fn spawn_on<A: Serialize>(
        &self,
        node: &str,
        name: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<Pid, SpawnRefused> {
        let args = postcard::to_stdvec(args).map_err(|e| SpawnRefused::BadArguments {
            name: name.to_string(),
            why: e.to_string(),
        })?;
        let owned = name.to_string();
        match self.ask(node, timeout, |request| Wire::Spawn {
            request,
            name: owned,
            args,
        }) {
            Some(Answer::Spawned(result)) => result,
            _ => Err(SpawnRefused::NoConnection(node.to_string())),
        }
    }

    /// Runs the task registered as `name` on the node `node` (see
    /// [`task`](super::task)) on that node's scheduler pool with `args`:
    /// its value. Only registered tasks can be run; `args` are checked
    /// there. `timeout` bounds the task's run there and the wait here; a
    /// task past it is cancelled there.
    pub fn run_task<A: Serialize, R: DeserializeOwned>(
        &self,
        node: &str,
        name: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, RemoteTaskError> {
        let bad = |why: String| RemoteTaskError::BadArguments {
            name: name.to_string(),
            why,
        };
        let args = postcard::to_stdvec(args).map_err(|e| bad(e.to_string()))?;
        let owned = name.to_string();
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // The answer has a moment more than the task to come back.
        match self.ask(node, timeout + Duration::from_secs(2), |request| Wire::Task {
            request,
            name: owned,
            args,
            timeout_ms,
        }) {
            Some(Answer::TaskDone(Ok(value))) => match postcard::take_from_bytes(&value) {
                Ok((value, [])) => Ok(value),
                Ok((_, rest)) => Err(bad(format!("{} bytes past the value", rest.len()))),
                Err(e) => Err(bad(e.to_string())),
            },
            Some(Answer::TaskDone(Err(e))) => Err(e),
            _ => Err(RemoteTaskError::NoConnection(node.to_string())),
        }
    }

    /// Sends the request `make` builds to `node` and waits for its answer.
    fn ask(&self, node: &str, timeout: Duration, make: impl FnOnce(u64) -> Wire) -> Option<Answer> {
        let target = self.inner.member_named(node)?;
        let request = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.requests.lock().insert(request, None);
        let _awaited = Awaited::new(&self.inner, target.node);
        self.inner.send_to_node(target.node, CONTROL, &make(request));
        let deadline = Instant::now() + timeout;
        let mut guard = self.inner.answered_lock.lock();
        loop {
            let answer = self.inner.requests.lock().get(&request).cloned().flatten();
            if let Some(answer) = answer {
                self.inner.requests.lock().remove(&request);
                return Some(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // No session, none being opened: the request went nowhere, or
            // was lost with its session.
            if left.is_zero() || !self.inner.reachable(target.node) {
                self.inner.requests.lock().remove(&request);
                return None;
            }
            guard = self
                .inner
                .answered
                .wait_for(guard, left.min(Duration::from_millis(50)))
                .0;
        }
    }

    /// What this node counted.
    pub fn stats(&self) -> ClusterStats {
        let mut s = *self.inner.stats.lock();
        s.sent = self.inner.sent.load(Ordering::Relaxed);
        s.refused += self.inner.membership.lock().stats().refused;
        s
    }

    /// Leaves the cluster: the others see this node down at once, and every
    /// session closes. (The port stays bound, refusing sessions, until the
    /// program ends; a program runs one cluster node in its life.)
    pub fn leave(self) {
        drop(self);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let inner = &self.inner;
        {
            let mut m = inner.membership.lock();
            m.leave(Instant::now());
            inner.flush_packets(&mut m);
        }
        inner.stopped.store(true, Ordering::Release);
        let peers: Vec<NodeId> = inner.peers.lock().keys().copied().collect();
        for id in peers {
            inner.lose(id, None, NodeDownReason::Left);
        }
        for (_, (peer, _)) in inner.closing.lock().drain() {
            close(&peer);
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("BUG: a cluster thread starts");
}

/// A TCP listener and a UDP socket on the same port.
fn bind_both(transport: &dyn Transport, addr: SocketAddr) -> std::io::Result<(Box<dyn Listener>, UdpSocket)> {
    let mut last = None;
    for _ in 0..16 {
        let listener = transport.listen(addr)?;
        let at = listener.local_addr()?;
        match UdpSocket::bind(at) {
            Ok(udp) => return Ok((listener, udp)),
            // The port the system picked for TCP is taken for UDP: another.
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

impl Inner {
    fn flush_packets(&self, m: &mut Membership) {
        for (to, packet) in m.take_packets() {
            let _ = self.udp.send_to(&packet, to);
        }
        let events = m.take_events();
        for e in events {
            match e {
                MemberEvent::Up(member) => {
                    {
                        let mut known = self.known.lock();
                        if !known.contains(&member.gossip) {
                            known.push(member.gossip);
                        }
                    }
                    self.notify(NodeEvent::NodeUp {
                        node: member.name,
                        id: member.node,
                    })
                }
                MemberEvent::Down(member) => {
                    let reason = NodeDownReason::Unreachable;
                    if self.peers.lock().contains_key(&member.node) {
                        self.lose(member.node, None, reason);
                    } else {
                        self.notify(NodeEvent::NodeDown {
                            node: member.name,
                            reason,
                        });
                    }
                }
                _ => {}
            }
        }
    }

    /// The member of that name; the latest incarnation if membership still
    /// lists an earlier one (a node restarted moments ago).
    fn member_named(&self, name: &str) -> Option<Member> {
        self.membership
            .lock()
            .members()
            .into_iter()
            .filter(|m| m.name == name)
            .max_by_key(|m| (m.started, m.rejoins))
    }

    fn answer(&self, request: u64, answer: Answer) {
        if let Some(slot) = self.requests.lock().get_mut(&request) {
            *slot = Some(answer);
        }
        let _g = self.answered_lock.lock();
        self.answered.notify_all();
    }

    /// Whether `node` is a member, or has a session with this one.
    fn knows(&self, node: NodeId) -> bool {
        // One lock at a time: the gossip thread takes the peers' lock under
        // membership's.
        let connected = self.peers.lock().contains_key(&node);
        connected || self.membership.lock().members().iter().any(|m| m.node == node)
    }

    /// Hands `msg` to the process table at once: for what follows no
    /// message of its sender (a monitor placed, the `NoConnection` of a node
    /// never known); a signal from or about a sender of messages goes
    /// through [`inject_after`](Inner::inject_after).
    fn inject(&self, msg: ToNode) {
        let _ = self.injector.lock().send(msg);
    }

    /// Injects `msg`, a signal from or about `from` (of another node) for
    /// `target` (here), once what `from` sent to `target` through this node
    /// is written to it, however slowly `target` reads: the receiver reads
    /// those connections to the end before it takes the signal, so nothing
    /// `from` sent before can come after it. With `ended` (`from` is gone),
    /// `from`'s connections close once written.
    fn inject_after(&self, from: Pid, target: u64, ended: bool, msg: ToNode) {
        let tx = self.injector.lock().clone();
        let then = move || {
            let _ = tx.send(msg);
        };
        match crate::runtime::current() {
            Some(rt) => rt.after_remote_sender(from, target, ended, crate::runtime::outbox::Then::new(then)),
            None => then(),
        }
    }

    fn notify(&self, event: NodeEvent) {
        let mut watchers = self.watchers.lock();
        let name = match &event {
            NodeEvent::NodeUp { node, .. } | NodeEvent::NodeDown { node, .. } => node.clone(),
        };
        let down = matches!(event, NodeEvent::NodeDown { .. });
        watchers.retain(|(only, to)| match only {
            None => to.send(event.clone()).is_ok(),
            // A node monitor fires once, on NodeDown.
            Some(n) if *n == name && down => {
                let _ = to.send(event.clone());
                false
            }
            Some(_) => true,
        });
    }

    /// Queues `wire` for `node`, opening a session first if there is none.
    fn send_to_node(self: &Arc<Self>, node: NodeId, channel: u32, wire: &Wire) {
        let frame = postcard::to_stdvec(wire).expect("BUG: wire frames always encode");
        self.send_frame_to_node(node, channel, frame);
    }

    /// Queues an encoded frame for `node`, opening a session first if there
    /// is none.
    fn send_frame_to_node(self: &Arc<Self>, node: NodeId, channel: u32, frame: Vec<u8>) {
        {
            // Held until the frame is queued or waits: a session put in
            // place meanwhile takes what waits with it.
            let peers = self.peers.lock();
            if let Some(peer) = peers.get(&node) {
                peer.last_used.store(self.millis(), Ordering::Relaxed);
                self.enqueue(peer, channel, frame);
                return;
            }
            self.pending.lock().entry(node).or_default().push((channel, frame));
            if !self.connecting.lock().insert(node) {
                // Being opened (or closed): what waits goes out when it is.
                return;
            }
        }
        self.open_listed(node);
    }

    /// Opens the session to `node` where membership says it listens (what
    /// waits for it is dropped if it is not a member).
    fn open_listed(self: &Arc<Self>, node: NodeId) {
        let addr = self
            .membership
            .lock()
            .members()
            .into_iter()
            .find(|m| m.node == node)
            .map(|m| m.sessions);
        match addr {
            Some(addr) => self.open(node, addr),
            None => self.give_up(node),
        }
    }

    /// Opens the session to `node` at `addr`: itself when this node has the
    /// smaller id, or else by asking it to connect back. Two nodes that
    /// connect to each other at once then never have two sessions, one of
    /// which would be closed with what was sent on it.
    fn open(self: &Arc<Self>, node: NodeId, addr: SocketAddr) {
        if self.stopped.load(Ordering::Acquire) {
            self.give_up(node);
            return;
        }
        let inner = Arc::clone(self);
        spawn("converge-dist-connect", move || {
            let opener = keep_session(inner.me.node, node, true);
            let mut hello = inner.me.clone();
            if !opener {
                hello.callback = Some(inner.addr.port());
            }
            let ask = hello.clone();
            let cfg = &inner.config;
            let transport = &*cfg.transport;
            match connect(transport, addr, &cfg.secret, hello, cfg.max_frame, HANDSHAKE_TIMEOUT) {
                Ok((session, hello, stream)) if hello.node == node && opener => {
                    inner.add_peer(session, hello, stream, true);
                }
                Ok((_, hello, stream)) if hello.node == node => {
                    // Asked: the session comes from there.
                    stream.shutdown();
                    let deadline = Instant::now() + HANDSHAKE_TIMEOUT * 2;
                    let mut asked = Instant::now();
                    while !inner.settled(node) {
                        if Instant::now() >= deadline || inner.stopped.load(Ordering::Acquire) {
                            inner.give_up(node);
                            return;
                        }
                        if asked.elapsed() >= ASK_AGAIN {
                            // Again: it may still hold a session lost here
                            // (until its ticks tell it so), and not come.
                            asked = Instant::now();
                            let again = connect(
                                transport,
                                addr,
                                &cfg.secret,
                                ask.clone(),
                                cfg.max_frame,
                                HANDSHAKE_TIMEOUT,
                            );
                            if let Ok((_, _, s)) = again {
                                s.shutdown();
                            }
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                // Nobody there, or another incarnation.
                Ok(_) | Err(_) => inner.give_up(node),
            }
        });
    }

    /// Whether a session to `node` is in place; if so, what waited for one
    /// goes on it and it is no longer being opened.
    fn settled(&self, node: NodeId) -> bool {
        let peers = self.peers.lock();
        let Some(peer) = peers.get(&node) else {
            return false;
        };
        if let Some(waiting) = self.pending.lock().remove(&node) {
            for (channel, frame) in waiting {
                self.enqueue(peer, channel, frame);
            }
        }
        self.connecting.lock().remove(&node);
        true
    }

    /// No session to `node` could be had: what waited for one is dropped,
    /// as for a node that is down.
    fn give_up(&self, node: NodeId) {
        self.connecting.lock().remove(&node);
        let n = self.pending.lock().remove(&node).map_or(0, |l| l.len());
        self.stats.lock().stale += n as u64;
        if n > 0 {
            // A fence may be among them: the direct sessions it opened would
            // never be read.
            self.inject(ToNode::NodeLost { node });
        }
        // Requests to it are not answered: their askers look again now.
        self.answered.notify_all();
    }

    /// Whether a frame for `node` can go anywhere now: a session is open,
    /// being opened, or being closed (its frames then wait for the next).
    fn reachable(&self, node: NodeId) -> bool {
        self.peers.lock().contains_key(&node) || self.connecting.lock().contains(&node)
    }

    /// `node` asks this one to open the session to it, at `addr` (unless
    /// one is open, or being opened: it may have crossed the request).
    fn connect_back(self: &Arc<Self>, node: NodeId, addr: SocketAddr) {
        if self.peers.lock().contains_key(&node) || !self.connecting.lock().insert(node) {
            return;
        }
        self.open(node, addr);
    }

    /// Queues `frame` for `peer`, and writes it at once or wakes the writer
    /// when the batching rule says so (see [`Out`]).
    fn enqueue(&self, peer: &Peer, channel: u32, frame: Vec<u8>) {
        let wake = &peer.out.wake;
        let mut out = peer.out.queue.lock();
        if out.closed {
            return;
        }
        out.bytes += frame.len();
        if out.bytes > self.config.max_queued {
            // Torn down: its reader sees the end and reports the loss (as
            // `Backlogged`); the queue is not kept.
            out.closed = true;
            drop(out);
            wake.notify_one();
            self.stats.lock().backlogged += 1;
            peer.stream.shutdown();
            tracing::warn!(peer = %peer.name, "too many bytes queued: session torn down");
            return;
        }
        let out_ref = &mut *out;
        let queue = out_ref.channels.entry(channel).or_default();
        if queue.is_empty() {
            out_ref.turn.push_back(channel);
        }
        queue.push_back(frame);
        out.frames += 1;
        if out.writing {
            // Whoever writes takes it next.
            return;
        }
        let answer = peer.out.reads.load(Ordering::Acquire) != out.reads_then;
        let quiet = out.frames == 1
            && out.unwritten.is_empty()
            && (answer || out.last_write.is_none_or(|t| t.elapsed() >= COALESCE));
        if quiet {
            out.writing = true;
            drop(out);
            write_now(peer);
        } else if out.frames >= BATCH_FRAMES || out.bytes >= WRITE_BATCH {
            drop(out);
            wake.notify_one();
        } else if out.held_since.is_none() {
            out.held_since = Some(Instant::now());
            drop(out);
            wake.notify_one();
        }
    }

    /// A session is up: keeps it (or the one already there, by the rule for
    /// connections made at once), starts its reader and writer, and sends
    /// what waited for it.
    fn add_peer(self: &Arc<Self>, session: Session, hello: Hello, stream: Box<dyn Stream>, initiated: bool) {
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        if self.stopped.load(Ordering::Acquire) {
            stream.shutdown();
            return;
        }
        let mut peers = self.peers.lock();
        if let Some(old) = peers.get(&hello.node) {
            if old.initiated == initiated || !keep_session(self.me.node, hello.node, initiated) {
                stream.shutdown();
                // The session in place takes what waited for this one.
                if let Some(waiting) = self.pending.lock().remove(&hello.node) {
                    for (channel, frame) in waiting {
                        self.enqueue(old, channel, frame);
                    }
                }
                self.connecting.lock().remove(&hello.node);
                return;
            }
            let old = peers.remove(&hello.node).expect("BUG: present");
            close(&old);
        }
        let reader = match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        };
        let (sealer, opener) = session.split();
        let peer = Peer {
            name: hello.name.clone(),
            id: hello.node,
            stream,
            sealer: Arc::new(Mutex::new(sealer)),
            opener: Arc::new(Mutex::new(opener)),
            out: Arc::new(Out {
                queue: Mutex::new(Outgoing::default()),
                wake: Condvar::new(),
                reads: AtomicU64::new(0),
            }),
            last_heard: Arc::new(Mutex::new(Instant::now())),
            last_used: Arc::new(AtomicU64::new(self.millis())),
            initiated,
            serial,
        };
        let writer = (peer.stream.try_clone(), Arc::clone(&peer.sealer), Arc::clone(&peer.out));
        let heard = Arc::clone(&peer.last_heard);
        let session = Arc::clone(&peer.opener);
        let reads = Arc::clone(&peer.out);
        let used = Arc::clone(&peer.last_used);
        if let Some(waiting) = self.pending.lock().remove(&hello.node) {
            for (channel, frame) in waiting {
                self.enqueue(&peer, channel, frame);
            }
        }
        peers.insert(hello.node, peer);
        let end = Arc::new(ReaderEnd::default());
        let before = self.readers.lock().insert(hello.node, Arc::clone(&end));
        self.connecting.lock().remove(&hello.node);
        drop(peers);
        self.stats.lock().sessions += 1;
        tracing::info!(peer = %hello.name, initiated, "session open");
        if let (Ok(stream), session_w, out) = writer {
            let shut = stream.try_clone().ok();
            let inner = Arc::clone(self);
            let node = hello.node;
            spawn("converge-dist-write", move || {
                if write_loop(stream, &session_w, &out).is_err() {
                    // Its reader ends too, and tells the loss (or ends the
                    // close under way).
                    out.queue.lock().closed = true;
                    out.wake.notify_all();
                    if let Some(s) = shut.as_ref() {
                        s.shutdown();
                    }
                    if !inner.lose(node, Some(serial), NodeDownReason::NoConnection) {
                        inner.finish_close(node, serial);
                    }
                }
            });
        }
        let inner = Arc::clone(self);
        // A previous session's reader ends once its stream is shut (a
        // session closing for idleness is shut within `silent * 4`).
        let patience = self.config.tick * self.config.ticks_down * 4;
        spawn("converge-dist-read", move || {
            let _ends = EndsReader {
                inner: &inner,
                node: hello.node,
                end,
            };
            // What the previous session held is delivered first.
            if let Some(before) = before
                && !before.wait(Instant::now() + patience, || *heard.lock() = Instant::now())
            {
                tracing::warn!(peer = %hello.name, "the previous session's reader never ended: reading this one");
            }
            let why = read_loop(
                &inner,
                reader,
                &session,
                (&heard, &reads.reads, &used),
                (hello.node, serial),
            );
            // A session closed for idleness ends quietly. Looked for in
            // `peers` first, under its lock: a close begun meanwhile has
            // moved it to `closing` by then.
            if !inner.lose(hello.node, Some(serial), why) {
                inner.finish_close(hello.node, serial);
            }
        });
    }

    /// The session to `node` is gone (only that one, when `serial` says
    /// which): every watcher hears of it.
    /// Whether it was there to lose.
    fn lose(&self, node: NodeId, serial: Option<u64>, reason: NodeDownReason) -> bool {
        let removed = {
            let mut peers = self.peers.lock();
            match peers.get(&node) {
                Some(p) if serial.is_none_or(|s| s == p.serial) => peers.remove(&node),
                _ => None,
            }
        };
        let Some(peer) = removed else {
            return false;
        };
        close(&peer);
        let reason = {
            let out = peer.out.queue.lock();
            if out.bytes > self.config.max_queued {
                NodeDownReason::Backlogged
            } else {
                reason
            }
        };
        if reason != NodeDownReason::Left {
            self.stats.lock().lost += 1;
        }
        // Every link across the lost session: `NoConnection`.
        for (here, there) in self.links.lock().remove(&node).unwrap_or_default() {
            self.inject_after(
                there,
                here.serial(),
                false,
                ToNode::RemoteExit {
                    target: here.serial(),
                    from: there,
                    reason: ExitReason::NoConnection,
                },
            );
        }
        // Every monitor across the lost session: `NoConnection`.
        for m in self.remote_monitors.lock().remove(&node).unwrap_or_default() {
            self.inject_after(
                m.target,
                m.watcher.serial(),
                false,
                ToNode::RemoteDown {
                    watcher: m.watcher.serial(),
                    reference: m.reference,
                    internal: m.internal,
                    pid: m.target,
                    reason: ExitReason::NoConnection,
                },
            );
        }
        // Direct sessions to its processes close too: a fence may have been
        // lost with the session.
        self.inject(ToNode::NodeLost { node });
        tracing::info!(peer = %peer.name, ?reason, "session lost");
        self.answered.notify_all();
        self.notify(NodeEvent::NodeDown {
            node: peer.name,
            reason,
        });
        true
    }

    /// Milliseconds since this node started: the clock of
    /// [`Peer::last_used`].
    fn millis(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Hands a message from `from` (of `node`) to `to` here.
    fn deliver(
        &self,
        node: NodeId,
        (from, to, kind): (Pid, Pid, u8),
        body: &[u8],
        tally: &mut Tally<'_>,
    ) -> Result<(), DistError> {
        let kind = match kind {
            2 => Kind::Msg,
            3 => Kind::Reply,
            5 if body.len() == 8 => Kind::Fence,
            k => return Err(DistError::Malformed(format!("a frame of kind {k} for a process"))),
        };
        match crate::runtime::current() {
            // A fence, naming its session, goes twice: in line with the
            // sender's frames, and in line with the signals about it (those
            // before it were sent before its session opened, and do not wait
            // for it).
            Some(rt) if kind == Kind::Fence && to.node() == self.me.node && from.node() == node => {
                let _ = rt.send_encoded(from, to, kind, body);
                let msg = ToNode::Fence {
                    from,
                    to: to.serial(),
                    session: u64::from_le_bytes(body.try_into().expect("BUG: checked above")),
                };
                self.inject_after(from, to.serial(), false, msg);
                tally.delivered += 1;
            }
            Some(rt) if to.node() == self.me.node && from.node() == node => {
                let _ = rt.send_encoded(from, to, kind, body);
                tally.delivered += 1;
            }
            // An earlier incarnation's process: never a new one's.
            _ => tally.stale += 1,
        }
        Ok(())
    }

    /// Nodes with a link or a monitor across their session: never idle.
    fn in_use(&self) -> std::collections::HashSet<NodeId> {
        let mut busy: std::collections::HashSet<NodeId> = self
            .links
            .lock()
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(n, _)| *n)
            .collect();
        busy.extend(
            self.remote_monitors
                .lock()
                .iter()
                .filter(|(_, m)| !m.is_empty())
                .map(|(n, _)| *n),
        );
        busy.extend(self.awaited.lock().keys().copied());
        busy
    }

    /// Past [`ClusterConfig::max_sessions`], asks the peers of the idle
    /// sessions used longest ago whether they may close. Until they answer,
    /// nothing more is sent on them: what is sent meanwhile waits.
    fn close_idle(&self) {
        let max = self.config.max_sessions;
        if self.peers.lock().len() <= max {
            return;
        }
        let busy = self.in_use();
        let now = self.millis();
        let idle_after = self.config.idle_after.as_millis() as u64;
        let mut peers = self.peers.lock();
        let over = peers.len().saturating_sub(max);
        let mut idle: Vec<(u64, NodeId)> = peers
            .values()
            .filter(|p| !busy.contains(&p.id))
            .map(|p| (p.last_used.load(Ordering::Relaxed), p.id))
            .filter(|&(used, _)| now.saturating_sub(used) >= idle_after)
            .collect();
        idle.sort_unstable();
        let mut asked = 0;
        for (_, node) in idle {
            if asked == over {
                break;
            }
            // Nothing waiting to go out on it: the question would pass it.
            if !peers.get(&node).is_some_and(|p| p.out.queue.lock().is_empty()) {
                continue;
            }
            let peer = peers.remove(&node).expect("BUG: listed");
            self.connecting.lock().insert(node);
            tracing::debug!(peer = %peer.name, "an idle session: asked to close");
            // In `closing` before the question goes: the answer may come
            // back at once.
            let mut closing = self.closing.lock();
            let (peer, _) = closing.entry(node).or_insert((peer, Instant::now()));
            let frame = postcard::to_stdvec(&Wire::MayClose { idle_ms: idle_after }).expect("BUG: encodes");
            self.enqueue(peer, CONTROL, frame);
            asked += 1;
        }
    }

    /// `node` asks whether their session may close: yes, as its last frame,
    /// if it has been idle here for `idle_ms` too (or is being closed from
    /// here as well).
    fn asked_to_close(&self, node: NodeId, serial: u64, idle_ms: u64) {
        if let Some((peer, _)) = self.closing.lock().get(&node)
            && peer.serial == serial
        {
            let frame = postcard::to_stdvec(&Wire::CloseOk).expect("BUG: encodes");
            self.enqueue(peer, CONTROL, frame);
            return;
        }
        let busy = self.in_use().contains(&node);
        let now = self.millis();
        let mut peers = self.peers.lock();
        let Some(peer) = peers.get(&node).filter(|p| p.serial == serial) else {
            return;
        };
        let recent = now.saturating_sub(peer.last_used.load(Ordering::Relaxed)) < idle_ms;
        // Frames still to go out here, or one coming in part by part.
        let moving = !peer.out.queue.lock().is_empty() || peer.opener.lock().receiving();
        if busy || recent || moving {
            let frame = postcard::to_stdvec(&Wire::Busy).expect("BUG: encodes");
            self.enqueue(peer, CONTROL, frame);
            return;
        }
        let peer = peers.remove(&node).expect("BUG: present");
        self.connecting.lock().insert(node);
        drop(peers);
        let mut closing = self.closing.lock();
        let (peer, _) = closing.entry(node).or_insert((peer, Instant::now()));
        let frame = postcard::to_stdvec(&Wire::CloseOk).expect("BUG: encodes");
        self.enqueue(peer, CONTROL, frame);
    }

    /// `node` uses the session: it stays, and what waited goes on it.
    fn keep_open(&self, node: NodeId, serial: u64) {
        let mut peers = self.peers.lock();
        let peer = {
            let mut closing = self.closing.lock();
            // Only the session asked about, still open, with none in its
            // place (else it ends, and what waited goes on the next).
            let keep = closing.get(&node).is_some_and(|(p, _)| {
                p.serial == serial && !p.out.queue.lock().closed && !self.stopped.load(Ordering::Acquire)
            });
            if !keep || peers.contains_key(&node) {
                if let Some((p, _)) = closing.get(&node) {
                    close(p);
                }
                return;
            }
            closing.remove(&node).map(|(p, _)| p)
        };
        let Some(peer) = peer else {
            return;
        };
        // Not asked again at once.
        peer.last_used.store(self.millis(), Ordering::Relaxed);
        if let Some(waiting) = self.pending.lock().remove(&node) {
            for (channel, frame) in waiting {
                self.enqueue(&peer, channel, frame);
            }
        }
        peers.insert(node, peer);
        self.connecting.lock().remove(&node);
    }

    /// The session `serial` to `node` ended: if it was being closed for
    /// idleness, that is done (quietly), and what waited for the node goes
    /// on a new session. False if it was not.
    fn finish_close(self: &Arc<Self>, node: NodeId, serial: u64) -> bool {
        let peer = {
            let mut closing = self.closing.lock();
            match closing.get(&node) {
                Some((p, _)) if p.serial == serial => closing.remove(&node).map(|(p, _)| p),
                _ => None,
            }
        };
        let Some(peer) = peer else {
            return false;
        };
        close(&peer);
        self.stats.lock().closed_idle += 1;
        tracing::debug!(peer = %peer.name, "an idle session closed");
        let waiting = {
            let pending = self.pending.lock();
            let waiting = pending.get(&node).is_some_and(|w| !w.is_empty());
            if !waiting {
                self.connecting.lock().remove(&node);
            }
            waiting
        };
        if waiting {
            self.open_listed(node);
        }
        true
    }

    /// A frame from `node`.
    fn handle(
        self: &Arc<Self>,
        (node, serial): (NodeId, u64),
        frame: &[u8],
        tally: &mut Tally<'_>,
    ) -> Result<(), DistError> {
        // Most frames are messages: read in place.
        if frame.first() == Some(&DELIVER)
            && let Ok(OutgoingDeliver::Deliver { from, to, kind, body }) = postcard::from_bytes(frame)
        {
            tally.used(self);
            return self.deliver(node, (from, to, kind), body, tally);
        }
        let wire: Wire =
            postcard::from_bytes(frame).map_err(|e| DistError::Malformed(format!("an undecodable frame: {e}")))?;
        if !matches!(wire, Wire::Tick | Wire::MayClose { .. } | Wire::CloseOk | Wire::Busy) {
            tally.used(self);
        }
        match wire {
            Wire::Tick => {}
            Wire::MayClose { idle_ms } => self.asked_to_close(node, serial, idle_ms),
            Wire::CloseOk => {
                // The peer's last frame: closing the stream ends both
                // readers, and each finishes the close quietly.
                if let Some((peer, _)) = self.closing.lock().get(&node)
                    && peer.serial == serial
                {
                    close(peer);
                }
            }
            Wire::Busy => self.keep_open(node, serial),
            Wire::Deliver { from, to, kind, body } => self.deliver(node, (from, to, kind), &body, tally)?,
            Wire::Monitor {
                watcher,
                reference,
                internal,
                target,
            } => {
                if watcher.node() != node {
                    return Err(DistError::Malformed("a monitor for a process of another node".into()));
                }
                if target.node() == self.me.node {
                    self.inject(ToNode::MonitorFor {
                        watcher,
                        reference,
                        internal,
                        target,
                    });
                } else {
                    // An earlier incarnation's process: gone.
                    remote_down(watcher, reference, internal, target, ExitReason::NoProc);
                }
            }
            Wire::Down {
                watcher,
                reference,
                internal,
                pid,
                reason,
            } => {
                if pid.node() != node || watcher.node() != self.me.node {
                    return Err(DistError::Malformed("a Down about a process of another node".into()));
                }
                let placed = {
                    let mut monitors = self.remote_monitors.lock();
                    let list = monitors.entry(node).or_default();
                    let before = list.len();
                    list.retain(|m| !(m.watcher == watcher && m.reference == reference));
                    list.len() < before
                };
                if placed {
                    self.inject_after(
                        pid,
                        watcher.serial(),
                        true,
                        ToNode::RemoteDown {
                            watcher: watcher.serial(),
                            reference,
                            internal,
                            pid,
                            reason,
                        },
                    );
                }
            }
            Wire::Signal {
                from,
                to,
                reason,
                untrappable,
            } => {
                if from.node() != node {
                    return Err(DistError::Malformed(
                        "an exit signal from a process of another node".into(),
                    ));
                }
                if to.node() == self.me.node {
                    self.inject_after(
                        from,
                        to.serial(),
                        false,
                        ToNode::ExitSignalFor {
                            from,
                            target: to,
                            reason,
                            untrappable,
                        },
                    );
                } else {
                    self.stats.lock().stale += 1;
                }
            }
            Wire::Link { from, to } => {
                if from.node() != node {
                    return Err(DistError::Malformed("a link from a process of another node".into()));
                }
                if to.node() == self.me.node {
                    self.links.lock().entry(node).or_default().insert((to, from));
                    self.inject_after(
                        from,
                        to.serial(),
                        false,
                        ToNode::LinkFor {
                            remote: from,
                            target: to,
                        },
                    );
                } else {
                    // An earlier incarnation's process: gone.
                    remote_exit(from, to, ExitReason::NoProc);
                }
            }
            Wire::Unlink { from, to } => {
                if from.node() != node {
                    return Err(DistError::Malformed("an unlink from a process of another node".into()));
                }
                if let Some(set) = self.links.lock().get_mut(&node) {
                    set.remove(&(to, from));
                }
                self.inject_after(
                    from,
                    to.serial(),
                    false,
                    ToNode::UnlinkFor {
                        remote: from,
                        target: to,
                    },
                );
            }
            Wire::Exit { to, from, reason } => {
                if from.node() != node || to.node() != self.me.node {
                    return Err(DistError::Malformed(
                        "an exit signal about a process of another node".into(),
                    ));
                }
                let linked = self
                    .links
                    .lock()
                    .get_mut(&node)
                    .is_some_and(|set| set.remove(&(to, from)));
                if linked {
                    self.inject_after(
                        from,
                        to.serial(),
                        true,
                        ToNode::RemoteExit {
                            target: to.serial(),
                            from,
                            reason,
                        },
                    );
                }
            }
            Wire::Whereis { request, name } => {
                // Answers go as any frame: they wait while the session
                // closes, and go on the next.
                let pid = crate::process::whereis(&name);
                self.send_to_node(node, CONTROL, &Wire::Found { request, pid });
            }
            Wire::Found { request, pid } => self.answer(request, Answer::Found(pid)),
            Wire::Spawned { request, result } => self.answer(request, Answer::Spawned(result)),
            Wire::TaskDone { request, result } => self.answer(request, Answer::TaskDone(result)),
            Wire::Task {
                request,
                name,
                args,
                timeout_ms,
            } => {
                // On the pool, from a thread of its own: the session's
                // reader goes on meanwhile.
                let inner = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("converge-dist-task".into())
                    .spawn(move || {
                        let _running = Awaited::new(&inner, node);
                        let result = super::spawn::run_task(&name, &args, Duration::from_millis(timeout_ms));
                        if let Err(e) = &result {
                            tracing::debug!(%name, error = %e, "a node's task gave no value");
                        }
                        inner.send_to_node(node, CONTROL, &Wire::TaskDone { request, result });
                    });
                if spawned.is_err() {
                    tracing::warn!("a node's task could not be started: no thread");
                }
            }
            Wire::Spawn { request, name, args } => {
                let result = super::spawn::start(&name, &args);
                if let Err(e) = &result {
                    tracing::warn!(%name, error = %e, "a node's spawn request refused");
                }
                self.send_to_node(node, CONTROL, &Wire::Spawned { request, result });
            }
        }
        Ok(())
    }
}

fn close(peer: &Peer) {
    peer.out.queue.lock().closed = true;
    peer.out.wake.notify_all();
    peer.stream.shutdown();
}

/// Seals what is queued for `peer` (its turn taken by the caller, which set
/// `writing`) and writes what the socket takes now; the writer finishes the
/// rest. A failure closes the session: its reader sees the end.
fn write_now(peer: &Peer) {
    let out = &peer.out;
    let mut records = Vec::new();
    let sealed = seal_batch(&peer.sealer, &out.queue, &mut records);
    let written = match sealed {
        Ok(()) => peer.stream.write_now(&records).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut o = out.queue.lock();
    o.writing = false;
    o.last_write = Some(Instant::now());
    o.reads_then = out.reads.load(Ordering::Acquire);
    match written {
        Ok(n) => {
            if n < records.len() {
                records.drain(..n);
                o.unwritten = records;
            }
            // What was queued meanwhile, or not taken, is the writer's.
            if !o.unwritten.is_empty() || !o.turn.is_empty() {
                drop(o);
                out.wake.notify_one();
            }
        }
        Err(e) => {
            tracing::warn!(peer = %peer.name, error = %e, "a write failed: session closed");
            o.closed = true;
            drop(o);
            out.wake.notify_all();
            peer.stream.shutdown();
        }
    }
}

/// The session's writer: writes what a sender left unwritten, and the
/// frames held back to be coalesced when they are due (see [`Out`]),
/// sealed a record at a time taking channels in turn: a large frame never
/// holds up the small frames of other channels.
fn write_loop(mut stream: Box<dyn Stream>, session: &Mutex<Sealer>, out: &Out) -> Result<(), DistError> {
    let mut records = Vec::new();
    loop {
        {
            let mut o = out.queue.lock();
            loop {
                if o.closed {
                    return Ok(());
                }
                if !o.writing && !o.unwritten.is_empty() {
                    records = std::mem::take(&mut o.unwritten);
                    o.writing = true;
                    break;
                }
                if !o.writing && !o.turn.is_empty() {
                    // Frames queued while a write went on are due at once.
                    let due = o.frames >= BATCH_FRAMES
                        || o.bytes >= WRITE_BATCH
                        || !o.sending.is_empty()
                        || o.held_since.is_none_or(|t| t.elapsed() >= FLUSH_DELAY);
                    if due {
                        o.writing = true;
                        o.held_since = None;
                        break;
                    }
                    let until = o.held_since.expect("BUG: held frames have a time") + FLUSH_DELAY;
                    o = out.wake.wait_until(o, until).0;
                    continue;
                }
                o = out.wake.wait(o);
            }
        }
        let result = if records.is_empty() {
            seal_batch(session, &out.queue, &mut records)
        } else {
            Ok(())
        };
        let result = result.and_then(|()| stream.write_all(&records).map_err(|e| DistError::Io(e.to_string())));
        records.clear();
        let mut o = out.queue.lock();
        o.writing = false;
        o.last_write = Some(Instant::now());
        o.reads_then = out.reads.load(Ordering::Acquire);
        drop(o);
        result?;
    }
}

/// Seals what is in turn into `records`, up to a batch, taking channels in
/// turn. The caller holds the turn (`writing`).
///
/// The frames are taken under the queue's lock and sealed without it: a
/// sender never waits for a seal. Every frame taken is sealed whole but the
/// last, which may be a large one: the rest of it waits for its channel's
/// next turn, so small frames of other channels pass it.
fn seal_batch(session: &Mutex<Sealer>, lock: &Mutex<Outgoing>, records: &mut Vec<u8>) -> Result<(), DistError> {
    let mut work: Vec<(u32, Vec<u8>, usize)> = Vec::new();
    {
        let mut o = lock.lock();
        let mut budget = WRITE_BATCH;
        while budget > 0 {
            let Some(channel) = o.turn.pop_front() else {
                break;
            };
            let (frame, sent) = match o.sending.remove(&channel) {
                Some(e) => e,
                None => {
                    // A channel may be in turn twice (queued to again while
                    // its last frame was going out): nothing left is no frame.
                    let Some(frame) = o.channels.get_mut(&channel).and_then(VecDeque::pop_front) else {
                        continue;
                    };
                    o.bytes = o.bytes.saturating_sub(frame.len());
                    (frame, 0)
                }
            };
            if o.channels.get(&channel).is_some_and(|q| !q.is_empty()) {
                o.turn.push_back(channel);
            } else {
                o.channels.remove(&channel);
            }
            budget = budget.saturating_sub(frame.len() - sent + FRAGMENT_OVERHEAD);
            work.push((channel, frame, sent));
        }
    }
    let mut session = session.lock();
    let (taken, mut whole) = (work.len(), 0);
    let mut rest = None;
    for (i, (channel, frame, mut sent)) in work.into_iter().enumerate() {
        loop {
            if session.seal_next(channel, &frame, &mut sent, records)? {
                whole += 1;
                break;
            }
            if i + 1 == taken && records.len() >= WRITE_BATCH {
                rest = Some((channel, frame, sent));
                break;
            }
        }
    }
    // Small frames share a record: sealed once the batch is taken.
    session.end_record(records)?;
    drop(session);
    let mut o = lock.lock();
    o.frames = o.frames.saturating_sub(whole);
    if let Some((channel, frame, sent)) = rest {
        o.sending.insert(channel, (frame, sent));
        if !o.turn.contains(&channel) {
            o.turn.push_back(channel);
        }
    }
    Ok(())
}

/// Bytes of records sealed before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// What a small frame adds to a record, about: its fragment's header, its
/// share of the record's length and tag.
const FRAGMENT_OVERHEAD: usize = 16;

/// Reads records until the session breaks; why it ended.
fn read_loop(
    inner: &Arc<Inner>,
    mut stream: Box<dyn Stream>,
    session: &Mutex<Opener>,
    (heard, reads, used): (&Mutex<Instant>, &AtomicU64, &AtomicU64),
    (node, serial): (NodeId, u64),
) -> NodeDownReason {
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = crate::dist::Frames::default();
    // First what came with the handshake's last message (none read yet).
    let mut first = true;
    loop {
        let n = if std::mem::take(&mut first) {
            0
        } else {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return NodeDownReason::NoConnection,
                Ok(n) => n,
            }
        };
        *heard.lock() = Instant::now();
        reads.fetch_add(1, Ordering::AcqRel);
        frames.clear();
        if let Err(e) = session.lock().open_into(&buf[..n], &mut frames) {
            tracing::warn!(error = %e, "a session broke");
            return NodeDownReason::NoConnection;
        }
        let delivered = !frames.is_empty();
        let mut tally = Tally::new(used);
        let handled = frames
            .iter()
            .try_for_each(|(_, frame)| inner.handle((node, serial), frame, &mut tally));
        tally.count(inner);
        if let Err(e) = handled {
            tracing::warn!(error = %e, "a peer sent a bad frame: session closed");
            return NodeDownReason::NoConnection;
        }
        // What this read delivered goes out now, not at the next timer:
        // many messages come in one read.
        if delivered && let Some(rt) = crate::runtime::current() {
            rt.flush();
        }
    }
}

fn accept_loop(inner: &Arc<Inner>, mut acceptor: Acceptor) {
    loop {
        if inner.stopped.load(Ordering::Acquire) {
            return;
        }
        match acceptor.accept() {
            Ok((session, hello, stream)) => {
                if inner.stopped.load(Ordering::Acquire) {
                    return;
                }
                match (hello.callback, stream.peer_addr()) {
                    // Only to ask for a session from here: to where the
                    // node says it accepts them (membership's word for a
                    // member that listens on a given address, else the
                    // address it came from).
                    (Some(port), from) => {
                        stream.shutdown();
                        let listed = inner
                            .membership
                            .lock()
                            .members()
                            .into_iter()
                            .find(|m| m.node == hello.node && !m.sessions.ip().is_unspecified())
                            .map(|m| m.sessions);
                        if let Some(addr) = listed.or(from.map(|f| SocketAddr::new(f.ip(), port))) {
                            inner.connect_back(hello.node, addr);
                        }
                    }
                    (None, _) if hello.direct.is_some() => inner.accept_direct(session, &hello, stream),
                    (None, _) => inner.add_peer(session, hello, stream, false),
                }
            }
            Err(_) if inner.stopped.load(Ordering::Acquire) => return,
            Err(_) => inner.stats.lock().refused += 1,
        }
    }
}

/// How often a node alone announces itself to the addresses it knows.
const REJOIN: Duration = Duration::from_secs(1);
/// How often a node that asked another to connect back asks again.
const ASK_AGAIN: Duration = Duration::from_secs(1);
/// How often a node repeats its load to the cluster.
const LOAD_AGAIN: Duration = Duration::from_secs(1);

/// The node's scheduler pool as a load: schedulers, tasks running, tasks
/// waiting.
fn pool_load() -> Load {
    let progress = crate::pool::progress();
    let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Load::new(
        u32::try_from(crate::pool::schedulers().len()).unwrap_or(u32::MAX),
        n(progress.running),
        n(progress.queued),
    )
}

fn gossip_loop(inner: &Inner) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_announce = Instant::now();
    while !inner.stopped.load(Ordering::Acquire) {
        let got = inner.udp.recv_from(&mut buf);
        let mut m = inner.membership.lock();
        let now = Instant::now();
        if let Ok((n, _)) = got {
            let _ = m.handle_packet(&buf[..n], now);
        }
        m.handle_timers(now);
        let again = {
            let pool = (!inner.explicit_load.load(Ordering::Acquire)).then(pool_load);
            let mut load = inner.load.lock();
            match (load.as_mut(), pool) {
                // The pool's load: out as soon as it changes.
                (Some((l, at)), Some(p)) if p != *l || now.duration_since(*at) >= LOAD_AGAIN => {
                    (*l, *at) = (p, now);
                    Some(p)
                }
                (None, Some(p)) => {
                    *load = Some((p, now));
                    Some(p)
                }
                (Some((l, at)), None) if now.duration_since(*at) >= LOAD_AGAIN => {
                    *at = now;
                    Some(*l)
                }
                _ => None,
            }
        };
        if let Some(l) = again {
            m.advertise(l, now);
        }
        // Alone after a partition (or before the seed was up): back in
        // through any address known.
        if m.members().is_empty() && now.duration_since(last_announce) >= REJOIN {
            last_announce = now;
            for addr in inner.known.lock().clone() {
                m.join(addr, now);
            }
        }
        inner.flush_packets(&mut m);
    }
}

fn tick_loop(inner: &Arc<Inner>) {
    let tick = inner.config.tick;
    let silent = tick * inner.config.ticks_down;
    let frame = postcard::to_stdvec(&Wire::Tick).expect("BUG: a tick encodes");
    while !inner.stopped.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let now = Instant::now();
        let mut lost = Vec::new();
        {
            let peers = inner.peers.lock();
            for peer in peers.values() {
                if now.duration_since(*peer.last_heard.lock()) > silent {
                    lost.push((peer.id, peer.serial));
                } else {
                    inner.enqueue(peer, CONTROL, frame.clone());
                }
            }
        }
        for (id, serial) in lost {
            inner.lose(id, Some(serial), NodeDownReason::NoConnection);
        }
        // A close the peer never answers ends anyway: its reader then
        // finishes it, and what waited goes on a new session (or this loop
        // does, if its reader is gone already).
        let mut stuck = Vec::new();
        for (node, (peer, since)) in inner.closing.lock().iter() {
            let waited = now.duration_since(*since);
            if waited > silent * 2 {
                close(peer);
            }
            if waited > silent * 4 {
                stuck.push((*node, peer.serial));
            }
        }
        for (node, serial) in stuck {
            inner.finish_close(node, serial);
        }
        inner.close_idle();
    }
}
