//! Supervisors: processes that start children, watch them and restart them
//! when they end, after Erlang/OTP's `supervisor`.
//!
//! A [`Supervisor`] is a process like any other (it has a [`Pid`], can be
//! linked, monitored, registered and killed). It traps exits, starts its
//! children in order, linked to it, and when one ends decides from the
//! child's [`Restart`] type and its own [`Strategy`] what to restart. More
//! than `intensity` restarts within `period` mean something is wrong that
//! restarting does not fix: the supervisor then stops its children (in
//! reverse order, each by its [`Shutdown`]) and exits with
//! [`ExitReason::Shutdown`], so that its own supervisor can act.
//!
//! A child is a closure process ([`ChildSpec::new`]), a function started from
//! the zygote ([`ChildSpec::from_fn`]), an external program
//! ([`ChildSpec::port`]) or another supervisor ([`ChildSpec::supervisor`]).
//! A closure child exists in the supervisor's memory only (the supervisor is
//! forked from its starter): it can be given when the supervisor starts, not
//! added later from another process. The others are plain values and can be
//! added at any time with [`SupervisorRef::start_child`].
//!
//! Every start, exit and restart is a `tracing` event with the child's id, pid
//! and exit reason; restarts are counted in [`NodeStats`](crate::NodeStats).
//!
//! ```no_run
//! use std::time::Duration;
//! use converge::supervisor::{ChildSpec, Restart, Strategy, Supervisor};
//! use converge::Ctx;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let node = converge::init()?;
//! let sup = Supervisor::new(Strategy::OneForOne)
//!     .intensity(5, Duration::from_secs(10))
//!     .child(ChildSpec::new("worker", |ctx: Ctx<String>| {
//!         while let Ok(job) = ctx.recv() {
//!             println!("working on {job}");
//!         }
//!     }))
//!     .child(ChildSpec::port("server", converge::port::PortBuilder::new("my-server")).restart(Restart::Transient))
//!     .spawn()?;
//! for child in sup.which_children()? {
//!     println!("{}: {:?} after {} restarts", child.id, child.pid, child.restarts);
//! }
//! sup.stop()?;
//! # drop(node); Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CallError, SpawnError};
use crate::exit::{ExitReason, IntoExitReason};
use crate::mailbox::{Ctx, Event, Mailbox, ReplyTo};
use crate::monitor::MonitorRef;
use crate::pid::Pid;
use crate::port::{PortBuilder, PortOutput};
use crate::process::Builder;
use crate::runtime;
use crate::runtime::zygote::Call;

/// Which children a supervisor restarts when one of them ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Only the child that ended.
    OneForOne,
    /// Every child: the others are stopped (in reverse order), then all are
    /// started again in order.
    OneForAll,
    /// The child that ended and those started after it.
    RestForOne,
}

/// When a child that ended is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restart {
    /// Always.
    Permanent,
    /// When it ended abnormally: not after [`ExitReason::Normal`] or
    /// [`ExitReason::Shutdown`].
    Transient,
    /// Never; its spec is forgotten when it ends.
    Temporary,
}

/// How a supervisor stops a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shutdown {
    /// Killed at once (`SIGKILL`).
    BrutalKill,
    /// Sent a [`Shutdown`](ExitReason::Shutdown) exit signal (a port gets
    /// `SIGTERM`), killed if it has not ended after this long.
    Timeout(Duration),
    /// Sent a `Shutdown` exit signal and waited for, however long it takes
    /// (for children that are supervisors).
    Infinity,
}

/// How a child starts.
#[derive(Clone)]
enum Start {
    /// A closure, in this process's memory only.
    Closure(Rc<dyn Fn() -> Result<Pid, SpawnError>>),
    /// A function from the zygote (or why its arguments did not encode).
    Fn(Result<Call, String>),
    /// An external program.
    Port(Box<PortBuilder>),
    /// A supervisor.
    Supervisor(Box<Supervisor>),
    /// A lightweight actor (or why its arguments did not encode).
    Actor(Result<Box<crate::pool::actor::ActorSpawn>, String>),
}

/// [`Start`] without closures, as it travels.
#[derive(Deserialize)]
enum PortableStart {
    Fn(Result<Call, String>),
    Port(Box<PortBuilder>),
    Supervisor(Box<Supervisor>),
    Actor(Result<Box<crate::pool::actor::ActorSpawn>, String>),
}

impl Serialize for Start {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Variant indices as in `PortableStart`.
        match self {
            Start::Closure(_) => Err(serde::ser::Error::custom(
                "a closure child cannot travel to another process (use ChildSpec::from_fn)",
            )),
            Start::Fn(call) => s.serialize_newtype_variant("Start", 0, "Fn", call),
            Start::Port(port) => s.serialize_newtype_variant("Start", 1, "Port", port),
            Start::Supervisor(sup) => s.serialize_newtype_variant("Start", 2, "Supervisor", sup),
            Start::Actor(actor) => s.serialize_newtype_variant("Start", 3, "Actor", actor),
        }
    }
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Start, D::Error> {
        Ok(match PortableStart::deserialize(d)? {
            PortableStart::Fn(call) => Start::Fn(call),
            PortableStart::Port(port) => Start::Port(port),
            PortableStart::Supervisor(sup) => Start::Supervisor(sup),
            PortableStart::Actor(actor) => Start::Actor(actor),
        })
    }
}

impl fmt::Debug for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Start::Closure(_) => f.write_str("Closure"),
            Start::Fn(_) => f.write_str("Fn"),
            Start::Port(p) => f.debug_tuple("Port").field(p).finish(),
            Start::Supervisor(s) => f.debug_tuple("Supervisor").field(s).finish(),
            Start::Actor(_) => f.write_str("Actor"),
        }
    }
}

/// What a child is, how it starts, when it is restarted and how it stops.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    id: String,
    start: Start,
    restart: Restart,
    shutdown: Shutdown,
}

/// The default time a worker gets to stop.
const WORKER_SHUTDOWN: Duration = Duration::from_secs(5);

impl ChildSpec {
    /// A child running `f` in a process forked from the supervisor (each
    /// restart calls `f` again). Permanent, with 5 s to stop.
    pub fn new<M, F, R>(id: impl Into<String>, f: F) -> ChildSpec
    where
        M: Serialize + DeserializeOwned + 'static,
        F: Fn(Ctx<M>) -> R + 'static,
        R: IntoExitReason + 'static,
    {
        let f = Rc::new(f);
        let start = move || {
            let f = f.clone();
            crate::process::spawn_link(move |ctx: Ctx<M>| f(ctx)).map(|m| m.pid())
        };
        ChildSpec::with_start(id, Start::Closure(Rc::new(start)), Shutdown::Timeout(WORKER_SHUTDOWN))
    }

    /// A child running `f(ctx, args)` in a process started from the zygote
    /// (see [`spawn_fn`](crate::spawn_fn)). It is a plain value: it can be
    /// given to [`SupervisorRef::start_child`]. Permanent, with 5 s to stop.
    pub fn from_fn<M, A, R>(id: impl Into<String>, f: fn(Ctx<M>, A) -> R, args: A) -> ChildSpec
    where
        M: Serialize + DeserializeOwned + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: IntoExitReason + 'static,
    {
        let call = crate::process::make_call(f, &args).map_err(|e| e.to_string());
        ChildSpec::with_start(id, Start::Fn(call), Shutdown::Timeout(WORKER_SHUTDOWN))
    }

    /// A child that is an external program, linked to the supervisor (which
    /// logs its output through `tracing`). Permanent, with 5 s to stop
    /// (`SIGTERM` to its group, then `SIGKILL`).
    pub fn port(id: impl Into<String>, port: PortBuilder) -> ChildSpec {
        ChildSpec::with_start(id, Start::Port(Box::new(port)), Shutdown::Timeout(WORKER_SHUTDOWN))
    }

    /// A child that is a lightweight actor of type `A`, started from `args`
    /// on `builder`'s class (see [`crate::pool::Actor`]). A plain value, like
    /// [`from_fn`](Self::from_fn). Permanent, with 5 s to stop.
    pub fn actor<A: crate::pool::Actor>(
        id: impl Into<String>,
        builder: crate::pool::ActorBuilder,
        args: A::Args,
    ) -> ChildSpec {
        let spawn = crate::pool::actor::ActorSpawn::new::<A>(builder, &args)
            .map(Box::new)
            .map_err(|e| e.to_string());
        ChildSpec::with_start(id, Start::Actor(spawn), Shutdown::Timeout(WORKER_SHUTDOWN))
    }

    /// A child that is a supervisor. Permanent, and waited for however long
    /// its own children take to stop ([`Shutdown::Infinity`]).
    pub fn supervisor(id: impl Into<String>, supervisor: Supervisor) -> ChildSpec {
        ChildSpec::with_start(id, Start::Supervisor(Box::new(supervisor)), Shutdown::Infinity)
    }

    fn with_start(id: impl Into<String>, start: Start, shutdown: Shutdown) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            start,
            restart: Restart::Permanent,
            shutdown,
        }
    }

    /// When the child is restarted.
    pub fn restart(mut self, restart: Restart) -> ChildSpec {
        self.restart = restart;
        self
    }

    /// How the child is stopped.
    pub fn shutdown(mut self, shutdown: Shutdown) -> ChildSpec {
        self.shutdown = shutdown;
        self
    }

    /// The child's id, unique among its supervisor's children.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id of a closure child found in this spec, if any (such a spec
    /// cannot travel to another process).
    fn closure_inside(&self) -> Option<&str> {
        match &self.start {
            Start::Closure(_) => Some(&self.id),
            Start::Supervisor(s) => s.children.iter().find_map(|c| c.closure_inside()),
            _ => None,
        }
    }

    fn kind(&self) -> ChildKind {
        match self.start {
            Start::Closure(_) | Start::Fn(_) | Start::Actor(_) => ChildKind::Worker,
            Start::Port(_) => ChildKind::Port,
            Start::Supervisor(_) => ChildKind::Supervisor,
        }
    }
}

/// A supervisor's specification: strategy, restart intensity and children.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Supervisor {
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    name: Option<String>,
    children: Vec<ChildSpec>,
}

impl Supervisor {
    /// A supervisor with `strategy`, no children, and OTP's default
    /// intensity: at most 1 restart in 5 s.
    pub fn new(strategy: Strategy) -> Supervisor {
        Supervisor {
            strategy,
            intensity: 1,
            period: Duration::from_secs(5),
            name: None,
            children: Vec::new(),
        }
    }

    /// At most `restarts` restarts within `period`; one more and the
    /// supervisor stops its children and exits with `Shutdown`.
    pub fn intensity(mut self, restarts: u32, period: Duration) -> Supervisor {
        self.intensity = restarts;
        self.period = period;
        self
    }

    /// Registers the supervisor under `name` (see [`whereis`](crate::whereis)).
    pub fn name(mut self, name: impl Into<String>) -> Supervisor {
        self.name = Some(name.into());
        self
    }

    /// Adds a child, started after those added before it.
    pub fn child(mut self, spec: ChildSpec) -> Supervisor {
        self.children.push(spec);
        self
    }

    /// Starts the supervisor, unlinked, and waits until its children have
    /// started. A child that fails to start stops those started before it,
    /// and the supervisor with them: the error says which and why.
    pub fn spawn(self) -> Result<SupervisorRef, SupervisorError> {
        self.start(false)
    }

    /// Like [`spawn`](Self::spawn), linked with the caller: the supervisor
    /// stops its children and exits when the caller ends (and the caller gets
    /// the supervisor's exit signal, as with any link).
    pub fn spawn_link(self) -> Result<SupervisorRef, SupervisorError> {
        self.start(true)
    }

    fn start(self, link: bool) -> Result<SupervisorRef, SupervisorError> {
        let parent = crate::process::self_pid().ok_or(SupervisorError::NotInitialized)?;
        let mut builder = Builder::new().trap_exits(true);
        if let Some(name) = &self.name {
            builder = builder.name(name.clone());
        }
        let run = move |ctx: Ctx<Request>| Running::start(ctx, self, link.then_some(parent));
        let mailbox = if link {
            builder.spawn_link(run)
        } else {
            builder.spawn(run)
        }
        .map_err(|e| SupervisorError::Spawn(e.to_string()))?;
        let sup = SupervisorRef { pid: mailbox.pid() };
        // It answers once its children have started.
        match mailbox.call(Request::Started, FOREVER) {
            Ok(()) => Ok(sup),
            Err(CallError::Exited(reason)) => Err(SupervisorError::Failed(reason)),
            Err(e) => Err(SupervisorError::Call(e.to_string())),
        }
    }
}

/// Long enough for any request (a call also ends when the callee does).
const FOREVER: Duration = Duration::from_secs(24 * 3600);

/// What a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildKind {
    /// A closure or function process, or a lightweight actor.
    Worker,
    /// An external program.
    Port,
    /// A supervisor.
    Supervisor,
}

/// Where a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildState {
    /// Its process runs.
    Running,
    /// Stopped (by [`SupervisorRef::terminate_child`], or ended and not to be
    /// restarted); its spec is kept.
    Stopped,
}

/// A child, as [`SupervisorRef::which_children`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChildInfo {
    /// Its id.
    pub id: String,
    /// Its process, while it runs.
    pub pid: Option<Pid>,
    /// What it is.
    pub kind: ChildKind,
    /// Whether it runs.
    pub state: ChildState,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How its last process ended.
    pub last_exit: Option<ExitReason>,
}

/// A supervisor request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SupervisorError {
    /// `converge::init()` has not been called in this program.
    #[error("converge::init() has not been called")]
    NotInitialized,
    /// The supervisor process could not be started.
    #[error("cannot start the supervisor: {0}")]
    Spawn(String),
    /// The supervisor ended (a child failed to start, or it was stopped).
    #[error("the supervisor ended: {0}")]
    Failed(ExitReason),
    /// A child could not be started.
    #[error("child {id} failed to start: {why}")]
    Start {
        /// The child.
        id: String,
        /// Why.
        why: String,
    },
    /// A child with this id exists already.
    #[error("a child {0} exists already")]
    AlreadyPresent(String),
    /// No child has this id.
    #[error("no child {0}")]
    NotFound(String),
    /// The child runs (delete or restart it only once stopped).
    #[error("child {0} is running")]
    Running(String),
    /// The spec holds a closure child, which exists only in its starter's
    /// memory.
    #[error("child {0} is a closure: it cannot be added from another process (use ChildSpec::from_fn)")]
    NotPortable(String),
    /// The request did not reach the supervisor or its answer did not come.
    #[error("request to the supervisor failed: {0}")]
    Call(String),
}

impl From<SupervisorError> for crate::Error {
    fn from(e: SupervisorError) -> crate::Error {
        crate::Error::other(e)
    }
}

/// What a supervisor is asked.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Started(ReplyTo<()>),
    StartChild(ChildSpec, ReplyTo<Result<Pid, SupervisorError>>),
    TerminateChild(String, ReplyTo<Result<(), SupervisorError>>),
    RestartChild(String, ReplyTo<Result<Pid, SupervisorError>>),
    DeleteChild(String, ReplyTo<Result<(), SupervisorError>>),
    WhichChildren(ReplyTo<Vec<ChildInfo>>),
    Stop(ReplyTo<()>),
    /// From the supervisor itself: start the children whose restart failed.
    Retry,
}

/// A running supervisor: its [`Pid`] and its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SupervisorRef {
    pid: Pid,
}

impl SupervisorRef {
    /// The supervisor running as `pid` (for example a child of kind
    /// [`ChildKind::Supervisor`]). Requests to a process that is not a
    /// supervisor fail.
    pub fn from_pid(pid: Pid) -> SupervisorRef {
        SupervisorRef { pid }
    }

    /// The supervisor's process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    fn call<R: DeserializeOwned>(&self, make: impl FnOnce(ReplyTo<R>) -> Request) -> Result<R, SupervisorError> {
        match Mailbox::<Request>::from_pid(self.pid).call(make, FOREVER) {
            Ok(r) => Ok(r),
            Err(CallError::Exited(reason)) => Err(SupervisorError::Failed(reason)),
            Err(e) => Err(SupervisorError::Call(e.to_string())),
        }
    }

    /// Adds a child and starts it (after the others).
    pub fn start_child(&self, spec: ChildSpec) -> Result<Pid, SupervisorError> {
        if let Some(id) = spec.closure_inside() {
            return Err(SupervisorError::NotPortable(id.to_string()));
        }
        self.call(|r| Request::StartChild(spec, r))?
    }

    /// Stops a child (by its [`Shutdown`]) and keeps its spec, to restart or
    /// delete it later (a [`Restart::Temporary`] child is forgotten).
    pub fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        self.call(|r| Request::TerminateChild(id.to_string(), r))?
    }

    /// Starts a stopped child again.
    pub fn restart_child(&self, id: &str) -> Result<Pid, SupervisorError> {
        self.call(|r| Request::RestartChild(id.to_string(), r))?
    }

    /// Forgets a stopped child.
    pub fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        self.call(|r| Request::DeleteChild(id.to_string(), r))?
    }

    /// The children, in start order.
    pub fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.call(Request::WhichChildren)
    }

    /// Stops the children (in reverse order) and the supervisor, which exits
    /// `Normal`; returns once it has.
    pub fn stop(&self) -> Result<(), SupervisorError> {
        let rt = runtime::current().ok_or(SupervisorError::NotInitialized)?;
        let me: Ctx<()> = Ctx::new(rt);
        let down = me.monitor(self.pid);
        match self.call(Request::Stop) {
            Ok(()) | Err(SupervisorError::Failed(ExitReason::Normal)) => {
                let _ = me.recv_down(down);
                Ok(())
            }
            Err(e) => {
                me.demonitor(down);
                Err(e)
            }
        }
    }
}

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
struct Running {
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
    fn start(ctx: Ctx<Request>, spec: Supervisor, parent: Option<Pid>) -> ExitReason {
        let me = ctx.pid();
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
                let _ = r.reply(());
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
            Start::Port(port) => port
                .as_ref()
                .clone()
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
