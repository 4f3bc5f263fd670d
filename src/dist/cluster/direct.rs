//! Direct sessions between processes of two nodes (the runtime's `direct`
//! says why, and the rules of their order): this node opens them for its
//! processes, and hands over those that other nodes open to its own.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Inner, spawn, this_cluster};
use crate::dist::session::{DistError, Frames, Hello, Session};
use crate::dist::transport::{HANDSHAKE_TIMEOUT, Stream, connect};
use crate::pid::{MAIN_SERIAL, NodeId, Pid};
use crate::runtime::direct::{ACCEPTED, CHUNK};
use crate::wire::envelope::ToProcess;

/// Most direct sessions this node opens at once (each on a thread of its
/// own, for the length of a handshake).
const MAX_OPENING: u64 = 16;

/// Opens a direct session from `from` (here) to `to` (of another node), in
/// the background: `from` is handed the session, or told there is none.
/// False when this process runs no cluster, or too many are being opened
/// (nothing is sent to `from` then).
pub(crate) fn open_direct(from: Pid, to: Pid) -> bool {
    let Some(inner) = this_cluster() else {
        return false;
    };
    if from.node() != inner.me.node || to.node() == inner.me.node {
        return false;
    }
    if inner.opening_direct.fetch_add(1, Ordering::AcqRel) >= MAX_OPENING {
        inner.opening_direct.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    spawn("converge-dist-direct", move || {
        let opened = inner.connect_direct(from, to);
        inner.opening_direct.fetch_sub(1, Ordering::AcqRel);
        match opened {
            Ok(()) => inner.stats.lock().direct += 1,
            Err(e) => {
                tracing::debug!(%from, %to, "no direct session: {e}");
                inner.stats.lock().direct_refused += 1;
                hand(from, ToProcess::DirectRefused { to }, None);
            }
        }
    });
    true
}

/// A direct session of a process here to a process of `node` holds more
/// than the cluster's `max_queued`: the session with `node` is torn down,
/// as when its own queue is over the cap (`NoConnection` across it).
pub(crate) fn backlogged(node: NodeId) {
    let Some(inner) = this_cluster() else {
        return;
    };
    let peers = inner.peers.lock();
    let Some(peer) = peers.get(&node) else {
        return;
    };
    peer.out.queue.lock().closed = true;
    peer.out.wake.notify_one();
    peer.stream.shutdown();
    tracing::warn!(peer = %peer.name, "a direct session to it is backlogged: session torn down");
    drop(peers);
    inner.stats.lock().backlogged += 1;
}

/// Hands `msg` (with `fd`) to process `pid` of this node: the node's own
/// program takes it here; another process through its control connection.
fn hand(pid: Pid, msg: ToProcess, fd: Option<OwnedFd>) -> bool {
    let Some(rt) = crate::runtime::current() else {
        return false;
    };
    if pid.serial() != MAIN_SERIAL {
        return rt.node().is_some_and(|node| node.hand_over(pid.serial(), msg, fd));
    }
    match (msg, fd) {
        (ToProcess::DirectReady { to, keys, max_queued }, Some(fd)) => {
            rt.direct_ready(to, fd, &keys, usize::try_from(max_queued).unwrap_or(usize::MAX));
            true
        }
        (ToProcess::DirectRefused { to }, _) => {
            rt.direct_refused(to);
            true
        }
        (ToProcess::DirectFrom { from, keys }, Some(fd)) => {
            rt.direct_from(from, fd, &keys);
            true
        }
        _ => false,
    }
}

impl Inner {
    /// Connects to `to`'s node as `from`'s direct session, waits for `to`'s
    /// answer on it, and hands it to `from`.
    fn connect_direct(self: &Arc<Self>, from: Pid, to: Pid) -> Result<(), DistError> {
        let io = |e: std::io::Error| DistError::Io(e.to_string());
        let addr = self
            .membership
            .lock()
            .members()
            .into_iter()
            .find(|m| m.node == to.node() && !m.sessions.ip().is_unspecified())
            .map(|m| m.sessions)
            .ok_or_else(|| DistError::Io(format!("node {} is not a member", to.node())))?;
        let mut hello = self.me.clone();
        hello.direct = Some((from, to));
        let cfg = &self.config;
        let (mut session, peer, mut stream) =
            connect(&*cfg.transport, addr, &cfg.secret, hello, CHUNK, HANDSHAKE_TIMEOUT)?;
        if peer.node != to.node() {
            return Err(DistError::Malformed("another incarnation of the node answered".into()));
        }
        let keys = session
            .take_keys()
            .ok_or_else(|| DistError::Malformed("a session without keys".into()))?;
        // The receiver answers once it holds the session; a node that
        // refused it closes the connection.
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io)?;
        let mut frames = Frames::default();
        let mut buf = [0u8; 256];
        // The answer may have come with the handshake's last message. It
        // is all that comes: a peer that sends more is not answering.
        let (mut n, mut read) = (0, 0);
        loop {
            frames.clear();
            session.open_into(&buf[..n], &mut frames)?;
            if frames.iter().any(|(channel, frame)| channel == 0 && frame == ACCEPTED) {
                break;
            }
            if read > 4096 {
                return Err(DistError::Malformed("no answer in what the receiver sent".into()));
            }
            n = stream.read(&mut buf).map_err(io)?;
            read += n;
            if n == 0 {
                return Err(DistError::Io("the receiver's node refused the session".into()));
            }
        }
        stream.set_read_timeout(None).map_err(io)?;
        let fd = stream
            .into_fd()
            .ok_or_else(|| DistError::Io("the transport's streams are not sockets".into()))?;
        let ready = ToProcess::DirectReady {
            to,
            keys,
            max_queued: cfg.max_queued as u64,
        };
        if !hand(from, ready, Some(fd)) {
            return Err(DistError::Io("the sender is gone".into()));
        }
        Ok(())
    }

    /// A direct session another node opened, for a process here: handed to
    /// it, or closed (its sender's node then hears it refused).
    pub(super) fn accept_direct(&self, mut session: Session, hello: &Hello, stream: Box<dyn Stream>) {
        let Some((from, to)) = hello.direct else {
            return;
        };
        let handed = from.node() == hello.node
            && to.node() == self.me.node
            && match (session.take_keys(), stream.into_fd()) {
                (Some(keys), Some(fd)) => hand(to, ToProcess::DirectFrom { from, keys }, Some(fd)),
                _ => false,
            };
        let mut stats = self.stats.lock();
        if handed {
            stats.direct += 1;
        } else {
            stats.direct_refused += 1;
        }
    }
}
