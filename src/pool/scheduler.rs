//! A scheduler: a process forked by the zygote that runs tasks one at a time
//! for as long as it lives.
//!
//! Each scheduler owns a slot of the shared area. It publishes its serial
//! there once it can receive, and its state: idle (`busy == 0`) or handed a
//! task. A submitter claims an idle scheduler by swapping `busy` from 0 to
//! its task's id and sends the task straight to it; when none is idle the
//! task goes to the node's queue of its class, and the node hands it to the
//! next scheduler that becomes idle, which says so when tasks wait. So idle
//! schedulers pull the work, and a class of `n` schedulers runs at most `n`
//! of its tasks at once (each runs one at a time).
//!
//! Before running a task the scheduler marks it as started in the shared
//! task marks, unless its submitter marked it cancelled first. If the
//! scheduler dies, the task's submitter reads the mark to tell a task that
//! was running (it fails with the scheduler's exit reason: at most once) from
//! one that had not started (it is sent again).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::exit::{ExitReason, panic_message};
use crate::mailbox::{ReplyTo, next_message};
use crate::pool::actor::{ActorStart, Host};
use crate::runtime::Runtime;
use crate::runtime::inbox::Item;
use crate::sys::shared::{CANCELLED, TASK_MARKS};
use crate::sys::text::{self, FnAddr};
use crate::wire::Bytes;
use crate::wire::envelope::ToNode;

/// What runs a task in a scheduler: an entry point monomorphized for the
/// task's types, given the application's function and encoded arguments.
pub(crate) type TaskEntry = fn(FnAddr, Vec<u8>) -> Outcome;

/// How a task ended, as its submitter receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// It returned this (encoded) value.
    Done(Bytes),
    /// It panicked with this message.
    Panicked(String),
    /// It was cancelled before it started.
    Cancelled,
    /// Its function or arguments could not be used.
    Refused(String),
}

/// A task, as it travels to a scheduler.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskMsg {
    pub(crate) id: u64,
    pub(crate) entry: FnAddr,
    pub(crate) func: FnAddr,
    pub(crate) args: Bytes,
    pub(crate) reply: ReplyTo<Outcome>,
}

/// The entry point of task functions `fn(A) -> R`.
pub(crate) fn task_entry<A, R>(func: FnAddr, args: Vec<u8>) -> Outcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let Some(f) = text::restore::<fn(A) -> R>(func) else {
        return Outcome::Refused("the task is not a function of this executable".into());
    };
    let args = match crate::wire::decode_exact::<A>(&args) {
        Ok(a) => a,
        Err(e) => return Outcome::Refused(format!("decoding the arguments failed: {e}")),
    };
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(args))) {
        Ok(value) => match postcard::to_stdvec(&value) {
            Ok(bytes) => Outcome::Done(Bytes(bytes)),
            Err(e) => Outcome::Refused(format!("encoding the result failed: {e}")),
        },
        Err(payload) => Outcome::Panicked(panic_message(&*payload)),
    }
}

/// The entry point of a `map` batch: `f` over every item, each item's panic
/// its own.
pub(crate) fn batch_entry<A, R>(func: FnAddr, args: Vec<u8>) -> Outcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let Some(f) = text::restore::<fn(A) -> R>(func) else {
        return Outcome::Refused("the task is not a function of this executable".into());
    };
    let items = match crate::wire::decode_exact::<Vec<A>>(&args) {
        Ok(a) => a,
        Err(e) => return Outcome::Refused(format!("decoding the items failed: {e}")),
    };
    let results: Vec<Result<R, String>> = items
        .into_iter()
        .map(|a| std::panic::catch_unwind(AssertUnwindSafe(|| f(a))).map_err(|p| panic_message(&*p)))
        .collect();
    match postcard::to_stdvec(&results) {
        Ok(bytes) => Outcome::Done(Bytes(bytes)),
        Err(e) => Outcome::Refused(format!("encoding the results failed: {e}")),
    }
}

/// How long a claim may stay without its task arriving before the scheduler
/// takes it back (its claimer died between claiming and sending).
const STALE_CLAIM: Duration = Duration::from_secs(1);

/// The `busy` of a scheduler stepping its actors: no task is handed to it.
pub(crate) const STEPPING: u64 = u64::MAX;

/// Steps after which a scheduler busy with actors reads its sockets again.
const POLL_EVERY_STEPS: usize = 64;

/// Time after which a scheduler busy with actors reads its sockets again.
const POLL_EVERY: Duration = Duration::from_micros(200);

/// What a scheduler receives in its own mailbox.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SchedMsg {
    /// Run a task.
    Run(TaskMsg),
    /// Start an actor the node registered.
    Start(ActorStart),
}

/// What the scheduler found to do.
struct Work {
    sched: Option<SchedMsg>,
    kills: Vec<(u64, ExitReason)>,
    steps: Vec<(u64, Item)>,
}

/// The scheduler process of slot `slot`.
pub(crate) fn run(rt: &'static Runtime, slot: usize) -> ExitReason {
    // First: what `init` sends goes through the node too (a direct session
    // carries one sender's frames, and this process's are many's).
    rt.host_actors();
    if let Some(init) = rt.settings().pool.init
        && let Some(f) = text::restore::<fn()>(init)
    {
        f();
    }
    let class = rt
        .settings()
        .pool
        .class_of(slot)
        .expect("BUG: slots come from the classes");
    let shared = rt.shared();
    let me = &shared.schedulers[slot];
    me.busy.store(0, SeqCst);
    me.running.store(0, SeqCst);
    // The actors of the scheduler this one replaces are gone.
    me.actors.store(0, SeqCst);
    // Ready: submitters may pick this slot from now on.
    me.serial.store(rt.pid().serial(), SeqCst);
    tracing::debug!(slot, pid = %rt.pid(), "scheduler ready");
    let mut host = Host::new(rt, slot);
    // The claim this scheduler holds and gives back at the top of the loop
    // (the id of the task it ran, or STEPPING). Only its own: a claim taken
    // since it became ready (a task on its way) stays until that task ran,
    // so that no second task is handed to it meanwhile.
    let mut release: Option<u64> = None;
    // A claim of this scheduler, and since when it has stood unanswered.
    let mut claim_seen = (0u64, Instant::now());
    let mut idle_told = Instant::now();
    let mut steps_since_poll = 0;
    let mut last_poll = Instant::now();
    let tell_idle = |idle_told: &mut Instant| {
        *idle_told = Instant::now();
        rt.tell_node_raw(&ToNode::Idle { slot: slot as u32 });
    };
    if shared.pool.queued[class].load(SeqCst) > 0 && me.busy.load(SeqCst) == 0 {
        tell_idle(&mut idle_told);
    }
    loop {
        let queued = || shared.pool.queued[class].load(SeqCst) > 0;
        if let Some(held) = release.take() {
            // Free for a claim; ask for a queued task if any waits.
            let _ = me.busy.compare_exchange(held, 0, SeqCst, SeqCst);
            if queued() && me.busy.load(SeqCst) == 0 {
                tell_idle(&mut idle_told);
            }
        } else {
            let b = me.busy.load(SeqCst);
            if b == 0 || b == STEPPING {
                claim_seen = (0, Instant::now());
                if b == 0 && queued() && idle_told.elapsed() >= STALE_CLAIM {
                    // Idle while tasks wait: say so again.
                    tell_idle(&mut idle_told);
                }
            } else if b != claim_seen.0 {
                claim_seen = (b, Instant::now());
            } else if claim_seen.1.elapsed() >= STALE_CLAIM && me.busy.compare_exchange(b, 0, SeqCst, SeqCst).is_ok() {
                // Its claimer died between claiming and sending.
                claim_seen = (0, Instant::now());
                if queued() {
                    tell_idle(&mut idle_told);
                }
            }
        }
        if steps_since_poll >= POLL_EVERY_STEPS || last_poll.elapsed() >= POLL_EVERY {
            // Work is never short while actors have events queued: read the
            // sockets now and then all the same, so that what arrives for the
            // others (and tasks) gets its turn.
            let _ = rt.inbox.pump(rt, Some(Instant::now()), |_| None::<()>);
            steps_since_poll = 0;
            last_poll = Instant::now();
        }
        let spin = rt.settings().pool.busy_wait;
        let work = rt
            .inbox
            .pump_spinning(rt, Some(Instant::now() + STALE_CLAIM), spin, |st| {
                let sched = next_message::<SchedMsg>(rt, st, |_| true);
                let kills = std::mem::take(&mut st.hosted.kills);
                // One event per ready actor: a round.
                let mut steps = Vec::new();
                for _ in 0..st.hosted.ready.len() {
                    let Some(actor) = st.hosted.ready.pop_front() else {
                        break;
                    };
                    let Some(q) = st.hosted.queues.get_mut(&actor) else {
                        continue;
                    };
                    match q.items.pop_front() {
                        Some(item) => {
                            steps.push((actor, item));
                            if q.items.is_empty() {
                                q.in_ready = false;
                            } else {
                                st.hosted.ready.push_back(actor);
                            }
                        }
                        None => q.in_ready = false,
                    }
                }
                (sched.is_some() || !kills.is_empty() || !steps.is_empty()).then_some(Work { sched, kills, steps })
            });
        let Some(work) = work else {
            if rt.inbox.lock().disconnected {
                // The node is gone.
                return ExitReason::Normal;
            }
            continue;
        };
        // While actors step, the scheduler takes no task: an actor that
        // waits for a task must not wait for its own scheduler.
        let stepping =
            !work.kills.is_empty() || !work.steps.is_empty() || matches!(work.sched, Some(SchedMsg::Start(_)));
        if stepping && me.busy.compare_exchange(0, STEPPING, SeqCst, SeqCst).is_ok() {
            release = Some(STEPPING);
        }
        for (actor, reason) in work.kills {
            host.end(actor, reason);
        }
        steps_since_poll += work.steps.len();
        for (actor, item) in work.steps {
            host.step(actor, item);
        }
        match work.sched {
            Some(SchedMsg::Run(task)) => {
                let id = task.id;
                run_task(rt, slot, task);
                // Its claim, or STEPPING when actors stepped in the same
                // round (the task's claim then was never placed).
                release = Some(match release {
                    Some(STEPPING) if me.busy.load(SeqCst) == STEPPING => STEPPING,
                    _ => id,
                });
            }
            Some(SchedMsg::Start(start)) => {
                host.watch();
                host.start(start);
            }
            None => {}
        }
    }
}

/// Runs a task and replies.
fn run_task(rt: &'static Runtime, slot: usize, task: TaskMsg) {
    let shared = rt.shared();
    let me = &shared.schedulers[slot];
    // Running first, then the mark: a canceller that sees the mark sees
    // which scheduler to stop.
    me.running.store(task.id, SeqCst);
    let outcome = if start(&shared.task_marks[task.id as usize % TASK_MARKS], task.id) {
        shared.pool.started.fetch_add(1, Relaxed);
        let outcome = match text::restore::<TaskEntry>(task.entry) {
            Some(entry) => entry(task.func, task.args.0),
            None => Outcome::Refused("the task's entry point is not a function of this executable".into()),
        };
        // Done, unless a canceller marked it first: then it is killing this
        // scheduler for it, and nothing more may run here (another task
        // would die of a cancel that was not its own). Its submitter learns
        // `Cancelled` from this scheduler's end, counted as any death
        // mid-task is.
        if me.running.compare_exchange(task.id, 0, SeqCst, SeqCst).is_err() {
            crate::sys::process::kill_self();
        }
        let counter = match outcome {
            Outcome::Done(_) => &shared.pool.done,
            _ => &shared.pool.failed,
        };
        counter.fetch_add(1, Relaxed);
        outcome
    } else {
        me.running.store(0, SeqCst);
        shared.pool.dropped.fetch_add(1, Relaxed);
        Outcome::Cancelled
    };
    // The submitter may be gone: then nobody needs the answer.
    let _ = task.reply.reply(outcome);
}

/// Marks task `id` as started, unless it was cancelled first. Marks only
/// grow: a mark of a later task (ids that share the slot) is left alone,
/// and this task then counts as started for its submitter anyway.
fn start(mark: &AtomicU64, id: u64) -> bool {
    let mut cur = mark.load(SeqCst);
    loop {
        if cur == id | CANCELLED {
            return false;
        }
        if cur & !CANCELLED > id {
            return true;
        }
        match mark.compare_exchange(cur, id, SeqCst, SeqCst) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}
