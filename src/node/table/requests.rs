//! What processes ask of the node: the control frames, one at a time.

use crate::exit::ExitReason;
use crate::wire::decode_exact;
use crate::wire::envelope::{NodeReply, ToNode, ToProcess};

use super::{MAIN_SERIAL, MonitorEntry, REMOTE_WATCHER, System, Table};

impl<S: System> Table<S> {
    /// The serial that `msg` refers to and that the table does
    /// not know, though it was handed out: its registration may still be in
    /// flight on another connection, to be read before `msg` is applied.
    pub(crate) fn awaits(&self, msg: &ToNode) -> Option<u64> {
        let ours = |pid: &crate::pid::Pid| (pid.node() == self.node).then(|| pid.serial());
        let serial = match msg {
            ToNode::Register(reg) => Some(reg.parent),
            ToNode::SpawnActor { host, .. } => Some(*host),
            ToNode::Link { target, .. } => ours(target),
            ToNode::Monitor { target, .. } | ToNode::ExitSignal { target, .. } => ours(target),
            ToNode::RegisterName { pid, .. } | ToNode::Info { pid, .. } => ours(pid),
            // A parent's report of its child's status: the child's
            // registration, on a connection of its own, comes first (unless
            // the child's end was finalized already, with the status the
            // node found itself).
            ToNode::ChildExited { serial, .. } if !self.reports_due.contains_key(serial) => Some(*serial),
            ToNode::ForActor { actor, msg } => {
                if !self.knows(*actor) {
                    Some(*actor)
                } else {
                    // One level only: a request for an actor never nests
                    // another (the table refuses it), and a hostile chain
                    // must not recurse.
                    return match decode_exact::<ToNode>(msg) {
                        Ok(ToNode::ForActor { .. }) | Err(_) => None,
                        Ok(m) => self.awaits(&m),
                    };
                }
            }
            _ => None,
        }?;
        let handed_out = serial < self.shared.next_serial.load(std::sync::atomic::Ordering::Acquire);
        (!self.knows(serial) && handed_out).then_some(serial)
    }

    /// A control frame read from connection `conn`.
    pub(crate) fn frame(&mut self, conn: u64, msg: ToNode) {
        match msg {
            ToNode::Register(reg) => self.register(reg, conn),
            ToNode::Withdraw { serial } => self.withdraw(serial),
            ToNode::Pidfd { serial, ospid } => {
                if self.wants_pidfd(serial) && self.sys.claim_fd(conn, serial) {
                    self.attach_pidfd(serial, ospid);
                } else {
                    self.sys.drop_fd(conn);
                }
            }
            ToNode::Port { reg, ospid, port } => {
                if !self.knows(reg.serial) && self.sys.claim_fd(conn, reg.serial) {
                    self.register_port(reg, ospid, port);
                } else {
                    self.sys.drop_fd(conn);
                }
            }
            ToNode::ZygoteSpare { serial, ospid } => self.add_spare(conn, serial, ospid),
            other => match self.owner(conn) {
                Some(from) => {
                    if let Some((request, reply)) = self.request(from, other) {
                        self.send_to(from, ToProcess::Reply { request, reply });
                    }
                }
                None => {
                    tracing::warn!("control frame before registration");
                }
            },
        }
    }

    /// Places monitor `reference` of `from` on `target` (placed by `name`,
    /// if so); a target that does not exist is a `Down` with `NoProc` at once.
    fn monitor(&mut self, from: u64, reference: u64, internal: bool, target: crate::pid::Pid, name: Option<String>) {
        let t = target.serial();
        // A process of another node: through the cluster, which sends the
        // `Down` when it comes (or `NoConnection`).
        if target.node() != self.node
            && name.is_none()
            && self.sys.remote_monitor(self.pid(from), reference, internal, target)
        {
            return;
        }
        if target.node() != self.node || !self.knows(t) {
            self.send_to(
                from,
                ToProcess::Down {
                    reference,
                    internal,
                    pid: target,
                    reason: ExitReason::NoProc,
                    name,
                },
            );
            return;
        }
        if let Some(p) = self.procs.get_mut(&t) {
            p.monitors.push(MonitorEntry {
                reference,
                watcher: from,
                internal,
                name,
                remote: None,
            });
        }
        if let Some(p) = self.procs.get_mut(&from) {
            p.watching.insert(reference, t);
        }
    }

    /// A request from the node's main thread, answered directly.
    pub(crate) fn local_request(&mut self, from: u64, msg: ToNode) -> Option<NodeReply> {
        self.request(from, msg).map(|(_, r)| r)
    }

    /// A request from the node's main thread whose answer must come after
    /// what the node already sent it: answered on its control connection, as
    /// a process's request is.
    pub(crate) fn local_request_in_order(&mut self, from: u64, msg: ToNode) {
        if let Some((request, reply)) = self.request(from, msg) {
            self.send_to(from, ToProcess::Reply { request, reply });
        }
    }

    /// Handles a request from `from`; returns (request id, answer) when the
    /// request expects one.
    fn request(&mut self, from: u64, msg: ToNode) -> Option<(u64, NodeReply)> {
        match msg {
            ToNode::Register(_) | ToNode::Pidfd { .. } | ToNode::Port { .. } | ToNode::ZygoteSpare { .. } => None,
            ToNode::Withdraw { serial } => {
                self.withdraw(serial);
                None
            }
            ToNode::MonitorFor {
                watcher,
                reference,
                internal,
                target,
            } if from == MAIN_SERIAL => {
                let t = target.serial();
                let here = target.node() == self.node && self.alive(t);
                match self.procs.get_mut(&t) {
                    Some(p) if here => p.monitors.push(MonitorEntry {
                        reference,
                        watcher: REMOTE_WATCHER,
                        internal,
                        name: None,
                        remote: Some(watcher),
                    }),
                    _ => self
                        .sys
                        .remote_down(watcher, reference, internal, target, ExitReason::NoProc),
                }
                None
            }
            ToNode::RemoteDown {
                watcher,
                reference,
                internal,
                pid,
                reason,
            } if from == MAIN_SERIAL => {
                self.send_to(
                    watcher,
                    ToProcess::Down {
                        reference,
                        internal,
                        pid,
                        reason,
                        name: None,
                    },
                );
                None
            }
            ToNode::LinkFor { remote, target } if from == MAIN_SERIAL => {
                let t = target.serial();
                let here = target.node() == self.node && self.alive(t);
                match self.procs.get_mut(&t) {
                    Some(p) if here => {
                        p.remote_links.insert(remote);
                    }
                    _ => self.sys.remote_exit(remote, target, ExitReason::NoProc),
                }
                None
            }
            ToNode::UnlinkFor { remote, target } if from == MAIN_SERIAL => {
                if let Some(p) = self.procs.get_mut(&target.serial()) {
                    p.remote_links.remove(&remote);
                }
                None
            }
            ToNode::RemoteExit {
                target,
                from: remote,
                reason,
            } if from == MAIN_SERIAL => {
                let p = self.procs.get_mut(&target)?;
                // Unlinked since: nothing.
                if !p.remote_links.remove(&remote) {
                    return None;
                }
                let (trap, internal) = (p.trap_exits, p.internal());
                if trap {
                    self.send_to(target, ToProcess::Exit { from: remote, reason });
                } else if !reason.is_normal() && !internal {
                    self.kill(target, reason);
                }
                None
            }
            ToNode::ExitSignalFor {
                from: sender,
                target,
                reason,
                untrappable,
            } if from == MAIN_SERIAL => {
                if target.node() == self.node {
                    self.exit_signal_from(sender, target.serial(), reason, untrappable);
                }
                None
            }
            ToNode::LinkFor { .. }
            | ToNode::UnlinkFor { .. }
            | ToNode::RemoteExit { .. }
            | ToNode::ExitSignalFor { .. } => {
                tracing::warn!(from, "a cluster's request from a process: refused");
                None
            }
            ToNode::MonitorFor { .. } | ToNode::RemoteDown { .. } => {
                tracing::warn!(from, "a cluster's request from a process: refused");
                None
            }
            ToNode::Remote { to, kind, body } => {
                // The sender is the connection's owner: no process sends as
                // another.
                self.sys.remote(crate::pid::Pid::new(self.node, from), to, kind, &body);
                None
            }
            #[cfg(feature = "dist")]
            ToNode::NodeLost { node } if from == MAIN_SERIAL => {
                let receivers: Vec<u64> = self
                    .procs
                    .values()
                    .filter(|p| !p.internal() && p.host().is_none() && p.port().is_none() && p.ctl.is_some())
                    .map(|p| p.serial)
                    .collect();
                for serial in receivers {
                    self.send_to(serial, ToProcess::NodeLost { node });
                }
                None
            }
            #[cfg(feature = "dist")]
            ToNode::Fence {
                from: sender,
                to,
                session,
            } if from == MAIN_SERIAL => {
                self.send_to(to, ToProcess::Fence { from: sender, session });
                None
            }
            #[cfg(feature = "dist")]
            ToNode::NodeLost { .. } | ToNode::Fence { .. } => {
                tracing::warn!(from, "a cluster's request from a process: refused");
                None
            }
            #[cfg(feature = "dist")]
            ToNode::Backlogged { node } => {
                self.sys.remote_backlogged(node);
                None
            }
            #[cfg(feature = "dist")]
            ToNode::Direct { to } => {
                if !self.sys.remote_direct(crate::pid::Pid::new(self.node, from), to) {
                    self.send_to(from, ToProcess::DirectRefused { to });
                }
                None
            }
            ToNode::Link { request, target } if target.node() != self.node => {
                // A process of another node: through the cluster, which
                // passes exit signals both ways (and `NoConnection`).
                if !self.sys.remote_link(self.pid(from), target) {
                    return Some((request, NodeReply::NoProc));
                }
                if let Some(p) = self.procs.get_mut(&from) {
                    p.remote_links.insert(target);
                }
                Some((request, NodeReply::Done))
            }
            ToNode::Unlink { target } if target.node() != self.node => {
                if let Some(p) = self.procs.get_mut(&from)
                    && p.remote_links.remove(&target)
                {
                    self.sys.remote_unlink(self.pid(from), target);
                }
                None
            }
            ToNode::Link { request, target } => {
                let target = target.serial();
                if target == from {
                    return Some((request, NodeReply::Done));
                }
                if !self.knows(target) {
                    return Some((request, NodeReply::NoProc));
                }
                for (a, b) in [(from, target), (target, from)] {
                    if let Some(p) = self.procs.get_mut(&a) {
                        p.links.insert(b);
                    }
                }
                Some((request, NodeReply::Done))
            }
            ToNode::Unlink { target } => {
                let target = target.serial();
                for (a, b) in [(from, target), (target, from)] {
                    if let Some(p) = self.procs.get_mut(&a) {
                        p.links.remove(&b);
                    }
                }
                None
            }
            ToNode::Monitor {
                reference,
                internal,
                target,
            } => {
                self.monitor(from, reference, internal, target, None);
                None
            }
            ToNode::MonitorName { reference, name } => {
                // Resolved here, in one step with the placing: the holder now.
                let holder = self.names.get(&name).copied().filter(|&s| self.alive(s));
                let target = self.pid(holder.unwrap_or(0));
                self.monitor(from, reference, false, target, Some(name));
                None
            }
            ToNode::Demonitor { request, reference } => {
                let target = self.procs.get_mut(&from).and_then(|p| p.watching.remove(&reference));
                let mut active = false;
                if let Some(t) = target
                    && let Some(p) = self.procs.get_mut(&t)
                {
                    let before = p.monitors.len();
                    p.monitors.retain(|m| !(m.watcher == from && m.reference == reference));
                    active = p.monitors.len() < before;
                }
                request.map(|request| (request, NodeReply::Demonitored(active)))
            }
            ToNode::TrapExits { request, on } => {
                if from != MAIN_SERIAL
                    && let Some(p) = self.procs.get_mut(&from)
                {
                    p.trap_exits = on;
                }
                Some((request, NodeReply::Done))
            }
            ToNode::ExitSignal {
                target,
                reason,
                untrappable,
            } => {
                if target.node() == self.node {
                    self.exit_signal(from, target.serial(), reason, untrappable);
                } else {
                    // To a process of another node: through the cluster.
                    self.sys.remote_exit_signal(self.pid(from), target, reason, untrappable);
                }
                None
            }
            ToNode::RegisterName { request, name, pid } => {
                let s = pid.serial();
                if pid.node() != self.node || !self.knows(s) {
                    return Some((request, NodeReply::NoProc));
                }
                if let Some(&holder) = self.names.get(&name)
                    && holder != s
                    && self.alive(holder)
                {
                    return Some((request, NodeReply::NameTaken));
                }
                if let Some(old) = self.names.insert(name.clone(), s)
                    && let Some(p) = self.procs.get_mut(&old)
                {
                    p.names.retain(|n| n != &name);
                }
                if let Some(p) = self.procs.get_mut(&s) {
                    p.names.push(name);
                }
                Some((request, NodeReply::Done))
            }
            ToNode::UnregisterName { name } => {
                if let Some(s) = self.names.remove(&name)
                    && let Some(p) = self.procs.get_mut(&s)
                {
                    p.names.retain(|n| n != &name);
                }
                None
            }
            ToNode::Whereis { request, name } => {
                let pid = self.names.get(&name).filter(|&&s| self.alive(s)).map(|&s| self.pid(s));
                Some((request, NodeReply::Pid(pid)))
            }
            ToNode::Info { request, pid } => {
                let info = if pid.node() == self.node {
                    self.info(pid.serial())
                } else {
                    None
                };
                Some((request, NodeReply::Info(info)))
            }
            ToNode::ChildExited { serial, status } => {
                self.child_exited(serial, status);
                None
            }
            ToNode::Enqueue {
                class,
                task,
                reference,
                message,
            } => {
                self.enqueue(from, class as usize, task, reference, message);
                None
            }
            ToNode::Idle { slot } => {
                if let Some(class) = self.pool.class_of(slot as usize) {
                    self.dispatch(class);
                }
                None
            }
            ToNode::SpawnActor {
                reg,
                host,
                register,
                start,
            } => {
                if reg.parent == from {
                    self.spawn_actor(reg, host, register, start);
                }
                None
            }
            ToNode::ActorExit { actor, reason } => {
                if self.procs.get(&actor).is_some_and(|p| p.host() == Some(from)) {
                    self.actor_ended(actor, reason);
                }
                None
            }
            ToNode::ForActor { actor, msg } => {
                let hosted = self.procs.get(&actor).is_some_and(|p| p.host() == Some(from));
                let msg = match decode_exact::<ToNode>(&msg) {
                    Ok(m) if hosted && !matches!(m, ToNode::ForActor { .. } | ToNode::ActorExit { .. }) => m,
                    _ => {
                        self.counters.refused += 1;
                        tracing::warn!(from, actor, "refused a request for an actor the sender does not host");
                        return None;
                    }
                };
                self.request(actor, msg)
            }
            ToNode::LastWords { reason } => {
                if let Some(p) = self.procs.get_mut(&from) {
                    p.last_words = Some(reason);
                }
                None
            }
        }
    }
}
