//! The receiving side of direct sessions (feature `dist`, see the runtime's
//! `direct`): a session handed over by the node waits for its sender's
//! fence, then is read as a connection from that sender, its records opened
//! first.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::{CONN, InConn, Inbox, State};
use crate::dist::{Keys, Session};
use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::Runtime;
use crate::runtime::direct::{ACCEPTED, CHUNK, DRAIN, SILENT};
use crate::sys::poll::{Interest, Token};
use crate::sys::socket;
use crate::wire::frame::Decoder;

/// How long a session handed over waits for its sender's fence before it
/// is closed (its sender never took it: it ended first, or had one). A
/// sender checks that its session is still open before it sends the fence.
const FENCE_WAIT: Duration = Duration::from_secs(60);
/// Most sessions waiting for a fence at once; past this, new ones are
/// refused.
const MAX_WAITING: usize = 64;

/// How far a sender's direct session is read before a signal about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// To its end (the sender ended, or closed it), within [`DRAIN`].
    ToEnd,
    /// What arrived: the session is lost (`NoConnection`).
    AsItIs,
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
        st.direct_in
            .retain(|_, (.., since)| now.duration_since(*since) < FENCE_WAIT);
        if st.direct_in.len() >= MAX_WAITING && !st.direct_in.contains_key(&from) {
            return;
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
        // A newer session from the same sender replaces one never fenced.
        st.direct_in.insert(from, (fd, Box::new(opener), now));
    }

    /// `from`'s fence came: what it sends next comes on its direct session,
    /// read from here on.
    pub(super) fn fence(&self, rt: &Runtime, st: &mut State, from: Pid) {
        let Some((fd, opener, _)) = st.direct_in.remove(&from) else {
            tracing::debug!(%from, "a fence with no direct session");
            return;
        };
        // An earlier session of the same sender, closed by it before it
        // asked for this one: read to its end first.
        self.drain_direct(rt, st, from, Drain::ToEnd);
        let token = Token::new(CONN, st.next_conn);
        let seq = st.next_conn;
        st.next_conn += 1;
        if self.epoll().add(&fd, token, Interest::Read).is_err() {
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

    /// Before a signal about `from` is queued: its direct session is read,
    /// as far as `drain` says, and closed. With `gone` (a `Down`), one
    /// waiting for `from`'s fence is closed too.
    pub(super) fn drain_signal(&self, rt: &Runtime, st: &mut State, from: Pid, reason: &ExitReason, gone: bool) {
        if gone {
            st.direct_in.remove(&from);
        }
        let drain = match reason {
            ExitReason::NoConnection => Drain::AsItIs,
            _ => Drain::ToEnd,
        };
        self.drain_direct(rt, st, from, drain);
    }

    /// Reads `from`'s direct session, as far as `drain` says, and closes it:
    /// to its end within [`DRAIN`] (past that, what is left is dropped), or
    /// what arrived.
    pub(super) fn drain_direct(&self, rt: &Runtime, st: &mut State, from: Pid, drain: Drain) {
        if !st.direct_senders.contains(&from) {
            return;
        }
        let tokens: Vec<Token> = st
            .conns
            .iter()
            .filter(|(_, c)| c.sender == Some(from) && c.opener.is_some())
            .map(|(&t, _)| t)
            .collect();
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
