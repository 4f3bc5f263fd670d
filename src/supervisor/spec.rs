//! What a supervisor is made of: its children's specifications and its own.

use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CallError, SpawnError};
use crate::exit::IntoExitReason;
use crate::mailbox::Ctx;
use crate::pid::Pid;
use crate::port::PortBuilder;
use crate::process::Builder;
use crate::runtime::zygote::Call;

use super::server::Running;
use super::{ChildKind, FOREVER, Request, Restart, Shutdown, Strategy, SupervisorError, SupervisorRef};

/// How a child starts.
#[derive(Clone)]
pub(super) enum Start {
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
    pub(super) id: String,
    pub(super) start: Start,
    pub(super) restart: Restart,
    pub(super) shutdown: Shutdown,
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

    pub(super) fn with_start(id: impl Into<String>, start: Start, shutdown: Shutdown) -> ChildSpec {
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
    pub(super) fn closure_inside(&self) -> Option<&str> {
        match &self.start {
            Start::Closure(_) => Some(&self.id),
            Start::Supervisor(s) => s.children.iter().find_map(|c| c.closure_inside()),
            _ => None,
        }
    }

    pub(super) fn kind(&self) -> ChildKind {
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
    pub(super) strategy: Strategy,
    pub(super) intensity: u32,
    pub(super) period: Duration,
    pub(super) name: Option<String>,
    pub(super) children: Vec<ChildSpec>,
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
    /// supervisor stops its children and exits with `Shutdown`. The period
    /// must not be zero (as in OTP): a supervisor with one is refused at
    /// [`spawn`](Supervisor::spawn), since no restart would ever count.
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
        if self.period.is_zero() {
            // Restarts are counted within the period: none would ever count,
            // and a child that cannot start would be retried forever.
            return Err(SupervisorError::Invalid(
                "the restart period is zero: the restart intensity would never be reached".into(),
            ));
        }
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
            Ok(Ok(())) => Ok(sup),
            Ok(Err(e)) => Err(e),
            Err(CallError::Exited(reason)) => Err(SupervisorError::Failed(reason)),
            Err(e) => Err(SupervisorError::Call(e.to_string())),
        }
    }
}
