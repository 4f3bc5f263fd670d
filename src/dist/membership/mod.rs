//! Membership and failure detection: SWIM (`foca`) over UDP packets that
//! carry a MAC keyed by the cluster secret, so that no one without the
//! secret can join, declare a node dead, or replay what a member said.
//!
//! [`Membership`] is sans-I/O: the node's loop hands it each packet that
//! arrives and calls it when its next timer is due; it gives back sealed
//! packets to send and [`MemberEvent`]s. Nothing here spawns a thread.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blake2::Blake2sMac;
use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use foca::{BroadcastHandler, Foca, Invalidates, Notification, PostcardCodec, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use super::Secret;
use crate::NodeId;

/// The first bytes of a membership packet: a tag and the format's version.
const MAGIC: [u8; 2] = [b'C', 1];
/// Bytes of the timestamp (milliseconds since the epoch, big-endian).
const STAMP: usize = 8;
/// Bytes of the MAC.
const TAG: usize = 16;
/// How far a packet's timestamp may be from the receiver's clock.
pub const CLOCK_WINDOW: Duration = Duration::from_secs(30);
/// MACs remembered to refuse a replay within the window.
const REPLAY_MEMORY: usize = 1 << 16;

/// A member of the cluster as SWIM knows it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node's id (a fresh one each start: an incarnation).
    pub node: NodeId,
    /// The node's name, unique in the cluster.
    pub name: String,
    /// Where its membership packets go (UDP).
    pub gossip: SocketAddr,
    /// Where it accepts sessions (TCP).
    pub sessions: SocketAddr,
    /// When it started (milliseconds since the epoch): a node restarted on
    /// the same gossip address wins over its earlier incarnation.
    pub started: u64,
    /// Bumped when it rejoins after being declared down.
    pub rejoins: u32,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} ({:?}, rejoin {})",
            self.name, self.gossip, self.node, self.rejoins
        )
    }
}

impl Member {
    /// This node as a member.
    pub fn new(node: NodeId, name: &str, gossip: SocketAddr, sessions: SocketAddr) -> Member {
        Member {
            node,
            name: name.to_owned(),
            gossip,
            sessions,
            started: now_ms(),
            rejoins: 0,
        }
    }

    /// Stands for a member known only by its address, to join through it.
    fn seed(gossip: SocketAddr) -> Member {
        Member {
            node: NodeId::from_bytes([0; 16]),
            name: String::new(),
            gossip,
            sessions: gossip,
            started: 0,
            rejoins: 0,
        }
    }
}

impl foca::Identity for Member {
    /// A member is known by its gossip address: a node restarted on the
    /// same address replaces its earlier incarnation, and a join through an
    /// address reaches whoever is there.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Member> {
        Some(Member {
            rejoins: self.rejoins.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, other: &Member) -> bool {
        (self.started, self.rejoins, self.node) > (other.started, other.rejoins, other.node)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A change in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A member joined (or came back under a new identity).
    Up(Member),
    /// A member was declared down, or left.
    Down(Member),
    /// This node is known to the cluster.
    Joined,
    /// This node knows no live member.
    Alone,
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Too short, or not a membership packet of this version.
    #[error("not a membership packet")]
    Malformed,
    /// Its MAC does not match: a sender without the secret, or altered.
    #[error("the packet's MAC does not match")]
    BadMac,
    /// Its timestamp is too far from this node's clock.
    #[error("the packet's timestamp is {0} ms off")]
    Stale(i64),
    /// Seen before.
    #[error("the packet was seen before")]
    Replayed,
    /// Authentic, but SWIM could not use it.
    #[error("SWIM refused the packet: {0}")]
    Refused(String),
}

/// The key of membership packets, derived from the cluster secret.
#[derive(Clone)]
pub struct PacketKey([u8; 32]);

impl fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketKey(..)")
    }
}

impl PacketKey {
    /// The key for membership packets of the cluster that shares `secret`.
    pub fn new(secret: &Secret) -> PacketKey {
        PacketKey(secret.derive(b"converge membership packets v1"))
    }

    fn mac(&self) -> Blake2sMac<U16> {
        <Blake2sMac<U16> as KeyInit>::new_from_slice(&self.0).expect("BUG: a 32-byte key fits BLAKE2s")
    }

    /// Seals `payload` stamped with `now_ms`.
    pub fn seal(&self, payload: &[u8], now_ms: u64) -> Vec<u8> {
        let mut p = Vec::with_capacity(MAGIC.len() + STAMP + payload.len() + TAG);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&now_ms.to_be_bytes());
        p.extend_from_slice(payload);
        let mut mac = self.mac();
        mac.update(&p);
        p.extend_from_slice(&mac.finalize().into_bytes());
        p
    }

    /// Opens a sealed packet: its payload, once its MAC, its timestamp
    /// (within [`CLOCK_WINDOW`] of `now_ms`) and its novelty are checked.
    pub fn open<'a>(&self, packet: &'a [u8], now_ms: u64, replays: &mut Replays) -> Result<&'a [u8], PacketError> {
        if packet.len() < MAGIC.len() + STAMP + TAG || packet[..2] != MAGIC {
            return Err(PacketError::Malformed);
        }
        let (body, tag) = packet.split_at(packet.len() - TAG);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| PacketError::BadMac)?;
        let stamp = u64::from_be_bytes(body[2..2 + STAMP].try_into().expect("BUG: 8 bytes"));
        let off = stamp as i64 - now_ms as i64;
        if off.unsigned_abs() > CLOCK_WINDOW.as_millis() as u64 {
            return Err(PacketError::Stale(off));
        }
        let tag: [u8; TAG] = tag.try_into().expect("BUG: 16 bytes");
        if !replays.remember(tag, stamp, now_ms) {
            return Err(PacketError::Replayed);
        }
        Ok(&body[2 + STAMP..])
    }
}

/// The MACs of the packets accepted within the clock window.
#[derive(Debug, Default)]
pub struct Replays {
    order: VecDeque<(u64, [u8; TAG])>,
    seen: HashSet<[u8; TAG]>,
}

impl Replays {
    /// Whether `tag` is new (then it is remembered).
    fn remember(&mut self, tag: [u8; TAG], stamp: u64, now_ms: u64) -> bool {
        let window = CLOCK_WINDOW.as_millis() as u64;
        while let Some(&(t, old)) = self.order.front() {
            if t + window < now_ms || self.order.len() >= REPLAY_MEMORY {
                self.order.pop_front();
                self.seen.remove(&old);
            } else {
                break;
            }
        }
        if !self.seen.insert(tag) {
            return false;
        }
        self.order.push_back((stamp.max(now_ms.saturating_sub(window)), tag));
        true
    }
}

/// How fast SWIM probes and gives up on a silent member.
#[derive(Debug, Clone, Copy)]
pub struct MembershipConfig {
    /// Between probes of a random member.
    pub probe_period: Duration,
    /// How long a probe waits for its answer before asking others.
    pub probe_rtt: Duration,
    /// How long a suspected member has to refute it before it is down.
    pub suspect_to_down: Duration,
    /// Between gossip rounds.
    pub gossip_period: Duration,
    /// The largest packet.
    pub max_packet: usize,
}

impl Default for MembershipConfig {
    /// A silent member is down within about 1.5 s on a LAN.
    fn default() -> MembershipConfig {
        MembershipConfig {
            probe_period: Duration::from_millis(300),
            probe_rtt: Duration::from_millis(100),
            suspect_to_down: Duration::from_millis(600),
            gossip_period: Duration::from_millis(100),
            max_packet: 1400,
        }
    }
}

impl MembershipConfig {
    fn foca(&self, cluster: u32) -> foca::Config {
        let mut c = foca::Config::new_lan(NonZeroU32::new(cluster.max(1)).expect("BUG: at least 1"));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down;
        c.max_packet_size = NonZeroUsize::new(self.max_packet.max(512)).expect("BUG: at least 512");
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_period,
            num_members: NonZeroUsize::new(3).expect("BUG: 3"),
        });
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(1).expect("BUG: 1"),
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(2),
            num_members: NonZeroUsize::new(2).expect("BUG: 2"),
        });
        c
    }
}

/// Counts of what membership refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MembershipStats {
    /// Packets accepted.
    pub accepted: u64,
    /// Packets refused: malformed, a bad MAC, stale, replayed or refused by
    /// SWIM.
    pub refused: u64,
}

/// What foca asks for while it handles one input.
#[derive(Default)]
struct Outputs {
    packets: Vec<(SocketAddr, Vec<u8>)>,
    timers: Vec<(Duration, Timer<Member>)>,
    events: Vec<MemberEvent>,
}

impl foca::Runtime<Member> for Outputs {
    fn notify(&mut self, n: Notification<'_, Member>) {
        let e = match n {
            Notification::MemberUp(m) => MemberEvent::Up(m.clone()),
            Notification::MemberDown(m) => MemberEvent::Down(m.clone()),
            Notification::Rename(_, _) => return,
            Notification::Active => MemberEvent::Joined,
            Notification::Idle => MemberEvent::Alone,
            Notification::Defunct => return,
            Notification::Rejoin(_) => MemberEvent::Joined,
        };
        self.events.push(e);
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        self.packets.push((to.gossip, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<Member>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// What a node has room for, as it advertises it to the cluster through
/// membership: where work goes when it may go anywhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Load {
    /// How much work it takes at once (slots, schedulers).
    pub slots: u32,
    /// Of those, how many are in use.
    pub busy: u32,
    /// Work waiting there for a slot.
    pub queued: u32,
}

impl Load {
    /// `busy` of `slots` in use, `queued` waiting.
    pub fn new(slots: u32, busy: u32, queued: u32) -> Load {
        Load { slots, busy, queued }
    }

    /// Slots free (none while work waits).
    pub fn free(&self) -> u32 {
        if self.queued > 0 {
            0
        } else {
            self.slots.saturating_sub(self.busy)
        }
    }
}

/// A node's load as gossip carries it: the latest version wins.
#[derive(Debug, Serialize, Deserialize)]
struct LoadNote {
    node: NodeId,
    version: u64,
    load: Load,
}

/// Which note a disseminated one stands for.
struct LoadKey {
    node: NodeId,
    version: u64,
}

impl Invalidates for LoadKey {
    fn invalidates(&self, other: &LoadKey) -> bool {
        self.node == other.node && self.version >= other.version
    }
}

/// A load note that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable load note: {0}")]
pub struct LoadNoteError(String);

/// The loads heard of, latest version per node (shared with the
/// [`Membership`] that reads them: foca owns its handler).
#[derive(Default, Clone)]
struct Loads {
    known: std::sync::Arc<crate::sync::Mutex<HashMap<NodeId, (u64, Load)>>>,
}

/// Nodes whose load is remembered (notes come only from holders of the
/// secret; this bounds what a confused one can make a node keep).
const MAX_LOADS: usize = 4096;

impl BroadcastHandler<Member> for Loads {
    type Key = LoadKey;
    type Error = LoadNoteError;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&Member>) -> Result<Option<LoadKey>, LoadNoteError> {
        let note: LoadNote = postcard::from_bytes(data).map_err(|e| LoadNoteError(e.to_string()))?;
        let mut known = self.known.lock();
        match known.get(&note.node) {
            Some((version, _)) if *version >= note.version => return Ok(None),
            Some(_) => {}
            None if known.len() >= MAX_LOADS => return Ok(None),
            None => {}
        }
        known.insert(note.node, (note.version, note.load));
        Ok(Some(LoadKey {
            node: note.node,
            version: note.version,
        }))
    }
}

/// One node's view of the cluster, driven by its loop.
pub struct Membership {
    foca: Foca<Member, PostcardCodec, SmallRng, Loads>,
    /// The version of this node's last load note.
    load_version: u64,
    loads: Loads,
    key: PacketKey,
    replays: Replays,
    out: Outputs,
    timers: BTreeMap<(Instant, u64), Timer<Member>>,
    next_timer: u64,
    stats: MembershipStats,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("me", self.foca.identity())
            .field("members", &self.foca.num_members())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// This node's membership, alone until it joins.
    pub fn new(me: Member, secret: &Secret, config: MembershipConfig) -> Membership {
        let loads = Loads::default();
        let mut seed = [0u8; 8];
        rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty()).expect("BUG: getrandom works");
        Membership {
            foca: Foca::with_custom_broadcast(
                me,
                config.foca(16),
                SmallRng::seed_from_u64(u64::from_le_bytes(seed)),
                PostcardCodec,
                loads.clone(),
            ),
            load_version: 0,
            loads,
            key: PacketKey::new(secret),
            replays: Replays::default(),
            out: Outputs::default(),
            timers: BTreeMap::new(),
            next_timer: 0,
            stats: MembershipStats::default(),
        }
    }

    /// This node as a member.
    pub fn me(&self) -> &Member {
        self.foca.identity()
    }

    /// Joins the cluster through any member's gossip address.
    pub fn join(&mut self, seed: SocketAddr, now: Instant) {
        let _ = self.foca.announce(Member::seed(seed), &mut self.out);
        self.settle(now);
    }

    /// Leaves the cluster: the others see this node down at once.
    pub fn leave(&mut self, now: Instant) {
        let _ = self.foca.leave_cluster(&mut self.out);
        self.settle(now);
    }

    /// A packet that arrived.
    pub fn handle_packet(&mut self, packet: &[u8], now: Instant) -> Result<(), PacketError> {
        let r = match self.key.open(packet, now_ms(), &mut self.replays) {
            Ok(payload) => self
                .foca
                .handle_data(payload, &mut self.out)
                .map_err(|e| PacketError::Refused(e.to_string())),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => self.stats.accepted += 1,
            Err(_) => self.stats.refused += 1,
        }
        self.settle(now);
        r
    }

    /// Runs the timers due by `now`.
    pub fn handle_timers(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            let _ = self.foca.handle_timer(timer, &mut self.out);
            self.settle(now);
        }
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|k| k.0)
    }

    /// The sealed packets to send, with their destinations.
    pub fn take_packets(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let stamp = now_ms();
        std::mem::take(&mut self.out.packets)
            .into_iter()
            .map(|(to, p)| (to, self.key.seal(&p, stamp)))
            .collect()
    }

    /// The changes seen since the last call.
    pub fn take_events(&mut self) -> Vec<MemberEvent> {
        let events = std::mem::take(&mut self.out.events);
        for e in &events {
            if let MemberEvent::Down(m) = e {
                self.loads.known.lock().remove(&m.node);
            }
        }
        events
    }

    /// The live members (this node not included).
    pub fn members(&self) -> Vec<Member> {
        self.foca.iter_members().map(|m| m.id().clone()).collect()
    }

    /// Tells the cluster this node's load: the note goes out with the next
    /// packets and spreads by gossip, the latest replacing earlier ones.
    pub fn advertise(&mut self, load: Load, now: Instant) {
        self.load_version += 1;
        let note = LoadNote {
            node: self.foca.identity().node,
            version: self.load_version,
            load,
        };
        let bytes = postcard::to_stdvec(&note).expect("BUG: a load note encodes");
        if self.foca.add_broadcast(&bytes).is_ok() {
            let _ = self.foca.broadcast(&mut self.out);
        }
        self.settle(now);
    }

    /// The load a node last advertised, if heard (this node's own too).
    pub fn load_of(&self, node: NodeId) -> Option<Load> {
        self.loads.known.lock().get(&node).map(|(_, load)| *load)
    }

    /// What was accepted and refused.
    pub fn stats(&self) -> MembershipStats {
        self.stats
    }

    fn settle(&mut self, now: Instant) {
        for (after, timer) in self.out.timers.drain(..) {
            self.next_timer += 1;
            self.timers.insert((now + after, self.next_timer), timer);
        }
    }
}

#[cfg(test)]
mod tests;
