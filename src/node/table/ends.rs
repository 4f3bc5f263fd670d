//! A process's end: its status, the one finalization that turns it into
//! `Down`s and exit signals, and the signals the node sends (kills, a port's
//! orderly stop and the timer that ends it).

use std::time::{Duration, Instant};

use crate::exit::ExitReason;
use crate::sys::process::{SIGKILL, SIGTERM, WaitStatus};
use crate::wire::envelope::ToProcess;

use super::reason::{End, kind_name, reason_of};
use super::{Life, MAIN_SERIAL, Proc, Role, System, Table, ZYGOTE_SERIAL};

impl<S: System> Table<S> {
    /// Marks `serial` ended and ready to be finalized (its status is known,
    /// or it has none to wait for).
    pub(super) fn ended(&mut self, serial: u64) {
        if let Some(p) = self.procs.get_mut(&serial) {
            p.life = Life::Ended;
            self.pending.remove(&serial);
            self.to_finalize.push_back(serial);
        }
    }

    /// The pidfd of `serial` became readable: the process has exited.
    pub(crate) fn pidfd_readable(&mut self, serial: u64) {
        let zygote = self.zygote_alive();
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        if let Life::Running { watched: true } = p.life {
            self.sys.unwatch(serial);
        }
        p.life = Life::Ended;
        // A port's leader is gone: nothing of its group may outlive it. The
        // group is signalled before the leader is reaped, while its id cannot
        // have been reused.
        if let (Some(port), Some(ospid)) = (p.port(), p.ospid) {
            let cgroup = port.cgroup.clone();
            let _ = self.sys.signal(serial, Some(ospid), SIGKILL);
            if !zygote && let Some(cg) = cgroup {
                self.sys.kill_cgroup(&cg);
            }
        }
        if self.procs.get(&serial).is_some_and(|p| p.role == Role::Spare) {
            // A spare (or a spare that took over): its parent, the zygote,
            // reaps it and says nothing; once its zygote is gone it is the
            // node's child, to reap here.
            self.sys.reap_quietly(serial);
            self.ended(serial);
        } else {
            self.try_status(serial);
        }
    }

    /// The parent of `serial` reaped it and reports its status. The child's
    /// registration travels on its own connection and may not have been
    /// read yet: the status waits for it.
    pub(crate) fn child_exited(&mut self, serial: u64, status: WaitStatus) {
        if let Some(reaper) = self.reports_due.remove(&serial) {
            // Finalized already, with the status the node found itself.
            if let Some(due) = self.due_by_reaper.get_mut(&reaper) {
                due.retain(|&c| c != serial);
                if due.is_empty() {
                    self.due_by_reaper.remove(&reaper);
                }
            }
            self.sys.forget(serial);
            return;
        }
        match self.procs.get_mut(&serial) {
            Some(p) => {
                if p.status.is_none() {
                    p.status = Some(status);
                }
                p.reported = true;
                self.ended(serial);
            }
            None => {
                self.early_status.insert(serial, status);
            }
        }
    }

    /// Looks for the status of an exited process; finalizes it when found.
    pub(super) fn try_status(&mut self, serial: u64) {
        let Some(p) = self.procs.get(&serial) else {
            self.pending.remove(&serial);
            return;
        };
        let (reads_zombie, ospid) = (p.reads_zombie(), p.ospid);
        let status = match p.status {
            Some(s) => Some((s, false)),
            None if p.pidfd => self.sys.wait_status(serial).or_else(|| {
                // Another process's child, not reaped yet: read, so that its
                // end needs no report from its parent (one hop less, on the
                // path of every restart).
                let s = self.sys.zombie_status(serial, ospid.filter(|_| reads_zombie)?)?;
                Some((s, false))
            }),
            None => None,
        };
        match status {
            Some((s, reaped_here)) => {
                if let Some(p) = self.procs.get_mut(&serial) {
                    p.status = Some(s);
                    // Its own child (or its parent ended first): no report.
                    p.reported |= reaped_here;
                }
                self.ended(serial);
            }
            None => {
                self.pending.insert(serial);
            }
        }
    }

    /// Whether some exited process still waits for its status.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Looks again for the statuses still missing.
    pub(crate) fn retry_pending(&mut self) {
        let pending: Vec<u64> = self.pending.iter().copied().collect();
        for s in pending {
            self.try_status(s);
        }
    }

    /// The next process whose end is ready to be turned into signals. Its
    /// control connection must be read to its end before it is finalized.
    pub(crate) fn next_to_finalize(&mut self) -> Option<u64> {
        loop {
            let serial = self.to_finalize.pop_front()?;
            if self.procs.contains_key(&serial) {
                return Some(serial);
            }
        }
    }

    /// Turns the end of `serial` into its signals, exactly once.
    pub(crate) fn finalize(&mut self, serial: u64) {
        let Some(p) = self.procs.remove(&serial) else {
            return;
        };
        self.pending.remove(&serial);
        self.sys.release_leftovers();
        let memory = p.memory_limited.then(|| {
            let sigkilled = matches!(p.status, Some(WaitStatus::Signaled { signal: SIGKILL, .. }));
            self.sys.memory_end(serial, sigkilled)
        });
        let reason = reason_of(&End {
            status: p.status,
            last_words: p.last_words.as_ref(),
            kill_reason: p.kill_reason.as_ref(),
            actor_exit: p.actor_exit.as_ref(),
            port: p.port().is_some(),
            cpu_limited: p.cpu_limited,
            memory,
        });
        if !p.internal() {
            *self.counters.exits.entry(kind_name(&reason)).or_default() += 1;
        }
        let pid = self.pid(serial);
        tracing::debug!(pid = %pid, ospid = ?p.ospid, name = ?p.name, %reason, "process exited");
        self.shared.slot(serial).release(serial);
        // A status the node found itself (from the zombie, or from its pidfd
        // once reaped) for a process whose parent reports it: the report may
        // still come, and is dropped then (its pidfd kept until then).
        let reporter = p.pidfd && !p.reported && p.reads_zombie() && p.reaper != MAIN_SERIAL;
        if reporter && self.knows(p.reaper) {
            self.reports_due.insert(serial, p.reaper);
            self.due_by_reaper.entry(p.reaper).or_default().push(serial);
        } else if p.pidfd {
            if reporter {
                // Its parent ended before it reaped it: it is the node's
                // child now (or the zygote's, which reaps what it adopts).
                self.sys.reap_quietly(serial);
            }
            self.sys.forget(serial);
        }
        // Its children whose reports are due: none comes now (what it sent
        // was read before this); they are the node's (or the zygote's).
        for c in self.due_by_reaper.remove(&serial).unwrap_or_default() {
            self.reports_due.remove(&c);
            self.sys.reap_quietly(c);
            self.sys.forget(c);
        }
        for name in &p.names {
            if self.names.get(name) == Some(&serial) {
                self.names.remove(name);
            }
        }
        for m in &p.monitors {
            if let Some(watcher) = m.remote {
                // On another node: its `Down` goes after what this process
                // sent there.
                self.sys
                    .remote_down(watcher, m.reference, m.internal, pid, reason.clone());
                continue;
            }
            if let Some(w) = self.procs.get_mut(&m.watcher) {
                w.watching.remove(&m.reference);
            }
            self.send_to(
                m.watcher,
                ToProcess::Down {
                    reference: m.reference,
                    internal: m.internal,
                    pid,
                    reason: reason.clone(),
                    name: m.name.clone(),
                },
            );
        }
        self.pool_member_ended(&p, &reason);
        for (reference, target) in &p.watching {
            if let Some(t) = self.procs.get_mut(target) {
                t.monitors
                    .retain(|m| !(m.watcher == serial && m.reference == *reference));
            }
        }
        for &r in &p.remote_links {
            self.sys.remote_exit(r, pid, reason.clone());
        }
        for &l in &p.links {
            let Some(o) = self.procs.get_mut(&l) else {
                continue;
            };
            o.links.remove(&serial);
            let (trap, internal) = (o.trap_exits, o.internal());
            if trap {
                self.send_to(
                    l,
                    ToProcess::Exit {
                        from: pid,
                        reason: reason.clone(),
                    },
                );
            } else if !reason.is_normal() && !internal {
                self.kill(l, reason.clone());
            }
        }
        if let Some(t) = p.ctl {
            self.close_conn(t);
        }
        // Its ports go with it: stopped in order if it ended normally, killed
        // with its reason otherwise.
        let ports = self.live_children(serial, |c| c.port().is_some());
        for port in ports {
            if reason.is_normal() {
                self.terminate_port(port);
            } else {
                self.kill(port, reason.clone());
            }
        }
        // Its children are the node's now (it is their subreaper): watch them.
        let orphans: Vec<u64> = self
            .procs
            .values()
            .filter(|c| c.reaper == serial && c.life == Life::Running { watched: false })
            .map(|c| c.serial)
            .collect();
        for c in orphans {
            if self.sys.watch(c)
                && let Some(child) = self.procs.get_mut(&c)
            {
                child.life = Life::Running { watched: true };
            }
        }
        if self.shutting_down {
            let children = self.live_children(serial, |c| !c.internal());
            for c in children {
                self.exit_signal(MAIN_SERIAL, c, ExitReason::Shutdown, false);
            }
        }
        // Its children that were not reaped are ours now.
        if !self.pending.is_empty() {
            self.retry_pending();
        }
        // Orphans it left behind are looked for later, off this path (a scan
        // of /proc costs more than the rest of an exit).
        if let Some(pgid) = p.ospid {
            self.stranger_groups.push(pgid);
            if p.leave_strays {
                self.exempt_groups.insert(pgid);
            }
        }
    }

    /// The live children of `parent` that `filter` keeps.
    pub(super) fn live_children(&self, parent: u64, filter: impl Fn(&Proc) -> bool) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .procs
            .values()
            .filter(|c| c.parent == parent && !c.exited() && filter(c))
            .map(|c| c.serial)
            .collect();
        v.sort_unstable();
        v
    }

    /// An exit signal from `from` to `target`.
    pub(super) fn exit_signal(&mut self, from: u64, target: u64, reason: ExitReason, untrappable: bool) {
        let from_pid = self.pid(from);
        self.exit_signal_from(from_pid, target, reason, untrappable);
    }

    /// An exit signal from `from_pid` (here, or of another node) to `target`.
    pub(super) fn exit_signal_from(
        &mut self,
        from_pid: crate::pid::Pid,
        target: u64,
        reason: ExitReason,
        untrappable: bool,
    ) {
        let Some(p) = self.procs.get(&target) else {
            return;
        };
        if p.exited() {
            return;
        }
        let own = from_pid == self.pid(target);
        if target == MAIN_SERIAL || (p.internal() && !untrappable) {
            // The node's main thread always traps exits; the runtime's own
            // processes ignore trappable ones.
            if target == MAIN_SERIAL {
                let reason = if untrappable { ExitReason::Killed } else { reason };
                self.send_to(target, ToProcess::Exit { from: from_pid, reason });
            }
            return;
        }
        if p.port().is_some() && !untrappable {
            // A port is an external program: it cannot trap. Shutdown asks it
            // to stop (SIGTERM to its group), the rest kills it.
            if reason == ExitReason::Shutdown {
                self.terminate_port(target);
            } else if !reason.is_normal() || own {
                self.kill(target, reason);
            }
            return;
        }
        if untrappable {
            self.kill(target, ExitReason::Killed);
        } else if p.trap_exits {
            self.send_to(target, ToProcess::Exit { from: from_pid, reason });
        } else if reason.is_normal() && !own {
            // A normal exit signal does nothing to a process that does not trap.
        } else {
            self.kill(target, reason);
        }
    }

    /// Whether the zygote runs (it reaps the ports and owns their cgroups).
    pub(super) fn zygote_alive(&self) -> bool {
        self.alive(ZYGOTE_SERIAL)
    }

    /// Kills `serial` with SIGKILL, recording the reason it dies with.
    pub(crate) fn kill(&mut self, serial: u64, reason: ExitReason) {
        let zygote = self.zygote_alive();
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        // A process already gone did not die of this: its own reason stands
        // (gone, even if the node has not handled its end yet). A port asked
        // to stop (SIGTERM) that has to be killed dies of the kill.
        let gone = p.exited() || (p.pidfd && self.sys.ended(serial));
        if (p.kill_reason.is_none() || std::mem::take(&mut p.terminating)) && !gone {
            p.kill_reason = Some(reason.clone());
        }
        if let Some(host) = p.host() {
            // An actor: its host ends it between two steps, and says so.
            if !p.exited() {
                self.send_to(host, ToProcess::KillActor { actor: serial, reason });
            }
            return;
        }
        if !p.pidfd {
            if let Life::Starting { pidfd_follows, .. } = p.life {
                p.life = Life::Starting {
                    pidfd_follows,
                    kill_pending: true,
                };
            }
            return;
        }
        let group = p.port().and(p.ospid);
        let cgroup = p.port().and_then(|port| port.cgroup.clone());
        if let Err(e) = self.sys.signal(serial, group, SIGKILL) {
            tracing::warn!(serial, "kill failed: {e}");
        }
        // The zygote kills the port's cgroup when it reaps the port (and then
        // uses the cgroup again: only it may kill it).
        if !zygote && let Some(cg) = cgroup {
            self.sys.kill_cgroup(&cg);
        }
    }

    /// Asks a port to stop: `SIGTERM` to its process group now, `SIGKILL` when
    /// its shutdown time is up.
    pub(super) fn terminate_port(&mut self, serial: u64) {
        let Some(p) = self.procs.get_mut(&serial) else {
            return;
        };
        if p.terminating {
            // Asked already: its SIGTERM is sent and its deadline set.
            return;
        }
        // Only the first request records its reason (a kill already sent
        // keeps its own).
        let asked = p.kill_reason.is_none();
        if asked {
            p.kill_reason = Some(ExitReason::Shutdown);
        }
        let (Some(port), Some(ospid), true) = (p.port(), p.ospid, p.pidfd) else {
            if let Life::Starting { pidfd_follows, .. } = p.life {
                p.life = Life::Starting {
                    pidfd_follows,
                    kill_pending: true,
                };
            }
            return;
        };
        let shutdown = (port.shutdown_ms != u64::MAX).then(|| Duration::from_millis(port.shutdown_ms));
        p.terminating = asked;
        let _ = self.sys.signal(serial, Some(ospid), SIGTERM);
        // An infinite shutdown (`u64::MAX` ms) sets no timer.
        if let Some(deadline) = shutdown.and_then(|d| Instant::now().checked_add(d)) {
            self.timers.push((deadline, serial));
            self.timer_armed = true;
        }
    }

    /// Whether a timer was armed since the last call.
    pub(crate) fn take_timer_armed(&mut self) -> bool {
        std::mem::take(&mut self.timer_armed)
    }

    /// The earliest timer, if any.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.iter().map(|t| t.0).min()
    }

    /// Runs the timers due at `now`: ports that did not stop in time are
    /// killed.
    pub(crate) fn run_timers(&mut self, now: Instant) {
        let due: Vec<u64> = self.timers.iter().filter(|t| t.0 <= now).map(|t| t.1).collect();
        self.timers.retain(|t| t.0 > now);
        for serial in due {
            if self.alive(serial) {
                // The kill was needed: it is the reason, as in OTP.
                self.kill(serial, ExitReason::Killed);
            }
        }
    }

    /// Queues a control frame for process `serial`.
    pub(super) fn send_to(&mut self, serial: u64, msg: ToProcess) {
        let Some(p) = self.procs.get(&serial) else {
            return;
        };
        if let Some(host) = p.host() {
            // An actor: through its host. Replies are the host's own (it made
            // the request, with its own reference).
            let msg = match msg {
                ToProcess::Reply { .. } => msg,
                other => ToProcess::ForActor {
                    actor: serial,
                    msg: Box::new(other),
                },
            };
            return self.send_to(host, msg);
        }
        if let Some(conn) = p.ctl {
            self.sys.send(conn, &msg);
        }
    }
}
