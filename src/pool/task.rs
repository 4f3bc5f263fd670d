//! Tasks: functions run by the scheduler pool, with a handle to join them.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::exit::ExitReason;
use crate::mailbox::{Mailbox, ReplyTo};
use crate::pid::Pid;
use crate::pool::scheduler::{Outcome, SchedMsg, TaskEntry, TaskMsg, batch_entry, task_entry};
use crate::runtime::inbox::decode_message;
use crate::runtime::{self, Runtime};
use crate::sys::shared::{CANCELLED, TASK_MARKS};
use crate::sys::text::{self, FnAddr};
use crate::wire::Bytes;
use crate::wire::envelope::ToNode;

/// The class tasks go to unless told otherwise.
pub const DEFAULT_CLASS: &str = "default";

/// How long a submit waits for a scheduler of its class to be ready (one is
/// replaced within milliseconds when it dies).
const READY_PATIENCE: Duration = Duration::from_secs(5);

/// Why a task gave no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked with this message.
    #[error("the task panicked: {0}")]
    Panicked(String),
    /// The scheduler running the task died (killed, crashed, out of memory):
    /// its exit reason. The task is not run again unless it is
    /// [`retryable`](Task::retryable).
    #[error("the scheduler running the task died: {0}")]
    Crashed(ExitReason),
    /// The task was cancelled.
    #[error("the task was cancelled")]
    Cancelled,
    /// No value within the time given to `join_timeout` (the task goes on).
    #[error("the task did not finish in time")]
    Timeout,
    /// The class has no scheduler, or none became ready in time.
    #[error("no scheduler in class {0}")]
    NoScheduler(String),
    /// The arguments or the result could not be encoded or decoded, or the
    /// function is not one of this executable.
    #[error("the task could not run: {0}")]
    Refused(String),
    /// `converge::init()` has not been called in this program.
    #[error("converge::init() has not been called")]
    NotInitialized,
}

impl From<TaskError> for crate::Error {
    fn from(e: TaskError) -> crate::Error {
        crate::Error::other(e)
    }
}

/// What a task needs to be sent (again).
#[derive(Debug, Clone)]
struct Request {
    entry: FnAddr,
    func: FnAddr,
    args: Vec<u8>,
}

/// One sending of a task to a scheduler.
#[derive(Debug)]
struct Attempt {
    /// The scheduler's slot and pid, when sent straight to it (not through
    /// the node's queue).
    scheduler: Option<(usize, Pid)>,
    /// The reply's reference.
    reference: u64,
    /// The reference of this process's monitor on the scheduler.
    watch: Option<u64>,
}

/// A task running in (or on its way to) the scheduler pool. `join` gives its
/// value; dropping the handle lets the task run to its end unobserved.
///
/// Delivery: a task that was only queued on a scheduler that died is sent to
/// another one; a task that was running when its scheduler died fails with
/// [`TaskError::Crashed`] (at most once), unless it is
/// [`retryable`](Self::retryable), in which case it runs again.
#[derive(Debug)]
pub struct Task<R> {
    rt: &'static Runtime,
    id: u64,
    class: usize,
    request: Request,
    attempt: Option<Attempt>,
    retryable: bool,
    cancelled: bool,
    /// Cancelled before it started: it never will.
    before_start: bool,
    _r: PhantomData<fn() -> R>,
}

/// Submits `f(args)` to the default class; see [`submit_to`].
pub fn submit<A, R>(f: fn(A) -> R, args: A) -> Result<Task<R>, TaskError>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    submit_to(DEFAULT_CLASS, f, args)
}

/// Submits `f(args)` to a scheduler of `class`: the one with the fewest
/// tasks waiting. `f` must be a plain function (not a capturing closure):
/// schedulers are forks of this executable, and `args` travel encoded.
/// Works from the node and from any process.
pub fn submit_to<A, R>(class: &str, f: fn(A) -> R, args: A) -> Result<Task<R>, TaskError>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    let args = postcard::to_stdvec(&args).map_err(|e| TaskError::Refused(format!("encoding the arguments: {e}")))?;
    let request = Request {
        entry: text::erase::<TaskEntry>(task_entry::<A, R>),
        func: text::erase(f),
        args,
    };
    Task::start(class, request)
}

impl<R> Task<R> {
    fn start(class: &str, request: Request) -> Result<Task<R>, TaskError> {
        let rt = runtime::current().ok_or(TaskError::NotInitialized)?;
        let class_index = rt
            .settings()
            .pool
            .classes
            .iter()
            .position(|c| c.0 == class)
            .ok_or_else(|| TaskError::NoScheduler(class.to_string()))?;
        let mut task = Task {
            rt,
            id: rt.shared().next_task.fetch_add(1, SeqCst) + 1,
            class: class_index,
            request,
            attempt: None,
            retryable: false,
            cancelled: false,
            before_start: false,
            _r: PhantomData,
        };
        task.send()?;
        Ok(task)
    }

    /// The task's id, unique on the node.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The scheduler the task was sent to, when it went straight to one
    /// (not through the node's queue) and has not ended.
    pub fn scheduler(&self) -> Option<Pid> {
        self.attempt.as_ref().and_then(|a| a.scheduler).map(|s| s.1)
    }

    /// Runs the task again if its scheduler dies while running it (for tasks
    /// that can safely run more than once).
    pub fn retryable(mut self) -> Task<R> {
        self.retryable = true;
        self
    }

    /// Sends the task to an idle scheduler of its class, or to the node's
    /// queue of the class when none is idle (or tasks wait there already).
    fn send(&mut self) -> Result<(), TaskError> {
        let rt = self.rt;
        let reference = rt.next_ref();
        let msg = TaskMsg {
            id: self.id,
            entry: self.request.entry,
            func: self.request.func,
            args: Bytes(self.request.args.clone()),
            reply: ReplyTo::new(rt.pid(), reference),
        };
        rt.inbox.await_ref(reference);
        let attempt = match claim(rt, self.class, self.id) {
            Ok(Some((slot, scheduler))) => {
                let watch = rt.watch_scheduler(scheduler);
                match Mailbox::<SchedMsg>::from_pid(scheduler).send(SchedMsg::Run(msg)) {
                    Ok(()) => Ok(Attempt {
                        scheduler: Some((slot, scheduler)),
                        reference,
                        watch: Some(watch),
                    }),
                    Err(e) => {
                        let _ = rt.shared().schedulers[slot]
                            .busy
                            .compare_exchange(self.id, 0, SeqCst, SeqCst);
                        Err(TaskError::Refused(e.to_string()))
                    }
                }
            }
            Ok(None) => match crate::wire::body::message(&SchedMsg::Run(msg)) {
                Ok(message) if message.len() <= rt.settings().max_message => {
                    rt.tell_node(&ToNode::Enqueue {
                        class: self.class as u32,
                        task: self.id,
                        reference,
                        message,
                    });
                    Ok(Attempt {
                        scheduler: None,
                        reference,
                        watch: None,
                    })
                }
                Ok(message) => Err(TaskError::Refused(format!(
                    "the task is {} bytes, over the limit of {} bytes",
                    message.len(),
                    rt.settings().max_message
                ))),
                Err(e) => Err(TaskError::Refused(format!("encoding the task: {e}"))),
            },
            Err(e) => Err(e),
        };
        match attempt {
            Ok(a) => {
                rt.shared().pool.submitted.fetch_add(1, Relaxed);
                self.attempt = Some(a);
                Ok(())
            }
            Err(e) => {
                rt.inbox.forget_ref(reference);
                Err(e)
            }
        }
    }

    /// Asks for the task to be cancelled. A task that has not started never
    /// will; a running one is stopped by killing its scheduler (which is
    /// replaced at once). `join` then gives [`TaskError::Cancelled`], or the
    /// value if the task had already finished. A cancel never ends another
    /// task: the scheduler is marked while it runs this task, and one marked
    /// runs no other before it dies. The actors that scheduler hosts end
    /// with it (`Killed`), as when a scheduler crashes.
    pub fn cancel(&mut self) {
        if self.attempt.is_none() || self.cancelled {
            return;
        }
        self.cancelled = true;
        let shared = self.rt.shared();
        let mark = &shared.task_marks[self.id as usize % TASK_MARKS];
        let mut cur = mark.load(SeqCst);
        loop {
            // Started (or its mark taken by a later task: counted as
            // started, at most once).
            if cur & !CANCELLED >= self.id {
                break;
            }
            match mark.compare_exchange(cur, self.id | CANCELLED, SeqCst, SeqCst) {
                Ok(_) => {
                    // It will not start: nothing to wait for.
                    self.before_start = true;
                    return;
                }
                Err(now) => cur = now,
            }
        }
        // Running (or finished): stop its scheduler if it still runs it. The
        // mark is set only while it runs this task, and a scheduler whose
        // task is marked runs no other: the kill cannot end another task.
        for slot in self.rt.settings().pool.slots(self.class) {
            let s = &shared.schedulers[slot];
            let serial = s.serial.load(SeqCst);
            if serial != 0
                && s.running
                    .compare_exchange(self.id, self.id | CANCELLED, SeqCst, SeqCst)
                    .is_ok()
            {
                Mailbox::<SchedMsg>::from_pid(Pid::new(self.rt.pid().node(), serial)).kill();
            }
        }
    }

    /// Whether the task started in a scheduler (its mark is there; a mark
    /// overwritten by a later task counts as started: at most once).
    fn started(&self) -> bool {
        let mark = self.rt.shared().task_marks[self.id as usize % TASK_MARKS].load(SeqCst);
        mark & !CANCELLED > self.id || mark == self.id
    }

    /// Waits for the current attempt's outcome until `deadline`; sends the
    /// task again when its scheduler died before starting it.
    fn wait(&mut self, deadline: Option<Instant>) -> Result<Outcome, TaskError> {
        loop {
            if self.before_start {
                self.finish_attempt();
                return Err(TaskError::Cancelled);
            }
            let Some((reference, watch)) = self.attempt.as_ref().map(|a| (a.reference, a.watch)) else {
                return Err(TaskError::Cancelled);
            };
            // The reply, or the end of the scheduler it was handed to (which
            // comes after anything the scheduler sent: a reply is never
            // missed). A queued task's scheduler is told by the node.
            let spin = self.rt.settings().pool.busy_wait;
            let got = self.rt.inbox.pump_spinning(self.rt, deadline, spin, |st| {
                if let Some(a) = st.awaited.get_mut(&reference) {
                    if let Some(reply) = a.reply.take() {
                        return Some(Ok(reply));
                    }
                    if let Some(reason) = a.down.take() {
                        return Some(Err(reason));
                    }
                }
                watch
                    .and_then(|w| st.awaited.get(&w).and_then(|a| a.down.clone()))
                    .map(Err)
            });
            match got {
                None => return Err(TaskError::Timeout),
                Some(Ok((fp, body))) => {
                    self.finish_attempt();
                    return decode_message::<Outcome>(fp, &body).map_err(|e| TaskError::Refused(e.to_string()));
                }
                Some(Err(reason)) => {
                    if let Some(scheduler) = self.attempt.as_ref().and_then(|a| a.scheduler) {
                        self.rt.unwatch_scheduler(scheduler.1);
                    }
                    self.finish_attempt();
                    let counters = &self.rt.shared().pool;
                    let started = self.started();
                    if started && (self.cancelled || !self.retryable) {
                        counters.failed.fetch_add(1, Relaxed);
                    } else if !started {
                        counters.dropped.fetch_add(1, Relaxed);
                    }
                    if self.cancelled {
                        return Err(TaskError::Cancelled);
                    }
                    if started && !self.retryable {
                        return Err(TaskError::Crashed(reason));
                    }
                    if started {
                        // Retried: the attempt is forgotten, and the task runs
                        // again as a new one.
                        counters.started.fetch_sub(1, Relaxed);
                        counters.submitted.fetch_sub(1, Relaxed);
                        self.id = self.rt.shared().next_task.fetch_add(1, SeqCst) + 1;
                    }
                    tracing::debug!(task = self.id, %reason, "scheduler died; task sent again");
                    self.send()?;
                }
            }
        }
    }

    fn finish_attempt(&mut self) {
        if let Some(a) = self.attempt.take() {
            self.rt.inbox.forget_ref(a.reference);
        }
    }
}

impl<R: DeserializeOwned> Task<R> {
    /// Waits for the task's value.
    pub fn join(mut self) -> Result<R, TaskError> {
        let outcome = self.wait(None);
        value(outcome)
    }

    /// Waits up to `timeout` for the task's value; on
    /// [`TaskError::Timeout`] the task goes on and can be joined again.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R, TaskError> {
        let outcome = self.wait(Some(Instant::now() + timeout));
        if !matches!(outcome, Err(TaskError::Timeout)) {
            // Ended: a later join says so.
            self.attempt = None;
        }
        value(outcome)
    }
}

impl<R> Drop for Task<R> {
    fn drop(&mut self) {
        self.finish_attempt();
    }
}

fn value<R: DeserializeOwned>(outcome: Result<Outcome, TaskError>) -> Result<R, TaskError> {
    match outcome? {
        Outcome::Done(bytes) => crate::wire::decode_exact::<R>(&bytes.0).map_err(|e| TaskError::Refused(e.to_string())),
        Outcome::Panicked(msg) => Err(TaskError::Panicked(msg)),
        Outcome::Cancelled => Err(TaskError::Cancelled),
        Outcome::Refused(why) => Err(TaskError::Refused(why)),
    }
}

/// Claims an idle ready scheduler of `class` for task `task`, unless tasks
/// of the class wait in the node's queue (they go first); `None`: the task
/// goes to the queue. Waits a little when the class has no ready scheduler
/// at all (one being replaced).
fn claim(rt: &'static Runtime, class: usize, task: u64) -> Result<Option<(usize, Pid)>, TaskError> {
    let pool = &rt.settings().pool;
    let slots = pool.slots(class);
    if slots.is_empty() {
        return Err(TaskError::NoScheduler(pool.classes[class].0.clone()));
    }
    let shared = rt.shared();
    let deadline = Instant::now() + READY_PATIENCE;
    let me = rt.pid().serial();
    if runtime::acting().is_some()
        && slots
            .clone()
            .all(|slot| [0, me].contains(&shared.schedulers[slot].serial.load(SeqCst)))
    {
        // Only this scheduler could run it, and it waits for the actor.
        return Err(TaskError::Refused(
            "an actor cannot submit a task that only its own scheduler could run".into(),
        ));
    }
    loop {
        let mut any_ready = false;
        if shared.pool.queued[class].load(SeqCst) == 0 {
            for slot in slots.clone() {
                let s = &shared.schedulers[slot];
                let serial = s.serial.load(SeqCst);
                // Not this scheduler: it runs the caller.
                if serial == 0 || serial == me {
                    continue;
                }
                any_ready = true;
                if s.busy.compare_exchange(0, task, SeqCst, SeqCst).is_err() {
                    continue;
                }
                // Still the same scheduler (not replaced meanwhile)?
                if s.serial.load(SeqCst) == serial {
                    return Ok(Some((slot, Pid::new(rt.pid().node(), serial))));
                }
                let _ = s.busy.compare_exchange(task, 0, SeqCst, SeqCst);
            }
        } else {
            any_ready = slots
                .clone()
                .any(|slot| shared.schedulers[slot].serial.load(SeqCst) != 0);
        }
        if any_ready {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Err(TaskError::NoScheduler(pool.classes[class].0.clone()));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The ready schedulers: each one's class and process id. `init()` returns
/// once every configured scheduler is ready (it waits up to 10 s for a slow
/// `Config::scheduler_init`); a scheduler being replaced after a crash is
/// missing until its successor is ready.
pub fn schedulers() -> Vec<(String, Pid)> {
    let Some(rt) = runtime::current() else {
        return Vec::new();
    };
    let pool = &rt.settings().pool;
    (0..pool.classes.len())
        .flat_map(|class| pool.slots(class).map(move |slot| (class, slot)))
        .filter_map(|(class, slot)| {
            let serial = rt.shared().schedulers[slot].serial.load(SeqCst);
            (serial != 0).then(|| (pool.classes[class].0.clone(), Pid::new(rt.pid().node(), serial)))
        })
        .collect()
}

/// Progress of the pool's tasks, node-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Sent to a scheduler and not started.
    pub queued: u64,
    /// Running now.
    pub running: u64,
    /// Returned.
    pub done: u64,
    /// Panicked, or their scheduler died under them.
    pub failed: u64,
}

/// The pool's progress now (every task of the node, from any process).
pub fn progress() -> Progress {
    let Some(rt) = runtime::current() else {
        return Progress::default();
    };
    let p = &rt.shared().pool;
    let submitted = p.submitted.load(Relaxed);
    let started = p.started.load(Relaxed);
    let done = p.done.load(Relaxed);
    let failed = p.failed.load(Relaxed);
    let dropped = p.dropped.load(Relaxed);
    Progress {
        queued: submitted.saturating_sub(started + dropped),
        running: started.saturating_sub(done + failed),
        done,
        failed,
    }
}

/// Items per batch of [`map`]: big enough that a batch costs far more than its
/// round trip, small enough to spread over the schedulers.
const BATCH: usize = 2048;

/// `f` over every item, on the default class's schedulers, results in the
/// items' order. Items travel in batches; at most two batches per scheduler
/// are in flight, so the input is read as the results are consumed. A panic
/// is that item's error; a scheduler that dies fails the items of the batch
/// it was running.
pub fn map<A, R, I>(f: fn(A) -> R, items: I) -> Map<R, I::IntoIter, A>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
    I: IntoIterator<Item = A>,
{
    let window = runtime::current().map_or(2, |rt| 2 * rt.settings().pool.classes.first().map_or(1, |c| c.1.max(1)));
    Map {
        f,
        items: items.into_iter(),
        window,
        in_flight: VecDeque::new(),
        ready: VecDeque::new(),
    }
}

/// The results of [`map`], in order.
#[derive(Debug)]
pub struct Map<R, I, A> {
    f: fn(A) -> R,
    items: I,
    window: usize,
    /// Batches sent (or that could not be), oldest first.
    in_flight: VecDeque<Batch<R>>,
    /// Results of the oldest batch, not yet yielded.
    ready: VecDeque<Result<R, TaskError>>,
}

/// A batch of [`map`].
#[derive(Debug)]
enum Batch<R> {
    Sent(Task<Vec<Result<R, String>>>, usize),
    /// It could not be sent: each of its items gives this error.
    Failed(TaskError, usize),
}

impl<R, I, A> Map<R, I, A>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
    I: Iterator<Item = A>,
{
    /// Sends batches until the window is full or the input ends.
    fn fill(&mut self) {
        while self.in_flight.len() < self.window {
            let batch: Vec<A> = self.items.by_ref().take(BATCH).collect();
            if batch.is_empty() {
                return;
            }
            let n = batch.len();
            let sent = postcard::to_stdvec(&batch)
                .map_err(|e| TaskError::Refused(format!("encoding the items: {e}")))
                .and_then(|args| {
                    Task::start(
                        DEFAULT_CLASS,
                        Request {
                            entry: text::erase::<TaskEntry>(batch_entry::<A, R>),
                            func: text::erase(self.f),
                            args,
                        },
                    )
                });
            self.in_flight.push_back(match sent {
                Ok(task) => Batch::Sent(task, n),
                Err(e) => Batch::Failed(e, n),
            });
        }
    }
}

impl<R, I, A> Iterator for Map<R, I, A>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
    I: Iterator<Item = A>,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Result<R, TaskError>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.fill();
            match self.in_flight.pop_front()? {
                Batch::Sent(task, n) => match task.join() {
                    Ok(results) => self
                        .ready
                        .extend(results.into_iter().map(|r| r.map_err(TaskError::Panicked))),
                    // Every item of the batch says why, in its place.
                    Err(e) => self.ready.extend((0..n).map(|_| Err(e.clone()))),
                },
                Batch::Failed(e, n) => self.ready.extend((0..n).map(|_| Err(e.clone()))),
            }
        }
    }
}
