//! The control connection from the node (Downs, exit signals, replies,
//! messages for a hosted actor) and the children this process reaps.

use std::io;
use std::os::fd::AsRawFd;

use super::{Inbox, Item, PORT_STDERR, PORT_STDOUT, SCRATCH, State, push_message};
use crate::link::ExitSignal;
use crate::monitor::{Down, MonitorRef};
use crate::runtime::Runtime;
use crate::sys::poll::Token;
use crate::sys::process::pidfd_try_wait;
use crate::sys::socket;
use crate::wire::envelope::{ToNode, ToProcess};
use crate::wire::frame::Kind;
use crate::wire::port::PortOutput;
use crate::wire::{self, decode_exact};

impl Inbox {
    pub(super) fn read_ctl(&self, rt: &Runtime, st: &mut State) {
        if st.scratch.len() < SCRATCH {
            st.scratch.resize(SCRATCH, 0);
        }
        loop {
            let fd = rt.ctl_fd();
            let mut fds = Vec::new();
            let n = match socket::recv_with_fds(fd, &mut st.scratch, &mut fds) {
                Ok(0) => {
                    st.disconnected = true;
                    self.unwatch(self.ctl_fd);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    st.disconnected = true;
                    self.unwatch(self.ctl_fd);
                    return;
                }
            };
            let carried = !fds.is_empty();
            st.ctl_fds.extend(fds);
            let mut frames = Vec::new();
            let mut decoder = std::mem::take(&mut st.ctl_decoder);
            let res = decoder.feed(&st.scratch[..n], usize::MAX >> 1, |kind, body| {
                if kind == Kind::Ctl {
                    frames.push(decode_exact::<ToProcess>(body));
                }
                true
            });
            st.ctl_decoder = decoder;
            if let Err(e) = res {
                tracing::error!("the node's control stream broke: {e}");
            }
            for frame in frames {
                match frame {
                    Ok(f) => self.on_control(rt, st, f),
                    Err(e) => tracing::error!("undecodable control frame from the node: {e}"),
                }
            }
            // A read stops early at a message that carries descriptors.
            if n < st.scratch.len() && !carried {
                return;
            }
        }
    }

    pub(super) fn on_control(&self, rt: &Runtime, st: &mut State, frame: ToProcess) {
        // What the sender a signal is about sent comes first: read now, or
        // (on a direct session still open) the signal waits for its end.
        if let ToProcess::Down { pid: from, reason, .. } | ToProcess::Exit { from, reason } = &frame {
            let gone = matches!(frame, ToProcess::Down { .. });
            if self.drain_sender(rt, st, *from, reason, gone) {
                #[cfg(feature = "dist")]
                self.hold(st, *from, super::direct::Held::Signal(Box::new(frame)));
                return;
            }
        }
        match frame {
            ToProcess::Down {
                reference,
                internal,
                pid,
                reason,
                name,
            } => {
                let port = st
                    .ports
                    .iter()
                    .find(|(_, p)| internal && p.exit_ref == reference)
                    .map(|(&s, _)| s);
                if let Some(serial) = port {
                    // Everything the program wrote comes first.
                    self.read_port(rt, st, serial, PORT_STDOUT, true);
                    self.read_port(rt, st, serial, PORT_STDERR, true);
                    self.end_port_framing(rt, st, serial);
                    self.forget_port(st, serial);
                    st.queue.push_back(Item::Port {
                        port: serial,
                        output: PortOutput::Exit(reason),
                    });
                } else if internal {
                    if let Some(a) = st.awaited.get_mut(&reference) {
                        a.down = Some(reason);
                    }
                } else {
                    st.queue.push_back(Item::Down(Down {
                        reference: MonitorRef::new(rt.pid().serial(), reference),
                        pid,
                        reason,
                        name,
                    }));
                }
                rt.forget_connection(pid);
            }
            ToProcess::Exit { from, reason } => {
                st.queue.push_back(Item::Exit(ExitSignal { from, reason }));
            }
            ToProcess::Reply { request, reply } => {
                if let Some(a) = st.awaited.get_mut(&request) {
                    a.node = Some(reply);
                }
            }
            ToProcess::Message(body) => {
                if let Some((fp, value)) = wire::body::split_message(&body) {
                    let State {
                        queue, messages, bound, ..
                    } = &mut *st;
                    push_message(queue, messages, *bound, rt.slot(), (fp, value), false);
                }
            }
            ToProcess::ForActor { actor, msg } => match *msg {
                ToProcess::Down {
                    reference,
                    internal: false,
                    pid,
                    reason,
                    name,
                } => {
                    // An actor takes no direct session: nothing is held.
                    let _ = self.drain_sender(rt, st, pid, &reason, true);
                    st.hosted.push(
                        actor,
                        Item::Down(Down {
                            reference: MonitorRef::new(actor, reference),
                            pid,
                            reason,
                            name,
                        }),
                    );
                    rt.forget_connection(pid);
                }
                ToProcess::Exit { from, reason } => {
                    let _ = self.drain_sender(rt, st, from, &reason, false);
                    st.hosted.push(actor, Item::Exit(ExitSignal { from, reason }));
                }
                ToProcess::Message(ref body) if let Some((fp, value)) = wire::body::split_message(body) => {
                    st.hosted.push(
                        actor,
                        Item::Msg {
                            fp,
                            body: value.to_vec(),
                        },
                    );
                }
                // Internal Downs and replies wait in the host's own table.
                other @ (ToProcess::Down { .. } | ToProcess::Reply { .. }) => self.on_control(rt, st, other),
                _ => {}
            },
            ToProcess::KillActor { actor, reason } => st.hosted.kills.push((actor, reason)),
            #[cfg(feature = "dist")]
            ToProcess::DirectReady { to, keys, max_queued } => match st.ctl_fds.pop_front() {
                Some(fd) => rt.direct_ready(to, fd, &keys, usize::try_from(max_queued).unwrap_or(usize::MAX)),
                None => rt.direct_refused(to),
            },
            #[cfg(feature = "dist")]
            ToProcess::DirectRefused { to } => rt.direct_refused(to),
            #[cfg(feature = "dist")]
            ToProcess::NodeLost { node } => {
                rt.forget_node_routes(node);
                self.close_direct_from(rt, st, node);
            }
            #[cfg(feature = "dist")]
            ToProcess::Fence { from, session } => {
                // Its fence in line with its frames is read by now (it was
                // written before this was sent).
                self.read_sender(rt, st, from);
                self.start_direct(st, from, session);
            }
            #[cfg(feature = "dist")]
            ToProcess::DirectFrom { from, keys } => {
                if let Some(fd) = st.ctl_fds.pop_front() {
                    self.accept_direct(st, from, fd, &keys);
                }
            }
            // For the zygote and its spare only.
            ToProcess::TakeOver | ToProcess::ReplaceScheduler { .. } | ToProcess::Stray { .. } => {}
        }
    }

    pub(super) fn reap_child(&self, rt: &Runtime, st: &mut State, token: Token) {
        let Some((serial, pidfd)) = st.children.get(&token) else {
            return;
        };
        let serial = *serial;
        match pidfd_try_wait(pidfd) {
            Ok(None) => {}
            Ok(Some(status)) => {
                if let Some((_, pidfd)) = st.children.remove(&token) {
                    self.unwatch(pidfd.as_raw_fd());
                }
                rt.tell_node(&ToNode::ChildExited { serial, status });
            }
            Err(e) => {
                // Not our child any more (cannot happen for a child we forked
                // and did not wait for): stop watching it, the node reaps it.
                tracing::debug!("reaping child {serial}: {e}");
                if let Some((_, pidfd)) = st.children.remove(&token) {
                    self.unwatch(pidfd.as_raw_fd());
                }
            }
        }
    }
}
