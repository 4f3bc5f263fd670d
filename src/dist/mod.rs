//! Distribution (feature `dist`): nodes on several machines.
//!
//! This module holds the first layer of distribution, the session between
//! two nodes, as a sans-I/O state machine that any byte stream can carry:
//!
//! 1. [`Secret`]: the cluster's shared secret, read from a file or bytes.
//! 2. [`Handshake`]: Noise `NNpsk0` (`snow`): both ends prove they hold the
//!    secret, agree on fresh keys (forward secrecy), and exchange a
//!    [`Hello`] that carries the protocol version, checked here, and the
//!    node's id and name.
//! 3. [`Session`]: frames sealed into records of at most 64 KiB, each with
//!    its own nonce (a replayed, reordered or altered record is refused), on
//!    numbered channels. A frame over 64 KiB is cut into fragments; the
//!    fragments of different channels may interleave, so one large message
//!    never holds up the small ones of other senders. The size of a frame
//!    is checked against the limit before anything is allocated for it.
//!
//! 4. Over a [`Transport`] ([`Tcp`] built in; an application may compose
//!    its own): [`connect`] and [`Acceptor`] run the handshake within a
//!    deadline; the acceptor counts the peers that fail it and closes an
//!    address that keeps failing unread for a while; [`keep_session`] settles
//!    two connections made at once between two nodes by their ids.
//!
//! 5. [`Membership`]: who is in the cluster, with SWIM (`foca`) over UDP
//!    packets sealed with a MAC keyed by the secret (a timestamp within
//!    [`CLOCK_WINDOW`] and a memory of recent MACs refuse replays), driven
//!    by the node's loop: packets in, timers due, sealed packets and
//!    [`MemberEvent`]s out.
//!
//! 6. [`Cluster`]: a node in a cluster, on these: membership, sessions
//!    opened on first use (one per pair of nodes, the simultaneous ones
//!    settled), ticks (a session silent for `ticks_down` ticks is lost),
//!    [`NodeEvent`]s, `whereis` on another node, and sends from the node's
//!    main program to the processes of other nodes.
//!
//! 7. Direct sessions: a process's own session with a process of another
//!    node (the runtime's `direct` module says why and how), opened by its
//!    node on its behalf with a hello that names both processes.
//!
//! On the wire, every handshake message and every record is a 2-byte
//! big-endian length followed by that many bytes of Noise message.

mod cluster;
mod membership;
mod session;
mod spawn;
mod transport;

#[cfg(feature = "fuzzing")]
pub(crate) use cluster::fuzz_frame;
pub use cluster::{Cluster, ClusterConfig, ClusterStats, NodeDownReason, NodeEvent, NodeInfo};
pub(crate) use cluster::{
    MAX_RELAYED, backlogged, open_direct, remote_down, remote_exit, remote_exit_signal, remote_link, remote_monitor,
    remote_unlink, route,
};
pub use membership::{
    CLOCK_WINDOW, Load, LoadNoteError, Member, MemberEvent, Membership, MembershipConfig, MembershipStats, PacketError,
    PacketKey, Replays,
};
pub(crate) use session::Keys;
pub use session::{DistError, Frames, Handshake, Hello, Opener, PROTOCOL_VERSION, Sealer, Secret, Session, Step};
/// Whether the calling process sends to `to`, a process of another node,
/// on a direct session of its own now, rather than through the two nodes.
///
/// A process asks its node for one on its first send to `to`, and sends
/// through the nodes until it is open: a few milliseconds on a local
/// network. There is none for an actor's sends, to an actor, a port or a
/// part of the runtime, nor over a transport whose streams are not sockets.
pub fn has_direct_session(to: crate::Pid) -> bool {
    crate::runtime::current().is_some_and(|rt| rt.direct_open(to))
}

pub use spawn::{RemoteTaskError, SpawnRefused, spawnable, task};
pub use transport::{
    Acceptor, Established, FAILURE_WINDOW, HANDSHAKE_TIMEOUT, Listener, MAX_FAILURES, Stream, Tcp, Transport, connect,
    keep_session,
};

#[cfg(test)]
mod tests;
