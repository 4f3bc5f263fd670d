//! Data connections into a process: accepted from its listener (same user
//! only), read in bulk and cut into frames, each sender's older connections
//! read before its newer ones, and all of a sender read before a signal about
//! it is queued.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use super::{CONN, InConn, Inbox, Item, LISTENER_RETRY, SCRATCH, State, push_message};
use crate::pid::Pid;
use crate::runtime::Runtime;
use crate::sys::poll::{Interest, Token};
use crate::sys::socket;
use crate::wire::envelope::Hello;
use crate::wire::frame::{Decoder, Kind};
use crate::wire::{self, FrameError, decode_exact};

impl Inbox {
    pub(super) fn accept_all(&self, rt: &Runtime, st: &mut State) {
        loop {
            match socket::accept_same_user(&st.listener, rt.uid()) {
                Ok(Some(Err(cred))) => {
                    rt.slot().refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(uid = cred.uid, pid = cred.pid, "refused a connection from another user");
                }
                Ok(Some(Ok(fd))) => {
                    let token = Token::new(CONN, st.next_conn);
                    let seq = st.next_conn;
                    st.next_conn += 1;
                    if self.epoll().add(&fd, token, Interest::Read).is_err() {
                        continue;
                    }
                    st.conns.insert(
                        token,
                        InConn {
                            fd,
                            sender: None,
                            decoder: Decoder::default(),
                            seq,
                            tenant: None,
                            #[cfg(feature = "dist")]
                            opener: None,
                        },
                    );
                }
                Ok(None) => return,
                Err(e) if socket::out_of_descriptors(&e) => {
                    // No descriptor for it: the connection waits in the
                    // backlog. The listener would report it again at once:
                    // stop watching it, and look again in a while.
                    if !st.listener_paused {
                        st.listener_paused = true;
                        self.unwatch(self.listener_fd);
                        tracing::warn!("accept failed, waiting for a free descriptor: {e}");
                    }
                    let timer = &self.io().timer;
                    if !timer.armed() {
                        let _ = timer.set(LISTENER_RETRY);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads a data connection until it has nothing more or `budget` bytes
    /// were read. Returns whether the connection is still open.
    pub(super) fn read_conn(&self, rt: &Runtime, st: &mut State, token: Token, budget: usize) -> bool {
        if st.scratch.len() < SCRATCH {
            st.scratch.resize(SCRATCH, 0);
        }
        let mut read_total = 0;
        loop {
            let Some(conn) = st.conns.get_mut(&token) else {
                return false;
            };
            let n = match socket::read(&conn.fd, &mut st.scratch) {
                Ok(0) => {
                    self.close_conn(st, token);
                    return false;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => {
                    self.close_conn(st, token);
                    return false;
                }
            };
            read_total += n;
            let raw = n;
            #[cfg(feature = "dist")]
            let (n, opened) = match conn.opener.is_some() {
                false => (n, false),
                true => match self.open_records(st, token, n) {
                    Ok(m) => (m, true),
                    Err(e) => {
                        rt.slot().undecodable.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("closing a direct session that failed to open: {e}");
                        self.close_conn(st, token);
                        return false;
                    }
                },
            };
            #[cfg(not(feature = "dist"))]
            let opened = false;
            match self.decode_conn(rt, st, token, n, opened) {
                Ok(()) => {}
                Err(e) => {
                    let who = st.conns.get(&token).and_then(|c| c.sender);
                    rt.slot().undecodable.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, FrameError::TooLarge { .. }) {
                        rt.slot().refused.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(from = ?who, "closing a connection that broke the framing: {e}");
                    self.close_conn(st, token);
                    return false;
                }
            }
            if raw < st.scratch.len() || read_total >= budget {
                return true;
            }
        }
    }

    /// Decodes `n` fresh bytes of `scratch` (of the opened records of a
    /// direct session, with `opened`), and anything pending, of one
    /// connection into the queue.
    pub(super) fn decode_conn(
        &self,
        rt: &Runtime,
        st: &mut State,
        token: Token,
        n: usize,
        opened: bool,
    ) -> Result<(), FrameError> {
        let max = rt.max_frame();
        let mut input_len = n;
        loop {
            let State {
                conns,
                scratch,
                queue,
                messages,
                awaited,
                bound,
                hosted,
                #[cfg(feature = "dist")]
                    opened: opened_bytes,
                #[cfg(feature = "dist")]
                direct_senders,
                #[cfg(feature = "dist")]
                held,
                ..
            } = &mut *st;
            #[cfg(feature = "dist")]
            let input: &[u8] = if opened {
                &opened_bytes[..input_len]
            } else {
                &scratch[..input_len]
            };
            #[cfg(not(feature = "dist"))]
            let input: &[u8] = {
                let _ = opened;
                &scratch[..input_len]
            };
            let Some(conn) = conns.get_mut(&token) else {
                return Ok(());
            };
            let mut protocol_error: Option<FrameError> = None;
            let mut new_sender = None;
            let mut not_hosted = false;
            let mut fenced = None;
            // A frame through the node from a sender whose direct session is
            // still read: kept aside until that session is read to its end
            // (the sender went back to the node once it was written out and
            // closed).
            #[cfg_attr(not(feature = "dist"), allow(unused_mut))]
            let mut behind: Option<(Kind, Vec<u8>)> = None;
            let had_sender = conn.sender.is_some();
            let sender = &mut conn.sender;
            let tenant = &mut conn.tenant;
            let stopped = conn.decoder.feed(input, max, |kind, body| {
                #[cfg(feature = "dist")]
                if !opened
                    && (!direct_senders.is_empty() || !held.is_empty())
                    && matches!(kind, Kind::Msg | Kind::Reply)
                    && sender.is_some_and(|s| direct_senders.contains(&s) || held.contains_key(&s))
                {
                    behind = Some((kind, body.to_vec()));
                    return false;
                }
                match (kind, sender.is_some()) {
                    (Kind::Hello, false) => match decode_exact::<Hello>(body) {
                        Ok(h) => {
                            if let Some(actor) = h.to {
                                // Only for an actor hosted here, alive.
                                if hosted.ended.contains(&actor)
                                    || rt.shared().slot(actor).host_of(actor) != Some(rt.pid().serial())
                                {
                                    not_hosted = true;
                                    return false;
                                }
                            }
                            *sender = Some(h.from);
                            *tenant = h.to;
                            new_sender = Some(h.from);
                            // Stop: older connections of this sender go first.
                            false
                        }
                        Err(_) => {
                            protocol_error = Some(FrameError::UnknownKind(Kind::Hello as u8));
                            false
                        }
                    },
                    (Kind::Msg, true) if let Some((fp, value)) = wire::body::split_message(body) => {
                        match *tenant {
                            Some(actor) => hosted.push(
                                actor,
                                Item::Msg {
                                    fp,
                                    body: value.to_vec(),
                                },
                            ),
                            // Counted as it arrives by a sender of this
                            // node; not by one on a direct session.
                            None => push_message(queue, messages, *bound, rt.slot(), (fp, value), !opened),
                        }
                        true
                    }
                    (Kind::Reply, true) if let Some((reference, fp, value)) = wire::body::split_reply(body) => {
                        if let Some(a) = awaited.get_mut(&reference) {
                            a.reply = Some((fp, value.to_vec()));
                        }
                        true
                    }
                    // Relayed by this node for a process of another node,
                    // naming its direct session: read from here on. Stop, so
                    // that it is in place before anything that follows.
                    (Kind::Fence, true) if !opened && let Ok(session) = <[u8; 8]>::try_from(body) => {
                        fenced = Some(u64::from_le_bytes(session));
                        false
                    }
                    (kind, _) => {
                        protocol_error = Some(FrameError::UnknownKind(kind as u8));
                        false
                    }
                }
            })?;
            if let Some(e) = protocol_error {
                return Err(e);
            }
            if not_hosted {
                // For an actor that ended (or never was here): its sender
                // sees the connection closed, as with a process that is gone.
                self.close_conn(st, token);
                return Ok(());
            }
            let fenced = fenced.and_then(|session| Some((conn.sender?, session)));
            let behind = behind.and_then(|b| Some((conn.sender?, b)));
            if let (Some(from), false) = (new_sender, had_sender) {
                let seq = conn.seq;
                self.drain_older(rt, st, from, seq);
            }
            #[cfg(feature = "dist")]
            if let Some((from, session)) = fenced {
                self.fence(rt, st, from, session);
            }
            #[cfg(not(feature = "dist"))]
            let _ = fenced;
            #[cfg(feature = "dist")]
            if let Some((from, (kind, body))) = behind {
                let tenant = st.conns.get(&token).and_then(|c| c.tenant);
                match self.hold_frame(rt, st, from) {
                    true => self.hold(st, from, super::direct::Held::Frame(tenant, kind, body)),
                    false => self.take_late(rt, st, tenant, kind, &body),
                }
            }
            #[cfg(not(feature = "dist"))]
            let _ = behind;
            if !stopped {
                return Ok(());
            }
            input_len = 0;
        }
    }

    /// Takes a frame kept aside while its sender's direct session was read
    /// to its end, for this process or the actor `tenant`: a message or a
    /// reply, as [`decode_conn`](Self::decode_conn) takes one.
    #[cfg(feature = "dist")]
    pub(super) fn take_late(&self, rt: &Runtime, st: &mut State, tenant: Option<u64>, kind: Kind, body: &[u8]) {
        match kind {
            Kind::Msg if let Some((fp, value)) = wire::body::split_message(body) => match tenant {
                Some(actor) => st.hosted.push(
                    actor,
                    Item::Msg {
                        fp,
                        body: value.to_vec(),
                    },
                ),
                None => {
                    let State {
                        queue, messages, bound, ..
                    } = st;
                    push_message(queue, messages, *bound, rt.slot(), (fp, value), true);
                }
            },
            Kind::Reply if let Some((reference, fp, value)) = wire::body::split_reply(body) => {
                if let Some(a) = st.awaited.get_mut(&reference) {
                    a.reply = Some((fp, value.to_vec()));
                }
            }
            _ => {}
        }
    }

    /// Reads to the end every connection of `from` accepted before `seq`: a
    /// sender that reconnects closed its older connection first, and what it
    /// wrote there comes first.
    pub(super) fn drain_older(&self, rt: &Runtime, st: &mut State, from: Pid, seq: u64) {
        let mut older: Vec<(u64, Token)> = st
            .conns
            .iter()
            .filter(|(_, c)| c.sender == Some(from) && c.seq < seq)
            .map(|(&t, c)| (c.seq, t))
            .collect();
        older.sort_unstable();
        for (_, token) in older {
            self.read_conn(rt, st, token, usize::MAX);
        }
    }

    /// Reads everything `from` has written to this process so far, its
    /// pending connections included. Used before a signal about `from` is
    /// queued, so that its messages come first: its direct session too, as
    /// far as it came. Returns whether the signal must wait for the end of
    /// that session (see `direct`). `gone`: a `Down`.
    pub(super) fn drain_sender(
        &self,
        rt: &Runtime,
        st: &mut State,
        from: Pid,
        reason: &crate::exit::ExitReason,
        gone: bool,
    ) -> bool {
        self.read_sender(rt, st, from);
        #[cfg(feature = "dist")]
        return self.hold_signal(rt, st, from, reason, gone);
        #[cfg(not(feature = "dist"))]
        {
            let _ = (reason, gone);
            false
        }
    }

    /// Reads everything `from` has written to this process so far through
    /// this node's connections, its pending connections included.
    pub(super) fn read_sender(&self, rt: &Runtime, st: &mut State, from: Pid) {
        self.accept_all(rt, st);
        // A process of another node reaches this one through this node's
        // connections that say they come from it; its node hands a signal
        // about it on only once they are written (`dist`'s `inject_after`).
        let mut tokens: Vec<(u64, Token)> = st
            .conns
            .iter()
            .filter(|(_, c)| c.sender.is_none() || c.sender == Some(from))
            .map(|(&t, c)| (c.seq, t))
            .collect();
        tokens.sort_unstable();
        for (_, token) in tokens {
            self.read_conn(rt, st, token, usize::MAX);
        }
    }

    pub(super) fn close_conn(&self, st: &mut State, token: Token) {
        if let Some(conn) = st.conns.remove(&token) {
            self.unwatch(conn.fd.as_raw_fd());
            #[cfg(feature = "dist")]
            if conn.opener.is_some()
                && let Some(from) = conn.sender
            {
                st.direct_senders.remove(&from);
                st.signals_behind.remove(&from);
            }
        }
    }
}
