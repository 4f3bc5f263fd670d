//! Lightweight actors: state machines hosted by the schedulers, many per
//! scheduler process, each with a `Pid` and a `Mailbox<M>` like any process.
//!
//! An actor handles one event per step (one reduction); a scheduler steps its
//! ready actors in turn, one event each, so a busy actor cannot starve the
//! others, but a step runs to its end: a watchdog reports a step that runs
//! over [`Config::actor_step_limit`](crate::Config::actor_step_limit) (and, if
//! told to, kills its scheduler, which is replaced). A panic ends the actor
//! with `Panic`, not its scheduler.
//!
//! The node registers an actor like any process: links, monitors, names,
//! exit signals and supervision work across actors and processes. Its
//! messages come on connections to its scheduler's listener that name it;
//! messages between actors of one scheduler go straight into the queue,
//! with no socket. When a scheduler dies, its actors end with its exit
//! reason.

use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{LinkError, RegisterError, SpawnError, SpawnErrorKind};
use crate::exit::{ExitReason, panic_message};
use crate::mailbox::{Event, Mailbox};
use crate::monitor::MonitorRef;
use crate::pid::{Pid, ProcessState};
use crate::pool::task::DEFAULT_CLASS;
use crate::runtime::inbox::Item;
use crate::runtime::{self, Runtime};
use crate::sys::text::{self, FnAddr};
use crate::wire::Bytes;
use crate::wire::envelope::{Registration, ToNode};

/// A lightweight actor: its state, started from `Args`, and what it does with
/// each event of its mailbox.
///
/// ```no_run
/// use converge::pool::{Actor, ActorCtx};
/// use converge::{Event, ReplyTo};
/// use serde::{Deserialize, Serialize};
///
/// struct Counter(u64);
///
/// #[derive(Serialize, Deserialize)]
/// enum Msg {
///     Add(u64),
///     Get(ReplyTo<u64>),
/// }
///
/// impl Actor for Counter {
///     type Msg = Msg;
///     type Args = u64;
///
///     fn start(first: u64, _: &mut ActorCtx<'_, Msg>) -> Counter {
///         Counter(first)
///     }
///
///     fn handle(&mut self, event: Event<Msg>, _: &mut ActorCtx<'_, Msg>) {
///         match event {
///             Event::Message(Msg::Add(n)) => self.0 += n,
///             Event::Message(Msg::Get(reply)) => {
///                 let _ = reply.reply(self.0);
///             }
///             _ => {}
///         }
///     }
/// }
///
/// # fn main() -> Result<(), converge::Error> {
/// let _node = converge::init()?;
/// let counter = converge::pool::spawn_actor::<Counter>(40)?;
/// counter.send(Msg::Add(2))?;
/// let n = counter.call(Msg::Get, std::time::Duration::from_secs(1))?;
/// assert_eq!(n, 42);
/// # Ok(()) }
/// ```
pub trait Actor: Sized + 'static {
    /// The messages it receives.
    type Msg: Serialize + DeserializeOwned + 'static;
    /// What it starts from (travels encoded to its scheduler).
    type Args: Serialize + DeserializeOwned + 'static;

    /// Builds the actor's state, in its scheduler.
    fn start(args: Self::Args, ctx: &mut ActorCtx<'_, Self::Msg>) -> Self;

    /// Handles one event: a message, a `Down`, a trapped exit signal, or a
    /// message that did not decode. One call is one step.
    fn handle(&mut self, event: Event<Self::Msg>, ctx: &mut ActorCtx<'_, Self::Msg>);
}

/// What a step may do besides sending: watch, link, name, stop.
pub struct ActorCtx<'a, M> {
    rt: &'static Runtime,
    step: &'a mut StepState,
    _m: PhantomData<fn() -> M>,
}

/// What a step leaves for its scheduler.
#[derive(Debug)]
pub(crate) struct StepState {
    pid: Pid,
    stop: Option<ExitReason>,
}

impl<M> std::fmt::Debug for ActorCtx<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorCtx({})", self.step.pid)
    }
}

impl<M> ActorCtx<'_, M> {
    /// This actor's id.
    pub fn pid(&self) -> Pid {
        self.step.pid
    }

    /// This actor's mailbox.
    pub fn mailbox(&self) -> Mailbox<M> {
        Mailbox::from_pid(self.step.pid)
    }

    /// Monitors `target`: one [`Down`](crate::Down) will come as an event.
    pub fn monitor(&mut self, target: impl Into<Pid>) -> MonitorRef {
        crate::monitor::monitor(self.rt, target.into())
    }

    /// Removes a monitor: no `Down` for it comes after this returns (one
    /// already on its way is removed). Whether the monitor was still in
    /// place, as [`Ctx::demonitor`](crate::Ctx::demonitor) says.
    pub fn demonitor(&mut self, reference: MonitorRef) -> bool {
        let answer = self.rt.ask_node_in_order(|request| ToNode::Demonitor {
            request: Some(request),
            reference: reference.id(),
        });
        let mut st = self.rt.inbox.lock();
        if let Some(q) = st.hosted.queues.get_mut(&self.step.pid.serial()) {
            q.items
                .retain(|it| !matches!(it, Item::Down(d) if d.reference == reference));
        }
        matches!(answer, Some(crate::wire::envelope::NodeReply::Demonitored(true)))
    }

    /// Links this actor with `target`; fails if `target` does not exist.
    pub fn link(&mut self, target: impl Into<Pid>) -> Result<(), LinkError> {
        crate::link::link(self.rt, target.into())
    }

    /// Removes the link with `target`.
    pub fn unlink(&mut self, target: impl Into<Pid>) {
        crate::link::unlink(self.rt, target.into())
    }

    /// Turns exit trapping on or off: exit signals come as
    /// [`Event::Exit`] instead of ending the actor (except `kill`).
    pub fn trap_exits(&mut self, on: bool) {
        crate::link::trap_exits(self.rt, on)
    }

    /// Registers this actor under `name`.
    pub fn register(&mut self, name: &str) -> Result<(), RegisterError> {
        crate::process::register(name, self.step.pid)
    }

    /// Ends this actor with `reason` once this step returns.
    pub fn stop(&mut self, reason: ExitReason) {
        self.step.stop = Some(reason);
    }
}

/// An actor as its scheduler holds it.
pub(crate) trait Running {
    /// One step: `item` as an event of the actor's type.
    fn step(&mut self, rt: &'static Runtime, item: Item, state: &mut StepState);
}

struct Hosted<A>(A);

impl<A: Actor> Running for Hosted<A> {
    fn step(&mut self, rt: &'static Runtime, item: Item, state: &mut StepState) {
        let event = crate::mailbox::event_of::<A::Msg>(rt, item);
        let mut ctx = ActorCtx {
            rt,
            step: state,
            _m: PhantomData,
        };
        self.0.handle(event, &mut ctx);
    }
}

/// What starts an actor in its scheduler: an entry point monomorphized for
/// its type, given its encoded arguments.
pub(crate) type StartEntry = fn(&'static Runtime, Vec<u8>, StepState) -> (Result<Box<dyn Running>, String>, StepState);

fn start_entry<A: Actor>(
    rt: &'static Runtime,
    args: Vec<u8>,
    mut state: StepState,
) -> (Result<Box<dyn Running>, String>, StepState) {
    let args = match crate::wire::decode_exact::<A::Args>(&args) {
        Ok(a) => a,
        Err(e) => return (Err(format!("decoding the arguments: {e}")), state),
    };
    let mut ctx = ActorCtx {
        rt,
        step: &mut state,
        _m: PhantomData,
    };
    let actor: Box<dyn Running> = Box::new(Hosted(A::start(args, &mut ctx)));
    (Ok(actor), state)
}

/// An actor to start, as it travels to its scheduler.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ActorStart {
    pub(crate) serial: u64,
    pub(crate) entry: FnAddr,
    pub(crate) args: Bytes,
}

/// Starts actors with options: class, name, exit trapping, link, monitor.
#[derive(Debug, Clone)]
pub struct ActorBuilder {
    class: String,
    name: Option<String>,
    register: Option<String>,
    trap_exits: bool,
}

impl Default for ActorBuilder {
    fn default() -> Self {
        ActorBuilder::new()
    }
}

/// Starts actor `A` from `args` on the default class; see [`ActorBuilder`].
pub fn spawn_actor<A: Actor>(args: A::Args) -> Result<Mailbox<A::Msg>, SpawnError> {
    ActorBuilder::new().spawn::<A>(args)
}

impl ActorBuilder {
    /// On the default class, unnamed, not trapping exits.
    pub fn new() -> ActorBuilder {
        ActorBuilder {
            class: DEFAULT_CLASS.to_string(),
            name: None,
            register: None,
            trap_exits: false,
        }
    }

    /// Hosted by a scheduler of `class`.
    pub fn class(mut self, class: impl Into<String>) -> ActorBuilder {
        self.class = class.into();
        self
    }

    /// A name shown by [`process_info`](crate::process_info) and in logs.
    pub fn name(mut self, name: impl Into<String>) -> ActorBuilder {
        self.name = Some(name.into());
        self
    }

    /// Registered under `name` (see [`whereis`](crate::whereis)) as it is
    /// spawned, atomically. If the name is taken, the actor never runs: it
    /// ends at once with an `Error` saying so.
    pub fn register(mut self, name: impl Into<String>) -> ActorBuilder {
        self.register = Some(name.into());
        self
    }

    /// Trapping exit signals from its start.
    pub fn trap_exits(mut self, on: bool) -> ActorBuilder {
        self.trap_exits = on;
        self
    }

    /// Starts actor `A` from `args`. The `Pid` is valid at once: messages
    /// sent before the actor starts wait for it.
    pub fn spawn<A: Actor>(&self, args: A::Args) -> Result<Mailbox<A::Msg>, SpawnError> {
        self.start::<A>(args, false, false).map(|(m, _)| m)
    }

    /// Starts actor `A` linked with the caller (atomically).
    pub fn spawn_link<A: Actor>(&self, args: A::Args) -> Result<Mailbox<A::Msg>, SpawnError> {
        self.start::<A>(args, true, false).map(|(m, _)| m)
    }

    /// Starts actor `A` monitored by the caller (atomically).
    pub fn spawn_monitor<A: Actor>(&self, args: A::Args) -> Result<(Mailbox<A::Msg>, MonitorRef), SpawnError> {
        self.start::<A>(args, false, true)
            .map(|(m, r)| (m, r.expect("BUG: a monitor was asked for")))
    }

    fn start<A: Actor>(
        &self,
        args: A::Args,
        link: bool,
        monitor: bool,
    ) -> Result<(Mailbox<A::Msg>, Option<MonitorRef>), SpawnError> {
        let spawn = ActorSpawn::new::<A>(self.clone(), &args)?;
        let (pid, reference) = spawn.start(link, monitor)?;
        Ok((Mailbox::from_pid(pid), reference))
    }
}

/// An actor to start, as a plain value (a supervisor's child spec).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ActorSpawn {
    class: String,
    name: Option<String>,
    register: Option<String>,
    trap_exits: bool,
    entry: FnAddr,
    args: Bytes,
}

impl ActorSpawn {
    pub(crate) fn new<A: Actor>(builder: ActorBuilder, args: &A::Args) -> Result<ActorSpawn, SpawnError> {
        let args = postcard::to_stdvec(args).map_err(|e| SpawnError::new(SpawnErrorKind::Encode(e.to_string())))?;
        Ok(ActorSpawn {
            class: builder.class,
            name: builder.name,
            register: builder.register,
            trap_exits: builder.trap_exits,
            entry: text::erase::<StartEntry>(start_entry::<A>),
            args: Bytes(args),
        })
    }

    /// Starts it: registered with the node by this (calling) process or
    /// actor, its parent, and run by the scheduler chosen here.
    pub(crate) fn start(&self, link: bool, monitor: bool) -> Result<(Pid, Option<MonitorRef>), SpawnError> {
        let rt = runtime::current().ok_or(SpawnError::new(SpawnErrorKind::NotInitialized))?;
        let (host_slot, host) = place(rt, &self.class)?;
        let shared = rt.shared();
        let serial = shared.next_serial.fetch_add(1, SeqCst);
        let me = rt.sender();
        let reference = monitor.then(|| rt.next_ref());
        let start = crate::pool::scheduler::SchedMsg::Start(ActorStart {
            serial,
            entry: self.entry,
            args: self.args.clone(),
        });
        let message =
            crate::wire::body::message(&start).map_err(|e| SpawnError::new(SpawnErrorKind::Encode(e.to_string())))?;
        // The slot names the host before anyone knows the Pid: senders find
        // the host there, and the node knows the actor exists.
        shared.slot(serial).claim(serial, ProcessState::Starting as u32, host);
        shared.schedulers[host_slot].actors.fetch_add(1, SeqCst);
        rt.tell_node(&ToNode::SpawnActor {
            reg: Registration {
                serial,
                parent: me.serial(),
                name: self.name.clone(),
                link,
                monitors: reference.map(|r| (r, false)).into_iter().collect(),
                trap_exits: self.trap_exits,
                cpu_limited: false,
                memory_limited: false,
                leave_strays: false,
                reaper: None,
                scheduler: None,
            },
            host,
            register: self.register.clone(),
            start: message,
        });
        Ok((
            Pid::new(rt.pid().node(), serial),
            reference.map(|r| MonitorRef::new(me.serial(), r)),
        ))
    }
}

/// The scheduler of `class` to host a new actor: the ready one hosting the
/// fewest, the caller's own scheduler on a tie.
fn place(rt: &'static Runtime, class: &str) -> Result<(usize, u64), SpawnError> {
    let pool = &rt.settings().pool;
    let no = || SpawnError::new(SpawnErrorKind::Zygote(format!("no scheduler in class {class}")));
    let index = pool.classes.iter().position(|c| c.0 == class).ok_or_else(no)?;
    let shared = rt.shared();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let best = pool
            .slots(index)
            .filter_map(|i| {
                let s = &shared.schedulers[i];
                let serial = s.serial.load(SeqCst);
                (serial != 0).then(|| (s.actors.load(Relaxed), serial != rt.pid().serial(), i, serial))
            })
            .min();
        if let Some((_, _, slot, serial)) = best {
            return Ok((slot, serial));
        }
        if pool.slots(index).is_empty() || std::time::Instant::now() >= deadline {
            return Err(no());
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// The actors of one scheduler.
pub(crate) struct Host {
    rt: &'static Runtime,
    slot: usize,
    actors: std::collections::HashMap<u64, Box<dyn Running>>,
}

impl Host {
    pub(crate) fn new(rt: &'static Runtime, slot: usize) -> Host {
        Host {
            rt,
            slot,
            actors: std::collections::HashMap::new(),
        }
    }

    /// Starts an actor the node registered.
    pub(crate) fn start(&mut self, start: ActorStart) {
        let rt = self.rt;
        if rt.inbox.lock().hosted.ended.contains(&start.serial) {
            // Killed before it started.
            return;
        }
        let Some(entry) = text::restore::<StartEntry>(start.entry) else {
            return self.end(
                start.serial,
                ExitReason::Error("the actor's entry point is not a function of this executable".into()),
            );
        };
        let mut state = StepState {
            pid: Pid::new(rt.pid().node(), start.serial),
            stop: None,
        };
        let serial = start.serial;
        let args = start.args.0;
        let started = self.guarded(serial, &mut state, |rt, state| {
            let pid = state.pid;
            let (r, after) = entry(rt, args, std::mem::replace(state, StepState { pid, stop: None }));
            *state = after;
            r
        });
        match started {
            Ok(Ok(actor)) => {
                self.actors.insert(serial, actor);
                rt.shared()
                    .slot(serial)
                    .state
                    .store(ProcessState::Running as u32, Relaxed);
                let mut st = rt.inbox.lock();
                let hosted = &mut st.hosted;
                let q = hosted.queues.entry(serial).or_default();
                q.started = true;
                if !q.items.is_empty() && !q.in_ready {
                    q.in_ready = true;
                    hosted.ready.push_back(serial);
                }
                drop(st);
                if let Some(reason) = state.stop {
                    self.end(serial, reason);
                }
            }
            Ok(Err(why)) => self.end(serial, ExitReason::Error(why)),
            Err(reason) => self.end(serial, reason),
        }
    }

    /// One step of `actor`: `item`.
    pub(crate) fn step(&mut self, actor: u64, item: Item) {
        let Some(mut running) = self.actors.remove(&actor) else {
            return;
        };
        let mut state = StepState {
            pid: Pid::new(self.rt.pid().node(), actor),
            stop: None,
        };
        let r = self.guarded(actor, &mut state, |rt, state| running.step(rt, item, state));
        self.actors.insert(actor, running);
        match (r, state.stop) {
            (Err(reason), _) | (Ok(()), Some(reason)) => self.end(actor, reason),
            (Ok(()), None) => {}
        }
    }

    /// Runs `f` as `actor`: sends and requests are the actor's, a panic is
    /// its `Panic`, and the watchdog times it.
    fn guarded<R>(
        &mut self,
        actor: u64,
        state: &mut StepState,
        f: impl FnOnce(&'static Runtime, &mut StepState) -> R,
    ) -> Result<R, ExitReason> {
        let rt = self.rt;
        runtime::set_acting(Some(state.pid));
        watchdog::begin(actor);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(rt, state)));
        watchdog::end();
        runtime::set_acting(None);
        rt.shared().pool.steps.fetch_add(1, Relaxed);
        r.map_err(|p| ExitReason::Panic(panic_message(&*p)))
    }

    /// Ends `actor` with `reason`: what it sent leaves first, then the node
    /// is told.
    pub(crate) fn end(&mut self, actor: u64, reason: ExitReason) {
        let rt = self.rt;
        if !rt.inbox.end_actor(actor, rt.shared()) {
            return;
        }
        self.actors.remove(&actor);
        rt.outbox
            .close_sender(&rt.inbox, actor, std::time::Instant::now() + rt.settings().exit_flush);
        let _ = rt.shared().schedulers[self.slot]
            .actors
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
        tracing::debug!(actor = %Pid::new(rt.pid().node(), actor), %reason, "actor ended");
        rt.tell_node_raw(&ToNode::ActorExit { actor, reason });
    }

    /// Starts the watchdog thread, once, if a step limit is set.
    pub(crate) fn watch(&self) {
        if let Some(limit) = self.rt.settings().pool.step_limit {
            watchdog::start(self.rt, limit, self.rt.settings().pool.kill_overruns);
        }
    }
}

/// The step watchdog of a scheduler: a thread that looks at the step running
/// now.
mod watchdog {
    use std::sync::Once;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};
    use std::time::{Duration, Instant};

    use crate::exit::ExitReason;
    use crate::pid::Pid;
    use crate::runtime::Runtime;
    use crate::wire::envelope::ToNode;

    /// The actor whose step runs (0: none).
    static ACTOR: AtomicU64 = AtomicU64::new(0);
    /// Which step it is (each step gets the next number).
    static STEP: AtomicU64 = AtomicU64::new(0);
    /// When it began: nanoseconds since `EPOCH`.
    static SINCE: AtomicU64 = AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    static STARTED: Once = Once::new();

    fn now() -> u64 {
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    pub(super) fn begin(actor: u64) {
        SINCE.store(now(), Relaxed);
        STEP.fetch_add(1, Relaxed);
        ACTOR.store(actor, SeqCst);
    }

    pub(super) fn end() {
        ACTOR.store(0, SeqCst);
    }

    pub(super) fn start(rt: &'static Runtime, limit: Duration, kill: bool) {
        STARTED.call_once(|| {
            let _ = now();
            let spawned = std::thread::Builder::new()
                .name("converge-watchdog".into())
                .spawn(move || watch(rt, limit, kill));
            if let Err(e) = spawned {
                tracing::warn!("the actor step watchdog could not start: {e}");
            }
        });
    }

    fn watch(rt: &'static Runtime, limit: Duration, kill: bool) {
        let tick = (limit / 4).max(Duration::from_millis(1));
        let mut reported = u64::MAX;
        loop {
            std::thread::sleep(tick);
            let actor = ACTOR.load(SeqCst);
            let step = STEP.load(Relaxed);
            if actor == 0 || step == reported {
                continue;
            }
            let ran = Duration::from_nanos(now().saturating_sub(SINCE.load(Relaxed)));
            if ran < limit || ACTOR.load(SeqCst) != actor || STEP.load(Relaxed) != step {
                continue;
            }
            reported = step;
            rt.shared().pool.overruns.fetch_add(1, Relaxed);
            let pid = Pid::new(rt.pid().node(), actor);
            tracing::warn!(actor = %pid, scheduler = %rt.pid(), ?ran, ?limit, "an actor's step runs over the limit");
            if kill {
                // A step cannot be stopped alone: the scheduler goes, and the
                // zygote replaces it. This actor's reason says why; the
                // others of the scheduler end `Killed`.
                rt.tell_node_raw(&ToNode::ActorExit {
                    actor,
                    reason: ExitReason::Error(format!("its step ran over the limit of {limit:?}")),
                });
                crate::sys::process::kill_self();
            }
        }
    }
}

/// The node's lightweight actors, counted in the shared area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ActorStats {
    /// Actors alive now.
    pub alive: u64,
    /// Steps run so far.
    pub steps: u64,
    /// Steps that ran over the step limit (reported by the watchdog).
    pub overruns: u64,
}

/// The node's actor figures now.
pub fn actor_stats() -> ActorStats {
    let Some(rt) = runtime::current() else {
        return ActorStats::default();
    };
    let shared = rt.shared();
    ActorStats {
        alive: shared.schedulers.iter().map(|s| s.actors.load(Relaxed)).sum(),
        steps: shared.pool.steps.load(Relaxed),
        overruns: shared.pool.overruns.load(Relaxed),
    }
}
