//! The runtime's own processes in the table: schedulers and their
//! replacement, the zygote and its hot spare, the actors schedulers host, and
//! the node's queue of tasks waiting for an idle scheduler.

use std::sync::atomic::Ordering::{AcqRel, Relaxed, SeqCst};

use crate::exit::ExitReason;
use crate::wire::envelope::{Registration, ToProcess};

use super::{Life, MAIN_SERIAL, Proc, Role, System, Table, ZYGOTE_SERIAL};

/// A task waiting in the node's queue.
#[derive(Debug)]
pub(super) struct Queued {
    /// The task's id (what a scheduler's busy mark holds).
    task: u64,
    /// Who submitted it.
    submitter: u64,
    /// The submitter's reference for it.
    reference: u64,
    /// The frame that starts it.
    message: Vec<u8>,
}

impl<S: System> Table<S> {
    /// Queues a task for an idle scheduler of `class`.
    pub(super) fn enqueue(&mut self, submitter: u64, class: usize, task: u64, reference: u64, message: Vec<u8>) {
        if let Some(q) = self.queues.get_mut(class) {
            q.push_back(Queued {
                task,
                submitter,
                reference,
                message,
            });
            self.dispatch(class);
        }
    }

    /// Hands queued tasks of `class` to its idle schedulers, oldest first,
    /// and publishes how many still wait (a scheduler that becomes idle
    /// while tasks wait says so).
    pub(super) fn dispatch(&mut self, class: usize) {
        let slots = self.pool.slots(class);
        // Published first: a scheduler that becomes idle while this runs sees
        // that tasks wait (and says so), or is claimed here.
        self.shared.pool.queued[class].store(self.queues[class].len() as u64, SeqCst);
        while let Some(task) = self.queues[class].front().map(|q| q.task) {
            let taken = slots.clone().find_map(|slot| {
                let s = &self.shared.schedulers[slot];
                let serial = s.serial.load(SeqCst);
                let ready = serial != 0 && self.alive(serial);
                (ready && s.busy.compare_exchange(0, task, SeqCst, SeqCst).is_ok()).then_some(serial)
            });
            let Some(serial) = taken else { break };
            let q = self.queues[class].pop_front().expect("BUG: front seen above");
            self.dispatched.insert(serial, (q.submitter, q.reference));
            self.send_to(serial, ToProcess::Message(q.message));
        }
        self.shared.pool.queued[class].store(self.queues[class].len() as u64, SeqCst);
    }

    /// Registers an actor that scheduler `host` runs, and hands it the
    /// message that starts it. An actor whose host is gone never runs: it
    /// ends at once with `NoProc`.
    pub(super) fn spawn_actor(&mut self, reg: Registration, host: u64, register: Option<String>, start: Vec<u8>) {
        let serial = reg.serial;
        let parent = reg.parent;
        if self.knows(serial) {
            return;
        }
        let parent_alive = self.alive(parent);
        let host_alive = self
            .procs
            .get(&host)
            .is_some_and(|h| !h.exited() && h.scheduler().is_some());
        let mut p = Proc::new(serial, parent, Role::Actor { host });
        p.name = reg.name;
        p.trap_exits = reg.trap_exits;
        p.reaper = host;
        self.insert_child(p, &reg.monitors, reg.link, parent_alive);
        if let Some(name) = register {
            if self.names.get(&name).is_some_and(|&h| self.alive(h)) {
                // As OTP's `start_link` with a name in use: it never runs.
                // Its host forgets what came for it.
                let reason = ExitReason::Error(format!("the name {name} is registered already"));
                if host_alive {
                    self.send_to(
                        host,
                        ToProcess::KillActor {
                            actor: serial,
                            reason: reason.clone(),
                        },
                    );
                }
                self.actor_ended(serial, reason);
                return;
            }
            self.names.insert(name.clone(), serial);
            if let Some(p) = self.procs.get_mut(&serial) {
                p.names.push(name);
            }
        }
        if host_alive {
            self.send_to(host, ToProcess::Message(start));
            if !parent_alive && reg.link {
                // The spawner is already gone: the link fires at once.
                self.exit_signal(parent, serial, ExitReason::NoProc, false);
            }
        } else {
            self.actor_ended(serial, ExitReason::NoProc);
        }
    }

    /// An actor ended (its host said so, or its host is gone).
    pub(super) fn actor_ended(&mut self, serial: u64, reason: ExitReason) {
        if let Some(p) = self.procs.get_mut(&serial)
            && !p.exited()
        {
            p.actor_exit = Some(reason);
            self.ended(serial);
        }
    }

    /// Registers the zygote's hot spare (a child of the zygote) on its own
    /// connection; its pidfd is the next descriptor received there.
    pub(super) fn add_spare(&mut self, conn: u64, serial: u64, ospid: i32) {
        // Only a child of the zygote, on a connection of its own, with a
        // serial nobody has.
        let parent = self.sys.parent_of(ospid);
        let zygote = self.procs.get(&ZYGOTE_SERIAL).and_then(|z| z.ospid);
        // A spare whose zygote died (even if the node has not seen it yet)
        // is the node's: the node is the subreaper.
        let node = self.procs.get(&MAIN_SERIAL).and_then(|m| m.ospid);
        let fresh = matches!(self.owners.get(&conn), Some(None)) && !self.knows(serial);
        if !fresh || parent.is_none() || (parent != zygote && parent != node) || !self.sys.claim_fd(conn, serial) {
            self.counters.refused += 1;
            tracing::warn!(
                ospid,
                ?parent,
                ?zygote,
                fresh,
                "refused a zygote spare that is not the zygote's child"
            );
            self.sys.drop_fd(conn);
            self.close_conn(conn);
            return;
        }
        self.owners.insert(conn, Some(serial));
        tracing::debug!(
            serial,
            ospid,
            zygote_alive = self.zygote_alive(),
            "zygote spare registered"
        );
        let mut p = Proc::new(serial, MAIN_SERIAL, Role::Spare);
        p.ctl = Some(conn);
        // Its parent, the zygote, reaps it; the node watches its pidfd all
        // the same, to know when it is gone.
        p.reaper = MAIN_SERIAL;
        p.name = Some("zygote-spare".into());
        self.procs.insert(serial, p);
        self.attach_pidfd(serial, ospid);
        if let Some(old) = self.spare.replace(serial) {
            self.kill(old, ExitReason::Killed);
        }
        if self.shutting_down {
            self.kill(serial, ExitReason::Shutdown);
        } else if !self.knows(ZYGOTE_SERIAL) {
            // The zygote died, and its end was handled, before its spare was
            // known. (One that ended and is not finalized yet promotes its
            // spare when it is.)
            self.promote_spare();
        }
    }

    /// The zygote is gone: its spare becomes the zygote (the same role,
    /// serial and listener), forks a spare of its own, and starts the
    /// replacements of the schedulers that died meanwhile.
    fn promote_spare(&mut self) {
        if self.knows(ZYGOTE_SERIAL) {
            // The old zygote's end is not finalized yet: the spare takes its
            // serial only then, never over its entry.
            return;
        }
        let Some(serial) = self.spare.take() else {
            tracing::error!("the zygote is gone and has no spare: no spawn_fn, ports or scheduler replacements");
            return;
        };
        let Some(mut p) = self.procs.remove(&serial) else {
            return;
        };
        if p.exited() {
            self.procs.insert(serial, p);
            return;
        }
        tracing::warn!(ospid = ?p.ospid, "the zygote is gone: its spare takes over");
        p.serial = ZYGOTE_SERIAL;
        p.name = Some("zygote".into());
        self.zygote_replaced = true;
        if p.pidfd {
            if let Life::Running { watched: true } = p.life {
                self.sys.unwatch(serial);
            }
            self.sys.rename(serial, ZYGOTE_SERIAL);
            let watched = self.sys.watch(ZYGOTE_SERIAL);
            p.life = Life::Running { watched };
        }
        if let Some(conn) = p.ctl {
            self.owners.insert(conn, Some(ZYGOTE_SERIAL));
        }
        self.procs.insert(ZYGOTE_SERIAL, p);
        self.send_to(ZYGOTE_SERIAL, ToProcess::TakeOver);
        // The new zygote kills the strays if the node dies, as the old one
        // would have.
        for (ospid, pgid) in self.sys.strays() {
            if !self.exempt_groups.contains(&pgid) {
                self.send_to(ZYGOTE_SERIAL, ToProcess::Stray { ospid });
            }
        }
        let mut asked: Vec<(u32, bool)> = self.replacements.iter().map(|(&s, &r)| (s, r)).collect();
        asked.sort_unstable();
        for (slot, was_ready) in asked {
            self.send_to(ZYGOTE_SERIAL, ToProcess::ReplaceScheduler { slot, was_ready });
        }
    }

    /// A scheduler ended: submitters stop picking it, and the zygote starts
    /// another in its slot.
    fn replace_scheduler(&mut self, slot: u32, serial: u64, never_ran: bool) {
        let was_ready = self.shared.schedulers[slot as usize]
            .serial
            .compare_exchange(serial, 0, AcqRel, Relaxed)
            .is_ok()
            || never_ran;
        if self.shutting_down {
            return;
        }
        self.replacements.insert(slot, was_ready);
        tracing::debug!(
            slot,
            serial,
            was_ready,
            zygote = self.zygote_alive(),
            "scheduler to replace"
        );
        if self.zygote_alive() {
            self.send_to(ZYGOTE_SERIAL, ToProcess::ReplaceScheduler { slot, was_ready });
        }
    }

    /// What the end of `p` means to the pool: a scheduler is replaced, its
    /// actors end with its reason and the submitter of the task it was
    /// handed is told; the zygote's spare takes over from the zygote.
    pub(super) fn pool_member_ended(&mut self, p: &Proc, reason: &ExitReason) {
        let serial = p.serial;
        if let Some(slot) = p.scheduler() {
            // One that never ran (its zygote died first) is no sign of a
            // failing start.
            self.replace_scheduler(slot, serial, *reason == ExitReason::NoProc);
        }
        if serial == ZYGOTE_SERIAL && !self.shutting_down {
            self.promote_spare();
        }
        if self.spare == Some(serial) {
            self.spare = None;
        }
        if p.scheduler().is_none() {
            return;
        }
        // The actors it hosted end with it, with its reason.
        let mut hosted: Vec<u64> = self
            .procs
            .values()
            .filter(|a| a.host() == Some(serial) && !a.exited())
            .map(|a| a.serial)
            .collect();
        hosted.sort_unstable();
        for a in hosted {
            self.actor_ended(a, reason.clone());
        }
        if let Some((submitter, reference)) = self.dispatched.remove(&serial) {
            // The task it was handed from a queue (if it had not finished):
            // its submitter decides what now.
            self.send_to(
                submitter,
                ToProcess::Down {
                    reference,
                    internal: true,
                    pid: self.pid(serial),
                    reason: reason.clone(),
                    name: None,
                },
            );
        }
    }
}
