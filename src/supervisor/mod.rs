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

mod client;
mod server;
mod spec;

pub use client::SupervisorRef;
pub use spec::{ChildSpec, Supervisor};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exit::ExitReason;
use crate::mailbox::ReplyTo;
use crate::pid::Pid;

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

/// Long enough for any request (a call also ends when the callee does).
pub(super) const FOREVER: Duration = Duration::from_secs(24 * 3600);

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
    /// The supervisor's name is registered to another process (as OTP's
    /// `{error, {already_started, Pid}}`).
    #[error("the name {name} is registered to {holder}")]
    NameTaken {
        /// The name.
        name: String,
        /// Its holder.
        holder: Pid,
    },
    /// The specification cannot be started as it is (as OTP's
    /// `supervisor:check_childspecs` and flag checks refuse it).
    #[error("invalid supervisor specification: {0}")]
    Invalid(String),
}

impl From<SupervisorError> for crate::Error {
    fn from(e: SupervisorError) -> crate::Error {
        crate::Error::other(e)
    }
}

/// What a supervisor is asked.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    Started(ReplyTo<Result<(), SupervisorError>>),
    StartChild(ChildSpec, ReplyTo<Result<Pid, SupervisorError>>),
    TerminateChild(String, ReplyTo<Result<(), SupervisorError>>),
    RestartChild(String, ReplyTo<Result<Pid, SupervisorError>>),
    DeleteChild(String, ReplyTo<Result<(), SupervisorError>>),
    WhichChildren(ReplyTo<Vec<ChildInfo>>),
    Stop(ReplyTo<()>),
    /// From the supervisor itself: start the children whose restart failed.
    Retry,
}
