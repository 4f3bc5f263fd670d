//! The supervisor process: starts its children, watches them, restarts them
//! by its strategy and intensity, and stops them in order.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::exit::ExitReason;
use crate::mailbox::{Ctx, Event, Mailbox};
use crate::monitor::MonitorRef;
use crate::pid::Pid;
use crate::port::PortOutput;
use crate::process::Builder;
use crate::runtime;

use super::spec::Start;
use super::{ChildInfo, ChildSpec, ChildState, Request, Restart, Shutdown, Strategy, Supervisor, SupervisorError};

/// A child of a running supervisor.
struct Child {
    spec: ChildSpec,
    pid: Option<Pid>,
    restarts: u32,
    last_exit: Option<ExitReason>,
}

impl Child {
    fn info(&self) -> ChildInfo {
        ChildInfo {
            id: self.spec.id.clone(),
            pid: self.pid,
            kind: self.spec.kind(),
            state: if self.pid.is_some() {
                ChildState::Running
            } else {
                ChildState::Stopped
            },
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }
}

/// The supervisor process's state.
pub(super) struct Running {
    ctx: Ctx<Request>,
    me: Pid,
    /// Exit signals from here stop the supervisor: its linked starter, and
    /// the node's main thread (at the node's shutdown).
    parents: Vec<Pid>,
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    children: Vec<Child>,
    /// When the recent restarts happened.
    restarts: VecDeque<Instant>,
    /// Events received while waiting for a child's exit, handled next.
    stash: VecDeque<Event<Request>>,
    /// Children whose restart failed, to try again (in order).
    retry: VecDeque<String>,
}

impl Running {
    /// The supervisor process: starts the children, then serves.
    pub(super) fn start(ctx: Ctx<Request>, spec: Supervisor, parent: Option<Pid>) -> ExitReason {
        let me = ctx.pid();
        if let Some(name) = &spec.name
            && let Err(e) = crate::process::register(name, me)
        {
            // Registered before any child starts, as OTP's
            // `start_link({local, Name}, ...)`: a name held by another
            // process is an error of the start, and nothing starts.
            let holder = crate::process::whereis(name).unwrap_or(me);
            let error = match e {
                crate::RegisterError::Taken(_) => SupervisorError::NameTaken {
                    name: name.clone(),
                    holder,
                },
                other => SupervisorError::Invalid(format!("cannot register {name}: {other}")),
            };
            if let Some(p) = parent {
                ctx.unlink(p);
            }
            // The starter waits for the answer to its first request.
            if let Ok(Request::Started(r)) = ctx.recv() {
                let _ = r.reply(Err(error.clone()));
            }
            return ExitReason::Error(error.to_string());
        }
        let mut parents = vec![crate::node::main_pid(me)];
        parents.extend(parent);
        let mut sup = Running {
            ctx,
            me,
            parents,
            strategy: spec.strategy,
            intensity: spec.intensity,
            period: spec.period,
            children: Vec::new(),
            restarts: VecDeque::new(),
            stash: VecDeque::new(),
            retry: VecDeque::new(),
        };
        for child in spec.children {
            if let Some(c) = sup.children.iter().find(|c| c.spec.id == child.id) {
                let id = c.spec.id.clone();
                return sup.fail_to_start(parent, id, "a child with this id comes earlier".into());
            }
            let id = child.id.clone();
            sup.children.push(Child {
                spec: child,
                pid: None,
                restarts: 0,
                last_exit: None,
            });
            let at = sup.children.len() - 1;
            if let Err(why) = sup.start_child(at) {
                return sup.fail_to_start(parent, id, why);
            }
        }
        tracing::info!(supervisor = %sup.me, children = sup.children.len(), "supervisor started");
        sup.serve()
    }

    /// A child did not start: the others stop, and so does the supervisor.
    /// Its starter (which is waiting for it) learns why from its exit reason,
    /// and is unlinked first so that the failure does not kill it too.
    fn fail_to_start(&mut self, parent: Option<Pid>, id: String, why: String) -> ExitReason {
        tracing::error!(supervisor = %self.me, child = %id, error = %why, "child failed to start");
        self.stop_all();
        if let Some(p) = parent {
            self.ctx.unlink(p);
        }
        ExitReason::Error(format!("child {id} failed to start: {why}"))
    }

    fn next_event(&mut self) -> Option<Event<Request>> {
        if let Some(ev) = self.stash.pop_front() {
            return Some(ev);
        }
        self.ctx.recv_event().ok()
    }

    fn serve(mut self) -> ExitReason {
        loop {
            let Some(ev) = self.next_event() else {
                // The node is gone.
                return ExitReason::Shutdown;
            };
            match ev {
                Event::Message(req) => {
                    if let Some(reason) = self.request(req) {
                        return reason;
                    }
                }
                Event::Exit(signal) => {
                    if let Some(at) = self.child_at(signal.from) {
                        if let Some(reason) = self.child_exited(at, signal.reason) {
                            return reason;
                        }
                    } else if self.parents.contains(&signal.from) {
                        tracing::info!(supervisor = %self.me, reason = %signal.reason, "supervisor stopping");
                        self.stop_all();
                        return signal.reason;
                    }
                }
                Event::Port { port, output } => self.port_output(port, output),
                _ => {}
            }
        }
    }

    fn request(&mut self, req: Request) -> Option<ExitReason> {
        match req {
            Request::Started(r) => {
                let _ = r.reply(Ok(()));
            }
            Request::StartChild(spec, r) => {
                let result = if self.children.iter().any(|c| c.spec.id == spec.id) {
                    Err(SupervisorError::AlreadyPresent(spec.id))
                } else {
                    let id = spec.id.clone();
                    self.children.push(Child {
                        spec,
                        pid: None,
                        restarts: 0,
                        last_exit: None,
                    });
                    let at = self.children.len() - 1;
                    match self.start_child(at) {
                        Ok(pid) => Ok(pid),
                        Err(why) => {
                            self.children.remove(at);
                            Err(SupervisorError::Start { id, why })
                        }
                    }
                };
                let _ = r.reply(result);
            }
            Request::TerminateChild(id, r) => {
                let result = match self.find(&id) {
                    Some(at) => {
                        // A terminated child stays stopped: not retried.
                        self.retry.retain(|pending| pending != &id);
                        self.stop_child(at);
                        if self.children[at].spec.restart == Restart::Temporary {
                            self.children.remove(at);
                        }
                        Ok(())
                    }
                    None => Err(SupervisorError::NotFound(id)),
                };
                let _ = r.reply(result);
            }
            Request::RestartChild(id, r) => {
                let result = match self.find(&id) {
                    Some(at) if self.children[at].pid.is_some() => Err(SupervisorError::Running(id)),
                    Some(at) => self.start_child(at).map_err(|why| SupervisorError::Start { id, why }),
                    None => Err(SupervisorError::NotFound(id)),
                };
                let _ = r.reply(result);
            }
            Request::DeleteChild(id, r) => {
                let result = match self.find(&id) {
                    Some(at) if self.children[at].pid.is_some() => Err(SupervisorError::Running(id)),
                    Some(at) => {
                        self.children.remove(at);
                        Ok(())
                    }
                    None => Err(SupervisorError::NotFound(id)),
                };
                let _ = r.reply(result);
            }
            Request::WhichChildren(r) => {
                let _ = r.reply(self.children.iter().map(Child::info).collect());
            }
            Request::Retry => {
                if let Some(first) = self.retry.front().cloned() {
                    if !self.note_restart() {
                        return Some(self.intensity_reached(&first));
                    }
                    let pending = std::mem::take(&mut self.retry);
                    self.start_group(pending);
                }
            }
            Request::Stop(r) => {
                tracing::info!(supervisor = %self.me, "supervisor stopping");
                self.stop_all();
                // The caller monitors the supervisor: the answer, then the
                // exit, both come.
                let _ = r.reply(());
                return Some(ExitReason::Normal);
            }
        }
        None
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.id == id)
    }

    fn child_at(&self, pid: Pid) -> Option<usize> {
        self.children.iter().position(|c| c.pid == Some(pid))
    }

    /// Starts child `at`; on success it runs, linked to the supervisor.
    fn start_child(&mut self, at: usize) -> Result<Pid, String> {
        let child = &mut self.children[at];
        let started = match &child.spec.start {
            Start::Closure(start) => start().map_err(|e| e.to_string()),
            Start::Fn(Ok(call)) => Builder::new().spawn_call(call.clone(), true).map_err(|e| e.to_string()),
            Start::Fn(Err(e)) => Err(format!("its arguments did not encode: {e}")),
            // The child spec's shutdown governs the port's stop, not the
            // port's own timeout: its SIGTERM waits as long as the spec says.
            Start::Port(port) => port
                .as_ref()
                .clone()
                .shutdown_timeout(match child.spec.shutdown {
                    Shutdown::Timeout(d) => d,
                    Shutdown::Infinity => Duration::MAX,
                    Shutdown::BrutalKill => Duration::ZERO,
                })
                .link(true)
                .spawn()
                .map(|p| p.pid())
                .map_err(|e| e.to_string()),
            Start::Supervisor(sup) => match sup.as_ref().clone().spawn_link() {
                Ok(s) => Ok(s.pid()),
                Err(SupervisorError::Failed(reason)) => Err(reason.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Start::Actor(Ok(actor)) => actor.start(true, false).map(|(pid, _)| pid).map_err(|e| e.to_string()),
            Start::Actor(Err(e)) => Err(format!("its arguments did not encode: {e}")),
        };
        match &started {
            Ok(pid) => {
                child.pid = Some(*pid);
                tracing::info!(supervisor = %self.me, child = %child.spec.id, pid = %pid, "child started");
            }
            Err(why) => {
                tracing::warn!(supervisor = %self.me, child = %child.spec.id, error = %why, "child failed to start");
            }
        }
        started
    }

    /// Child `at` ended on its own with `reason`. Returns the supervisor's
    /// exit reason when it must end.
    fn child_exited(&mut self, at: usize, reason: ExitReason) -> Option<ExitReason> {
        let child = &mut self.children[at];
        let pid = child.pid.take().expect("BUG: found by its pid");
        if reason.is_normal() {
            tracing::info!(supervisor = %self.me, child = %child.spec.id, pid = %pid, reason = %reason, "child exited");
        } else {
            tracing::warn!(supervisor = %self.me, child = %child.spec.id, pid = %pid, reason = %reason, "child exited");
        }
        child.last_exit = Some(reason.clone());
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => !matches!(reason, ExitReason::Normal | ExitReason::Shutdown),
            Restart::Temporary => {
                self.children.remove(at);
                return None;
            }
        };
        if !restart {
            return None;
        }
        self.restart(at)
    }

    /// Restarts child `at` (and others, by the strategy); each attempt counts
    /// toward the intensity.
    fn restart(&mut self, at: usize) -> Option<ExitReason> {
        let id = self.children[at].spec.id.clone();
        if !self.note_restart() {
            return Some(self.intensity_reached(&id));
        }
        // Those that stop and start again with it, in start order.
        let mut group: Vec<String> = match self.strategy {
            Strategy::OneForOne => vec![id.clone()],
            Strategy::OneForAll => self.children.iter().map(|c| c.spec.id.clone()).collect(),
            Strategy::RestForOne => self.children[at..].iter().map(|c| c.spec.id.clone()).collect(),
        };
        for other in group.iter().rev() {
            if let Some(i) = self.find(other) {
                self.stop_child(i);
            }
        }
        // Temporary children stopped with it are not restarted: forgotten.
        let temporary: Vec<String> = self
            .children
            .iter()
            .filter(|c| c.spec.restart == Restart::Temporary && group.contains(&c.spec.id))
            .map(|c| c.spec.id.clone())
            .collect();
        self.children.retain(|c| !temporary.contains(&c.spec.id));
        group.retain(|g| !temporary.contains(g));
        self.start_group(group.into());
        None
    }

    /// Starts the children of `pending`, in order. When one fails to start,
    /// it and those after it are tried again later, through a message to
    /// itself (so that requests and exits are served in between), and the
    /// attempt counts toward the intensity, as in OTP.
    fn start_group(&mut self, mut pending: VecDeque<String>) {
        while let Some(next) = pending.front().cloned() {
            let Some(i) = self.find(&next).filter(|&i| self.children[i].pid.is_none()) else {
                // Deleted, or started again by a request meanwhile.
                pending.pop_front();
                continue;
            };
            match self.start_child(i) {
                Ok(pid) => {
                    self.children[i].restarts += 1;
                    self.count_restart();
                    let restarts = self.children[i].restarts;
                    tracing::info!(supervisor = %self.me, child = %next, pid = %pid, restarts, "child restarted");
                    pending.pop_front();
                }
                Err(_) => {
                    self.retry = pending;
                    let _ = self.ctx.mailbox().send(Request::Retry);
                    return;
                }
            }
        }
    }

    /// Too many restarts: the children stop, and the supervisor ends.
    fn intensity_reached(&mut self, id: &str) -> ExitReason {
        tracing::error!(
            supervisor = %self.me,
            child = %id,
            intensity = self.intensity,
            period = ?self.period,
            "restart intensity reached, supervisor shutting down"
        );
        self.stop_all();
        ExitReason::Shutdown
    }

    /// Counts a restart in the node's stats.
    fn count_restart(&self) {
        if let Some(rt) = runtime::current() {
            rt.shared().restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a restart; false when it is one too many within the period.
    fn note_restart(&mut self) -> bool {
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|&t| now.duration_since(t) > self.period)
        {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        self.restarts.len() as u32 <= self.intensity
    }

    /// Stops every child, in reverse start order.
    fn stop_all(&mut self) {
        for at in (0..self.children.len()).rev() {
            self.stop_child(at);
        }
    }

    /// Stops child `at` by its shutdown, and waits for its exit. The child is
    /// monitored first: if it unlinked itself, its `Down` still comes.
    fn stop_child(&mut self, at: usize) {
        let Some(pid) = self.children[at].pid else {
            return;
        };
        let watch = self.ctx.monitor(pid);
        let target = Mailbox::<()>::from_pid(pid);
        let deadline = match self.children[at].spec.shutdown {
            Shutdown::BrutalKill => {
                target.kill();
                None
            }
            Shutdown::Timeout(d) => {
                target.exit(ExitReason::Shutdown);
                Some(Instant::now() + d)
            }
            Shutdown::Infinity => {
                target.exit(ExitReason::Shutdown);
                None
            }
        };
        let reason = match self.await_exit(pid, watch, deadline) {
            Some(reason) => reason,
            None => {
                tracing::warn!(supervisor = %self.me, child = %self.children[at].spec.id, pid = %pid, "child did not stop in time, killed");
                target.kill();
                // Killed (the node says so of a child the kill ended, whatever
                // it was asked before), or its own reason if it ended just
                // before the kill landed.
                self.await_exit(pid, watch, None).unwrap_or(ExitReason::Killed)
            }
        };
        self.ctx.demonitor(watch);
        let child = &mut self.children[at];
        child.pid = None;
        tracing::info!(supervisor = %self.me, child = %child.spec.id, pid = %pid, reason = %reason, "child stopped");
        child.last_exit = Some(reason);
    }

    /// Waits for the end of `pid`, its exit signal or the `Down` of `watch`
    /// (until `deadline`), keeping every other event for later.
    fn await_exit(&mut self, pid: Pid, watch: MonitorRef, deadline: Option<Instant>) -> Option<ExitReason> {
        let ends = |ev: &Event<Request>| match ev {
            Event::Exit(s) if s.from == pid => Some(s.reason.clone()),
            Event::Down(d) if d.reference == watch => Some(d.reason.clone()),
            _ => None,
        };
        if let Some(i) = self.stash.iter().position(|ev| ends(ev).is_some()) {
            return self.stash.remove(i).and_then(|ev| ends(&ev));
        }
        loop {
            let ev = match deadline {
                Some(d) => self
                    .ctx
                    .recv_event_timeout(d.saturating_duration_since(Instant::now()))
                    .ok()?,
                // Without a deadline, the node going away ends the wait.
                None => self.ctx.recv_event().ok()?,
            };
            if let Some(reason) = ends(&ev) {
                return Some(reason);
            }
            match ev {
                Event::Port { port, output } => self.port_output(port, output),
                other => self.stash.push_back(other),
            }
        }
    }

    /// Logs what a port child writes.
    fn port_output(&self, port: Pid, output: PortOutput) {
        let id = self
            .children
            .iter()
            .find(|c| c.pid == Some(port))
            .map_or("?", |c| c.spec.id.as_str());
        match output {
            PortOutput::Line { data, .. } | PortOutput::Data(data) | PortOutput::Packet(data) => {
                tracing::info!(supervisor = %self.me, child = %id, pid = %port, "{}", String::from_utf8_lossy(&data).trim_end());
            }
            PortOutput::Stderr(data) => {
                tracing::warn!(supervisor = %self.me, child = %id, pid = %port, "{}", String::from_utf8_lossy(&data).trim_end());
            }
            _ => {}
        }
    }
}
