//! The receiving side of direct sessions (feature `dist`, see the runtime's
//! `direct`): a session handed over by the node waits for its sender's
//! fence, then is read as a connection from that sender, its records opened
//! first.
//!
//! A signal about a sender whose session is still open, and what that
//! sender sends through the node meanwhile, are held in order until the
//! session ends (its sender ended, or closed it once written): nothing
//! blocks while a slow link brings the rest.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::{CONN, InConn, Inbox, State};
use crate::dist::{Keys, Opener, Session};
use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::Runtime;
use crate::runtime::direct::{ACCEPTED, CHUNK, DRAIN, SILENT};
use crate::sys::poll::{Interest, Token};
use crate::sys::socket;
use crate::wire::envelope::ToProcess;
use crate::wire::frame::{Decoder, Kind};

/// How long a session handed over waits for its sender's fence before it
/// is closed (its sender never took it: it ended first, or had one). A
/// sender checks that its session is still open before it sends the fence.
const FENCE_WAIT: Duration = Duration::from_secs(60);
/// Most sessions waiting for a fence at once; past this, new ones are
/// refused.
const MAX_WAITING: usize = 64;

/// How far [`Inbox::drain_direct`] reads a sender's direct session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// To its end (its sender closed it), within [`DRAIN`].
    ToEnd,
    /// What arrived: the session is lost (`NoConnection`).
    AsItIs,
}

/// A direct session handed over, not read yet.
#[derive(Debug)]
pub(crate) struct Waiting {
    fd: OwnedFd,
    opener: Box<Opener>,
    since: Instant,
    /// Its name ([`Keys::id`]): its fences name it.
    id: u64,
    /// Its fence came in line with its sender's frames: what the sender
    /// sends through the node from there on waits for it. It is read once
    /// its fence comes in line with the signals (a signal before that was
    /// sent before it opened).
    fenced: bool,
}

/// What waits for a sender's direct session to end.
#[derive(Debug)]
pub(crate) enum Held {
    /// A signal about it, from the control connection.
    Signal(Box<ToProcess>),
    /// A frame it sent through the node, for this process or the actor
    /// `tenant`.
    Frame(Option<u64>, Kind, Vec<u8>),
}

impl Inbox {
    /// A direct session from `from` (of another node), handed over by the
    /// node: answered at once (its sender waits for that), then kept until
    /// `from`'s fence comes.
    pub(crate) fn accept_direct(&self, st: &mut State, from: Pid, fd: OwnedFd, keys: &Keys) {
        // Sessions whose fence never came are closed after a while; past
        // the most that may wait, a new one is refused unanswered (its
        // sender goes on through the nodes): one answered is never taken
        // back, since its sender may write to it already.
        let now = Instant::now();
        let expired: Vec<Pid> = st
            .direct_in
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= FENCE_WAIT)
            .map(|(&p, _)| p)
            .collect();
        for p in expired {
            self.forget_waiting(st, p);
        }
        if st.direct_in.len() >= MAX_WAITING && !st.direct_in.contains_key(&from) {
            return;
        }
        // One session per sender waits at a time. An earlier one its sender
        // closed unused (it had one already, had too many, or ended) makes way;
        // one whose fence may still be on its way (its sender asks again
        // only once it closed it, but what it sent on it must be read
        // first) refuses the new one, which its sender asks for again later.
        if let Some(w) = st.direct_in.get(&from) {
            if w.fenced || !socket::peer_closed(&w.fd) {
                tracing::debug!(%from, "a second direct session while one waits for its fence: refused");
                return;
            }
            self.forget_waiting(st, from);
        }
        let (mut sealer, opener) = Session::from_keys(keys, CHUNK).one_channel().split();
        let mut answer = Vec::new();
        if sealer.seal(0, ACCEPTED, &mut answer).is_err() {
            return;
        }
        // A few bytes on a fresh socket: they fit at once.
        let deadline = Instant::now() + DRAIN;
        if socket::send_all(&fd, &answer, Some(deadline)).is_err()
            || socket::set_nonblocking(&fd, true).is_err()
            || socket::fail_when_silent(&fd, SILENT).is_err()
        {
            return;
        }
        let waiting = Waiting {
            fd,
            opener: Box::new(opener),
            since: now,
            id: keys.id,
            fenced: false,
        };
        st.direct_in.insert(from, waiting);
    }

    /// Forgets the session from `from` not read yet, if any (and what its
    /// fence made wait for it then waits no more).
    pub(super) fn forget_waiting(&self, st: &mut State, from: Pid) {
        if let Some(w) = st.direct_in.remove(&from)
            && w.fenced
            && !st.signals_behind.contains(&from)
        {
            st.direct_senders.remove(&from);
        }
    }

    /// The fence of `from`'s session `session` came in line with its frames
    /// through the node: what it sends that way from here on waits for the
    /// session.
    pub(super) fn fence(&self, rt: &Runtime, st: &mut State, from: Pid, session: u64) {
        if st.direct_in.get(&from).is_none_or(|w| w.fenced || w.id != session) {
            // A session closed here meanwhile (its fence came too late).
            tracing::debug!(%from, "a fence for no session waiting");
            return;
        }
        // An earlier session of the same sender, closed by it before it
        // asked for this one: read to its end first, and what waited for
        // that end queued.
        self.drain_direct(rt, st, from, Drain::ToEnd);
        if st.held.contains_key(&from) {
            self.release_sender(rt, st, from);
        }
        if let Some(w) = st.direct_in.get_mut(&from) {
            w.fenced = true;
            st.direct_senders.insert(from);
        }
    }

    /// The fence of `from`'s session `session` came in line with the
    /// signals about it: the session is read from here on, and the signals
    /// after this wait for its end. (If the fence in line with its frames
    /// never came, what it sent through the node before was read just now:
    /// it is read all the same.)
    pub(super) fn start_direct(&self, st: &mut State, from: Pid, session: u64) {
        if st.direct_in.get(&from).is_none_or(|w| w.id != session) {
            return;
        }
        let Some(Waiting { fd, opener, .. }) = st.direct_in.remove(&from) else {
            return;
        };
        let token = Token::new(CONN, st.next_conn);
        let seq = st.next_conn;
        st.next_conn += 1;
        if self.epoll().add(&fd, token, Interest::Read).is_err() {
            st.direct_senders.remove(&from);
            return;
        }
        st.conns.insert(
            token,
            InConn {
                fd,
                sender: Some(from),
                decoder: Decoder::default(),
                seq,
                tenant: None,
                opener: Some(opener),
            },
        );
        st.direct_senders.insert(from);
        st.signals_behind.insert(from);
    }

    /// Opens the `n` bytes read into the scratch buffer from a direct
    /// session: the frames they complete, end to end, in `opened`. An error
    /// ends the session (nothing after it is trusted).
    pub(super) fn open_records(&self, st: &mut State, token: Token, n: usize) -> Result<usize, crate::dist::DistError> {
        let State {
            conns,
            scratch,
            opened,
            frames,
            ..
        } = st;
        let Some(opener) = conns.get_mut(&token).and_then(|c| c.opener.as_mut()) else {
            return Ok(0);
        };
        frames.clear();
        opener.open_into(&scratch[..n], frames)?;
        opened.clear();
        for (channel, piece) in frames.iter() {
            if channel != 0 {
                return Err(crate::dist::DistError::Malformed(format!(
                    "a direct session's frame on channel {channel}"
                )));
            }
            opened.extend_from_slice(piece);
        }
        Ok(opened.len())
    }

    /// A signal about `from` came: whether it must wait for `from`'s direct
    /// session to end (read here as far as it came: what `from` sent on it
    /// comes first), or for what waits for it already. A `NoConnection`
    /// closes the session, unread past what came. With `gone` (a `Down`), or
    /// `NoConnection`, a session whose fence has not come is closed.
    pub(super) fn hold_signal(&self, rt: &Runtime, st: &mut State, from: Pid, reason: &ExitReason, gone: bool) -> bool {
        if st.releasing == Some(from) {
            return false;
        }
        if st.direct_in.get(&from).is_some_and(|w| w.fenced) {
            // Before the fence in line with signals, after the one in line
            // with frames: sent before its session opened, it comes before
            // what the session carries (which stays).
            return false;
        }
        if gone || *reason == ExitReason::NoConnection {
            self.forget_waiting(st, from);
        }
        let reading = st.direct_senders.contains(&from) && st.signals_behind.contains(&from);
        if reading {
            match reason {
                ExitReason::NoConnection => self.drain_direct(rt, st, from, Drain::AsItIs),
                _ => self.read_direct(rt, st, from),
            }
        }
        (st.direct_senders.contains(&from) && st.signals_behind.contains(&from)) || st.held.contains_key(&from)
    }

    /// [`close_direct_from`](Self::close_direct_from), from a thread that
    /// does not poll (the node's own program learns of the loss there).
    pub(crate) fn node_lost(&self, rt: &Runtime, node: crate::pid::NodeId) {
        let mut st = self.lock();
        self.close_direct_from(rt, &mut st, node);
        self.release_held(rt, &mut st);
        st.publish();
        if st.users_waiting > 0 {
            self.cond.notify_all();
        }
    }

    /// The nodes' session with `node` was lost: the direct sessions from
    /// its processes close as they are, read as far as they came (what was
    /// in flight may be lost), and those waiting for a fence, which may
    /// have been lost with it.
    pub(super) fn close_direct_from(&self, rt: &Runtime, st: &mut State, node: crate::pid::NodeId) {
        let waiting: Vec<Pid> = st.direct_in.keys().copied().filter(|p| p.node() == node).collect();
        for from in waiting {
            self.forget_waiting(st, from);
        }
        let senders: Vec<Pid> = st.direct_senders.iter().copied().filter(|s| s.node() == node).collect();
        for from in senders {
            self.drain_direct(rt, st, from, Drain::AsItIs);
        }
    }

    /// A frame `from` sent through the node: whether it must wait for
    /// `from`'s direct session to end (read here as far as it came).
    pub(super) fn hold_frame(&self, rt: &Runtime, st: &mut State, from: Pid) -> bool {
        if st.direct_senders.contains(&from) {
            self.read_direct(rt, st, from);
        }
        st.direct_senders.contains(&from) || st.held.contains_key(&from)
    }

    /// Holds `held` until `from`'s direct session ends.
    pub(super) fn hold(&self, st: &mut State, from: Pid, held: Held) {
        st.held.entry(from).or_default().push_back(held);
    }

    /// Queues what waited for direct sessions that ended since.
    pub(super) fn release_held(&self, rt: &Runtime, st: &mut State) {
        while let Some(from) = st.held.keys().copied().find(|p| !st.direct_senders.contains(p)) {
            self.release_sender(rt, st, from);
        }
    }

    /// Queues, in order, what waited for `from`'s direct session to end.
    /// What `from` sends through the node meanwhile still queues behind.
    fn release_sender(&self, rt: &Runtime, st: &mut State, from: Pid) {
        let outer = st.releasing.replace(from);
        while let Some(held) = st.held.get_mut(&from).and_then(VecDeque::pop_front) {
            match held {
                Held::Signal(frame) => self.on_control(rt, st, *frame),
                Held::Frame(tenant, kind, body) => self.take_late(rt, st, tenant, kind, &body),
            }
        }
        st.held.remove(&from);
        st.releasing = outer;
    }

    /// Reads what came on `from`'s direct sessions, without waiting.
    fn read_direct(&self, rt: &Runtime, st: &mut State, from: Pid) {
        for token in Self::direct_tokens(st, from) {
            self.read_conn(rt, st, token, usize::MAX);
        }
    }

    fn direct_tokens(st: &State, from: Pid) -> Vec<Token> {
        st.conns
            .iter()
            .filter(|(_, c)| c.sender == Some(from) && c.opener.is_some())
            .map(|(&t, _)| t)
            .collect()
    }

    /// Reads `from`'s direct session, as far as `drain` says, and closes it:
    /// to its end within [`DRAIN`] (past that, what is left is dropped), or
    /// what arrived.
    pub(super) fn drain_direct(&self, rt: &Runtime, st: &mut State, from: Pid, drain: Drain) {
        if !st.direct_senders.contains(&from) {
            return;
        }
        let tokens = Self::direct_tokens(st, from);
        if tokens.is_empty() {
            return;
        }
        let wait = drain == Drain::ToEnd;
        let deadline = Instant::now() + DRAIN;
        for token in tokens {
            while self.read_conn(rt, st, token, usize::MAX) {
                let Some(conn) = st.conns.get(&token) else {
                    break;
                };
                if !wait || Instant::now() >= deadline {
                    tracing::debug!(%from, "a direct session closed before its end");
                    self.close_conn(st, token);
                    break;
                }
                let _ = socket::wait_fd(&conn.fd, false, Some(deadline));
            }
        }
    }
}
