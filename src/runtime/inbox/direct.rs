//! The receiving side of direct sessions (feature `dist`, see the runtime's
//! `direct`): a session handed over by the node waits for its sender's
//! fence, then is read as a connection from that sender, its records opened
//! first.

use std::os::fd::OwnedFd;
use std::time::Instant;

use super::{CONN, InConn, Inbox, State};
use crate::dist::{Keys, Session};
use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::Runtime;
use crate::runtime::direct::{ACCEPTED, CHUNK, DRAIN};
use crate::sys::poll::{Interest, Token};
use crate::sys::socket;
use crate::wire::frame::Decoder;

impl Inbox {
    /// A direct session from `from` (of another node), handed over by the
    /// node: answered at once (its sender waits for that), then kept until
    /// `from`'s fence comes.
    pub(crate) fn accept_direct(&self, st: &mut State, from: Pid, fd: OwnedFd, keys: &Keys) {
        let (mut sealer, opener) = Session::from_keys(keys, CHUNK).split();
        let mut answer = Vec::new();
        if sealer.seal(0, ACCEPTED, &mut answer).is_err() {
            return;
        }
        // A few bytes on a fresh socket: they fit at once.
        let deadline = Instant::now() + DRAIN;
        if socket::send_all(&fd, &answer, Some(deadline)).is_err() || socket::set_nonblocking(&fd, true).is_err() {
            return;
        }

        // A newer session from the same sender replaces one never fenced.
        st.direct_in.insert(from, (fd, Box::new(opener)));
    }

    /// `from`'s fence came: what it sends next comes on its direct session,
    /// read from here on.
    pub(super) fn fence(&self, rt: &Runtime, st: &mut State, from: Pid) {
        let Some((fd, opener)) = st.direct_in.remove(&from) else {
            tracing::debug!(%from, "a fence with no direct session");
            return;
        };
        // An earlier session of the same sender, closed by it before it
        // asked for this one: read to its end first.
        self.drain_direct(rt, st, from, &ExitReason::Normal);
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
        for (_, piece) in frames.iter() {
            opened.extend_from_slice(piece);
        }
        Ok(opened.len())
    }

    /// Before a signal about `from` (with `reason`) is queued: its direct
    /// session is read to its end, if `from` is gone or closed it (not
    /// after a `NoConnection`: the session is closed as it is), within
    /// [`DRAIN`]. One never fenced is dropped.
    pub(super) fn drain_direct(&self, rt: &Runtime, st: &mut State, from: Pid, reason: &ExitReason) {
        st.direct_in.remove(&from);
        let tokens: Vec<Token> = st
            .conns
            .iter()
            .filter(|(_, c)| c.sender == Some(from) && c.opener.is_some())
            .map(|(&t, _)| t)
            .collect();
        if tokens.is_empty() {
            return;
        }
        let wait = *reason != ExitReason::NoConnection;
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
